"""Every stage benchmark side by side (alignkit, TRL 1.16, a bare PyTorch loop), written into BENCHMARKS.md.

    nice -n 10 .venv/bin/python benchmarks/run_all.py                      # embedded SmolLM2-135M, 3 runs per side
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench.md     # smoke: tiny-llama, 2 steps, 1 run per side
    .venv/bin/python benchmarks/run_all.py --stages sft,dpo --runs 5
    python3 benchmarks/run_all.py --device cuda --steps 8 --out /tmp/bench.md   # every side on the GPU

1. Decides what every side trains in (`--precision auto`: bf16 autocast over float32
   weights where bf16 is native on the device, as `alignkit.models.precision` decides for
   alignkit's own `mixed_precision: auto`; plain float32 elsewhere) and passes it to
   every stage, so all sides train alike.
2. Measures this machine's matmul peak in this process, in float32 and in bf16: torch.matmul
   of square n x n matrices, a few warm-up then timed repetitions, the best 2n^3/seconds;
   again after the stages, keeping the higher (load only lowers it). Where bf16 is
   emulated (no AVX-512 BF16 or AMX) one product of n=4096 would take minutes, so bf16 is
   timed there on n <= 1024 only, and said so.
3. Runs each stage script (`sft.py`, `reward.py`, `dpo.py`, `grpo.py`) with all its
   sides and `--rounds RUNS`, so every side gets RUNS runs in its own process,
   alternating with the other sides; each script writes its JSON (`--json`).
4. Writes the section between `<!-- run_all:begin -->` and `<!-- run_all:end -->` of
   `--out` (BENCHMARKS.md): the machine, both peaks, a table per stage (median step,
   throughput, the like-for-like ratios to TRL and to the bare loop, MFU against each
   peak), the goals met or missed, and the exact command behind every number.
   Everything outside the markers is kept.

Like for like: a ratio compares sides that do the same work. DPO's sides differ in the
reference (`precompute`: log-probs computed once before training; `copy`: a frozen copy
run every step), GRPO's in the rollout backend (`hf` or `vllm`), so alignkit is compared
with the TRL (and bare) side of the same reference or backend; the one cross ratio,
alignkit precompute / TRL's default frozen copy (which earlier tables quoted), is printed
under the DPO table and labelled as such. MFU = 6·N·T / step seconds / peak, N the
model's matmul weights, T the tokens of one step (see each stage's FLOPs line).

A stage that fails is reported as failed and the others still run. The GRPO stage runs
vLLM sides only with `--device cuda` and an importable vllm; elsewhere it prints why
and the table says so.
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
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"

# Per-stage arguments on top of --model/--rounds/--precision/--json. Each script's own data, max length and optimizer;
# the batch (SFT 4x256, 8 reward pairs, 4 DPO pairs) and the step counts are cut so that 3 runs of every side fit on
# 2 CPU cores with SmolLM2-135M. GRPO runs at realistic settings (8 prompts x G=8, 128 new tokens, HF sampling; the
# vLLM sides where they can run): on such a CPU it is most of the run's time.
DPO_SIDES = ["--sides", "alignkit,trl-precompute,alignkit-copy,trl,bare"]
STAGE_ARGS = {
    "sft": ["--batch-size", "4", "--steps", "2", "--warmup", "1"],
    "reward": ["--steps", "2", "--warmup", "1"],
    "dpo": ["--batch-size", "4", "--steps", "2", "--warmup", "1", *DPO_SIDES],
    "grpo": ["--prompts", "8", "--group", "8", "--max-new-tokens", "128", "--steps", "2", "--warmup", "1", "--gen-rounds", "0",
             "--rollout", "hf,vllm", "--micro-batch", "16", "--fixed-length"],
}
QUICK_ARGS = {
    "sft": ["--batch-size", "4", "--seq-len", "128", "--steps", "2", "--warmup", "1"],
    "reward": ["--batch-size", "4", "--steps", "2", "--warmup", "1"],
    "dpo": ["--batch-size", "4", "--steps", "2", "--warmup", "1", *DPO_SIDES],
    "grpo": ["--prompts", "2", "--max-new-tokens", "8", "--steps", "2", "--warmup", "1", "--gen-rounds", "0", "--rollout", "hf,vllm",
             "--micro-batch", "4", "--fixed-length"],
}
# matmul sizes, warm-up and timed repetitions of the peak measurement; bf16 where it is emulated: small and short
PEAK_ARGS = {"full": ((2048, 4096), 2, 5), "quick": ((512, 1024), 1, 3), "cuda": ((4096, 8192), 2, 5)}
EMULATED_PEAK_ARGS = ((512, 1024), 1, 2)
TITLES = {"sft": "SFT", "reward": "Reward model", "dpo": "DPO", "grpo": "GRPO"}
GOALS = {"sft": 2.0, "reward": 2.0, "dpo": 2.0, "grpo": 2.0}  # alignkit throughput / TRL's, like for like (issue 20)
BARE_GOAL = 0.9  # alignkit throughput / the bare loop's, like for like, every stage
FAMILIES = {"trl": "TRL", "bare": "bare loop"}
CROSS = {"dpo": [("alignkit", "trl")]}  # not like for like, shown labelled: earlier tables' DPO headline (precompute vs a copy)
NO_BARE = {"precompute", "vllm"}  # the bare loops run DPO with a frozen copy and GRPO with transformers generate only
NOTES = {
    "sft": "alignkit's recipe as shipped; TRL `SFTTrainer` on the same pre-tokenized rows (`completion_mask`, "
           "completion-only loss, gradient checkpointing off); the bare loop calls `model(..., labels=...)` "
           "(LM head and cross-entropy over every position). No reference model: one ratio per pair of sides.",
    "reward": "alignkit shares the prompt between chosen and rejected and groups rows by length; TRL `RewardTrainer` "
              "and the bare loop run the 2B padded rows. No reference model: one ratio per pair of sides.",
    "dpo": "Two like-for-like pairs, by reference strategy: `alignkit` and `trl-precompute` compute the reference "
           "log-probs in one pass before training (paid in setup, not in the step; `DPOTrainer(precompute_ref_log_probs=True)`); "
           "`alignkit-copy`, `trl` (`DPOTrainer` as shipped) and `bare` run a frozen reference copy every step.",
    "grpo": "A step is everything: sampling, reward, reference forward, policy forward and backward, optimizer. "
            "Rollout `hf`: alignkit's own sampler (`generation_backend: hf`) against TRL's and the bare loop's transformers "
            "`generate`; `vllm`: both colocated on the GPU. With every response at the maximum length (`--fixed-length`) "
            "and the same micro-batches, each side does the same token work.",
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


def measure_peak(sizes: tuple[int, ...], warmup: int, reps: int, device: str, bf16_native: bool) -> dict:
    """{"fp32": ..., "bf16": ...}: each the best GFLOP/s over `sizes`, with the sizes and repetitions it used."""
    import torch

    out = {"device": device, "fp32_matmul_precision": torch.get_float32_matmul_precision()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        emulated = name == "bf16" and not bf16_native
        n_sizes, n_warmup, n_reps = EMULATED_PEAK_ARGS if emulated else (sizes, warmup, reps)
        by_size = {n: matmul_gflops(n, dtype, n_warmup, n_reps, device) for n in n_sizes}
        out[name] = {"gflops": max(by_size.values()), "by_size": by_size, "warmup": n_warmup, "reps": n_reps, "emulated": emulated}
        print(f"matmul peak {name}{' (emulated)' if emulated else ''}: "
              + ", ".join(f"n={n}: {g:.1f} GFLOP/s" for n, g in by_size.items()), flush=True)
    return out


def best_peak(start: dict, end: dict) -> dict:
    """The higher of the measurements before and after the stages, per dtype and size (load only ever lowers it)."""
    out = dict(start)
    for name in ("fp32", "bf16"):
        by_size = {n: max(g, end[name]["by_size"][n]) for n, g in start[name]["by_size"].items()}
        out[name] = start[name] | {"gflops": max(by_size.values()), "by_size": by_size,
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
    return [f"benchmarks/{stage}.py", "--model", args.model, "--rounds", str(args.runs), *extra, "--precision", args.precision,
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

def ratio(sides: dict, side: str, other: str | None) -> float | None:
    if other and side in sides and other in sides:
        return sides[side]["throughput"] / sides[other]["throughput"]
    return None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}"


def in_family(side: str, family: str) -> bool:
    return side == family or side.startswith(family + "-")


def counterpart(sides: dict, side: str, family: str) -> str | None:
    """The `family` ("trl" or "bare") side that does the same work as `side`: the same DPO reference strategy or GRPO
    rollout backend (`variant`; SFT and reward have none). None for a side of that family, or when none matches."""
    if in_family(side, family):
        return None
    variant = sides[side].get("variant")
    matches = [o for o in sides if in_family(o, family) and sides[o].get("variant") == variant]
    return min(matches, key=lambda o: (o != family, o), default=None)  # the plain "trl" before "trl-defaults"


def cross_ratios(result: dict) -> list[tuple[str, str, float]]:
    """(ours, theirs, ratio) for the stage's CROSS pairs that were both measured: not like for like."""
    sides = result["sides"]
    return [(ours, theirs, ratio(sides, ours, theirs)) for ours, theirs in CROSS.get(result["stage"], ()) if {ours, theirs} <= set(sides)]


def like_cell(sides: dict, side: str, family: str) -> str:
    other = counterpart(sides, side, family)
    if other is None:
        return "" if in_family(side, family) else "n/a"
    return fmt(ratio(sides, side, other)) + ("" if other == family else f" ({other})")


def mfu(r: dict, peaks: dict, dtype: str) -> str:
    if dtype == "bf16" and peaks["bf16"] < peaks["fp32"]:  # emulated bf16: no side trains in it, the ratio would exceed 100%
        return "n/a (bf16 emulated)"
    return f"{100 * r['flops_per_step'] / r['seconds_per_step'] / (peaks[dtype] * 1e9):.1f}%"


def side_table(result: dict) -> list[str]:
    """The stage's table: one row per side, both like-for-like ratios, MFU against the fp32 and the bf16 peak."""
    sides, variant, peaks = result["sides"], result.get("variant"), result["peaks_gflops"]
    lines = [f"| side |{f' {variant} |' if variant else ''} step s (median of {result['runs']} runs) | {result['unit']} | "
             "vs TRL, like for like | vs bare, like for like | MFU vs fp32 peak | MFU vs bf16 peak | peak RSS MiB |",
             "|---|" + ("---|" if variant else "") + "---|---|---|---|---|---|---|"]
    for side, r in sides.items():
        kind = f" {r.get('variant')} |" if variant else ""
        lines.append(f"| {side} |{kind} {r['seconds_per_step']:.2f} | {number(r['throughput'])} | {like_cell(sides, side, 'trl')} | "
                     f"{like_cell(sides, side, 'bare')} | {mfu(r, peaks, 'fp32')} | {mfu(r, peaks, 'bf16')} | {r['peak_mib']:.0f} |")
    return lines


def headline(result: dict) -> list[str]:
    """The like-for-like ratios in words (the headline), then any cross ratio, labelled as not like for like."""
    sides, variant = result["sides"], result.get("variant")
    pairs = [(side, counterpart(sides, side, "trl")) for side in sides if in_family(side, "alignkit")]
    said = [f"{side} / {other} **{fmt(ratio(sides, side, other))}**" + (f" ({sides[side].get('variant')} on both)" if variant else "")
            for side, other in pairs if other]
    lines = [f"**Like for like** (the headline): {'; '.join(said)}." if said else "**Like for like**: no TRL side measured."]
    lines += [f"Not like for like, for comparison with earlier tables only: {side} ({sides[side].get('variant')}) / {other} "
              f"({sides[other].get('variant')}) {fmt(value)}." for side, other, value in cross_ratios(result)]
    lines += [f"Not run: {side}: {why}." for side, why in result.get("skipped", {}).items()]
    return lines


def stage_section(result: dict) -> list[str]:
    stage = result["stage"]
    lines = [f"### {TITLES[stage]}", ""]
    if result.get("carried"):
        peaks = result["peaks_gflops"]
        lines += [f"*Kept from the run of {result['date']} (this run skipped the stage); MFU against that run's peaks, "
                  f"fp32 {peaks['fp32']:.0f} and bf16 {peaks['bf16']:.0f} GFLOP/s.*", ""]
    if "failed" in result:
        return lines + [f"Failed (exit {result['failed']}); rerun `{result['shown']}` to see why.", ""]
    sides = result["sides"]
    lines += [f"{result['settings']}. {NOTES[stage]}", "", *side_table(result), "", *headline(result), ""]
    spreads = "; ".join(f"{side} " + ", ".join(f"{s:.2f}" for s in r["run_seconds_per_step"]) for side, r in sides.items())
    setup = "; ".join(f"{side} {r['setup_seconds']:.0f}" for side, r in sides.items() if "setup_seconds" in r)
    lines += [f"Per-run step s: {spreads}." + (f" Setup s (load, tokenize, any reference pass; not in the step): {setup}." if setup else "")
              + f" N = {result['params'] / 1e6:.1f}M matmul weights, {result['tokens_per_step']:.0f} tokens/step; "
              f"model FLOPs: {result['flops']}.", "", f"    {result['shown']}", ""]
    return lines


def goal_rows(results: dict) -> list[str]:
    """Each alignkit side against its like-for-like TRL side (the stage's goal) and bare loop (BARE_GOAL)."""
    rows = ["| goal | measured | |", "|---|---|---|"]
    for stage, target in GOALS.items():
        if stage not in results:
            continue
        sides = results[stage].get("sides", {})
        for side in [s for s in sides if in_family(s, "alignkit")] or ["alignkit"]:
            for family, goal in (("trl", target), ("bare", BARE_GOAL)):
                variant = sides[side].get("variant") if side in sides else None
                if family == "bare" and variant in NO_BARE:
                    continue  # no bare loop does this side's work
                other = counterpart(sides, side, family) if side in sides else None
                value = ratio(sides, side, other)
                label = f"{side} >= {goal:g}x {other or FAMILIES[family]}" + (f" ({variant} on both)" if variant and other else "")
                status = "not measured" if value is None else ("met" if value >= goal else "**missed**")
                rows.append(f"| {TITLES[stage]}: {label} | {fmt(value)} | {status} |")
    return rows


def peak_text(peak: dict, precision: str) -> str:
    """How the peaks were measured, for the notes above the tables."""
    fp32, bf16 = peak["fp32"], peak["bf16"]
    sizes = lambda p: ", ".join(f"n={n}: {g:.1f}" for n, g in p["by_size"].items())  # noqa: E731
    return (f"- **Measured matmul peaks** (this run, on the {peak['device']}): `torch.matmul` of two square n x n matrices in "
            f"each dtype, GFLOP/s = 2n^3 / seconds, the best of the timed repetitions after the warm-up ones (fp32: "
            f"{fp32['reps']} after {fp32['warmup']}; bf16: {bf16['reps']} after {bf16['warmup']}), measured before and after "
            f"the stages and the higher kept: **fp32 {fp32['gflops']:.1f} GFLOP/s** ({sizes(fp32)}; before {fp32['start']:.1f}, "
            f"after {fp32['end']:.1f}; torch float32 matmul precision `{peak['fp32_matmul_precision']}`), **bf16 "
            f"{bf16['gflops']:.1f} GFLOP/s** ({sizes(bf16)}; before {bf16['start']:.1f}, after {bf16['end']:.1f})"
            + ("; bf16 is emulated here (no AVX-512 BF16 or AMX), so it was timed on small matrices only and MFU against it "
               "says little" if bf16["emulated"] else "")
            + f". Every side trained in **{harness.precision_text(precision)}** (`--precision`: bf16 only where native, as "
            "`alignkit.models.precision` decides). MFU = model FLOPs per step / step seconds / peak, against each peak.")


def render(machine: dict, peak: dict, results: dict, args, minutes: float) -> str:
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
        + (f" Every side on the GPU: **{machine['gpu']}** (CUDA {machine['cuda']}); the peaks and MFU below are the GPU's."
           if machine.get("gpu") else ""),
        f"- **Load average** (1 min) {machine['load_start']:.1f} at the start, {machine['load_end']:.1f} at the end: other jobs on "
        "the machine slow every side in absolute terms; sides alternate run by run so that they share it alike.",
        peak_text(peak, args.precision),
        "- **Method**: every side runs in its own process, the same model, data, batch, max length, precision and optimizer "
        "(AdamW, constant LR, clipping 1.0). Per run, step seconds = mean of the measured steps after the warm-up; per side, "
        "the median over runs. Throughput = work per step / that; the ratios divide throughputs, and each compares sides "
        "doing the same work (like for like: DPO by reference strategy, GRPO by rollout backend). Model FLOPs count every "
        "step as 6·N·T (N matmul weights, T real tokens of the step; attention not counted): the training FLOPs of a forward "
        "and backward. DPO's reference forward is not counted; GRPO's whole step (sampling, reference forward, LoRA forward "
        "and backward) is counted as 6·N·T too, by that convention, though its matmul work is nearer 8·N·T.",
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
    return {stage: r | {"carried": True} for stage, r in previous["results"].items() if stage not in skip and "peaks_gflops" in r}


# ---------------------------------------------------------------- main

def render_saved(path: Path, out: Path) -> None:
    """`--render`: the section again from a finished run's JSON, with today's tables and goals; nothing is measured."""
    if not path.is_file():
        raise SystemExit(f"--render needs {path}: run benchmarks/run_all.py first")
    saved = json.loads(path.read_text())
    if "shown" not in saved:
        raise SystemExit(f"{path} comes from a run_all.py without --render support: rerun the stages")
    args = argparse.Namespace(shown=saved["shown"], precision=saved["machine"]["precision"])
    write_section(out, render(saved["machine"], saved["peak"], saved["results"], args, saved["minutes"]))
    print(f"rewrote the section of {out} from {path}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="sft,reward,dpo,grpo", help="comma-separated, from sft, reward, dpo, grpo")
    parser.add_argument("--model", help="default: smollm2-135m-instruct (tiny-llama with --quick)")
    parser.add_argument("--runs", type=int, help="runs per side, medians over them (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny-llama, small batches, 2 measured steps")
    parser.add_argument("--out", help="markdown file to update (default BENCHMARKS.md; with --quick a scratch file in /tmp)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every side runs (default cpu)")
    parser.add_argument("--precision", default="auto", choices=harness.PRECISIONS,
                        help="what every side trains in; auto (default): bf16 autocast where bf16 is native on --device, else fp32")
    parser.add_argument("--steps", type=int, help="measured steps per run for every stage (default: each stage's own)")
    parser.add_argument("--results-dir", help="where the stage JSON files go (default runs/bench, runs/bench-quick with --quick)")
    parser.add_argument("--render", action="store_true", help="run nothing: rewrite the section from the last run's run_all.json "
                                                              "(after a change to the tables or goals)")
    args = parser.parse_args()
    args.shown = ".venv/bin/python " + shlex.join(["benchmarks/run_all.py", *sys.argv[1:]])
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if set(args.stages) - set(STAGE_ARGS):
        parser.error(f"unknown stages {sorted(set(args.stages) - set(STAGE_ARGS))}; choose from {', '.join(STAGE_ARGS)}")
    args.model = args.model or ("tiny-llama" if args.quick else "smollm2-135m-instruct")
    args.runs = args.runs or (1 if args.quick else 3)
    args.precision = harness.resolve_precision(args.precision, args.device)
    return args


def main() -> None:
    from alignkit.models.precision import bf16_is_native

    args = parse_args()
    out = Path(args.out or ("/tmp/alignkit_bench_quick.md" if args.quick else ROOT / "BENCHMARKS.md"))
    results_dir = Path(args.results_dir or ROOT / "runs" / ("bench-quick" if args.quick else "bench"))
    results_dir.mkdir(parents=True, exist_ok=True)

    if args.render:
        return render_saved(results_dir / "run_all.json", out)
    earlier = earlier_results(results_dir / "run_all.json", args.model, skip=args.stages)
    started = time.time()
    machine = describe_machine(args.device) | {"precision": args.precision}
    print(f"{machine['cpu']}, {machine['usable_cpus']} CPUs, torch {machine['torch']} ({machine['threads']} threads); "
          f"every side trains in {harness.precision_text(args.precision)}", flush=True)
    peak_args = (*PEAK_ARGS["cuda" if args.device == "cuda" else "quick" if args.quick else "full"], args.device,
                 bf16_is_native(args.device))
    first = measure_peak(*peak_args)
    fresh = {stage: run_stage(stage, args, results_dir) | {"date": machine["date"], "runs": args.runs} for stage in args.stages}
    machine["load_end"] = os.getloadavg()[0]
    peak = best_peak(first, measure_peak(*peak_args))
    for result in fresh.values():
        result["peaks_gflops"] = {"fp32": peak["fp32"]["gflops"], "bf16": peak["bf16"]["gflops"]}
    minutes = (time.time() - started) / 60

    results = {stage: fresh.get(stage) or earlier.get(stage) for stage in STAGE_ARGS if stage in fresh or stage in earlier}
    (results_dir / "run_all.json").write_text(json.dumps({"model": args.model, "machine": machine, "peak": peak, "results": results,
                                                          "shown": args.shown, "minutes": minutes}, indent=1) + "\n")
    section = render(machine, peak, results, args, minutes)
    write_section(out, section)
    print("\n" + section + f"\nwrote {out} in {minutes:.1f} min")

if __name__ == "__main__":
    main()
