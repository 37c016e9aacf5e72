"""DPO step throughput and peak memory: alignkit's recipe against TRL 1.16 `DPOTrainer`, in one run.

    .venv/bin/python benchmarks/dpo.py                           # embedded SmolLM2-135M, 8 pairs x 256, bf16
    .venv/bin/python benchmarks/dpo.py --model tiny-llama --steps 3   # a quick smoke run
    .venv/bin/python benchmarks/dpo.py --sides alignkit,trl,trl-precompute,alignkit-copy

Identical settings on every side: the same model (every weight trained, float32
weights under bf16 autocast), the same hhh-mini preference pairs (one epoch of
`--warmup + --steps` batches), batch size, max_length, sigmoid loss with beta 0.1,
AdamW at a constant learning rate, gradient clipping at 1.0. Each side runs in its
own process, so its peak resident memory (ru_maxrss) is its own; the step time is
the median over the steps after `--warmup`, and pairs/s divides the batch by it.

- trl:             `DPOTrainer` as shipped: a frozen reference copy run every step.
- trl-precompute:  `DPOTrainer(precompute_ref_log_probs=True)`: reference log-probs in one pass first.
- alignkit:        `alignkit.train.dpo` with `reference: precompute` (the cache is emptied first,
                   so the one-off pass is paid and reported as setup time).
- alignkit-copy:   `alignkit.train.dpo` with a frozen copy, like TRL's default.

Prints a markdown table and the throughput ratio of alignkit to TRL's default.
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

SIDES = ("alignkit", "trl", "trl-precompute", "alignkit-copy")


def write_pairs(path: Path, count: int) -> None:
    """The first `count` hhh-mini training pairs (prompt, chosen, rejected only)."""
    from alignkit.data.tasks.hhh_mini import generate, preference_rows

    rows = preference_rows(generate(seed=0, n_train=max(50, count // 2 + 1), n_test=1)["train"])[:count]
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_alignkit(args, data: Path, out: Path, reference: str) -> dict:
    from alignkit.models.load import resolve_model_path
    from alignkit.train import dpo

    steps = args.warmup + args.steps
    summary = dpo({"model": resolve_model_path(args.model), "data": str(data), "output_dir": str(out), "max_steps": steps,
                   "batch_size": args.batch_size, "max_length": args.max_length, "eval_fraction": 0, "learning_rate": args.lr,
                   "warmup_ratio": 0, "lr_scheduler": "constant", "report_to": ["jsonl"], "seed": 0, "beta": 0.1,
                   "mixed_precision": "bf16", "reference": reference, "ref_cache_dir": str(out / "ref_cache")})
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [m["step_seconds"] for m in metrics if "step_seconds" in m]
    return {"step_seconds": times[args.warmup:], "setup_seconds": summary["setup_seconds"]}


def run_trl(args, data: Path, out: Path, precompute: bool) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignkit.models.load import load_tokenizer, resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self._start)

    path = resolve_model_path(args.model)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                       max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                       max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], bf16=True, use_cpu=True, seed=0,
                       logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                       precompute_ref_log_probs=precompute)
    trainer = DPOTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=str(data), split="train"),
                         processing_class=load_tokenizer(path))
    timer = StepTimer()
    trainer.add_callback(timer)
    setup = time.perf_counter() - started
    trainer.train()
    return {"step_seconds": timer.times[args.warmup:], "setup_seconds": setup}


def child(args) -> None:
    """One side, in this process; prints one JSON line."""
    import torch

    torch.manual_seed(0)
    out = Path(args.out)
    runners = {
        "alignkit": lambda: run_alignkit(args, Path(args.data), out, "precompute"),
        "alignkit-copy": lambda: run_alignkit(args, Path(args.data), out, "copy"),
        "trl": lambda: run_trl(args, Path(args.data), out, precompute=False),
        "trl-precompute": lambda: run_trl(args, Path(args.data), out, precompute=True),
    }
    result = runners[args.side]()
    result.update(side=args.side, peak_mib=peak_mib())
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-6)
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
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_pairs(data, args.batch_size * (args.warmup + args.steps))
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--data", str(data), "--out", str(Path(tmp) / side),
                       "--model", args.model, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr)]
            print(f"running {side} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"{side} failed (exit {done.returncode})")
            results[side] = json.loads(line[len("RESULT "):])

    print(f"\nmodel={args.model}, {args.batch_size} pairs/step, max_length {args.max_length}, bf16 autocast, full fine-tuning, "
          f"sigmoid loss; median of {args.steps} steps after {args.warmup} warmup")
    print("| side | s/step | pairs/s | setup s (load + reference pass) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for side, r in results.items():
        median = statistics.median(r["step_seconds"])
        print(f"| {side} | {median:.2f} | {args.batch_size / median:.2f} | {r['setup_seconds']:.0f} | {r['peak_mib']:.0f} |")
    if "alignkit" in results and "trl" in results:
        ours, theirs = (statistics.median(results[s]["step_seconds"]) for s in ("alignkit", "trl"))
        memory = results["alignkit"]["peak_mib"] / results["trl"]["peak_mib"]
        print(f"\nalignkit / TRL DPOTrainer throughput: {theirs / ours:.2f}x; peak memory {memory:.2f}x of TRL's")


if __name__ == "__main__":
    main()
