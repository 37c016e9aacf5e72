"""Every stage benchmark side by side (alignkit, TRL 1.16, a bare PyTorch loop), written into BENCHMARKS.md.

    nice -n 10 .venv/bin/python benchmarks/run_all.py                      # embedded SmolLM2-135M, 3 runs per side
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench.md     # smoke: tiny-llama, 2 steps, 1 run per side
    .venv/bin/python benchmarks/run_all.py --stages sft,dpo --runs 5
    python3 benchmarks/run_all.py --device cuda --steps 8 --out /tmp/bench.md   # every side on the GPU

1. Measures this machine's matmul peak in this process: torch.matmul of square bf16
   (and, for reference, fp32) matrices, a few warm-up then timed repetitions, the best
   GFLOP/s; again after the stages, keeping the higher (load only lowers it). MFU is
   reported against the bf16 figure.
2. Runs each stage script (`sft.py`, `reward.py`, `dpo.py`, `grpo.py`) with all its
   sides and `--rounds RUNS`, so every side gets RUNS runs in its own process,
   alternating with the other sides; each script writes its JSON (`--json`).
3. Writes the section between `<!-- run_all:begin -->` and `<!-- run_all:end -->` of
   `--out` (BENCHMARKS.md): the machine, the peak, a table per stage (median step,
   throughput, ratio to TRL and to the bare loop, MFU), the goals met or missed, and the
   exact command behind every number. Everything outside the markers is kept.

A stage that fails is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"

# Per-stage arguments on top of --model/--rounds/--json. Each script's own data, max length, precision and
# optimizer; the batch (SFT 4x256, 8 reward pairs, 4 DPO pairs, 4 prompts x G=4 for GRPO) and the step counts
# are cut so that 3 runs of every side fit in about half an hour on 2 CPU cores with SmolLM2-135M.
STAGE_ARGS = {
    "sft": ["--batch-size", "4", "--steps", "2", "--warmup", "1"],
    "reward": ["--steps", "2", "--warmup", "1"],
    "dpo": ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--sides", "alignkit,alignkit-copy,trl,bare"],
    "grpo": ["--prompts", "4", "--steps", "2", "--warmup", "1", "--gen-rounds", "0"],
}
QUICK_ARGS = {
    "sft": ["--batch-size", "4", "--seq-len", "128", "--steps", "2", "--warmup", "1"],
    "reward": ["--batch-size", "4", "--steps", "2", "--warmup", "1"],
    "dpo": ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--sides", "alignkit,alignkit-copy,trl,bare"],
    "grpo": ["--prompts", "2", "--max-new-tokens", "8", "--steps", "2", "--warmup", "1", "--gen-rounds", "0"],
}
TITLES = {"sft": "SFT", "reward": "Reward model", "dpo": "DPO", "grpo": "GRPO"}
GOALS = {"sft": 1.5, "reward": 1.5, "dpo": 2.0, "grpo": 2.0}  # alignkit throughput / TRL's
BARE_GOAL = 0.9  # alignkit throughput / the bare loop's, every stage
NOTES = {
    "sft": "alignkit's recipe as shipped; TRL `SFTTrainer` on the same pre-tokenized rows (`completion_mask`, "
           "completion-only loss, gradient checkpointing off); the bare loop calls `model(..., labels=...)` "
           "(LM head and cross-entropy over every position).",
    "reward": "alignkit shares the prompt between chosen and rejected and groups rows by length; TRL `RewardTrainer` "
              "and the bare loop run the 2B padded rows.",
    "dpo": "alignkit's default `reference: precompute` computes the reference log-probs in one pass before training "
           "(paid in setup, not in the step); TRL `DPOTrainer` and the bare loop run a frozen reference copy every "
           "step; `alignkit-copy` is alignkit with a frozen copy too, the like-for-like row against the bare loop.",
    "grpo": "A step is everything: sampling, reward, reference forward, policy forward and backward, optimizer. "
            "The sides sample different responses, so their lengths differ a little; MFU uses each side's own.",
}


# ---------------------------------------------------------------- the machine

def matmul_gflops(n: int, dtype, warmup: int, reps: int, device: str = "cpu") -> float:
    """Best GFLOP/s of `a @ b` for (n, n) matrices of `dtype` on `device` over `reps` timed repetitions."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def measure_peak(sizes: tuple[int, ...], warmup: int, reps: int, device: str = "cpu") -> dict:
    import torch

    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        by_size = {n: matmul_gflops(n, dtype, warmup, reps, device) for n in sizes}
        out[name] = {"gflops": max(by_size.values()), "by_size": by_size}
        print(f"matmul peak {name}: " + ", ".join(f"n={n}: {g:.0f} GFLOP/s" for n, g in by_size.items()), flush=True)
    out.update(sizes=list(sizes), warmup=warmup, reps=reps)
    return out


def best_peak(start: dict, end: dict) -> dict:
    """The higher of the measurements before and after the stages, per dtype and size (load only ever lowers it)."""
    out = dict(start)
    for name in ("bf16", "fp32"):
        by_size = {n: max(g, end[name]["by_size"][n]) for n, g in start[name]["by_size"].items()}
        out[name] = {"gflops": max(by_size.values()), "by_size": by_size,
                     "start": start[name]["gflops"], "end": end[name]["gflops"]}
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def memory_gib() -> float:
    try:
        kib = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1]
        return int(kib) / 2 ** 20
    except (OSError, StopIteration):
        return float("nan")


def git_commit() -> str:
    """The checked-out commit, read from .git without running git."""
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            loose = ROOT / ".git" / name
            if loose.is_file():
                return loose.read_text().strip()[:12]
            packed = (ROOT / ".git" / "packed-refs").read_text().splitlines()
            return next(l.split()[0][:12] for l in packed if l.endswith(" " + name))
        return ref[:12]
    except (OSError, StopIteration):
        return "unknown"


def describe_machine(device: str = "cpu") -> dict:
    import torch

    versions = {}
    for package in ("transformers", "trl", "peft", "accelerate"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {"cpu": cpu_model(), "flags": cpu_flags(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "memory_gib": memory_gib(), "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "versions": versions, "load_start": os.getloadavg()[0], "commit": git_commit(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")} | (
                {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda} if device == "cuda" else {})


# ---------------------------------------------------------------- running the stages

def stage_command(stage: str, args, json_path: Path) -> list[str]:
    extra = (QUICK_ARGS if args.quick else STAGE_ARGS)[stage]
    if args.steps:  # every stage's arguments name --steps: replace its value
        extra = [str(args.steps) if i and extra[i - 1] == "--steps" else a for i, a in enumerate(extra)]
    if args.device != "cpu":
        extra = [*extra, "--device", args.device]
    return [f"benchmarks/{stage}.py", "--model", args.model, "--rounds", str(args.runs), *extra,
            "--json", str(json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path)]


def run_stage(stage: str, args, results_dir: Path) -> dict:
    json_path = (results_dir / f"{stage}.json").resolve()
    json_path.unlink(missing_ok=True)
    command = stage_command(stage, args, json_path)
    shown = ".venv/bin/python " + shlex.join(command)
    print(f"\n== {stage}: {shown}", flush=True)
    started = time.time()
    done = subprocess.run([sys.executable, *command], cwd=ROOT)
    minutes = (time.time() - started) / 60
    if done.returncode != 0 or not json_path.is_file():
        print(f"== {stage} failed (exit {done.returncode}) after {minutes:.1f} min", flush=True)
        return {"stage": stage, "failed": done.returncode, "shown": shown, "minutes": minutes}
    result = json.loads(json_path.read_text())
    print(f"== {stage} done in {minutes:.1f} min", flush=True)
    return result | {"shown": shown, "minutes": minutes}


# ---------------------------------------------------------------- the markdown

def ratio(sides: dict, side: str, other: str) -> float | None:
    if side in sides and other in sides:
        return sides[side]["throughput"] / sides[other]["throughput"]
    return None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}"


def stage_section(result: dict) -> list[str]:
    stage, peak_flops = result["stage"], result["peak_gflops"] * 1e9
    lines = [f"### {TITLES[stage]}", ""]
    if result.get("carried"):
        lines += [f"*Kept from the run of {result['date']} (this run skipped the stage); MFU against that run's peak, "
                  f"{result['peak_gflops']:.0f} GFLOP/s.*", ""]
    if "failed" in result:
        return lines + [f"Failed (exit {result['failed']}); rerun `{result['shown']}` to see why.", ""]
    unit = result["unit"]
    lines += [f"{result['settings']}. {NOTES[stage]}", "",
              f"| side | step s (median of {result['runs']} runs) | {unit} | vs TRL | vs bare | MFU | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    sides = result["sides"]
    for side, r in sides.items():
        mfu = r["flops_per_step"] / r["seconds_per_step"] / peak_flops
        lines.append(f"| {side} | {r['seconds_per_step']:.2f} | {number(r['throughput'])} | {fmt(ratio(sides, side, 'trl'))} | "
                     f"{fmt(ratio(sides, side, 'bare'))} | {100 * mfu:.1f}% | {r['peak_mib']:.0f} |")
    spreads = "; ".join(f"{side} " + ", ".join(f"{s:.2f}" for s in r["run_seconds_per_step"]) for side, r in sides.items())
    lines += ["", f"Per-run step s: {spreads}. N = {result['params'] / 1e6:.1f}M matmul weights, "
                  f"{result['tokens_per_step']:.0f} tokens/step; model FLOPs: {result['flops']}.",
              "", f"    {result['shown']}", ""]
    return lines


def goal_rows(results: dict) -> list[str]:
    rows = ["| goal | measured | |", "|---|---|---|"]
    for stage, target in GOALS.items():
        if stage not in results:
            continue
        sides = results[stage].get("sides", {})
        ours = [side for side in sides if side.startswith("alignkit")] or ["alignkit"]  # alignkit-copy (DPO) too
        for side, other, goal in [("alignkit", "trl", target)] + [(side, "bare", BARE_GOAL) for side in ours]:
            value = ratio(sides, side, other)
            label = f"{side} >= {goal:g}x {'TRL' if other == 'trl' else 'bare loop'}"
            status = "not measured" if value is None else ("met" if value >= goal else "**missed**")
            rows.append(f"| {TITLES[stage]}: {label} | {fmt(value)} | {status} |")
    return rows


def render(machine: dict, peak: dict, results: dict, args, minutes: float) -> str:
    bf16, fp32 = peak["bf16"], peak["fp32"]
    sizes = ", ".join(f"n={n}: {g:.0f}" for n, g in bf16["by_size"].items())
    lines = [
        BEGIN,
        "## Side by side: alignkit, TRL 1.16 and a bare PyTorch loop",
        "",
        f"Generated by `{args.shown}` ({machine['date']}, commit {machine['commit']}, {minutes:.0f} min). "
        "Regenerated between the run_all markers on every run; the sections below them are written by hand.",
        "",
        f"- **Machine**: {machine['cpu']} ({', '.join(machine['flags']) or 'no AVX-512'}), {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable), {machine['memory_gib']:.0f} GiB RAM; Python {machine['python']}, torch {machine['torch']} "
        f"({machine['threads']} threads), " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + "."
        + (f" Every side on the GPU: **{machine['gpu']}** (CUDA {machine['cuda']}); the peak and MFU below are the GPU's."
           if machine.get("gpu") else ""),
        f"- **Load average** (1 min) {machine['load_start']:.1f} at the start, {machine['load_end']:.1f} at the end: other jobs on "
        "the machine slow every side in absolute terms; sides alternate run by run so that they share it alike.",
        f"- **Measured matmul peak** (this run, `torch.matmul` of square matrices, best of {peak['reps']} after {peak['warmup']} "
        f"warm-up, measured before and after the stages and the higher kept: {bf16['start']:.0f} and {bf16['end']:.0f}): "
        f"**bf16 {bf16['gflops']:.0f} GFLOP/s** ({sizes}); fp32 {fp32['gflops']:.0f} GFLOP/s for reference. "
        "MFU = model FLOPs per step / step seconds / the bf16 peak.",
        "- **Method**: every side runs in its own process, the same model, data, batch, max length, precision (float32 "
        "weights under bf16 autocast) and optimizer (AdamW, constant LR, clipping 1.0). Per run, step seconds = mean of the "
        "measured steps after the warm-up; per side, the median over runs. Throughput = work per step / that; the ratios "
        "divide throughputs. Model FLOPs count the training step as 6·N·T (N matmul weights, T real tokens; attention "
        "and the DPO reference forward not counted); GRPO counts its whole step as 8·N·T (sampling 2·N·T: prefill and one "
        "decode forward per generated token with the KV cache; reference forward 2·N·T; LoRA forward + backward 4·N·T).",
        "",
        "### Goals",
        "",
        *goal_rows(results),
        "",
    ]
    for result in results.values():
        lines += stage_section(result)
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replaces the text between the markers, or puts the section under the file's title; keeps everything else."""
    text = path.read_text() if path.is_file() else "# alignkit benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        lines = text.splitlines(keepends=True)
        at = next((i + 1 for i, l in enumerate(lines) if l.startswith("# ")), 0)
        text = "".join(lines[:at]) + "\n" + section + "".join(lines[at:])
    path.write_text(text)


def earlier_results(path: Path, model: str, skip: list[str]) -> dict:
    """The previous run's results for the stages this run skips (same model), so that a partial run keeps them."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    if previous.get("model") != model:
        return {}
    return {stage: r | {"carried": True} for stage, r in previous["results"].items() if stage not in skip and "peak_gflops" in r}


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="sft,reward,dpo,grpo", help="comma-separated, from sft, reward, dpo, grpo")
    parser.add_argument("--model", help="default: smollm2-135m-instruct (tiny-llama with --quick)")
    parser.add_argument("--runs", type=int, help="runs per side, medians over them (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny-llama, small batches, 2 measured steps")
    parser.add_argument("--out", help="markdown file to update (default BENCHMARKS.md; with --quick a scratch file in /tmp)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every side runs (default cpu)")
    parser.add_argument("--steps", type=int, help="measured steps per run for every stage (default: each stage's own)")
    parser.add_argument("--results-dir", help="where the stage JSON files go (default runs/bench, runs/bench-quick with --quick)")
    args = parser.parse_args()
    args.shown = ".venv/bin/python " + shlex.join(["benchmarks/run_all.py", *sys.argv[1:]])
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if set(stages) - set(STAGE_ARGS):
        parser.error(f"unknown stages {sorted(set(stages) - set(STAGE_ARGS))}; choose from {', '.join(STAGE_ARGS)}")
    args.model = args.model or ("tiny-llama" if args.quick else "smollm2-135m-instruct")
    args.runs = args.runs or (1 if args.quick else 3)
    out = Path(args.out or ("/tmp/alignkit_bench_quick.md" if args.quick else ROOT / "BENCHMARKS.md"))
    results_dir = Path(args.results_dir or ROOT / "runs" / ("bench-quick" if args.quick else "bench"))
    results_dir.mkdir(parents=True, exist_ok=True)

    earlier = earlier_results(results_dir / "run_all.json", args.model, skip=stages)
    started = time.time()
    machine = describe_machine(args.device)
    print(f"{machine['cpu']}, {machine['usable_cpus']} CPUs, torch {machine['torch']} ({machine['threads']} threads)", flush=True)
    sizes, warmup, reps = ((512, 1024), 1, 3) if args.quick else ((2048, 4096), 2, 5)
    if args.device == "cuda":
        sizes = (4096, 8192)
    first = measure_peak(sizes, warmup, reps, args.device)
    fresh = {stage: run_stage(stage, args, results_dir) | {"date": machine["date"], "runs": args.runs} for stage in stages}
    machine["load_end"] = os.getloadavg()[0]
    peak = best_peak(first, measure_peak(sizes, warmup, reps, args.device))
    for result in fresh.values():
        result["peak_gflops"] = peak["bf16"]["gflops"]
    minutes = (time.time() - started) / 60

    results = {stage: fresh.get(stage) or earlier.get(stage) for stage in STAGE_ARGS if stage in fresh or stage in earlier}
    (results_dir / "run_all.json").write_text(json.dumps({"model": args.model, "machine": machine, "peak": peak, "results": results},
                                                         indent=1) + "\n")
    section = render(machine, peak, results, args, minutes)
    write_section(out, section)
    print("\n" + section + f"\nwrote {out} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
