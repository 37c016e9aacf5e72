"""Resume tells the truth: a changed run is refused unless the change is named, every config used is kept, the
checkpoint must come from the same stage, half-written saves are cleaned, and summary and TensorBoard are whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.cli import main


def _data(tmp_path: Path) -> str:
    rows = [{"prompt": f"Count to {i % 7 + 1}.", "completion": " ".join(str(k) for k in range(1, i % 7 + 2))} for i in range(48)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sft_args(data: str, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", "tiny-llama", "--data", data, "--output_dir", str(out), "--batch_size", "4", "--max_steps", "8",
            "--save_every", "2", "--learning_rate", "1e-3", "--mixed_precision", "no", "--eval_fraction", "0", *extra]


def _killed_after_a_checkpoint(data: str, out: Path) -> None:
    """`alignkit sft` SIGKILLed once checkpoint-4 is complete."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli", *_sft_args(data, out, "--report_to", "jsonl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (out / "checkpoint-4" / "trainer_state.json").is_file():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model").exists(), "the run finished before the kill"


def _code(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_changed_learning_rate_is_refused_after_kill_9_and_accepted_when_overridden(tmp_path, capsys, monkeypatch):
    data, out = _data(tmp_path), tmp_path / "run"
    _killed_after_a_checkpoint(data, out)
    recorded = (out / "config.yaml").read_bytes()
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: pytest.fail("a model was loaded for a run that must be refused"))
    code, err = _code(capsys, *_sft_args(data, out, "--resume", "auto", "--learning_rate", "5e-4"))
    assert code != 0 and "Traceback" not in err and "learning_rate: 0.001 -> 0.0005" in err and "--resume_override learning_rate" in err
    assert (out / "config.yaml").read_bytes() == recorded  # what the first steps ran with is not rewritten
    code, err = _code(capsys, *_sft_args(data, out, "--resume", "auto", "--lora_r", "8"))  # a LoRA shape change, refused too
    assert code != 0 and "lora_r: 0 -> 8" in err
    monkeypatch.undo()

    assert main(_sft_args(data, out, "--resume", "auto", "--learning_rate", "5e-4", "--resume_override", "learning_rate")) == 0
    assert (out / "model" / "config.json").is_file()
    assert (out / "config.yaml").read_bytes() == recorded
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert [h["resumed_from"] is not None for h in history] == [False, True]
    assert history[0]["config"]["learning_rate"] == 1e-3 and history[1]["config"]["learning_rate"] == 5e-4
    assert history[1]["changed"] == {"learning_rate": [1e-3, 5e-4]} and history[1]["resumed_from"].endswith("checkpoint-4")


def test_a_checkpoint_of_another_stage_is_refused_in_one_sentence(tmp_path, capsys):
    data, out = _data(tmp_path), tmp_path / "sft"
    main(_sft_args(data, out, "--max_steps", "3", "--report_to", "jsonl"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "Yes, gladly.", "rejected": "No."}) + "\n" for i in range(8)))
    code, err = _code(capsys, "dpo", "--model", "tiny-llama", "--data", str(pairs), "--output_dir", str(tmp_path / "dpo"),
                      "--resume", str(out / "checkpoint-2"))
    assert code != 0 and "Traceback" not in err
    assert "written by `alignkit sft`, not `alignkit dpo`" in err


def test_resume_cleans_half_written_saves_and_keeps_the_first_loss_and_tensorboard_whole(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _data(tmp_path)
    full, run = tmp_path / "full", tmp_path / "run"
    main(_sft_args(data, full, "--report_to", "jsonl,tensorboard"))
    main(_sft_args(data, run, "--report_to", "jsonl,tensorboard"))
    for name in ("model", "summary.json"):  # as if killed after step 8 was logged, before the final save
        (run / name).unlink() if (run / name).is_file() else shutil.rmtree(run / name)
    shutil.rmtree(run / "checkpoint-6")  # the newest complete checkpoint is now checkpoint-4
    (run / ".checkpoint-6.tmp-abc123").mkdir()  # a save killed halfway
    (run / ".checkpoint-6.tmp-abc123" / "optimizer.pt").write_bytes(b"half")
    main(_sft_args(data, run, "--report_to", "jsonl,tensorboard", "--resume", "auto"))

    assert not list(run.glob(".*.tmp-*"))
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run, full))
    assert summary["first_loss"] == reference["first_loss"] and summary["final_loss"] == reference["final_loss"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert steps == sorted(set(steps)) == list(range(1, 9))  # steps 5-8 were logged twice; TensorBoard keeps them once


def test_saved_models_and_checkpoints_follow_the_umask(tmp_path):
    data, out = _data(tmp_path), tmp_path / "run"
    previous = os.umask(0o027)
    try:
        main(_sft_args(data, out, "--max_steps", "3", "--report_to", "jsonl"))
    finally:
        os.umask(previous)
    for path in (out / "model", out / "checkpoint-2"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
    weights = next((out / "model").glob("*.safetensors"))
    assert stat.S_IMODE(weights.stat().st_mode) == 0o640
