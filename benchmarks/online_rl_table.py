"""PPO and GRPO from the demo SFT model on hhh-mini, judged by the gold rubric on the test prompts: one table.

    .venv/bin/python benchmarks/online_rl_table.py --train --seeds 0 1 --out runs/online_rl   # after `alignkit demo`
                                                                                               # and the reward model
    .venv/bin/python benchmarks/online_rl_table.py --out runs/online_rl                       # tabulate finished runs
    .venv/bin/python benchmarks/online_rl_table.py --out runs/online_rl --seeds 0 1 2 --rescore 16    # 16 fresh samples
    .venv/bin/python benchmarks/online_rl_table.py --train --eval validation --out runs/val -- --group_size 4
                                                                      # settings tried on validation prompts, not test


`--train` runs, for each seed and each of `configs/ppo.yaml` and `configs/grpo.yaml` whose
run is not already finished, `alignkit ppo|grpo --config configs/<method>.yaml --seed S
--output_dir <out>/<method>-s<S>`. The table then reads each run's `summary.json` and the
answers its first and last evaluations wrote (`eval_answers/step-0.jsonl`, `step-N.jsonl`):

- gold (greedy): mean gold reward of one greedy answer per test prompt, before -> after;
- gold (sampled): mean gold reward of `eval_samples` answers per test prompt drawn at the
  rollout temperature (the expected reward the policy optimises), before -> after, and the
  95% paired bootstrap interval of the change (per-prompt means, resampling prompts);
- RM (sampled): the same answers scored by the training reward model (raw);
- KL: the run's `kl/ref` over its last steps (nats per response, k1 on the rollouts).

With several seeds a `mean` row averages each prompt's change over the seeds before the
bootstrap (and averages KL and seconds).

`--rescore K` judges again, after training, each run's final model and the model it started
from with K sampled answers per prompt, all drawn from one seed (common random numbers):
a tighter estimate than the runs' own `eval_samples` draws, whose "before" differs by seed.
The answers go to `<out>/rescore-K/start-<settings hash>.jsonl` and `<out>/rescore-K/<method>-s<seed>.jsonl`,
and the table compares those instead.

`--eval validation` judges the runs on validation prompts instead of the test prompts, so
that settings can be chosen without looking at test: hhh-mini prompts drawn with another
seed (7), none of them in the demo's train or test prompts, with the test split's category
counts where the task has enough prompts left (`<out>/validation_prompts.jsonl`). Arguments
after `--` are passed to every `alignkit` run (a setting to try).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.evaluate.winrate import bootstrap_ci  # noqa: E402

METHODS = ("ppo", "grpo")
DEMO_DATA = Path("runs/demo/data")


def validation_prompts(path: Path, data: Path = DEMO_DATA, seed: int = 7) -> Path:
    """Writes hhh-mini prompts that are in neither of `data`'s prompt splits, stratified like its test split."""
    from alignkit.data.tasks.hhh_mini import generate, prompt_rows

    splits = [data / "prompts_train.jsonl", data / "prompts_test.jsonl"]
    for split in splits:
        if not split.is_file():
            sys.exit(f"{split} is missing: run `alignkit demo` (or `alignkit data make hhh-mini --out {data}`) first")
    used = {json.loads(line)["prompt"] for split in splits for line in split.read_text().splitlines()}
    quota = Counter(json.loads(line)["category"] for line in splits[1].read_text().splitlines())
    fresh = [row for row in prompt_rows(generate(seed, n_train=800, n_test=300)["test"]) if row["prompt"] not in used]
    kept, taken = [], Counter()
    for row in fresh:
        if taken[row["category"]] < quota[row["category"]]:
            kept.append(row)
            taken[row["category"]] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return path


def per_prompt(path: Path, key: str, sampled: bool) -> dict[str, float]:
    """Mean `key` per prompt over the greedy answer (sampled=False) or the sampled ones."""
    values = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if (row["sample"] is not None) == sampled and row.get(key) is not None:
            values[json.dumps(row["prompt"])].append(row[key])
    return {prompt: float(np.mean(v)) for prompt, v in values.items()}


def change(pairs: list[tuple[Path, Path]], key: str, sampled: bool) -> dict:
    """Before, after, and the paired per-prompt change of `key` with its bootstrap interval.

    `pairs` are (answers before, answers after) files; with several (seeds) each prompt's change is averaged over them first.
    """
    befores = [per_prompt(before, key, sampled) for before, _ in pairs]
    afters = [per_prompt(after, key, sampled) for _, after in pairs]
    shared = sorted(set.intersection(*(set(d) for d in befores + afters)))
    before = np.array([[b[p] for p in shared] for b in befores]).mean(0)  # (prompts,)
    after = np.array([[a[p] for p in shared] for a in afters]).mean(0)
    diffs = after - before
    low, high = bootstrap_ci(diffs)
    return {"before": float(before.mean()), "after": float(after.mean()), "delta": float(diffs.mean()), "low": low, "high": high}


def row(method: str, seeds: str, runs: list[Path], pairs: list[tuple[Path, Path]] | None = None) -> dict:
    """One table row: a run, or several seeds' runs pooled per prompt.

    `pairs`: the (before, after) answer files to compare; by default each run's first and last evaluation.
    """
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    if pairs is None:
        pairs = [(run / "eval_answers" / "step-0.jsonl", run / "eval_answers" / f"step-{summary['steps']}.jsonl")
                 for run, summary in zip(runs, summaries)]
    return {"method": method, "seed": seeds, "kl": np.mean([s["final_kl"] for s in summaries]),
            "seconds": np.mean([s["seconds"] for s in summaries]),
            "greedy": change(pairs, "gold", sampled=False), "sampled": change(pairs, "gold", sampled=True),
            "rm": change(pairs, "reward", sampled=True)}


def judge(run: Path, method: str, model: str, samples: int, path: Path) -> Path:
    """`model` answers `run`'s held-out prompts greedily and `samples` times sampled (seed 0), judged as in training."""
    if path.is_file():
        return path
    from alignkit.cli import STAGES, _resolve
    from alignkit.config import load_config
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rl.rewards import FunctionReward, build_rewards
    from alignkit.train.online_eval import evaluate_policy
    from alignkit.train.ppo import load_prompts, reward_specs

    config = load_config(_resolve(STAGES[method][0]), run / "config.yaml", {"model": model, "eval_samples": samples, "seed": 0})
    tokenizer, policy = load_tokenizer(model), load_causal_lm(model)
    rows = load_prompts(config.eval_data, "test", config, tokenizer, "rescore", config.eval_rows)[0]
    print(f"judging {model}: {len(rows)} prompts x {samples} samples", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # a killed run leaves no file that looks finished
    evaluate_policy(policy, tokenizer, rows, build_rewards(reward_specs(config), False),
                    FunctionReward(config.eval_reward_function), config, str(partial))
    partial.replace(path)
    return path


def rescored(out: Path, method: str, runs: list[Path], samples: int) -> list[tuple[Path, Path]]:
    """(start, final) answer files for each run, `samples` per prompt from one seed; the start model is judged once."""
    from alignkit.config import read_yaml

    configs = [read_yaml(run / "config.yaml") for run in runs]
    shared = {tuple(c.get(k) for k in ("model", "eval_data", "temperature", "top_p", "max_new_tokens")) for c in configs}
    if len(shared) != 1:
        sys.exit("the runs differ in start model, prompts or sampling settings; rescore them separately")
    folder = out / f"rescore-{samples}"
    settings = hashlib.sha1(repr(shared.pop()).encode()).hexdigest()[:8]  # PPO and GRPO runs with the same settings share it
    start = judge(runs[0], method, configs[0]["model"], samples, folder / f"start-{settings}.jsonl")
    return [(start, judge(run, method, str(run / "model"), samples, folder / f"{run.name}.jsonl")) for run in runs]


def train(method: str, seed: int, run: Path, extra: list[str]) -> None:
    if (run / "summary.json").is_file():
        return
    command = [str(Path(sys.executable).with_name("alignkit")), method, "--config", f"configs/{method}.yaml",
               "--seed", str(seed), "--output_dir", str(run), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def table(rows: list[dict]) -> str:
    lines = ["| method | seed | gold, greedy | gold, sampled | change, 95% CI | RM, sampled | KL (nats) | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s, m = r["greedy"], r["sampled"], r["rm"]
        lines.append(f"| {r['method'].upper()} | {r['seed']} | {g['before']:.3f} -> {g['after']:.3f} | "
                     f"{s['before']:.3f} -> {s['after']:.3f} | {s['delta']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}] | "
                     f"{m['before']:.3f} -> {m['after']:.3f} | {r['kl']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/online_rl", help="One run folder per method and seed: <out>/<method>-s<seed>.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train", action="store_true", help="Run the missing trainings first.")
    parser.add_argument("--eval", choices=("test", "validation"), default="test",
                        help="Judge on the demo's test prompts or on fresh validation prompts (for choosing settings).")
    parser.add_argument("--rescore", type=int, default=0, metavar="K",
                        help="Judge each final model and the start model again with K samples per prompt from one seed.")
    parser.add_argument("settings", nargs="*", help="After --: options passed to every alignkit run, e.g. -- --kl_coef 0.1")
    args = parser.parse_args()
    extra = list(args.settings)
    if args.eval == "validation":
        extra += ["--eval_data", str(validation_prompts(Path(args.out) / "validation_prompts.jsonl"))]
    rows = []
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            run = Path(args.out) / f"{method}-s{seed}"
            if args.train:
                train(method, seed, run, extra)
            if not (run / "summary.json").is_file():
                sys.exit(f"{run}: no finished run (summary.json); run with --train")
            runs.append(run)
        pairs = rescored(Path(args.out), method, runs, args.rescore) if args.rescore else None
        for i, (seed, run) in enumerate(zip(args.seeds, runs)):
            rows.append(row(method, str(seed), [run], pairs[i:i + 1] if pairs else None))
        if len(runs) > 1:
            rows.append(row(method, "mean", runs, pairs))
    report = table(rows)
    print(report)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / (f"table-rescore-{args.rescore}.md" if args.rescore else "table.md")).write_text(report + "\n")


if __name__ == "__main__":
    main()
