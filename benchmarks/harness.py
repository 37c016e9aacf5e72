"""Plumbing shared by the stage benchmarks: one side per process, its RESULT line, medians over runs, the JSON file.

Every stage script (`sft.py`, `reward.py`, `dpo.py`, `grpo.py`) runs each side in a
child process of its own (so peak RSS and allocator state are that side's alone),
repeats the sides `--rounds` times in alternation (so background load hits them
alike), and summarises each side the same way:

    per run:   seconds per step = mean of the measured steps (work-weighted: steps may differ in tokens)
    per side:  seconds_per_step = median over runs; throughput = units_per_step / seconds_per_step

`--json PATH` writes that summary with what `run_all.py` needs for MFU: the model's
matmul parameters and the model FLOPs of one step.

`--device cuda` (every stage script and `run_all.py`) runs every side on the GPU: the
bare loops move model and batches there, TRL gets `use_cpu=False`, alignkit's
accelerate picks CUDA by itself. With the default `--device cpu` the children see no
GPU (`CUDA_VISIBLE_DEVICES=""`), so on a GPU machine alignkit stays on the CPU too.

`--precision` (every stage script and `run_all.py`) is what every side trains in:
`auto` (the default) asks `alignkit.models.precision.bf16_is_native`, as alignkit's own
`mixed_precision: auto` does: float32 weights under bf16 autocast where bf16 is native
on the device (AVX-512 BF16 or AMX CPUs, Ampere or later GPUs), plain float32
elsewhere (emulated bf16 runs about 100x slower). The parent resolves it once and
passes `bf16` or `fp32` to every child, so all sides train alike.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULT = "RESULT "
PRECISIONS = ("auto", "bf16", "fp32")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every side runs (default cpu)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="what every side trains in: bf16 autocast over float32 weights, or fp32; auto (default): bf16 "
                             "where it is native on --device (alignkit.models.precision), else fp32")


def resolve_precision(value: str, device: str) -> str:
    """`bf16` or `fp32`: `auto` becomes bf16 where `device` computes bf16 natively, as alignkit's `mixed_precision: auto`."""
    if value != "auto":
        return value
    from alignkit.models.precision import bf16_is_native

    return "bf16" if bf16_is_native(device) else "fp32"


def precision_text(precision: str) -> str:
    return "bf16 autocast" if precision == "bf16" else "float32 (no autocast)"


def sync() -> None:
    """Waits for queued GPU work, so a step's wall time is its own; nothing to do on the CPU."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_timer():
    """A transformers `TrainerCallback` that records each optimizer step's wall time in `.times`."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start, self.first_begin = [], None, None

        def on_step_begin(self, *_, **__):
            sync()
            self._start = time.perf_counter()
            self.first_begin = self.first_begin or self._start  # setup ends here (load, tokenize, any reference pass)

        def on_step_end(self, *_, **__):
            sync()
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def emit(result: dict) -> None:
    """The child's one line of output that the parent reads."""
    result.setdefault("peak_mib", peak_mib())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        result.setdefault("peak_cuda_mib", torch.cuda.max_memory_allocated() / 2 ** 20)
    print(RESULT + json.dumps(result), flush=True)


def run_child(script: str, side: str, argv: list[str], device: str = "cpu", precision: str = "bf16") -> dict:
    """Runs `script --side side *argv --device device --precision precision` in a fresh interpreter; returns its RESULT dict."""
    print(f"running {Path(script).stem}/{side} ...", file=sys.stderr, flush=True)
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None  # cpu: no side may find a GPU
    done = subprocess.run([sys.executable, script, "--side", side, *argv, "--device", device, "--precision", precision],
                          capture_output=True, text=True, env=env)
    line = next((l for l in reversed(done.stdout.splitlines()) if l.startswith(RESULT)), None)
    if done.returncode != 0 or line is None:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{Path(script).stem} side {side} failed (exit {done.returncode})")
    return json.loads(line[len(RESULT):])


def logged_step_seconds(run_dir: Path, warmup: int) -> list[float]:
    """An alignkit run's per-step wall times from its metrics.jsonl, the first `warmup` steps left out."""
    metrics = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [m["step_seconds"] for m in metrics if "step_seconds" in m][warmup:]


def write_hhh_pairs(path: Path, count: int, n_train: int, shuffle_seed: int | None = None) -> None:
    """`count` hhh-mini training pairs (prompt, chosen, rejected only) as JSONL; shuffled when a seed is given."""
    import random

    from alignkit.data.tasks.hhh_mini import generate, preference_rows

    rows = preference_rows(generate(seed=0, n_train=n_train, n_test=1)["train"])
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows[:count]))


def matmul_parameters(path: str, sequence_classification: bool = False) -> int:
    """Weights of every nn.Linear (the LM head or score head included, the embedding lookup not): the N of 6·N·T.

    Built on the meta device from config.json, so nothing is loaded.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path, num_labels=1) if sequence_classification else AutoConfig.from_pretrained(path)
    cls = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False))


def summarize(runs: list[dict], units_per_step: float, flops_per_step: float) -> dict:
    """One side's numbers from its runs (each `{"step_seconds": [...], "peak_mib": x}`)."""
    per_run = [statistics.fmean(r["step_seconds"]) for r in runs]
    seconds = statistics.median(per_run)
    return {
        "runs": len(runs),
        "run_seconds_per_step": per_run,
        "seconds_per_step": seconds,
        "median_step_s_pooled": statistics.median(t for r in runs for t in r["step_seconds"]),
        "throughput": units_per_step / seconds,
        "flops_per_step": flops_per_step,
        "peak_mib": max(r.get("peak_mib", 0.0) for r in runs),
    } | ({"peak_cuda_mib": max(r.get("peak_cuda_mib", 0.0) for r in runs)} if any("peak_cuda_mib" in r for r in runs) else {})


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def command_line() -> str:
    """This script's invocation as typed, relative to the repository root where possible."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    return " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])
