"""The crash suite: SIGKILL runs of SFT, DPO and GRPO (full and LoRA) at random steps, in the middle of checkpoint
saves and during the final save; each is resumed with `--resume auto` (killed again, resumed again) and must end
with the uninterrupted run's metrics (timings aside) and weights, bit for bit.

    .venv/bin/python tests/crash_suite.py            # 26 kills; prints one line per kill and the totals
    .venv/bin/python -m pytest -m slow tests/test_crash_suite.py

A kill "during a save" is aimed at the moment a temporary `.checkpoint-N.tmp-*` (or `.model.tmp-*`) folder
exists; when the save finishes before the signal lands, the kill is counted as what it hit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = ("time/", "throughput/", "_seconds", "step_seconds")


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(root: Path) -> dict[str, str]:
    topics = [f"topic {i}" for i in range(24)]
    return {
        "sft": _write(root / "sft.jsonl", [{"prompt": f"Tell me about {t}.", "completion": f"{t} is worth a look."} for t in topics]),
        "pairs": _write(root / "pairs.jsonl", [{"prompt": f"Tell me about {t}.", "chosen": f"{t} is worth a look.", "rejected": "No."}
                                               for t in topics]),
        "prompts": _write(root / "prompts.jsonl", [{"prompt": f"Write about {t}."} for t in topics]),
    }


def _runs(data: dict[str, str]) -> dict[str, list[str]]:
    common = ["--model", "tiny-llama", "--mixed_precision", "no", "--report_to", "jsonl", "--save_every", "3"]
    lora = ["--lora_r", "4", "--lora_alpha", "8", "--merge_lora", "false"]
    sft = ["sft", "--data", data["sft"], "--batch_size", "4", "--max_steps", "18", "--learning_rate", "1e-3", "--eval_fraction", "0"]
    dpo = ["dpo", "--data", data["pairs"], "--batch_size", "4", "--max_steps", "18", "--learning_rate", "1e-3", "--eval_fraction", "0",
           "--reference", "precompute"]
    grpo = ["grpo", "--data", data["prompts"], "--reward_function", f"{Path(__file__).resolve()}:word_count", "--prompts_per_step", "2",
            "--group_size", "4", "--batch_size", "8", "--max_new_tokens", "6", "--max_steps", "12", "--learning_rate", "1e-3"]
    return {"sft-full": sft + common, "sft-lora": sft + common + lora, "dpo-full": dpo + common, "dpo-lora": dpo + common + lora,
            "grpo-full": grpo + common, "grpo-lora": grpo + common + lora}


def word_count(prompts, responses, **columns):
    return [float(len(r.split())) for r in responses]


def _metrics(run: Path) -> list[str]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return [json.dumps({k: v for k, v in json.loads(line).items() if not any(t in k for t in TIMING)}, sort_keys=True)
            for line in lines]


def _logged(run: Path) -> int:
    lines = (run / "metrics.jsonl").read_text().split("\n")[:-1] if (run / "metrics.jsonl").is_file() else []
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:
        return 0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "adapter" if (run / "adapter").is_dir() else run / "model"
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _saving(run: Path, final: bool) -> bool:
    pattern = ".model.tmp-*" if final else ".checkpoint-*.tmp-*"
    return any(run.glob(pattern)) or (final and any(run.glob(".adapter.tmp-*")))


def _kill(cmd: list[str], run: Path, env: dict, aim: str, step: int) -> str:
    """Starts `cmd`, SIGKILLs it when `aim` is reached; returns what the kill hit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if aim == "step" and _logged(run) >= step:
            break
        if aim in ("checkpoint save", "final save") and _saving(run, aim == "final save"):
            break
        time.sleep(0.0005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return "missed (the run had finished)"
    saving_now = _saving(run, final=False) or _saving(run, final=True)
    return f"{aim} at step {_logged(run)}" + ("" if aim == "step" or saving_now else " (the save had completed)")


def run_suite(root: Path, kills: int = 26, seed: int = 0) -> list[dict]:
    data, env = _data(root), {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "alignkit.cli"]
    runs, rng, results = _runs(data), random.Random(seed), []
    plan = [list(runs)[i % len(runs)] for i in range(kills)]
    for name in runs:
        reference = root / f"{name}-reference"
        subprocess.run(cli + runs[name] + ["--output_dir", str(reference)], check=True, capture_output=True, env=env)
        mine = [i for i, n in enumerate(plan) if n == name]
        run, steps = root / f"{name}-killed", int(runs[name][runs[name].index("--max_steps") + 1])
        for k, _ in enumerate(mine):
            aim = ("step", "checkpoint save", "final save", "step")[k % 4]
            cmd = cli + runs[name] + ["--output_dir", str(run)] + (["--resume", "auto"] if k else [])
            low = min(max(4, _logged(run) + 1), steps - 1)
            hit = _kill(cmd, run, env, aim, rng.randint(low, steps - 1))
            results.append({"run": name, "kill": k + 1, "hit": hit})
        subprocess.run(cli + runs[name] + ["--output_dir", str(run), "--resume", "auto"], check=True, capture_output=True, env=env)
        same_metrics = _metrics(run) == _metrics(reference)
        a, b = _weights(run), _weights(reference)
        same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for result in results:
            if result["run"] == name:
                result.update(same_metrics=same_metrics, same_weights=same_weights)
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = run_suite(Path(tmp))
    for r in results:
        print(f"{r['run']:10s} kill {r['kill']}: {r['hit']:45s} metrics {'same' if r['same_metrics'] else 'DIFFER'}, "
              f"weights {'same' if r['same_weights'] else 'DIFFER'}")
    landed = [r for r in results if not r["hit"].startswith("missed")]
    mid_save = [r for r in landed if "save" in r["hit"] and "completed" not in r["hit"]]
    exact = sum(r["same_metrics"] and r["same_weights"] for r in landed)
    print(f"{len(landed)} kills landed ({len(mid_save)} in the middle of a save), {exact} resumed to bit-identical metrics and weights")


if __name__ == "__main__":
    main()
