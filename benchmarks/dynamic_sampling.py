"""Dynamic sampling (DAPO) on the demo's GRPO, with and without it, over seeds: flat groups and gold.

    .venv/bin/python benchmarks/dynamic_sampling.py --workdir runs/demo --out runs/dynamic_sampling   # after `make demo`

Each run is the demo's `policy` stage (configs/demo.yaml `rl:`: GRPO rewarded by the labeller, hhh-mini's gold judge)
from the demo's SFT model, with `rl.seed` and `rl.dynamic_sampling` set, then judged on the validation prompts of
`benchmarks/demo_validation.py` (never test or OOD). Per run:
  - flat share: of each step's first-round groups, the share whose answers all scored alike (no gradient);
  - groups/step: groups that carried a gradient per step, after refills when dynamic sampling is on;
  - trained-on gold: the labeller's mean score of the answers trained on, over all steps (it is the gold judge here);
    with dynamic sampling the dropped groups are missing from it (mostly all-correct ones), so it reads lower;
  - sampled held-out gold: the over-optimization monitor's gold of one sampled answer per held-out training prompt
    (`n_val` of them, 16 used), at the last check;
  - validation gold - SFT: greedy answers, mean paired difference per prompt with its 95% bootstrap interval.
Runs go to `<out>/<on|off>_seed<N>` (finished ones are reused); the table to stdout and `<out>/dynamic_sampling.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from alignkit.config import load_config  # noqa: E402
from alignkit.config_pipeline import PipelineConfig  # noqa: E402
from alignkit.evaluate.winrate import bootstrap_ci  # noqa: E402
from alignkit.pipeline import run_pipeline  # noqa: E402
from demo_validation import validation_prompts  # noqa: E402


def run_one(demo: dict, work: Path, run: Path, seed: int, dynamic: bool, prompts: Path) -> dict:
    """The demo's policy stage into `run` (data and SFT linked from the demo's workdir), then eval on `prompts`."""
    run.mkdir(parents=True, exist_ok=True)
    for name in ("data", "sft"):
        if not (run / name).exists():
            (run / name).symlink_to((work / name).resolve())
    config = {**demo, "workdir": str(run), "stages": ["sft", "policy", "eval"],
              "rl": {**demo.get("rl", {}), "seed": seed, "dynamic_sampling": dynamic},
              "eval": {**demo.get("eval", {}), "data": str(prompts), "ood": False, "kl_samples": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_pipeline(load_config(PipelineConfig, run / "config.yaml"))
    steps = [json.loads(line) for line in (run / demo.get("policy", "grpo") / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "reward" in s]
    group_count = demo.get("rl", {}).get("prompts_per_step", 8)
    samples = json.loads((run / "eval" / "results.json").read_text())["samples"]
    policy = demo.get("policy", "grpo")
    diffs = [s["scores"][policy]["gold"] - s["scores"]["sft"]["gold"] for s in samples]
    low, high = bootstrap_ci(diffs)
    return {"seed": seed, "dynamic": dynamic,
            "flat_share": statistics.mean(s["dynamic/zero_variance_share"] for s in steps),
            "groups_per_step": statistics.mean(s.get("dynamic/groups", group_count) for s in steps),
            "extra_rounds": sum(s.get("dynamic/extra_rounds", 0) for s in steps),
            "sampled_gold": statistics.mean(s["reward"] for s in steps),
            "monitor_gold": [s["monitor/gold"] for s in steps if "monitor/gold" in s][-1],
            "val_gold": statistics.mean(s["scores"][policy]["gold"] for s in samples),
            "val_gain": statistics.mean(diffs), "val_gain_ci": [low, high],
            "seconds": sum(s.get("time/step_s", 0.0) for s in steps)}


def table(rows: list[dict]) -> str:
    lines = ["| dynamic sampling | seed | flat share (first round) | groups with gradient / step | extra rounds | trained-on gold | "
             "sampled held-out gold | validation gold | validation - SFT [95% CI] | GRPO s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'on' if r['dynamic'] else 'off'} | {r['seed']} | {r['flat_share']:.1%} | {r['groups_per_step']:.2f} | "
                     f"{r['extra_rounds']} | {r['sampled_gold']:.3f} | {r['monitor_gold']:.3f} | {r['val_gold']:.3f} | {r['val_gain']:+.3f} "
                     f"[{r['val_gain_ci'][0]:+.3f}, {r['val_gain_ci'][1]:+.3f}] | {r['seconds']:.0f} |")
    for dynamic in (True, False):
        group = [r for r in rows if r["dynamic"] == dynamic]
        if group:
            lines.append(f"| {'on' if dynamic else 'off'}: mean of {len(group)} | | "
                         f"{statistics.mean(r['flat_share'] for r in group):.1%} | "
                         f"{statistics.mean(r['groups_per_step'] for r in group):.2f} | | "
                         f"{statistics.mean(r['sampled_gold'] for r in group):.3f} | {statistics.mean(r['monitor_gold'] for r in group):.3f} | "
                         f"{statistics.mean(r['val_gold'] for r in group):.3f} | "
                         f"{statistics.mean(r['val_gain'] for r in group):+.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="a finished demo (its data/ and sft/ are used)")
    parser.add_argument("--out", default="runs/dynamic_sampling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    args = parser.parse_args()
    demo, work, out = yaml.safe_load(Path(args.config).read_text()), Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "validation_prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in validation_prompts(demo["seed"], demo["n_train"], demo["n_test"],
                                                                                 demo["n_ood"])))
    rows = [run_one(demo, work, out / f"{'on' if dynamic else 'off'}_seed{seed}", seed, dynamic, prompts)
            for seed in args.seeds for dynamic in (True, False)]
    (out / "dynamic_sampling.json").write_text(json.dumps(rows, indent=2))
    text = table(rows)
    (out / "dynamic_sampling.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
