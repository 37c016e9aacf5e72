"""SFT step throughput: alignkit's recipe against a bare PyTorch loop on the same batches, in one run.

    .venv/bin/python benchmarks/sft.py                       # embedded SmolLM2-135M, bf16, batch 8 x 256
    .venv/bin/python benchmarks/sft.py --model tiny-llama    # a quick smoke run

Both sides train every weight of the same model with AdamW under bf16 autocast on
identical padded batches (same rows, same order). The bare loop is what one would
write by hand: `model(input_ids, attention_mask, labels=...)`, whose loss runs the LM
head and cross-entropy over every position. alignkit's recipe is run for real
(`alignkit.train.sft`), and its per-step times are read from its metrics.jsonl.
Rounds alternate between the two so that background load hits both alike; the
first `--warmup` steps of each round are excluded. Prints a markdown table row.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.data.collate import collate_lm  # noqa: E402
from alignkit.data.formats import detect_format  # noqa: E402
from alignkit.data.tokenize import tokenize_sft  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from alignkit.train import sft  # noqa: E402
from alignkit.train.loop import BatchStream  # noqa: E402

WORDS = ("the model answers every question with care and a short clear sentence about facts numbers "
         "cities planets colours animals and the people who study them").split()


def make_rows(n: int, seq_len: int, seed: int) -> list[dict]:
    """Prompt-completion rows whose rendered length is close to `seq_len` tokens, half of it completion."""
    rng = random.Random(seed)
    words = seq_len // 2 - 20
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": text(words), "completion": text(words)} for _ in range(n)]


def bare_loop(path: str, batches: list[dict], lr: float) -> list[float]:
    """Seconds per step of the plain loop: full-vocabulary logits and cross-entropy on every position."""
    torch.manual_seed(0)
    model = load_causal_lm(path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    times = []
    for batch in batches:
        start = time.perf_counter()
        labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def alignkit_run(path: str, data: Path, out: Path, steps: int, args) -> list[float]:
    """Seconds per step of `alignkit.train.sft`, from the tokens and tokens/s it logs."""
    sft({"model": path, "data": str(data), "output_dir": str(out), "max_steps": steps, "batch_size": args.batch_size,
         "max_length": args.seq_len + 8, "eval_fraction": 0, "learning_rate": args.lr, "warmup_ratio": 0,
         "report_to": ["jsonl"], "seed": 0, "lr_scheduler": "constant"})
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["step_seconds"] for m in metrics if "step_seconds" in m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-5)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    steps = args.warmup + args.steps
    rows = make_rows(args.batch_size * steps, args.seq_len, seed=0)
    examples, _ = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=args.seq_len + 8)
    # the same rows in the same order as the recipe's BatchStream (seed 0) draws them
    stream = BatchStream(len(examples), args.batch_size, seed=0)
    batches = [collate_lm([examples[i] for i in stream.next_step(1)[0]], tokenizer.pad_token_id) for _ in range(steps)]
    tokens_per_step = statistics.mean(int(b["attention_mask"].sum()) for b in batches)

    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for round_ in range(args.rounds):
            ours += alignkit_run(path, data, Path(tmp) / f"run{round_}", steps, args)[args.warmup:]
            bare += bare_loop(path, batches, args.lr)[args.warmup:]
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    print(f"model={args.model} batch={args.batch_size}x{args.seq_len} (mean {tokens_per_step:.0f} tokens/step) bf16 autocast, full fine-tuning")
    print(f"bare PyTorch loop: {bare_s:.3f} s/step ({tokens_per_step / bare_s:.0f} tokens/s)")
    print(f"alignkit sft:      {ours_s:.3f} s/step ({tokens_per_step / ours_s:.0f} tokens/s)")
    print(f"| SFT step vs bare loop | {args.model} | {args.batch_size}x{args.seq_len} bf16 | "
          f"{tokens_per_step / ours_s:.0f} tok/s | {tokens_per_step / bare_s:.0f} tok/s | **{bare_s / ours_s:.2f}x** |")


if __name__ == "__main__":
    main()
