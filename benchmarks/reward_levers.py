"""What each reward-model lever buys on held-out phrasings: hhh-mini pairs in distribution (test) and out of it (OOD).

    .venv/bin/python benchmarks/reward_levers.py --workdir runs/demo --out runs/reward_levers   # after `make demo`

Every variant starts from the demo's SFT model with the demo's reward settings (configs/demo.yaml `reward:`), changing
one lever at a time, and is scored on `data/preference_test.jsonl` (ID) and `data/preference_ood.jsonl` (OOD pairs
written from phrasings no training pair uses), plus the on-policy pairs of the validation prompts when the workdir has
them. Accuracy is the share of pairs whose chosen answer the model scores higher; for an ensemble, by the members' mean
and by the conservative score (mean - k * std, k = 1). The table goes to stdout and `<out>/levers.md`, the numbers to
`<out>/levers.json`. Variants whose folder is finished are reused, and the demo's own `<workdir>/reward` stands for
the "+ on-policy pairs (the demo)" row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignkit.api import reward as train_reward  # noqa: E402
from alignkit.data.load import load_rows  # noqa: E402
from alignkit.models.reward import RewardModel  # noqa: E402


def variants(work: Path) -> dict[str, dict]:
    data = work / "data"
    on_policy = work / "samples" / "reward_pairs.jsonl"
    return {
        "task pairs only": {"data": str(data / "preference_train.jsonl")},
        "+ on-policy pairs (the demo)": {"data": str(on_policy)},
        "+ on-policy, 3x steps": {"data": str(on_policy), "max_steps": 90},
        "+ on-policy, ensemble of 3": {"data": str(on_policy), "ensemble": 3},
    }


def accuracy(model: RewardModel, pairs: list[dict]) -> dict:
    prompts = [p["prompt"] for p in pairs]
    scores = model.score(prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], batch_size=32)
    n = len(pairs)
    result = {"mean": float((scores.mean[:n] > scores.mean[n:]).float().mean())}
    if scores.members.shape[0] > 1:
        conservative = scores.mean - scores.std
        result["conservative"] = float((conservative[:n] > conservative[n:]).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--out", default="runs/reward_levers")
    parser.add_argument("--only", nargs="*", help="run these variants only (names as in the table)")
    args = parser.parse_args()
    work, out = Path(args.workdir), Path(args.out)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["reward"]
    sets = {"ID (test pairs)": load_rows(work / "data" / "preference_test.jsonl"),
            "OOD pairs": load_rows(work / "data" / "preference_ood.jsonl")}
    rows = {}
    for name, change in variants(work).items():
        if args.only and name not in args.only:
            continue
        folder = out / name.replace(" ", "_").replace("+", "plus").replace(",", "").replace("(", "").replace(")", "")
        if name.endswith("(the demo)") and (work / "reward" / "summary.json").is_file():
            folder = work / "reward"  # the demo's own reward model: the same settings and data
        if not (folder / "summary.json").is_file():
            train_reward({**demo, "model": str(work / "sft"), "output_dir": str(folder), "eval_data": "", "eval_fraction": 0.0,
                          "chat_template": "always", "report_to": ["jsonl"], **change})
        model = RewardModel.load(str(folder))
        rows[name] = {label: accuracy(model, pairs) for label, pairs in sets.items()}
        print(name, json.dumps(rows[name]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| reward model | ID accuracy | OOD accuracy |", "|---|---|---|"]
    for name, row in rows.items():
        cells = [f"{r['mean']:.3f}" + (f" (conservative {r['conservative']:.3f})" if "conservative" in r else "") for r in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "levers.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
