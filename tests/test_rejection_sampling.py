"""Rejection-sampling fine-tuning (`alignkit rs`): sample N, keep each prompt's best by the labeller, SFT on them;
the kept answers are the labeller's best, SFT raises their likelihood, a rerun reuses the samples, and a labeller that
keeps nothing is a sentence. Also `mixed_precision: auto`, which picks bf16 only where the hardware has it."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError


def word_count(prompts, responses, **columns):
    return [float(len(r.split())) for r in responses]


def test_rs_trains_on_the_best_sample_of_each_prompt(tmp_path, tiny_path, write_jsonl, capsys):
    prompts = write_jsonl([{"prompt": f"Tell me about topic {i}."} for i in range(6)], "prompts.jsonl")
    out = tmp_path / "rs"
    argv = ["rs", "--model", tiny_path, "--prompts", prompts, "--output_dir", str(out), "--samples", "4", "--max_new_tokens", "8",
            "--keep_truncated", "true", "--reward_function", f"{__file__}:word_count", "--min_score", "1", "--max_steps", "4",
            "--batch_size", "3", "--learning_rate", "1e-2", "--mixed_precision", "no", "--eval_fraction", "0", "--report_to", "jsonl"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    best = [json.loads(line) for line in (out / "best.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"]: r for r in records}
    for row in best:  # the kept answer is the prompt's top-scoring valid sample, and scores at least min_score
        record = by_prompt[row["prompt"]]
        assert row["score"] == max(s for s, ok in zip(record["scores"], record["valid"]) if ok) >= 1
        assert row["completion"] in record["responses"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_of_n"]["kept"] == len(best) and summary["steps"] == 4
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0]  # SFT on the kept answers makes them likelier
    stamp = (out / "samples.jsonl").stat().st_mtime_ns
    assert main(argv + ["--max_steps", "5", "--resume", "auto", "--resume_override", "[max_steps]"]) == 0
    assert (out / "samples.jsonl").stat().st_mtime_ns == stamp  # the rerun kept the samples


def test_rs_that_keeps_nothing_says_what_to_do(tmp_path, tiny_path, write_jsonl, capsys):
    prompts = write_jsonl([{"prompt": "Hi."}, {"prompt": "Hello."}], "prompts.jsonl")
    argv = ["rs", "--model", tiny_path, "--prompts", prompts, "--output_dir", str(tmp_path / "rs"), "--samples", "2",
            "--max_new_tokens", "4", "--keep_truncated", "true", "--reward_function", f"{__file__}:word_count", "--min_score", "1000",
            "--mixed_precision", "no"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no prompt's best answer scored at least min_score (1000.0)" in err and "Lower min_score" in err
    assert (tmp_path / "rs" / "samples.jsonl").is_file()  # the samples are kept for a look


def test_rs_needs_prompts_and_one_labeller(tiny_path):
    from alignkit.config import config_from_dict
    from alignkit.config_sampling import RejectionSamplingConfig

    with pytest.raises(AlignkitError, match="rs needs prompts"):
        config_from_dict(RejectionSamplingConfig, {"model": tiny_path, "reward_function": "x:y"})
    with pytest.raises(AlignkitError, match="reward_function and reward_model are both set; keep one labeller"):
        config_from_dict(RejectionSamplingConfig, {"model": tiny_path, "prompts": "p.jsonl", "reward_function": "x:y", "reward_model": "m"})


def test_mixed_precision_auto_uses_bf16_only_where_it_is_native(monkeypatch, caplog):
    from alignkit.models import precision

    monkeypatch.setattr(precision, "default_device_type", lambda: "cpu")
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(precision, "bf16_is_native", lambda device_type="cpu", native=native: native)
        assert precision.resolve_mixed_precision("auto") == expected
        assert precision.resolve_mixed_precision("no") == "no"
        assert precision.autocast_bf16(True, "cpu") is native and precision.autocast_bf16(False, "cpu") is False
    precision._warn_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="alignkit"):
        assert precision.resolve_mixed_precision("bf16") == "bf16"  # an explicit choice is kept, with the reason to change it
    assert "emulated" in caplog.text and "about 100x slower" in caplog.text
