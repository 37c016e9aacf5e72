"""SFT step throughput: alignkit's recipe against TRL 1.16 `SFTTrainer` and a bare PyTorch loop, in one run.

    .venv/bin/python benchmarks/sft.py                                     # embedded SmolLM2-135M, batch 8 x 256
    .venv/bin/python benchmarks/sft.py --model tiny-llama --steps 2        # a quick smoke run
    .venv/bin/python benchmarks/sft.py --sides alignkit,bare --rounds 3 --json runs/bench/sft.json

Every side trains every weight of the same model (float32 weights, under bf16
autocast where bf16 is native: `--precision`, see `harness.py`) with AdamW (no
weight decay) at a constant learning rate, gradient clipping 1.0, no gradient
checkpointing, on the same prompt-completion rows
tokenized the same way (alignkit's chat-template encoding; loss on completion
tokens only), batch size and max length, one epoch of `--warmup + --steps` batches:

- alignkit:  `alignkit.train.sft` as shipped; per-step times read from its metrics.jsonl.
- trl:       `SFTTrainer` given the same pre-tokenized rows (`input_ids` + `completion_mask`,
             `completion_only_loss=True`), gradient checkpointing off, `--precision`, no eval, saving
             or per-step logging.
- bare:      the loop one writes by hand: `model(input_ids, attention_mask, labels=...)`,
             whose loss runs the LM head and cross-entropy over every position, on
             alignkit's batches in alignkit's order.

Each side runs in its own process; `--rounds` repeats every side, alternating, so
background load hits all alike. The first `--warmup` steps of each run are excluded.
Prints a markdown table; `--json PATH` writes the numbers `run_all.py` collects.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

SIDES = ("alignkit", "trl", "bare")
WORDS = ("the model answers every question with care and a short clear sentence about facts numbers "
         "cities planets colours animals and the people who study them").split()


def make_rows(n: int, seq_len: int, seed: int) -> list[dict]:
    """Prompt-completion rows whose rendered length is close to `seq_len` tokens, half of it completion."""
    rng = random.Random(seed)
    words = seq_len // 2 - 20
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": text(words), "completion": text(words)} for _ in range(n)]


def tokenized(path: str, data: Path, max_length: int) -> tuple[list[dict], object]:
    """alignkit's SFT examples `{"input_ids", "loss_mask"}` for the rows in `data`, and the tokenizer."""
    from alignkit.data.formats import detect_format
    from alignkit.data.tokenize import tokenize_sft
    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(path)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    examples, _ = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=max_length)
    return examples, tokenizer


def run_alignkit(args, path: str, data: Path, out: Path) -> list[float]:
    from alignkit.train import sft

    sft({"model": path, "data": str(data), "output_dir": str(out), "max_steps": args.warmup + args.steps,
         "batch_size": args.batch_size, "max_length": args.seq_len + 8, "eval_fraction": 0, "learning_rate": args.lr,
         "warmup_ratio": 0, "report_to": ["jsonl"], "seed": 0, "lr_scheduler": "constant",
         "mixed_precision": "bf16" if args.precision == "bf16" else "no"})
    return harness.logged_step_seconds(out, warmup=0)  # every step: child() checks the count, then drops the warm-up


def run_bare(args, path: str, data: Path) -> list[float]:
    """Full-vocabulary logits and cross-entropy on every position, on alignkit's batches in its order."""
    import torch

    from alignkit.data.collate import collate_lm
    from alignkit.models.load import load_causal_lm
    from alignkit.train.loop import BatchStream

    examples, tokenizer = tokenized(path, data, args.seq_len + 8)
    stream = BatchStream(len(examples), args.batch_size, seed=0)  # the order the recipe draws (seed 0)
    batches = [collate_lm([examples[i] for i in stream.next_step(1)[0]], tokenizer.pad_token_id)
               for _ in range(args.warmup + args.steps)]
    model = load_causal_lm(path).to(args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    times = []
    for batch in batches:
        harness.sync()
        start = time.perf_counter()
        batch = {k: v.to(args.device) for k, v in batch.items()}
        labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        harness.sync()
        times.append(time.perf_counter() - start)
    return times


def run_trl(args, path: str, data: Path, out: Path) -> list[float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignkit.models.load import load_causal_lm

    examples, tokenizer = tokenized(path, data, args.seq_len + 8)
    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": e["loss_mask"]} for e in examples])
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_length=args.seq_len + 8,
                       max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                       weight_decay=0.0, max_grad_norm=1.0, bf16=args.precision == "bf16", use_cpu=args.device == "cpu", seed=0,
                       gradient_checkpointing=False,
                       completion_only_loss=True, packing=False, padding_free=False, eval_strategy="no",
                       logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                       dataloader_num_workers=0)
    timer = harness.step_timer()
    trainer = SFTTrainer(model=load_causal_lm(path), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])
    trainer.train()
    return timer.times


def child(args) -> None:
    import torch

    from alignkit.models.load import resolve_model_path

    torch.manual_seed(0)
    path, data, out = resolve_model_path(args.model), Path(args.data), Path(args.out)
    runners = {"alignkit": lambda: run_alignkit(args, path, data, out),
               "trl": lambda: run_trl(args, path, data, out),
               "bare": lambda: run_bare(args, path, data)}
    times = runners[args.side]()
    if len(times) != args.warmup + args.steps:
        raise SystemExit(f"{args.side} ran {len(times)} steps, not {args.warmup + args.steps}")
    harness.emit({"side": args.side, "step_seconds": times[args.warmup:]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded at the start of every run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--json", help="also write the results here as JSON")
    harness.add_device_argument(parser)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if set(sides) - set(SIDES):
        parser.error(f"unknown sides {sorted(set(sides) - set(SIDES))}; choose from {', '.join(SIDES)}")

    args.precision = harness.resolve_precision(args.precision, args.device)
    from alignkit.models.load import resolve_model_path

    path = resolve_model_path(args.model)
    runs = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.batch_size * (args.warmup + args.steps), args.seq_len, 0)))
        examples, _ = tokenized(path, data, args.seq_len + 8)
        for round_ in range(args.rounds):
            for side in sides:
                runs[side].append(harness.run_child(__file__, side, [
                    "--data", str(data), "--out", f"{tmp}/{round_}/{side}", "--model", args.model,
                    "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                    "--warmup", str(args.warmup), "--lr", str(args.lr)], device=args.device, precision=args.precision))
    report(args, path, examples, runs)


def report(args, path: str, examples: list[dict], runs: dict) -> None:
    """Summarises every side, writes `--json` and prints the table."""
    tokens_per_step = args.batch_size * statistics.fmean(len(e["input_ids"]) for e in examples)  # real tokens, no padding
    params = harness.matmul_parameters(path)
    results = {side: harness.summarize(r, tokens_per_step, 6 * params * tokens_per_step) for side, r in runs.items()}
    precision = harness.precision_text(args.precision)
    harness.write_json(args.json, {
        "stage": "sft", "command": harness.command_line(), "model": args.model, "unit": "tokens/s",
        "device": args.device, "precision": args.precision,
        "settings": f"{args.batch_size} rows x ~{args.seq_len} tokens, full fine-tuning, {precision}, AdamW, "
                    f"{args.steps} measured steps after {args.warmup} warm-up per run",
        "params": params, "tokens_per_step": tokens_per_step,
        "flops": "6·N·T per step: N matmul weights (LM head included), T real tokens of the batch",
        "sides": results})

    print(f"\nmodel={args.model}, batch {args.batch_size}x{args.seq_len} ({tokens_per_step:.0f} tokens/step), {precision}, "
          f"full fine-tuning; {args.steps} measured steps after {args.warmup} warm-up, x{args.rounds} runs")
    print("| side | s/step (median of runs) | tokens/s | peak RSS MiB |")
    print("|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {r['seconds_per_step']:.3f} | {r['throughput']:.0f} | {r['peak_mib']:.0f} |")
    for other in ("trl", "bare"):
        if "alignkit" in results and other in results:
            print(f"alignkit / {other} throughput: {results['alignkit']['throughput'] / results[other]['throughput']:.2f}x")


if __name__ == "__main__":
    main()
