"""Checkpoints and resume: a killed run resumes to the same trajectory; NaN steps are skipped, then stop the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.train import sft


def _rows(n):
    return [{"prompt": f"Count to {i % 7 + 1}.", "completion": " ".join(str(k) for k in range(1, i % 7 + 2))} for i in range(n)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _args(tiny_path, data, out, steps):
    return ["--model", tiny_path, "--data", str(data), "--output_dir", str(out), "--max_steps", str(steps),
            "--batch_size", "4", "--learning_rate", "3e-3", "--eval_fraction", "0", "--save_every", "10",
            "--save_total_limit", "2", "--report_to", "jsonl", "--seed", "3"]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_path, write_jsonl):
    data = write_jsonl(_rows(64))
    steps = 60
    cli = [sys.executable, "-m", "alignkit.cli", "sft"]
    subprocess.run(cli + _args(tiny_path, data, tmp_path / "full", steps), check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(cli + _args(tiny_path, data, run, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill -9 once a checkpoint exists and training went past it
        if (run / "checkpoint-10" / "trainer_state.json").exists() and (run / "metrics.jsonl").exists() and len(_metrics(run)) >= 13:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model").exists()

    subprocess.run(cli + _args(tiny_path, data, run, steps) + ["--resume", "auto"], check=True, capture_output=True)
    full, resumed = _metrics(tmp_path / "full"), _metrics(run)
    keys = ("step", "loss", "lr", "grad_norm")
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in full]  # bitwise on CPU
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full/model/model.safetensors"), load_file(run / "model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-40", "checkpoint-50"]  # save_total_limit=2


def test_interrupted_checkpoint_save_leaves_previous_loadable(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """A crash inside the save of checkpoint-20 leaves checkpoint-10 as the newest complete one; resume works."""
    from alignkit.train import checkpoint as ckpt

    data = write_jsonl(_rows(32))
    config = {"model": tiny_path, "data": data, "output_dir": str(tmp_path / "run"), "max_steps": 30, "batch_size": 4,
              "eval_fraction": 0, "save_every": 10, "report_to": ["jsonl"], "learning_rate": 1e-3}
    original = torch.save

    def crash_on_second_checkpoint(obj, path, *a, **k):
        if "checkpoint-20" in str(path) and str(path).endswith("optimizer.pt"):
            raise KeyboardInterrupt("simulated kill during save")
        return original(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        sft(config)
    monkeypatch.setattr(ckpt.torch, "save", original)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint-10"]
    assert not list((tmp_path / "run").glob("checkpoint-20*"))  # no half-written folder left behind
    summary = sft({**config, "resume": "auto"})
    assert summary["steps"] == 30 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert [m["step"] for m in _metrics(tmp_path / "run")] == list(range(1, 31))


def test_nan_steps_are_skipped_then_stop_the_run(tmp_path, tiny_path, write_jsonl, monkeypatch):
    import importlib

    recipe = importlib.import_module("alignkit.train.sft")  # the module; `alignkit.train.sft` is the function

    real = recipe.batch_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] in (3, 4) or calls["n"] >= 8 else loss), metrics

    monkeypatch.setattr(recipe, "batch_loss", poisoned)
    with pytest.raises(AlignkitError, match=r"stopped at step 10: .*NaN/inf for 3 steps in a row.*learning rate"):
        sft({"model": tiny_path, "data": write_jsonl(_rows(32)), "output_dir": str(tmp_path / "run"), "max_steps": 20,
             "batch_size": 4, "eval_fraction": 0, "report_to": ["jsonl"], "max_nan_steps": 3})
    skipped = [m["nan_skipped"] for m in _metrics(tmp_path / "run")]
    assert skipped[:9] == [0, 0, 1, 2, 2, 2, 2, 3, 4]
