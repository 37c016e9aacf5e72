"""GRPO step time against TRL 1.16 `GRPOTrainer`, and rollout generation against a bare `model.generate`, in one run.

    .venv/bin/python benchmarks/grpo.py                                  # embedded SmolLM2-135M, 8 prompts x G=4, 32 new tokens, bf16, LoRA r=16
    .venv/bin/python benchmarks/grpo.py --model tiny-llama --steps 2     # a quick smoke run

1. Generation: the same left-padded batch (P prompts x G) sampled by
   `alignkit.rl.rollout.generate` and by a bare `model.generate` with the same
   sampling settings and seed (so both produce the same tokens), in alternating
   rounds; tokens/s counts the generated tokens up to and including EOS.
2. GRPO step: each side in its own process, same model (float32 weights, bf16
   autocast, LoRA on every linear layer of the blocks, dropout off), same hhh-mini
   prompts through the chat template, group size, max new tokens, beta 0.04 (k3 in
   the loss), token-mean ("dapo") loss, group-std scaled advantages, one optimizer step
   per rollout, AdamW at a constant learning rate, gradient clipping 1.0, the hhh-mini
   gold judge as reward. A step is everything: sampling, reward, reference and
   policy forward, backward, optimizer. Median over the steps after `--warmup`.

Prints a markdown table and the two ratios (goal: step >= 2x TRL, generation >= 0.95x bare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hhh_prompts(count: int) -> list[str]:
    from alignkit.data.tasks.hhh_mini import generate

    rows = generate(seed=0, n_train=max(count, 50), n_test=1)["train"]
    return [r["prompt"] for r in rows][:count]


def completion_text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


def gold(prompts, completions, **columns) -> list[float]:
    """The hhh-mini gold judge; TRL passes conversational prompts and completions as message lists."""
    from alignkit.data.tasks.hhh_mini import gold_rewards

    return gold_rewards([p[-1]["content"] if isinstance(p, list) else p for p in prompts], [completion_text(c) for c in completions])


# ---------------------------------------------------------------- generation: alignkit vs bare generate

def bench_generation(args) -> dict:
    import torch

    from alignkit.data.collate import pad_sequences
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rl.rollout import encode_prompts, generate

    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model)
    model.eval()
    ids, _, _ = encode_prompts(tokenizer, hhh_prompts(args.prompts), 256)
    repeated = [p for p in ids for _ in range(args.group)]
    input_ids = pad_sequences(repeated, tokenizer.pad_token_id, side="left")
    attention = pad_sequences([[1] * len(p) for p in repeated], 0, side="left")
    eos = tokenizer.eos_token_id

    def bare():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        tokens = 0
        for row in out[:, input_ids.shape[1]:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        return tokens

    def ours():
        rollout = generate(model, tokenizer, ids, group_size=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
        return int(rollout.response_lengths.sum())

    times = {"bare": [], "alignkit": []}
    tokens = {"bare": 0, "alignkit": 0}
    for round_ in range(args.gen_rounds + 1):
        for name, fn in (("bare", bare), ("alignkit", ours)) if round_ % 2 == 0 else (("alignkit", ours), ("bare", bare)):
            torch.manual_seed(round_)
            start = time.perf_counter()
            count = fn()
            if round_ > 0:  # round 0 warms up both
                times[name].append(time.perf_counter() - start)
                tokens[name] += count
    return {name: tokens[name] / sum(times[name]) for name in times} | {"tokens": tokens}


# ---------------------------------------------------------------- GRPO step: one side per process

def run_alignkit(args, out: Path) -> dict:
    import alignkit.train

    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in hhh_prompts(args.prompts * (args.warmup + args.steps))))
    summary = alignkit.train.grpo(dict(
        model=args.model, data=str(data), reward_function="hhh-mini-gold", output_dir=str(out / "run"),
        prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new_tokens, batch_size=args.prompts * args.group,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS, learning_rate=1e-5,
        max_steps=args.warmup + args.steps, kl_coef=0.04, kl_estimator="k3", loss_aggregation="token_mean", max_grad_norm=1.0,
        mixed_precision="bf16", temperature=1.0, top_p=1.0, report_to=["jsonl"], merge_lora=False, seed=0))
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "time/step_s" in m]
    return {"step_s": [m["time/step_s"] for m in steps], "length": [m["response/length"] for m in steps],
            "reward": [m["reward"] for m in steps], "final_reward": summary["final_reward"]}


def run_trl(args, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.models.load import load_causal_lm, load_tokenizer

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model)
    prompts = hhh_prompts(args.prompts * (args.warmup + args.steps))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.04, loss_type="dapo", scale_rewards="group", epsilon=0.2,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, bf16=True, use_cpu=True,
        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none", disable_dropout=True,
        seed=0, dataloader_num_workers=0, log_completions=False)
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[gold], args=config, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"),
                          callbacks=[timer])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    return {"step_s": timer.times, "length": [entry.get("completions/mean_length", float("nan")) for entry in logs],
            "reward": [entry["reward"] for entry in logs]}


def child(args) -> None:
    out = Path(args.out)
    result = run_alignkit(args, out) if args.side == "alignkit" else run_trl(args, out)
    (out / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gen-rounds", type=int, default=4, help="timed generation rounds per side")
    parser.add_argument("--sides", default="trl,alignkit")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    print(f"model {args.model}: {args.prompts} prompts x G={args.group}, {args.max_new_tokens} new tokens, LoRA r={args.lora_r}, bf16 autocast", flush=True)
    generation = bench_generation(args)
    results = {}
    for side in args.sides.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, __file__, "--side", side, "--out", tmp, "--model", args.model, "--prompts", str(args.prompts),
                       "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens), "--lora-r", str(args.lora_r),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=str(Path(__file__).parent))
            if done.returncode != 0:
                print(f"{side} failed:\n{done.stderr[-3000:]}")
                continue
            results[side] = json.loads(Path(tmp, "result.json").read_text())
            print(f"{side}: step times {[round(t, 2) for t in results[side]['step_s']]}", flush=True)

    print("\n| side | median step (s) | mean response length | steps/s |")
    print("|---|---|---|---|")
    medians = {}
    for side, result in results.items():
        timed = result["step_s"][args.warmup:]
        medians[side] = statistics.median(timed)
        lengths = [x for x in result["length"][args.warmup:] if x == x]
        print(f"| {side} | {medians[side]:.2f} | {statistics.mean(lengths) if lengths else float('nan'):.1f} | {1 / medians[side]:.3f} |")
    print(f"\ngeneration tokens/s: alignkit {generation['alignkit']:.1f}, bare generate {generation['bare']:.1f}, "
          f"ratio {generation['alignkit'] / generation['bare']:.3f} (goal >= 0.95)")
    if {"trl", "alignkit"} <= set(medians):
        print(f"GRPO step speed-up over TRL {medians['trl'] / medians['alignkit']:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
