"""Choose the demo's settings without looking at test: the demo's models judged on validation prompts.

    .venv/bin/python benchmarks/demo_validation.py --workdir /tmp/demo_try                 # train (reusing stages), judge
    .venv/bin/python benchmarks/demo_validation.py --workdir /tmp/demo_try -- rl.max_steps=16   # a setting to try

Validation prompts: hhh-mini drawn with another seed (7), in-distribution phrasings only (the OOD phrasings are a test
set: no setting may be chosen on them), with none of the demo's train, test or OOD prompts, 15 per category
(`<workdir>/validation_prompts.jsonl`). The script runs `configs/demo.yaml` into `--workdir` with every training stage
(finished ones are reused) and the eval stage on those prompts instead of test, without OOD, then prints the table.
`key=value` arguments after `--` override the config (`rl.max_steps=16`, `samples.limit=320`; YAML values).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignkit.config import load_config  # noqa: E402
from alignkit.config_pipeline import PipelineConfig  # noqa: E402
from alignkit.data.tasks import hhh_mini  # noqa: E402
from alignkit.pipeline import run_pipeline  # noqa: E402

PER_CATEGORY = 15
SEED = 7


def validation_prompts(demo_seed: int, n_train: int, n_test: int, n_ood: int) -> list[dict]:
    """15 in-distribution prompts per category from seed 7, none of them among the demo's prompts."""
    demo = hhh_mini.generate(demo_seed, n_train, n_test, n_ood)
    seen = {e["prompt"] for split in demo.values() for e in split}
    by_category = defaultdict(list)
    for row in hhh_mini.prompt_rows(hhh_mini.generate(SEED, 0, 300, 0)["test"]):
        if row["prompt"] not in seen and len(by_category[row["category"]]) < PER_CATEGORY:
            by_category[row["category"]].append(row)
    return [row for category in sorted(by_category) for row in by_category[category]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml (after --)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for item in args.overrides:
        key, _, value = item.partition("=")
        section, _, name = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[name] = yaml.safe_load(value)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "validation_prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in validation_prompts(config["seed"], config["n_train"],
                                                                                 config["n_test"], config["n_ood"])))
    config["workdir"] = str(work)
    config["stages"] = [s for s in config["stages"] if s != "report"]
    config["eval"] = {**config.get("eval", {}), "data": str(prompts), "ood": False, "kl_samples": 0}
    (work / "validation.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    force = ("eval",) if (work / "eval" / "results.json").is_file() else ()
    run_pipeline(load_config(PipelineConfig, work / "validation.yaml"), force)


if __name__ == "__main__":
    main()
