"""DPO step throughput and peak memory: alignkit's recipe against TRL 1.16 `DPOTrainer` and a bare PyTorch loop, in one run.

    .venv/bin/python benchmarks/dpo.py                           # embedded SmolLM2-135M, 8 pairs x 256, every side
    .venv/bin/python benchmarks/dpo.py --model tiny-llama --steps 3   # a quick smoke run
    .venv/bin/python benchmarks/dpo.py --sides alignkit-copy,trl,bare      # the frozen-copy sides only
    .venv/bin/python benchmarks/dpo.py --rounds 3 --json runs/bench/dpo.json

Identical settings on every side: the same model (every weight trained, float32
weights, under bf16 autocast where bf16 is native: `--precision`, see `harness.py`),
the same hhh-mini preference pairs (one epoch of `--warmup + --steps` batches), batch
size, max_length, sigmoid loss with beta 0.1, AdamW at a constant learning rate,
gradient clipping at 1.0. Each side runs in its
own process, so its peak resident memory (ru_maxrss) is its own; the step time is
the mean over the steps after `--warmup` (median over runs), and pairs/s divides the batch by it.
Setup seconds run from the start of the side to its first step: loading, tokenizing
and, on the precompute sides, the reference pass (not in the step time).

- trl:             `DPOTrainer` as shipped: a frozen reference copy run every step.
- trl-precompute:  `DPOTrainer(precompute_ref_log_probs=True)`: reference log-probs in one pass first.
- alignkit:        `alignkit.train.dpo` with `reference: precompute` (the cache is emptied first,
                   so the one-off pass is paid and reported as setup time).
- alignkit-copy:   `alignkit.train.dpo` with a frozen copy, like TRL's default.
- bare:            a hand-written loop doing TRL's default work: chosen and rejected as one
                   right-padded batch of 2B rows (pairs in file order, alignkit's token ids),
                   full-vocabulary logits, log-probs summed over completion tokens, the frozen
                   reference copy run every step under no_grad, sigmoid loss, AdamW.

The sides pair up like for like, by reference strategy (`REFERENCE`): alignkit against
trl-precompute (both precompute), alignkit-copy against trl and bare (all three run a
frozen copy every step). `--rounds` repeats every side, alternating (summarised as in
`harness.py`). Prints a markdown table, the like-for-like throughput ratios and, labelled
as such, the cross ratio alignkit (precompute) / trl (frozen copy) that earlier tables
quoted; `--json PATH` writes the numbers `run_all.py` collects.
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

SIDES = ("alignkit", "trl-precompute", "alignkit-copy", "trl", "bare")
REFERENCE = {"alignkit": "precompute", "trl-precompute": "precompute", "alignkit-copy": "copy", "trl": "copy", "bare": "copy"}
# (ours, theirs): throughput ratios printed, like for like first; the last one is the cross ratio earlier tables quoted
PAIRS = (("alignkit", "trl-precompute"), ("alignkit-copy", "trl"), ("alignkit-copy", "bare"), ("alignkit", "trl"))


def run_alignkit(args, data: Path, out: Path, reference: str) -> dict:
    from alignkit.models.load import resolve_model_path
    from alignkit.train import dpo

    steps = args.warmup + args.steps
    summary = dpo({"model": resolve_model_path(args.model), "data": str(data), "output_dir": str(out), "max_steps": steps,
                   "batch_size": args.batch_size, "max_length": args.max_length, "eval_fraction": 0, "learning_rate": args.lr,
                   "warmup_ratio": 0, "lr_scheduler": "constant", "report_to": ["jsonl"], "seed": 0, "beta": 0.1,
                   "mixed_precision": "bf16" if args.precision == "bf16" else "no", "reference": reference,
                   "ref_cache_dir": str(out / "ref_cache")})
    return {"step_seconds": harness.logged_step_seconds(out, args.warmup), "setup_seconds": summary["setup_seconds"]}


def tokenized_pairs(path: str, data: Path, max_length: int) -> tuple[list[dict], int]:
    """alignkit's pair examples (prompt ids, chosen ids, rejected ids; fitted to max_length) and the pad id."""
    from alignkit.models.load import load_tokenizer
    from alignkit.train.dpo import tokenize_pairs

    tokenizer = load_tokenizer(path)
    examples, _ = tokenize_pairs([json.loads(line) for line in data.read_text().splitlines()], tokenizer, max_length)
    return examples, tokenizer.pad_token_id


def summed_logps(model, batch: dict):
    """(2B,) log-probs of each row's completion tokens, from full-vocabulary logits."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (2B, T-1, V)
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)  # (2B, T-1)
    return (logps * batch["loss_mask"][:, 1:]).sum(-1)


def run_bare(args, data: Path) -> dict:
    """The hand-written loop: policy forward with grad, frozen reference under no_grad, sigmoid loss, AdamW."""
    import copy

    import torch
    import torch.nn.functional as F

    from alignkit.data.collate import collate_prompt_completions
    from alignkit.models.load import load_causal_lm, resolve_model_path

    path = resolve_model_path(args.model)
    started = time.perf_counter()
    examples, pad_id = tokenized_pairs(path, data, args.max_length)
    policy = load_causal_lm(path).to(args.device)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    setup = time.perf_counter() - started
    times = []
    for start in range(0, len(examples), args.batch_size):
        rows = examples[start:start + args.batch_size]
        harness.sync()
        began = time.perf_counter()
        prompts = [e["sequences"][0][0] for e in rows] + [e["sequences"][1][0] for e in rows]
        completions = [e["sequences"][0][1] for e in rows] + [e["sequences"][1][1] for e in rows]
        batch = collate_prompt_completions(prompts, completions, pad_id)  # (2B, T): chosen rows, then rejected
        batch = {k: v.to(args.device) for k, v in batch.items()}
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logps = summed_logps(policy, batch)  # (2B,)
            with torch.no_grad():
                ref_logps = summed_logps(reference, batch)  # (2B,)
        chosen, rejected = (logps - ref_logps).chunk(2)
        loss = -F.logsigmoid(0.1 * (chosen - rejected)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        harness.sync()
        times.append(time.perf_counter() - began)
    return {"step_seconds": times[args.warmup:], "setup_seconds": setup}


def run_trl(args, data: Path, out: Path, precompute: bool) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from alignkit.models.load import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                       max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                       max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], bf16=args.precision == "bf16",
                       use_cpu=args.device == "cpu", seed=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                       dataloader_num_workers=0, precompute_ref_log_probs=precompute)
    trainer = DPOTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=str(data), split="train"),
                         processing_class=load_tokenizer(path))
    timer = harness.step_timer()
    trainer.add_callback(timer)
    trainer.train()  # with precompute_ref_log_probs the reference pass ran in DPOTrainer(...), before the first step
    return {"step_seconds": timer.times[args.warmup:], "setup_seconds": timer.first_begin - started}


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
        "bare": lambda: run_bare(args, Path(args.data)),
    }
    result = runners[args.side]()
    if len(result["step_seconds"]) != args.steps:
        raise SystemExit(f"{args.side} measured {len(result['step_seconds'])} steps, not {args.steps}")
    harness.emit(result | {"side": args.side})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, alternating")
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
        harness.write_hhh_pairs(data, count, n_train=max(50, count // 2 + 1))
        examples, _ = tokenized_pairs(path, data, args.max_length)
        for round_ in range(args.rounds):
            for side in sides:
                runs[side].append(harness.run_child(__file__, side, [
                    "--data", str(data), "--out", f"{tmp}/{round_}/{side}", "--model", args.model,
                    "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--steps", str(args.steps),
                    "--warmup", str(args.warmup), "--lr", str(args.lr)], device=args.device, precision=args.precision))
    print_table(args, report(args, path, examples, runs))


def report(args, path: str, examples: list[dict], runs: dict) -> dict:
    """Every side's summary (with its reference strategy and median setup seconds); writes `--json`."""
    tokens_per_step = args.batch_size * statistics.fmean(sum(len(p) + len(c) for p, c in e["sequences"]) for e in examples)
    params = harness.matmul_parameters(path)
    results = {}
    for side, r in runs.items():
        results[side] = harness.summarize(r, args.batch_size, 6 * params * tokens_per_step)
        results[side].update(setup_seconds=statistics.median(x["setup_seconds"] for x in r), variant=REFERENCE[side])
    harness.write_json(args.json, {
        "stage": "dpo", "command": harness.command_line(), "model": args.model, "unit": "pairs/s", "device": args.device,
        "precision": args.precision, "variant": "reference",
        "settings": f"{args.batch_size} pairs/step, max_length {args.max_length}, full fine-tuning, "
                    f"{harness.precision_text(args.precision)}, sigmoid loss beta 0.1, AdamW; {args.steps} measured steps "
                    f"after {args.warmup} warm-up per run",
        "params": params, "tokens_per_step": tokens_per_step,
        "flops": "6·N·T per step for the policy (N matmul weights with the LM head, T real tokens of the 2B prompt+completion "
                 "sequences); the reference forward (2·N·T on the sides that run it every step) is not counted",
        "sides": results})
    return results


def print_table(args, results: dict) -> None:
    print(f"\nmodel={args.model}, {args.batch_size} pairs/step, max_length {args.max_length}, "
          f"{harness.precision_text(args.precision)}, full fine-tuning, sigmoid loss; {args.steps} measured steps after "
          f"{args.warmup} warm-up, x{args.rounds} runs")
    print("| side | reference | s/step (median of runs) | pairs/s | setup s (load + any reference pass) | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {REFERENCE[side]} | {r['seconds_per_step']:.2f} | {r['throughput']:.2f} | {r['setup_seconds']:.0f} | "
              f"{r['peak_mib']:.0f} |")
    for ours, theirs in PAIRS:
        if {ours, theirs} <= set(results):
            same = REFERENCE[ours] == REFERENCE[theirs]
            label = f"like for like, {REFERENCE[ours]} on both" if same else \
                f"NOT like for like: {REFERENCE[ours]} vs {REFERENCE[theirs]}, the ratio earlier tables quoted"
            a, b = results[ours], results[theirs]
            print(f"{ours} / {theirs} throughput: {a['throughput'] / b['throughput']:.2f}x ({label}); "
                  f"peak memory {a['peak_mib'] / b['peak_mib']:.2f}x")

if __name__ == "__main__":
    main()
