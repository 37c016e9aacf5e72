"""Reward-model training throughput: alignkit's recipe against TRL 1.16 `RewardTrainer`, in one run.

    .venv/bin/python benchmarks/reward.py                            # embedded SmolLM2-135M, 8 pairs x 256, bf16
    .venv/bin/python benchmarks/reward.py --model tiny-llama --steps 3   # a quick smoke run
    .venv/bin/python benchmarks/reward.py --sides alignkit,alignkit-classic,trl,trl-defaults

Identical settings on every side: the same sequence-classification model (every
weight trained, float32 weights under bf16 autocast), the same hhh-mini preference
pairs as the same token ids (TRL gets them pre-tokenized as `chosen_ids` /
`rejected_ids`, built with alignkit's chat-template encoding, so neither side sees a
token the other does not), one epoch of `--warmup + --steps` batches of
`--batch-size` pairs, max_length, Bradley-Terry loss, AdamW at a constant learning
rate, gradient clipping at 1.0, no gradient checkpointing. Each side runs in its own
process. Throughput is pairs over the summed time of the steps after `--warmup`
(each side's sampler orders the pairs its own way, so per-step work varies; the sum
over many steps evens that out); the median step time is printed too.

- alignkit:          `alignkit.train.reward` as shipped: one row per pair (prompt computed once), length-grouped batches.
- alignkit-classic:  the same recipe with `share_prompt: false, group_by_length: false` (TRL's layout: 2B padded rows).
- trl:               `RewardTrainer`, gradient checkpointing off (as alignkit).
- trl-defaults:      `RewardTrainer` with its default gradient checkpointing on.

Prints a markdown table and the throughput ratio of alignkit to TRL.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ("alignkit", "alignkit-classic", "trl", "trl-defaults")


def write_pairs(path: Path, count: int, seed: int = 0) -> None:
    """`count` hhh-mini training pairs (prompt, chosen, rejected), shuffled so every batch mixes categories."""
    import random

    from alignkit.data.tasks.hhh_mini import generate, preference_rows

    rows = preference_rows(generate(seed=seed, n_train=max(50, count), n_test=1)["train"])
    random.Random(seed).shuffle(rows)
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows[:count]))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_alignkit(args, data: Path, out: Path, classic: bool) -> dict:
    from alignkit.models.load import resolve_model_path
    from alignkit.train import reward

    summary = reward({"model": resolve_model_path(args.model), "data": str(data), "output_dir": str(out),
                      "max_steps": args.warmup + args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                      "eval_fraction": 0, "learning_rate": args.lr, "warmup_ratio": 0, "lr_scheduler": "constant",
                      "report_to": ["jsonl"], "seed": 0, "mixed_precision": "bf16",
                      "share_prompt": not classic, "group_by_length": not classic})
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [m["step_seconds"] for m in metrics if "step_seconds" in m]
    return {"step_seconds": times[args.warmup:], "train_pairs": summary["train_pairs"]}


def tokenized_pairs(path: str, data: Path) -> list[dict]:
    """The pairs as alignkit encodes them: chosen_ids = prompt + chosen (+EOS), rejected_ids likewise."""
    from alignkit.data.tokenize import encode_completions
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(path)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    out = []
    for row in rows:
        prompt, (chosen, rejected) = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        out.append({"chosen_ids": prompt + chosen, "rejected_ids": prompt + rejected})
    return out


def run_trl(args, data: Path, out: Path, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignkit.models.load import load_tokenizer, resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self._start)

    path = resolve_model_path(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32", num_labels=1)
    config = RewardConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                          max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                          max_grad_norm=1.0, bf16=True, use_cpu=True, seed=0, gradient_checkpointing=checkpointing,
                          logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    dataset = Dataset.from_list(tokenized_pairs(path, data))
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(path))
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return {"step_seconds": timer.times[args.warmup:], "train_pairs": len(trainer.train_dataset)}


def child(args) -> None:
    """One side, in this process; prints one JSON line."""
    import torch

    torch.manual_seed(0)
    out, data = Path(args.out), Path(args.data)
    runners = {
        "alignkit": lambda: run_alignkit(args, data, out, classic=False),
        "alignkit-classic": lambda: run_alignkit(args, data, out, classic=True),
        "trl": lambda: run_trl(args, data, out, checkpointing=False),
        "trl-defaults": lambda: run_trl(args, data, out, checkpointing=True),
    }
    result = runners[args.side]()
    result.update(side=args.side, peak_mib=peak_mib())
    print("RESULT " + json.dumps(result), flush=True)


def run_side(side: str, args, data: Path, tmp: str) -> dict:
    command = [sys.executable, __file__, "--side", side, "--data", str(data), "--out", str(Path(tmp) / side),
               "--model", args.model, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr)]
    print(f"running {side} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{side} failed (exit {done.returncode})")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every side this many times, alternating, so background load hits all alike")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--sides", default="alignkit,trl", help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    results = {side: {"step_seconds": [], "peak_mib": 0.0} for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_pairs(data, args.batch_size * (args.warmup + args.steps))
        for round_ in range(args.rounds):
            for side in sides:
                result = run_side(side, args, data, f"{tmp}/{round_}")
                if result["train_pairs"] != args.batch_size * (args.warmup + args.steps):
                    raise SystemExit(f"{side} trained on {result['train_pairs']} pairs, not all of them")
                results[side]["step_seconds"] += result["step_seconds"]
                results[side]["peak_mib"] = max(results[side]["peak_mib"], result["peak_mib"])

    print(f"\nmodel={args.model}, {args.batch_size} pairs/step, max_length {args.max_length}, bf16 autocast, full fine-tuning, "
          f"Bradley-Terry loss; {args.steps} measured steps after {args.warmup} warmup, x{args.rounds} rounds")
    print("| side | pairs/s | median s/step | peak RSS MiB |")
    print("|---|---|---|---|")
    throughput = {}
    for side, r in results.items():
        throughput[side] = args.batch_size * len(r["step_seconds"]) / sum(r["step_seconds"])
        print(f"| {side} | {throughput[side]:.2f} | {statistics.median(r['step_seconds']):.2f} | {r['peak_mib']:.0f} |")
    if "alignkit" in throughput and "trl" in throughput:
        print(f"\nalignkit / TRL RewardTrainer throughput: {throughput['alignkit'] / throughput['trl']:.2f}x")


if __name__ == "__main__":
    main()
