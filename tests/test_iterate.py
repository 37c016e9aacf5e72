"""`alignkit iterate` on the tiny model: rounds that sample, label, train and evaluate; a round that resumes after
kill -9; a human round that reads the votes exported from the annotation app; and the bad inputs (a labeller that
fails, one that scores everything alike, a round without votes), each a sentence naming the round, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.config import config_from_dict
from alignkit.config_sampling import IterateConfig
from alignkit.errors import AlignkitError
from alignkit.iterate import run_iterate

ROOT = Path(__file__).resolve().parents[1]


def word_count(prompts, responses, **columns):
    """A labeller with spread on the tiny model's random answers: more words is better."""
    return [float(len(r.split())) for r in responses]


def constant(prompts, responses, **columns):
    return [0.5] * len(responses)


def broken(prompts, responses, **columns):
    raise RuntimeError("judge server is down")


def _values(tmp_path, tiny_path, write_jsonl, **overrides):
    prompts = write_jsonl([{"prompt": f"Tell me about topic {i}."} for i in range(6)], "prompts.jsonl")
    val = write_jsonl([{"prompt": f"Describe item {i}."} for i in range(3)], "val.jsonl")
    test = write_jsonl([{"prompt": f"Explain thing {i}."} for i in range(3)], "test.jsonl")
    return {"model": tiny_path, "output_dir": str(tmp_path / "it"), "prompts": prompts, "eval_prompts": val,
            "report_prompts": {"test": test}, "samples": 3, "max_new_tokens": 6, "keep_truncated": True, "rounds": 2,
            "reward_function": f"{__file__}:word_count", "eval_max_new_tokens": 6, "mixed_precision": "no", "bootstrap": 200,
            "patience": 2, "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}, **overrides}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rounds_sample_label_train_evaluate_and_are_reused(tmp_path, tiny_path, write_jsonl):
    config = config_from_dict(IterateConfig, _values(tmp_path, tiny_path, write_jsonl))
    summary = run_iterate(config)
    out = tmp_path / "it"
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for number in (1, 2):
        folder = out / f"round_{number}"
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert pairs and all(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)  # the labeller's order
        assert json.loads((folder / "quality.json").read_text())["rows"] == len(pairs)
        assert (folder / "policy" / "summary.json").is_file()
        result = json.loads((folder / "eval.json").read_text())
        for name in ("val", "test"):
            s = result["sets"][name]
            assert len(s["scores"]) == 3 and s["low"] <= s["mean"] <= s["high"]
            start = summary["rounds"][0]["sets"][name]["scores"]  # the paired difference is per prompt
            assert s["vs_start"]["mean"] == pytest.approx(sum(a - b for a, b in zip(s["scores"], start)) / 3)
    assert summary["rounds"][2]["policy"] == str(out / "round_2" / "policy")  # round 2 started from round 1's policy
    assert "<svg" in (out / "report.html").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    run_iterate(config)  # everything is there: nothing is sampled or trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_eval_samples_add_a_sampled_score_per_set_which_stop_on_sampled_reads(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """With eval_samples each set also gets `<set> sampled`: per prompt, the scorer's mean over that many answers sampled
    at eval_temperature; stop_on: sampled stops on the validation one. A run evaluated without it, or at another
    temperature, is evaluated again (its samples and training reused)."""
    from alignkit.models import generation

    values = _values(tmp_path, tiny_path, write_jsonl, rounds=2, patience=1)
    run_iterate(config_from_dict(IterateConfig, {**values, "rounds": 1}))
    samples = tmp_path / "it" / "round_1" / "samples.jsonl"
    stamp = samples.stat().st_mtime_ns

    calls, real = [], generation.sample_answers
    def fake_sample_answers(model, tokenizer, prompts, k, max_new_tokens, batch_size, temperature, *args, **kwargs):
        if k == 1:  # the greedy answers
            return real(model, tokenizer, prompts, k, max_new_tokens, batch_size, temperature, *args, **kwargs)
        calls.append((len(prompts), k, temperature))
        return [["one two", "one two three four"] for _ in prompts]  # word counts 2 and 4: a mean of 3 for every prompt
    monkeypatch.setattr(generation, "sample_answers", fake_sample_answers)
    summary = run_iterate(config_from_dict(IterateConfig, {**values, "eval_samples": 2, "eval_temperature": 0.7, "stop_on": "sampled"}))
    assert calls and set(calls) == {(3, 2, 0.7)}  # val and test, 3 prompts each, every round evaluated
    assert samples.stat().st_mtime_ns == stamp  # round 1 was not sampled again, only evaluated
    for h in summary["rounds"]:
        assert list(h["sets"]) == ["val", "val sampled", "test", "test sampled"]
        assert h["sets"]["val sampled"]["scores"] == [3.0, 3.0, 3.0] and h["sets"]["test sampled"]["mean"] == pytest.approx(3.0)
    # the sampled validation score never improves, so round 1 is the last whatever the greedy one did
    assert [h["round"] for h in summary["rounds"]] == [0, 1] and "(val sampled) did not improve" in summary["stopped"]
    assert summary["rounds"][1]["sets"]["val sampled"]["vs_start"]["mean"] == 0.0
    assert "<- best on val sampled" in (tmp_path / "it" / "report.html").read_text().replace("&lt;", "<")
    calls.clear()  # another temperature: every round is evaluated again, nothing sampled for training again
    run_iterate(config_from_dict(IterateConfig, {**values, "eval_samples": 2, "eval_temperature": 1.3, "stop_on": "sampled"}))
    assert calls and set(calls) == {(3, 2, 1.3)} and samples.stat().st_mtime_ns == stamp


def test_a_round_resumes_after_kill_9(tmp_path, tiny_path, write_jsonl):
    values = _values(tmp_path, tiny_path, write_jsonl, rounds=1, train={"max_steps": 6, "batch_size": 2, "save_every": 1})
    config_file = tmp_path / "iterate.yaml"
    config_file.write_text(json.dumps(values))
    command = [sys.executable, "-m", "alignkit.cli", "iterate", "--config", str(config_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    policy = tmp_path / "it" / "round_1" / "policy"
    deadline = time.time() + 300
    while not list(policy.glob("checkpoint-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(policy.glob("checkpoint-*")), "the run ended before its first checkpoint"
    samples = tmp_path / "it" / "round_1" / "samples.jsonl"
    before = _sha(samples)
    assert subprocess.run(command, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    assert _sha(samples) == before  # the round went on from its samples, not from scratch
    metrics = [json.loads(line) for line in (policy / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert metrics[-1]["step"] == 6
    assert json.loads((tmp_path / "it" / "rounds.json").read_text())["rounds"][-1]["round"] == 1


def test_a_human_round_waits_for_votes_then_trains_on_the_exported_ones(tmp_path, tiny_path, write_jsonl, capsys):
    from alignkit.feedback.annotate.store import Store

    values = _values(tmp_path, tiny_path, write_jsonl, rounds=1, human=True, reward_function="",
                     eval_function=f"{__file__}:word_count")
    config = config_from_dict(IterateConfig, values)
    folder = tmp_path / "it" / "round_1"
    with pytest.raises(AlignkitError, match=r"round 1 waits for human votes: run `alignkit annotate serve"):
        run_iterate(config)
    batch = [json.loads(line) for line in (folder / "annotate.jsonl").read_text().splitlines()]
    assert batch and all(r["response_a"] != r["response_b"] for r in batch)
    samples = _sha(folder / "samples.jsonl")
    store = Store(str(folder / "votes.db"))  # what an annotator does in the web app
    store.import_pairs(batch)
    annotator = store.add_annotator("ann")
    while (task := store.next_task(annotator["id"])) is not None:
        store.vote(annotator["id"], task["task_id"], "A", 3)
    (folder / "votes.jsonl").write_text("")
    with pytest.raises(AlignkitError, match=r"round 1: .*votes.jsonl holds no vote with a winner"):
        run_iterate(config)
    assert main(["annotate", "export", "--db", str(folder / "votes.db"), "--out", str(folder / "votes.jsonl")]) == 0
    summary = run_iterate(config)
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(batch) and _sha(folder / "samples.jsonl") == samples
    assert summary["rounds"][-1]["round"] == 1 and (folder / "policy" / "summary.json").is_file()


@pytest.mark.parametrize("labeller, message", [
    ("broken", r"round 1: the labeller failed \(.*judge server is down.*\); the round's samples are kept in .*samples.jsonl"),
    ("constant", r"round 1: no usable training rows from 6 prompts: the labeller scored every prompt's 3 answers alike"),
])
def test_a_bad_labeller_names_the_round_and_keeps_the_samples(tmp_path, tiny_path, write_jsonl, labeller, message):
    config = config_from_dict(IterateConfig, _values(tmp_path, tiny_path, write_jsonl, rounds=1, reward_function=f"{__file__}:{labeller}",
                                                     eval_function=f"{__file__}:word_count"))
    with pytest.raises(AlignkitError, match=message):
        run_iterate(config)
    assert (tmp_path / "it" / "round_1" / "samples.jsonl").is_file()
    assert (tmp_path / "it" / "round_0" / "eval.json").is_file()  # the start's evaluation is kept too


def test_iterate_config_errors_are_sentences(tmp_path, tiny_path, write_jsonl):
    values = _values(tmp_path, tiny_path, write_jsonl)
    with pytest.raises(AlignkitError, match="iterate needs eval_prompts"):
        config_from_dict(IterateConfig, {**values, "eval_prompts": ""})
    with pytest.raises(AlignkitError, match="needs a labeller"):
        config_from_dict(IterateConfig, {**values, "reward_function": ""})
    with pytest.raises(AlignkitError, match="stop_on: sampled reads the validation prompts' sampled score; set eval_samples"):
        config_from_dict(IterateConfig, {**values, "stop_on": "sampled"})
    with pytest.raises(AlignkitError, match="stop_on must be one of greedy, sampled"):
        config_from_dict(IterateConfig, {**values, "stop_on": "best"})
    with pytest.raises(AlignkitError, match="method must be one of dpo, kto, rs"):
        config_from_dict(IterateConfig, {**values, "method": "ppo"})
