"""On-policy pairs (`alignkit data sample-pairs`): best against worst of each prompt's samples, and the CLI end to end."""

from __future__ import annotations

import json

import torch

from alignkit.cli import main
from alignkit.feedback.on_policy import pair_rows


def word_count(prompts, responses, **columns):
    """A test score: more words is better (the tiny model's samples differ in it)."""
    return [float(len(r.split())) for r in responses]


def test_pairs_are_best_against_worst_and_ties_are_skipped():
    rows = [{"prompt": "a", "category": "x"}, {"prompt": "b"}, {"prompt": "c"}]
    responses = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    scores = torch.tensor([0.2, 0.9, -0.5, 1.0, 1.0, 1.0, 3.0, 0.0, 2.0])
    valid = torch.tensor([True, True, True, True, True, True, False, True, True])  # c0 invalid (e.g. truncated)
    pairs, report = pair_rows(rows, responses, scores, valid, samples=3, min_gap=0.0)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "a1", "a2"), ("c", "c2", "c1")]
    assert pairs[0]["strength"] == 1.4 and pairs[0]["category"] == "x"  # other prompt columns are kept
    assert report.ties == 1 and report.pairs == 2
    assert abs(report.chosen_score - (0.9 + 2.0) / 2) < 1e-6 and abs(report.rejected_score - (-0.5 + 0.0) / 2) < 1e-6
    pairs, report = pair_rows(rows, responses, scores, valid, samples=3, min_gap=1.5)  # only c's gap of 2.0 is enough
    assert [p["prompt"] for p in pairs] == ["c"] and report.ties == 2


def test_sample_pairs_cli_writes_preference_rows(tmp_path, write_jsonl, tiny_path, capsys):
    prompts = write_jsonl([{"prompt": f"Tell me about topic {i}."} for i in range(6)], "prompts.jsonl")
    out = tmp_path / "pairs.jsonl"
    argv = ["data", "sample-pairs", "--model", tiny_path, "--prompts", prompts, "--out", str(out), "--samples", "3",
            "--max-new-tokens", "6", "--reward-function", f"{__name__}:word_count", "--keep-truncated", "--no-bf16"]
    assert main(argv) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs and all(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)
    assert f"{len(pairs)} pairs from 6 prompts" in capsys.readouterr().out
    assert main(["data", "sample-pairs", "--model", tiny_path, "--prompts", prompts, "--out", str(out)]) == 2  # no score given
    assert "needs a score" in capsys.readouterr().err
