"""Implicit signals -> KTO rows and preference pairs: every rule checked on a hand-built log."""

from __future__ import annotations

import json

from alignkit.cli import main
from alignkit.feedback.signals import SignalRules, from_signals


def _line(conversation, prompt, response, feedback=None, regenerated=False, user="u1"):
    return {"conversation": conversation, "prompt": prompt, "response": response, "feedback": feedback,
            "regenerated": regenerated, "user": user}


LOG = [
    _line("c1", "Capital of France?", "Lyon, I think.", regenerated=True),  # 1 discarded
    _line("c1", "Capital of France?", "It might be Marseille.", regenerated=True),  # 2 discarded
    _line("c1", "Capital of France?", "Paris.", feedback="up"),  # 3 kept, rated up
    _line("c2", "Say hi", "hello there", regenerated=True),  # 4 discarded
    _line("c2", "Say hi", "Hi!"),  # 5 kept, unrated
    _line("c3", "Tell a joke", "Why did the chicken cross the road?", regenerated=True),  # 6 discarded
    _line("c3", "Tell a joke", "No.", feedback="down"),  # 7 kept but rated down
    _line("c4", "2+2?", "5", feedback="thumbs_down"),  # 8 KTO false
    _line("c5", "Best colour?", "Blue.", feedback="up", user="a"),  # 9 \
    _line("c6", "Best colour?", "Blue.", feedback="down", user="b"),  # 10 > conflict 1 up 1 down: dropped
    _line("c7", "Name a fruit", "Apple.", feedback="up", user="a"),  # 11 \
    _line("c8", "Name a fruit", "Apple.", feedback="up", user="b"),  # 12 > majority up (2 vs 1)
    _line("c9", "Name a fruit", "Apple.", feedback="down", user="c"),  # 13 /
    {"conversation": "c10", "response": "orphan"},  # 14 no prompt
    _line("c11", "Hello?", "Hi.", user="tester"),  # 15 excluded user (rules below)
    _line("c12", "Chat", "Sure."),  # 16 no rating, no regeneration
    _line("c13", "Weather?", "Sunny.", feedback="meh"),  # 17 unknown rating value (then no signal)
    _line("c14", "Story?", "Once upon a time.", regenerated=True),  # 18 regenerated, nothing kept after
    _line("c15", "Empty?", ""),  # 19 empty response
]


def _run(**rules):
    return from_signals([dict(r) for r in LOG], SignalRules(exclude_users=["tester"], **rules))


def test_regenerations_become_pairs_with_strength():
    _, pairs, _ = _run()
    got = {(p["prompt"], p["chosen"], p["rejected"], p["strength"]) for p in pairs}
    assert got == {
        ("Capital of France?", "Paris.", "Lyon, I think.", 1.0),  # kept answer rated up: backed
        ("Capital of France?", "Paris.", "It might be Marseille.", 1.0),
        ("Say hi", "Hi!", "hello there", 0.5),  # regeneration alone: weak
    }


def test_ratings_become_kto_rows_with_majority_merge():
    kto, _, _ = _run()
    got = {(r["prompt"], r["completion"], r["label"]) for r in kto}
    assert got == {("Capital of France?", "Paris.", True), ("Tell a joke", "No.", False), ("2+2?", "5", False),
                   ("Name a fruit", "Apple.", True)}


def test_summary_counts_every_drop_with_its_reason():
    kto, pairs, summary = _run()
    assert (summary.lines, summary.kto_rows, summary.pairs) == (19, 4, 3)
    assert summary.dropped == {
        "kept answer was rated down": 1,
        "conflicting ratings of the same response": 1,
        "repeat rating of the same response (merged)": 2,
        "missing 'prompt' or 'response'": 2,
        "excluded user": 1,
        "no rating and no regeneration (no signal)": 2,
        "unrecognised 'feedback' value (rating ignored)": 1,
        "regenerated, but no kept answer follows": 1,
    }
    assert summary.examples["kept answer was rated down"] == [6] and summary.examples["excluded user"] == [15]
    assert "3 preference pairs" in summary.text()


def test_rules_change_the_outcome():
    _, pairs, summary = _run(drop_if_kept_downvoted=False, max_pairs_per_prompt=1)
    assert ("Tell a joke", "No.") in {(p["prompt"], p["chosen"]) for p in pairs}
    assert sum(p["prompt"] == "Capital of France?" for p in pairs) == 1
    assert summary.dropped["more than 1 pairs for this prompt"] == 1
    kto, _, summary = _run(rating_conflict="drop")
    assert ("Name a fruit", "Apple.") not in {(r["prompt"], r["completion"]) for r in kto}
    kto, _, _ = _run(discarded_as_undesirable=True)
    assert ("Say hi", "hello there", False) in {(r["prompt"], r["completion"], r["label"]) for r in kto}


def test_upvoted_discarded_answer_drops_the_pair():
    log = [_line("c", "Q", "first answer", feedback="up", regenerated=True), _line("c", "Q", "second answer")]
    kto, pairs, summary = from_signals(log)
    assert pairs == [] and summary.dropped["discarded answer was rated up"] == 1
    assert [(r["completion"], r["label"]) for r in kto] == [("first answer", True)]


def test_cli_with_rules_file_and_field_mapping(tmp_path, write_jsonl, capsys):
    log = write_jsonl([
        {"session": "s1", "input": "Q1", "output": "bad answer", "retry": True, "vote": 1},
        {"session": "s1", "input": "Q1", "output": "good answer", "retry": False},
    ])
    rules = tmp_path / "rules.yaml"
    rules.write_text("prompt_field: input\nresponse_field: output\ngroup_field: session\nregenerated_field: retry\n"
                     "rating_field: vote\ndrop_if_discarded_upvoted: false\n")
    assert main(["data", "from-signals", log, "--out", str(tmp_path / "out"), "--rules", str(rules)]) == 0
    pairs = [json.loads(x) for x in (tmp_path / "out" / "preference.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("good answer", "bad answer")]
    summary = json.loads((tmp_path / "out" / "signals_summary.json").read_text())
    assert summary["kto_rows"] == 1 and summary["pairs"] == 1
    assert "1 preference pairs" in capsys.readouterr().out


def test_cli_rejects_unknown_rule(tmp_path, write_jsonl, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("promt_field: input\n")
    assert main(["data", "from-signals", write_jsonl([_line("c", "q", "r")]), "--out", str(tmp_path), "--rules", str(rules)]) == 2
    assert "did you mean 'prompt_field'" in capsys.readouterr().err
