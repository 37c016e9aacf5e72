"""On-policy pairs (`alignkit data sample-pairs`): best against worst of each prompt's samples, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
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
    # greedy answers first: a0 is 0.7 under a1 (rejected at min_gap 0.5, not the worse a2); c0 is invalid, so c's worst stays
    pairs, _ = pair_rows(rows, responses, scores, valid, samples=3, min_gap=0.5, greedy=True)
    assert [(p["prompt"], p["chosen"], p["rejected"], p["strength"]) for p in pairs] == [("a", "a1", "a0", 0.7), ("c", "c2", "c1", 2.0)]
    pairs, _ = pair_rows(rows, responses, scores, valid, samples=3, min_gap=0.8, greedy=True)  # a0 within 0.8 of a1: worst again
    assert [(p["prompt"], p["rejected"]) for p in pairs] == [("a", "a2"), ("c", "c1")]


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


def test_best_of_n_keeps_each_prompts_best_valid_answer_above_min_score():
    from alignkit.feedback.on_policy import best_of_n

    records = [
        {"prompt": "a", "category": "x", "responses": ["a0", "a1", "a2"], "scores": [0.2, 0.9, 0.9], "valid": [True, True, True]},
        {"prompt": "b", "responses": ["b0", "b1", "b2"], "scores": [3.0, -1.0, 0.1], "valid": [False, True, True]},  # b0 truncated
        {"prompt": "c", "responses": ["c0", "c1", "c2"], "scores": [1.0, 2.0, 3.0], "valid": [False, False, False]},
    ]
    rows, report = best_of_n(records, min_score=0.0)
    assert rows == [{"prompt": "a", "completion": "a1", "score": 0.9, "category": "x"},  # the first of equal scores
                    {"prompt": "b", "completion": "b2", "score": 0.1}]
    assert (report.kept, report.no_valid, report.below_threshold) == (2, 1, 0)
    assert report.sample_score == pytest.approx((0.2 + 0.9 + 0.9 - 1.0 + 0.1) / 5)
    rows, report = best_of_n(records, min_score=0.5)
    assert [r["prompt"] for r in rows] == ["a"] and report.below_threshold == 1


def test_pairs_from_records_equal_pair_rows_and_labelling_later_gives_the_same_scores(tiny_path):
    from alignkit.feedback.on_policy import pairs_from_records, sample_scored
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rl.rewards import build_rewards
    from alignkit.rl.samples import label_records

    rewards = build_rewards([{"type": "function", "function": f"{__file__}:word_count"}])
    tokenizer, model = load_tokenizer(tiny_path), load_causal_lm(tiny_path)
    rows = [{"prompt": f"Tell me about topic {i}.", "topic": i} for i in range(4)]
    torch.manual_seed(0)
    scored = sample_scored(model, tokenizer, rows, rewards, samples=3, max_new_tokens=6, keep_truncated=True, bf16=False, progress=False)
    torch.manual_seed(0)
    later = label_records(sample_scored(model, tokenizer, rows, None, samples=3, max_new_tokens=6, keep_truncated=True, bf16=False,
                                        progress=False), rewards)
    assert later == scored and [r["topic"] for r in scored] == [0, 1, 2, 3]
    assert all(s == float(len(t.split())) for r in scored for s, t in zip(r["scores"], r["responses"]))
    pairs, report = pairs_from_records(scored, 0.0)
    assert report.prompts == 4 and all(p["chosen_score"] > p["rejected_score"] for p in pairs)


def test_greedy_answer_comes_first_and_the_samples_are_unchanged(tiny_path):
    """`greedy`: each prompt's greedy answer (as `model.generate` decodes it) first, then the same N samples as without it."""
    from alignkit.feedback.on_policy import sample_scored
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rl.rewards import build_rewards
    from alignkit.rl.rollout import encode_prompts

    rewards = build_rewards([{"type": "function", "function": f"{__file__}:word_count"}])
    tokenizer, model = load_tokenizer(tiny_path), load_causal_lm(tiny_path)
    rows = [{"prompt": f"Tell me about topic {i}."} for i in range(3)]
    run = lambda greedy: sample_scored(model, tokenizer, rows, rewards, samples=2, max_new_tokens=6, keep_truncated=True, bf16=False,
                                       progress=False, batch_size=4, greedy=greedy)
    torch.manual_seed(0)
    plain = run(False)
    torch.manual_seed(0)
    with_greedy = run(True)
    prompt_ids, _, _ = encode_prompts(tokenizer, [r["prompt"] for r in rows], 512, "drop")
    for ids, a, b in zip(prompt_ids, plain, with_greedy):
        assert b["responses"][1:] == a["responses"] and b["scores"][1:] == a["scores"] and len(b["valid"]) == 3
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert b["responses"][0] == tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert b["scores"][0] == float(len(b["responses"][0].split()))
