"""GRPO step time against TRL 1.16 `GRPOTrainer` and a bare PyTorch loop, and rollout generation against a bare `model.generate`.

    .venv/bin/python benchmarks/grpo.py                                  # embedded SmolLM2-135M, 8 prompts x G=4, 32 new tokens, LoRA r=16
    .venv/bin/python benchmarks/grpo.py --model tiny-llama --steps 2     # a quick smoke run
    .venv/bin/python benchmarks/grpo.py --group 8 --max-new-tokens 128 --gen-rounds 0 --rollout hf,vllm --rounds 3 \
        --micro-batch 16 --fixed-length --json runs/bench/grpo.json      # as run_all.py runs it: 8 x 8, 128 new tokens

1. Generation: the same P prompts x G sampled by `alignkit.rl.rollout.generate` (its own
   sampler: one prefill per prompt, finished rows dropped, inverse-CDF draws) and by a
   bare `model.generate` on the left-padded P x G batch, with the same sampling settings
   and seed, in alternating rounds. The two samplers draw from the same distribution but
   consume the random stream differently, so the tokens differ; tokens/s counts the
   generated tokens up to and including EOS.
2. GRPO step: each side in its own process, same model (float32 weights, under bf16
   autocast where bf16 is native: `--precision`, see `harness.py`; LoRA on every linear
   layer of the blocks, dropout off), same hhh-mini prompts through the chat template,
   group size, max new tokens, beta 0.04 (k3 in the loss), token-mean ("dapo") loss,
   group-std scaled advantages, one optimizer step per rollout, AdamW at a constant
   learning rate, gradient clipping 1.0, the hhh-mini gold judge as reward. A step is
   everything: sampling, reward, reference and policy forward, backward, optimizer.
   Mean over the steps after `--warmup` per run, median over `--rounds` runs (as in
   `harness.py`). `--micro-batch M`: every side runs the P x G responses in forward/backward
   pieces of M and takes one optimizer step (TRL: gradient accumulation, one generation per
   step). `--fixed-length`: every response is exactly `--max-new-tokens` long on every side
   (EOS suppressed: `min_new_tokens` for `generate`, `min_tokens` for vLLM, no stop token for
   alignkit's sampler), so the sides do the same token work whatever they sample.
   `--gradient-checkpointing` turns it on for every side. Sides, by rollout backend (`--rollout`, `ROLLOUT`):

   - alignkit:       `alignkit.train.grpo` as shipped (`generation_backend: hf`, its own sampler).
   - trl:            `GRPOTrainer` with the same settings (transformers `generate`).
   - bare:           a hand-written loop: `model.generate` on the left-padded P x G batch (peft LoRA
                     model), the gold judge on the decoded responses, group-normalised
                     advantages (r - mean) / (std + 1e-4), then a reference forward (adapters disabled,
                     no_grad) and one policy forward + backward on the response positions
                     (`logits_to_keep`), loss = token mean of -A * ratio + beta * k3, AdamW.
   - alignkit-vllm:  `generation_backend: vllm` (colocated, 0.3 of GPU memory).
   - trl-vllm:       `use_vllm=True, vllm_mode="colocate"`, 0.3 of GPU memory, importance-sampling
                     correction off (alignkit has none: both score the rollout with the training model once).

   `--rollout vllm` (or `hf,vllm`) adds the -vllm sides of the named ones (bare has none). They run
   only with `--device cuda` and where `import vllm` works; otherwise they are skipped with the reason
   printed and recorded in the JSON (`skipped`). A vLLM side that fails is recorded the same way, and
   the other sides still count.

Prints a markdown table and the like-for-like ratios (goal: step >= 2x TRL on the same backend,
generation >= 0.95x bare); `--json PATH` writes the numbers `run_all.py` collects; `--gen-rounds 0`
skips part 1.
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

from benchmarks import harness  # noqa: E402

SIDES = ("alignkit", "trl", "bare", "alignkit-vllm", "trl-vllm")
ROLLOUT = {"alignkit": "hf", "trl": "hf", "bare": "hf", "alignkit-vllm": "vllm", "trl-vllm": "vllm"}
VLLM_MEMORY = 0.3  # share of GPU memory each vLLM side may take

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def micro_batch(args) -> int:
    """Responses per forward/backward on every side; the P x G responses of a step accumulate into one optimizer step."""
    return args.micro_batch or args.prompts * args.group


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

    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model).to(args.device)
    model.eval()
    ids, _, _ = encode_prompts(tokenizer, hhh_prompts(args.prompts), 256)
    repeated = [p for p in ids for _ in range(args.group)]
    input_ids = pad_sequences(repeated, tokenizer.pad_token_id, side="left").to(args.device)
    attention = pad_sequences([[1] * len(p) for p in repeated], 0, side="left").to(args.device)
    eos = tokenizer.eos_token_id

    def bare():
        with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        tokens = 0
        for row in out[:, input_ids.shape[1]:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        return tokens

    def ours():
        rollout = generate(model, tokenizer, ids, group_size=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                           bf16=args.precision == "bf16")
        return int(rollout.response_lengths.sum())

    times = {"bare": [], "alignkit": []}
    tokens = {"bare": 0, "alignkit": 0}
    for round_ in range(args.gen_rounds + 1):
        for name, fn in (("bare", bare), ("alignkit", ours)) if round_ % 2 == 0 else (("alignkit", ours), ("bare", bare)):
            torch.manual_seed(round_)
            harness.sync()
            start = time.perf_counter()
            count = fn()
            if round_ > 0:  # round 0 warms up both
                times[name].append(time.perf_counter() - start)
                tokens[name] += count
    return {name: tokens[name] / sum(times[name]) for name in times} | {"tokens": tokens}


# ---------------------------------------------------------------- GRPO step: one side per process

def run_alignkit(args, out: Path, backend: str) -> dict:
    import alignkit.rl.rollout
    import alignkit.train

    if args.fixed_length and backend == "hf":  # no stop token: every response runs to max_new_tokens, as min_new_tokens does
        alignkit.rl.rollout.eos_token_ids = lambda model, tokenizer: set()
    elif args.fixed_length:  # vLLM stops at the model's EOS whatever the stop ids: hold it back with min_tokens
        import functools

        import vllm

        vllm.SamplingParams = functools.partial(vllm.SamplingParams, min_tokens=args.max_new_tokens)

    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in hhh_prompts(args.prompts * (args.warmup + args.steps))))
    summary = alignkit.train.grpo(dict(
        model=args.model, data=str(data), reward_function="hhh-mini-gold", output_dir=str(out / "run"),
        prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new_tokens, batch_size=micro_batch(args),
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS, learning_rate=1e-5,
        max_steps=args.warmup + args.steps, kl_coef=0.04, kl_estimator="k3", loss_aggregation="token_mean", max_grad_norm=1.0,
        mixed_precision="bf16" if args.precision == "bf16" else "no", temperature=1.0, top_p=1.0, report_to=["jsonl"],
        merge_lora=False, seed=0, generation_backend=backend, vllm_gpu_memory_utilization=VLLM_MEMORY,
        gradient_checkpointing=args.gradient_checkpointing))
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "time/step_s" in m]
    return {"step_s": [m["time/step_s"] for m in steps], "length": [m["response/length"] for m in steps],
            "reward": [m["reward"] for m in steps], "final_reward": summary["final_reward"],
            "generation_s": [m["time/generation_s"] for m in steps]}


def run_bare(args) -> dict:
    """The hand-written GRPO loop: generate, score, group-normalise, reference forward, policy forward + backward."""
    import torch
    from peft import LoraConfig, get_peft_model

    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rl.rollout import encode_prompts

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = get_peft_model(load_causal_lm(args.model).to(args.device), LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
    prompts = hhh_prompts(args.prompts * (args.warmup + args.steps))
    prompt_ids, _, _ = encode_prompts(tokenizer, prompts, 256)
    times, lengths, rewards = [], [], []
    for step in range(args.warmup + args.steps):
        harness.sync()
        began = time.perf_counter()
        chunk = slice(step * args.prompts, (step + 1) * args.prompts)
        length, reward = bare_step(args, model, tokenizer, optimizer, prompts[chunk], prompt_ids[chunk])
        harness.sync()
        times.append(time.perf_counter() - began)
        lengths.append(length)
        rewards.append(reward)
    return {"step_s": times, "length": lengths, "reward": rewards}


def bare_step(args, model, tokenizer, optimizer, prompts: list[str], prompt_ids: list[list[int]]) -> tuple[float, float]:
    """One bare GRPO step on P prompts: returns (mean response length, mean reward)."""
    import torch

    from alignkit.data.collate import pad_sequences
    from alignkit.data.tasks.hhh_mini import gold_rewards

    pad, eos, beta, group = tokenizer.pad_token_id, tokenizer.eos_token_id, 0.04, args.group
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    repeated = [ids for ids in prompt_ids for _ in range(group)]
    input_ids = pad_sequences(repeated, pad, side="left").to(args.device)  # (N, P_len), N = P * G
    prompt_mask = pad_sequences([[1] * len(ids) for ids in repeated], 0, side="left").to(args.device)
    model.eval()
    with torch.no_grad(), autocast:
        sequences = model.generate(input_ids=input_ids, attention_mask=prompt_mask, max_new_tokens=args.max_new_tokens,
                                   min_new_tokens=args.max_new_tokens if args.fixed_length else None,
                                   do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad, eos_token_id=eos)
    model.train()
    response = sequences[:, input_ids.shape[1]:]  # (N, R)
    is_eos = (response == eos).long()
    response_mask = ((is_eos.cumsum(-1) - is_eos) == 0).long()  # (N, R) up to and including the first EOS
    texts = tokenizer.batch_decode(response.masked_fill(response_mask == 0, pad).cpu(), skip_special_tokens=True)
    scores = torch.tensor(gold_rewards([p for p in prompts for _ in range(group)], texts)).view(-1, group)  # (P, G)
    advantages = ((scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-4)).flatten().to(args.device)  # (N,)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (N, T)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def response_logps(rows: slice):
        logits = model(input_ids=sequences[rows], attention_mask=attention_mask[rows], position_ids=position_ids[rows],
                       logits_to_keep=response.shape[1] + 1).logits[:, :-1]  # (M, R, V)
        return torch.log_softmax(logits.float(), -1).gather(-1, response[rows, :, None]).squeeze(-1)  # (M, R)

    tokens = response_mask.sum().clamp(min=1)
    for start in range(0, len(sequences), micro_batch(args)):  # gradients accumulate over the micro-batches
        rows = slice(start, start + micro_batch(args))
        with autocast:
            with torch.no_grad(), model.disable_adapter():
                ref_logps = response_logps(rows)
            logps = response_logps(rows)
        log_ratio = (ref_logps - logps).clamp(-20, 20)
        k3 = torch.exp(log_ratio) - log_ratio - 1  # (M, R)
        per_token = -torch.exp(logps - logps.detach()) * advantages[rows, None] + beta * k3
        ((per_token * response_mask[rows]).sum() / tokens).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return response_mask.sum(-1).float().mean().item(), scores.mean().item()


def run_trl(args, out: Path, vllm: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.models.load import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model)
    prompts = hhh_prompts(args.prompts * (args.warmup + args.steps))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=micro_batch(args), num_generations=args.group,
        gradient_accumulation_steps=args.prompts * args.group // micro_batch(args), num_iterations=1,
        max_completion_length=args.max_new_tokens,  # one generation of P x G per optimizer step (steps_per_generation = accumulation)
        temperature=1.0, top_p=1.0, top_k=0, beta=0.04, loss_type="dapo", scale_rewards="group", epsilon=0.2,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, bf16=args.precision == "bf16",
        use_cpu=args.device == "cpu", max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none",
        disable_dropout=True, seed=0, dataloader_num_workers=0, log_completions=False, gradient_checkpointing=args.gradient_checkpointing,
        generation_kwargs={("min_tokens" if vllm else "min_new_tokens"): args.max_new_tokens} if args.fixed_length else None,
        **(dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=VLLM_MEMORY,
                vllm_max_model_length=256 + args.max_new_tokens, vllm_importance_sampling_correction=False) if vllm else {}))
    timer = harness.step_timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[gold], args=config, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"),
                          callbacks=[timer])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    return {"step_s": timer.times, "length": [entry.get("completions/mean_length", float("nan")) for entry in logs],
            "reward": [entry["reward"] for entry in logs]}


def child(args) -> None:
    """One side, in this process: its measured steps, their mean response length and reward, as one RESULT line."""
    runners = {"alignkit": lambda: run_alignkit(args, Path(args.out), "hf"), "trl": lambda: run_trl(args, Path(args.out), vllm=False),
               "bare": lambda: run_bare(args), "alignkit-vllm": lambda: run_alignkit(args, Path(args.out), "vllm"),
               "trl-vllm": lambda: run_trl(args, Path(args.out), vllm=True)}
    result = runners[args.side]()
    if len(result["step_s"]) != args.warmup + args.steps:
        raise SystemExit(f"{args.side} ran {len(result['step_s'])} steps, not {args.warmup + args.steps}")
    lengths = [x for x in result["length"][args.warmup:] if x == x]
    harness.emit({"side": args.side, "step_seconds": result["step_s"][args.warmup:],
                  "response_length": statistics.fmean(lengths) if lengths else float("nan"),
                  "reward": statistics.fmean(result["reward"][args.warmup:]),
                  **({"generation_seconds": statistics.fmean(result["generation_s"][args.warmup:])} if "generation_s" in result else {})})


# ---------------------------------------------------------------- main

def vllm_unavailable(device: str) -> str | None:
    """Why the vLLM sides cannot run here (`import vllm` fails in this interpreter, or no GPU), or None when they can."""
    reasons = []
    done = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True)  # a fresh interpreter, as the sides
    if done.returncode != 0:
        reasons.append(f"`import vllm` fails in {sys.executable} ({(done.stderr.strip().splitlines() or ['no message'])[-1]})")
    if device != "cuda":
        reasons.append("this row's vLLM sides need a GPU (TRL's colocate mode does) and this run is --device cpu; on CPU, alignkit's vLLM rollouts are measured by benchmarks/rollout.py from .venv-vllm")
    return "; ".join(reasons) or None


def chosen_sides(args) -> tuple[list[str], dict]:
    """The sides to run (each named side on each `--rollout` backend that has it) and {side: why it was skipped}."""
    names = [s.strip() for s in args.sides.split(",") if s.strip()]
    backends = [r.strip() for r in args.rollout.split(",") if r.strip()]
    if set(names) - set(SIDES) or set(backends) - {"hf", "vllm"}:
        raise SystemExit(f"unknown sides or rollouts in {args.sides!r} / {args.rollout!r}; sides: {', '.join(SIDES)}; rollouts: hf, vllm")
    sides = [n for n in names if ROLLOUT[n] == "vllm"]  # named outright
    for backend in backends:
        twins = [n if backend == "hf" else f"{n}-vllm" for n in names if ROLLOUT[n] == "hf"]
        sides += [side for side in twins if side in SIDES and side not in sides]  # bare has no -vllm twin
    skipped = {}
    reason = vllm_unavailable(args.device) if any(ROLLOUT[s] == "vllm" for s in sides) else None
    if reason:
        skipped = {s: reason for s in sides if ROLLOUT[s] == "vllm"}
        sides = [s for s in sides if s not in skipped]
        print(f"skipping {', '.join(skipped)}: {reason}", flush=True)
    return sides, skipped


def run_rounds(args, sides: list[str], skipped: dict) -> dict:
    """`--rounds` runs of every side, alternating; a vLLM side that fails is moved to `skipped` and the others go on."""
    runs = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for side in [s for s in sides if s not in skipped]:
                out = Path(tmp, str(round_), side)
                out.mkdir(parents=True)
                argv = ["--out", str(out), "--model", args.model, "--prompts", str(args.prompts), "--group", str(args.group),
                        "--max-new-tokens", str(args.max_new_tokens), "--lora-r", str(args.lora_r), "--steps", str(args.steps),
                        "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch),
                        *(["--fixed-length"] if args.fixed_length else []), *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]
                try:
                    runs[side].append(harness.run_child(__file__, side, argv, device=args.device, precision=args.precision))
                except SystemExit as failure:
                    if ROLLOUT[side] != "vllm":
                        raise
                    skipped[side] = f"failed: {failure}"
                    print(f"skipping {side} from now on: {failure}", flush=True)
    return {side: r for side, r in runs.items() if side not in skipped}


def report(args, runs: dict, skipped: dict, generation: dict | None) -> dict:
    """Every side's summary, FLOPs counted as 6·N·T over its own tokens; writes `--json`."""
    from alignkit.models.load import load_tokenizer, resolve_model_path
    from alignkit.rl.rollout import encode_prompts

    prompt_ids, _, _ = encode_prompts(load_tokenizer(args.model), hhh_prompts(args.prompts * (args.warmup + args.steps)), 256)
    prompt_length = statistics.fmean(map(len, prompt_ids))
    params, sequences = harness.matmul_parameters(resolve_model_path(args.model)), args.prompts * args.group
    results = {}
    for side, r in runs.items():
        length = statistics.fmean(x["response_length"] for x in r)
        tokens = sequences * (prompt_length + length)
        results[side] = harness.summarize(r, sequences, 6 * params * tokens)
        results[side].update(response_length=length, tokens_per_step=tokens, reward=statistics.fmean(x["reward"] for x in r),
                             variant=ROLLOUT[side])
        if all("generation_seconds" in x for x in r):  # alignkit logs its sampling time; the rest of the step is training
            results[side]["generation_seconds"] = statistics.median(x["generation_seconds"] for x in r)
    harness.write_json(args.json, {
        "stage": "grpo", "command": harness.command_line(), "model": args.model, "unit": "rollouts/s", "device": args.device,
        "precision": args.precision, "variant": "rollout", "skipped": skipped,
        "settings": f"{args.prompts} prompts x G={args.group}, "
                    + (f"exactly {args.max_new_tokens} new tokens per response (EOS suppressed on every side)" if args.fixed_length
                       else f"up to {args.max_new_tokens} new tokens") + f", LoRA r={args.lora_r}, "
                    f"{harness.precision_text(args.precision)}, beta 0.04 (k3), AdamW; forward/backward in micro-batches of "
                    f"{micro_batch(args)} responses, one optimizer step per rollout, activation checkpointing "
                    f"{'on' if args.gradient_checkpointing else 'off'}, on every side; {args.steps} measured steps after "
                    f"{args.warmup} warm-up per run",
        "params": params, "tokens_per_step": statistics.fmean(x["tokens_per_step"] for x in results.values()) if results else 0,
        "prompt_length": prompt_length,
        "flops": "6·N·T per step, the usual training-FLOPs convention, T = prompt + response tokens of the P·G sequences "
                 "(that side's mean response length); the step's matmul work is nearer 8·N·T (2·N·T sampling with the KV cache, "
                 "2·N·T reference forward, 4·N·T LoRA forward + backward, no weight gradient for frozen weights)",
        "generation": generation,
        "sides": results})
    return results


def print_table(results: dict, generation: dict | None) -> None:
    print("\n| side | rollout | s/step (median of runs) | of which sampling s | rollouts/s | mean response length | mean reward | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        sampling = f"{r['generation_seconds']:.2f}" if "generation_seconds" in r else "not logged"
        print(f"| {side} | {ROLLOUT[side]} | {r['seconds_per_step']:.2f} | {sampling} | {r['throughput']:.2f} | {r['response_length']:.1f} | "
              f"{r['reward']:.3f} | {r['peak_mib']:.0f} |")
    if generation:
        print(f"\ngeneration tokens/s: alignkit {generation['alignkit']:.1f}, bare generate {generation['bare']:.1f}, "
              f"ratio {generation['alignkit'] / generation['bare']:.3f} (goal >= 0.95)")
    for ours, theirs in (("alignkit", "trl"), ("alignkit", "bare"), ("alignkit-vllm", "trl-vllm")):
        if {ours, theirs} <= set(results):
            print(f"GRPO step speed-up, {ours} over {theirs} (like for like, {ROLLOUT[ours]} rollouts): "
                  f"{results[theirs]['seconds_per_step'] / results[ours]['seconds_per_step']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--gen-rounds", type=int, default=4, help="timed generation rounds per side (0: skip the generation comparison)")
    parser.add_argument("--sides", default="trl,alignkit,bare", help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--rollout", default="hf", help="comma-separated rollout backends, hf and/or vllm: vllm adds the -vllm "
                                                        "sides of the named ones (GPU and an importable vllm only; skipped otherwise)")
    parser.add_argument("--micro-batch", type=int, default=0, help="responses per forward/backward on every side, accumulated into "
                                                                       "one optimizer step per rollout (0: all P x G at once); must divide P x G")
    parser.add_argument("--fixed-length", action="store_true", help="every response exactly --max-new-tokens on every side (EOS "
                                                                   "suppressed: min_new_tokens for generate, no stop token for alignkit)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing on every side (TRL's default)")
    parser.add_argument("--json", help="also write the results here as JSON")
    harness.add_device_argument(parser)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    if (args.prompts * args.group) % micro_batch(args):
        raise SystemExit(f"--micro-batch {args.micro_batch} must divide the {args.prompts * args.group} responses of a step")
    args.precision = harness.resolve_precision(args.precision, args.device)
    sides, skipped = chosen_sides(args)
    print(f"model {args.model}: {args.prompts} prompts x G={args.group}, {args.max_new_tokens} new tokens, LoRA r={args.lora_r}, "
          f"{harness.precision_text(args.precision)}; sides {', '.join(sides) or 'none'}", flush=True)
    generation = bench_generation(args) if args.gen_rounds > 0 else None
    runs = run_rounds(args, sides, skipped)
    print_table(report(args, runs, skipped, generation), generation)

if __name__ == "__main__":
    main()
