"""Reward-model training throughput: alignkit's recipe against TRL 1.16 `RewardTrainer` and a bare PyTorch loop, in one run.

    .venv/bin/python benchmarks/reward.py                            # embedded SmolLM2-135M, 8 pairs x 256
    .venv/bin/python benchmarks/reward.py --model tiny-llama --steps 3   # a quick smoke run
    .venv/bin/python benchmarks/reward.py --sides alignkit,alignkit-classic,trl,trl-defaults,bare
    .venv/bin/python benchmarks/reward.py --rounds 3 --json runs/bench/reward.json

Identical settings on every side: the same sequence-classification model (every
weight trained, float32 weights, under bf16 autocast where bf16 is native:
`--precision`, see `harness.py`), the same hhh-mini preference
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
- bare:              a hand-written loop: `AutoModelForSequenceClassification`, the B chosen and B
                     rejected sequences as one right-padded batch of 2B rows (pairs in file order), the
                     score read at each row's last real token, `-logsigmoid(r_chosen - r_rejected).mean()`.

Prints a markdown table and the throughput ratios of alignkit to TRL and to the bare
loop; `--json PATH` writes the numbers `run_all.py` collects (`--rounds` runs per side,
summarised as in `harness.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

SIDES = ("alignkit", "alignkit-classic", "trl", "trl-defaults", "bare")


def run_alignkit(args, data: Path, out: Path, classic: bool) -> dict:
    from alignkit.models.load import resolve_model_path
    from alignkit.train import reward

    summary = reward({"model": resolve_model_path(args.model), "data": str(data), "output_dir": str(out),
                      "max_steps": args.warmup + args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                      "eval_fraction": 0, "learning_rate": args.lr, "warmup_ratio": 0, "lr_scheduler": "constant",
                      "report_to": ["jsonl"], "seed": 0, "mixed_precision": "bf16" if args.precision == "bf16" else "no",
                      "share_prompt": not classic, "group_by_length": not classic})
    return {"step_seconds": harness.logged_step_seconds(out, args.warmup), "train_pairs": summary["train_pairs"]}


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


def run_bare(args, data: Path) -> dict:
    """The hand-written loop: one padded batch of chosen then rejected rows, Bradley-Terry loss, AdamW."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from alignkit.data.collate import pad_sequences
    from alignkit.models.load import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    pad_id = load_tokenizer(path).pad_token_id
    pairs = tokenized_pairs(path, data)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32", num_labels=1).to(args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    times = []
    for start in range(0, len(pairs), args.batch_size):
        rows = pairs[start:start + args.batch_size]
        sequences = [p["chosen_ids"][:args.max_length] for p in rows] + [p["rejected_ids"][:args.max_length] for p in rows]
        harness.sync()
        began = time.perf_counter()
        input_ids = pad_sequences(sequences, pad_id).to(args.device)  # (2B, T)
        attention_mask = pad_sequences([[1] * len(s) for s in sequences], 0).to(args.device)  # (2B, T)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (2B, T, H)
            last = attention_mask.sum(-1) - 1  # (2B,) each row's last real token
            rewards = model.score(hidden[torch.arange(len(sequences), device=hidden.device), last]).squeeze(-1).float()  # (2B,)
        chosen, rejected = rewards.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        harness.sync()
        times.append(time.perf_counter() - began)
    return {"step_seconds": times[args.warmup:], "train_pairs": len(pairs)}


def pair_tokens(path: str, data: Path, max_length: int) -> float:
    """Mean real tokens of one pair (prompt + chosen, prompt + rejected), as every side counts them."""
    pairs = tokenized_pairs(path, data)
    return statistics.fmean(min(len(p["chosen_ids"]), max_length) + min(len(p["rejected_ids"]), max_length) for p in pairs)


def run_trl(args, data: Path, out: Path, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from alignkit.models.load import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32", num_labels=1)
    config = RewardConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                          max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                          max_grad_norm=1.0, bf16=args.precision == "bf16", use_cpu=args.device == "cpu", seed=0,
                          gradient_checkpointing=checkpointing,
                          logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    dataset = Dataset.from_list(tokenized_pairs(path, data))
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(path))
    timer = harness.step_timer()
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
        "bare": lambda: run_bare(args, data),
    }
    result = runners[args.side]()
    harness.emit(result | {"side": args.side})


def run_side(side: str, args, data: Path, tmp: str) -> dict:
    return harness.run_child(__file__, side, [
        "--data", str(data), "--out", str(Path(tmp) / side), "--model", args.model, "--batch-size", str(args.batch_size),
        "--max-length", str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr)],
        device=args.device, precision=args.precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every side this many times, alternating, so background load hits all alike")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--sides", default="alignkit,trl,bare", help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--json", help="also write the results here as JSON")
    harness.add_device_argument(parser)
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
    args.precision = harness.resolve_precision(args.precision, args.device)
    from alignkit.models.load import resolve_model_path

    path = resolve_model_path(args.model)
    runs = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        count = args.batch_size * (args.warmup + args.steps)
        harness.write_hhh_pairs(data, count, n_train=max(50, count), shuffle_seed=0)  # every batch mixes categories
        tokens_per_pair = pair_tokens(path, data, args.max_length)
        for round_ in range(args.rounds):
            for side in sides:
                result = run_side(side, args, data, f"{tmp}/{round_}")
                if result["train_pairs"] != args.batch_size * (args.warmup + args.steps):
                    raise SystemExit(f"{side} trained on {result['train_pairs']} pairs, not all of them")
                runs[side].append(result)
    report(args, path, tokens_per_pair, runs)


def report(args, path: str, tokens_per_pair: float, runs: dict) -> None:
    """Summarises every side, writes `--json` and prints the table."""
    params = harness.matmul_parameters(path, sequence_classification=True)
    precision = harness.precision_text(args.precision)
    tokens_per_step = args.batch_size * tokens_per_pair
    results = {side: harness.summarize(r, args.batch_size, 6 * params * tokens_per_step) for side, r in runs.items()}
    harness.write_json(args.json, {
        "stage": "reward", "command": harness.command_line(), "model": args.model, "unit": "pairs/s", "device": args.device,
        "precision": args.precision,
        "settings": f"{args.batch_size} pairs/step, max_length {args.max_length}, full fine-tuning, {precision}, "
                    f"Bradley-Terry loss, AdamW; {args.steps} measured steps after {args.warmup} warm-up per run",
        "params": params, "tokens_per_step": tokens_per_step,
        "flops": "6·N·T per step: N matmul weights of the sequence classifier (score head, no LM head), "
                 "T real tokens of the 2B prompt+response sequences (a shared prompt counted twice)",
        "sides": results})

    print(f"\nmodel={args.model}, {args.batch_size} pairs/step, max_length {args.max_length}, {precision}, full fine-tuning, "
          f"Bradley-Terry loss; {args.steps} measured steps after {args.warmup} warmup, x{args.rounds} runs")
    print("| side | pairs/s | s/step (median of runs) | peak RSS MiB |")
    print("|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {r['throughput']:.2f} | {r['seconds_per_step']:.2f} | {r['peak_mib']:.0f} |")
    for other, name in (("trl", "TRL RewardTrainer"), ("bare", "bare loop")):
        if "alignkit" in results and other in results:
            print(f"alignkit / {name} throughput: {results['alignkit']['throughput'] / results[other]['throughput']:.2f}x")


if __name__ == "__main__":
    main()
