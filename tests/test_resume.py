"""Checkpoints and resume: a killed run resumes to the same trajectory; NaN steps are skipped, then stop the run."""

from __future__ import annotations

import json
import os
import random
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


# ---------------------------------------------------------------- kill -9 at a random step, then --resume auto

def _trajectory(run: Path) -> list[str]:
    """metrics.jsonl without wall-clock values, as canonical JSON text (so NaN compares equal to NaN)."""
    timing = lambda key: key.startswith(("time/", "throughput/")) or key.endswith("_seconds")  # noqa: E731
    return [json.dumps({k: v for k, v in m.items() if not timing(k)}, sort_keys=True) for m in _metrics(run)]


def _last_logged_step(run: Path) -> int:
    """The step of metrics.jsonl's last complete line (0 before the first); a line being written is not read."""
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0


def _kill_at_a_random_step_then_resume(stage: str, args, tmp_path: Path, steps: int, save_every: int) -> tuple[Path, Path, str]:
    """`alignkit <stage> *args(output_dir)` run uninterrupted, and run again, SIGKILLed once it has logged a step drawn
    at random after the first checkpoint, then rerun with `--resume auto`. Returns both run folders and a note
    naming the kill step, for assertion messages.

    The draw leaves at least one checkpoint interval after the kill, so the run cannot finish before it lands.
    Every run gets one thread: the same arithmetic in all three (bitwise), and the uninterrupted run and the one to be
    killed run side by side, one core each.
    """
    cli, env = [sys.executable, "-m", "alignkit.cli", stage], {**os.environ, "OMP_NUM_THREADS": "1"}
    full, run = tmp_path / "full", tmp_path / "killed"
    uninterrupted = subprocess.Popen(cli + args(full), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    kill_at = random.Random(f"{stage}-kill").randint(save_every + 1, steps - save_every)
    proc = subprocess.Popen(cli + args(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and _last_logged_step(run) < kill_at:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, stderr = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, stderr.decode()[-3000:]
    note = f"{stage} killed -9 after step {_last_logged_step(run)} (drawn: {kill_at}) of {steps}, checkpoints every {save_every}"
    assert proc.returncode == -signal.SIGKILL, f"the run finished before it could be killed; {note}"
    assert not (run / "model").exists() and _last_logged_step(run) < steps, note

    subprocess.run(cli + args(run) + ["--resume", "auto"], check=True, capture_output=True, env=env)
    return full, run, note


def _assert_resumed_run_repeats_the_uninterrupted_one(full: Path, run: Path, note: str, weights: tuple[str, ...]) -> None:
    """Per-step metrics (timing aside) and the final weights, bit for bit (fp32 on CPU)."""
    from safetensors.torch import load_file

    assert _trajectory(run) == _trajectory(full), note
    for name in weights:
        a, b = load_file(full / name), load_file(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name}; {note}"


def test_sft_killed_at_a_random_step_resumes_to_the_uninterrupted_run(tmp_path, tiny_path, write_jsonl):
    data = write_jsonl(_rows(64))

    def args(out):
        return ["--model", tiny_path, "--data", data, "--output_dir", str(out), "--max_steps", "30", "--batch_size", "4",
                "--learning_rate", "3e-3", "--eval_fraction", "0", "--save_every", "5", "--save_total_limit", "2",
                "--report_to", "jsonl", "--seed", "3"]

    full, run, note = _kill_at_a_random_step_then_resume("sft", args, tmp_path, steps=30, save_every=5)
    _assert_resumed_run_repeats_the_uninterrupted_one(full, run, note, ("model/model.safetensors",))
    assert [m["step"] for m in _metrics(run)] == list(range(1, 31)), note
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-25"], note  # save_total_limit=2


def test_dpo_killed_at_a_random_step_resumes_to_the_uninterrupted_run(tmp_path, tiny_path, write_jsonl):
    topics = ["apples", "rivers", "mountains", "cats", "dogs", "trains", "books", "stars", "clouds", "bread", "music", "chess"]
    data = write_jsonl([{"prompt": f"Tell me about {t}.", "chosen": f"{t.capitalize()} are wonderful and worth learning about.",
                         "rejected": "No."} for t in topics])
    held_out = write_jsonl([{"prompt": f"Describe place {i}."} for i in range(2)], "held_out.jsonl")

    def args(out):  # 12 pairs in batches of 2: the 30 steps go through five reshuffled epochs; a monitor check every 2
        return ["--model", tiny_path, "--data", data, "--output_dir", str(out), "--max_steps", "30", "--batch_size", "2",
                "--learning_rate", "1e-3", "--lr_scheduler", "linear", "--eval_fraction", "0", "--reference", "precompute",
                "--ref_cache_dir", str(out / "reference_cache"), "--save_every", "5", "--save_total_limit", "2",
                "--monitor", f"{{every: 2, prompts: {held_out}, max_new_tokens: 6}}", "--report_to", "jsonl", "--seed", "3",
                "--mixed_precision", "no"]

    full, run, note = _kill_at_a_random_step_then_resume("dpo", args, tmp_path, steps=30, save_every=5)
    _assert_resumed_run_repeats_the_uninterrupted_one(full, run, note, ("model/model.safetensors",))
    assert [m["step"] for m in _metrics(run)] == list(range(1, 31)), note
    assert _metrics(run)[-1]["rewards/margin"] > 0.5, note  # it trained: chosen pulled above rejected
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-25"], note
    checks = [json.loads(line) for line in (run / "monitor.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == list(range(2, 31, 2)), note  # the killed run's checks after its checkpoint were dropped
    assert checks == [json.loads(line) for line in (full / "monitor.jsonl").read_text().splitlines()], note


def test_ppo_killed_at_a_random_step_resumes_to_the_uninterrupted_run(tmp_path, tiny_path, write_jsonl):
    """GAE with the value head, adaptive KL, running reward normalisation, shuffled minibatches, a linear schedule,
    held-out monitor checks and hacking alarms: all state a kill -9 loses unless the checkpoint carries it."""
    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(12)], "prompts.jsonl")
    held_out = write_jsonl([{"prompt": f"Describe place {i}."} for i in range(2)], "held_out.jsonl")

    def args(out):
        return ["--model", tiny_path, "--data", prompts, "--output_dir", str(out), "--max_steps", "10",
                "--reward_function", f"{Path(__file__).parent / 'test_rl_resume.py'}:capitalized_words",  # imported by path
                "--advantage", "gae", "--value_model", "head",
                "--prompts_per_step", "2", "--batch_size", "2", "--ppo_epochs", "2", "--num_minibatches", "2",
                "--max_new_tokens", "8", "--learning_rate", "3e-2", "--lr_scheduler", "linear", "--kl_control", "adaptive",
                "--kl_target", "0.01", "--kl_horizon", "50", "--monitor", f"{{every: 1, hacking_every: 1, prompts: {held_out}}}",
                "--save_every", "2", "--save_total_limit", "1", "--report_to", "jsonl", "--seed", "0", "--mixed_precision", "no"]

    full, run, note = _kill_at_a_random_step_then_resume("ppo", args, tmp_path, steps=10, save_every=2)
    _assert_resumed_run_repeats_the_uninterrupted_one(full, run, note, ("model/model.safetensors", "value_model.safetensors"))
    logged = _metrics(run)
    assert [m["step"] for m in logged] == list(range(1, 11)), note
    assert len({m["kl/coef"] for m in logged}) == 10 and "hacking/length_corr_trend" in logged[-1], note
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-8"], note  # save_total_limit=1
    checks = [json.loads(line) for line in (run / "monitor.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == list(range(1, 11)), note  # the killed run's checks after its checkpoint were dropped
    assert checks == [json.loads(line) for line in (full / "monitor.jsonl").read_text().splitlines()], note


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
