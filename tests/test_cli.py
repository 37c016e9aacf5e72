"""The command line: errors are one sentence on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignkit.cli import main


def test_unknown_key_suggests_closest(capsys):
    assert main(["sft", "--learnin_rate", "1e-4", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'learning_rate'?" in err and "Traceback" not in err


def test_missing_model_path(capsys, write_jsonl):
    data = write_jsonl([{"prompt": "a", "completion": "b"}])
    assert main(["sft", "--model", "./no/such/dir", "--data", data]) == 2
    assert "model './no/such/dir' was not found" in capsys.readouterr().err


def test_missing_data_file(capsys, tiny_path):
    assert main(["sft", "--model", tiny_path, "--data", "missing.jsonl"]) == 2
    assert "data file missing.jsonl does not exist" in capsys.readouterr().err


def test_data_make_writes_splits(tmp_path, capsys):
    assert main(["data", "make", "hhh-mini", "--out", str(tmp_path), "--n-train", "60", "--n-test", "12"]) == 0
    for kind in ("sft", "preference", "kto", "prompts"):
        for split in ("train", "test"):
            assert (tmp_path / f"{kind}_{split}.jsonl").stat().st_size > 0


def test_console_script_help_lists_config_keys():
    out = subprocess.run([sys.executable, "-m", "alignkit.cli", "sft", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--learning_rate" in out and "--lora_r" in out and "Peak AdamW learning rate" in out


@pytest.mark.parametrize("argv", [["data", "make", "no-such-task", "--out", "x"]])
def test_unknown_task(argv, capsys):
    assert main(argv) == 2
    assert "hhh-mini" in capsys.readouterr().err
