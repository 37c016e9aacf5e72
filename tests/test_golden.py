"""Nothing changed for a user: every recipe's metrics and weights equal the golden records bit for bit (timings aside).

The records (tests/golden/golden.json) were written by `tests/golden_runs.py --write` from the code before the
run-skeleton refactor; see that module for what a run covers and how to record anew.
"""

from __future__ import annotations

import json

import pytest

import golden_runs


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return golden_runs.run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(json.loads(golden_runs.GOLDEN.read_text())))
def test_run_matches_its_golden_record(records, name):
    golden = json.loads(golden_runs.GOLDEN.read_text())[name]
    got = records[name]
    assert got["weights"] == golden["weights"], f"{name}: saved weights differ"
    assert sorted(got["logs"]) == sorted(golden["logs"]), f"{name}: other log files"
    for log_name, lines in golden["logs"].items():
        assert len(got["logs"][log_name]) == len(lines), f"{name}/{log_name}: {len(got['logs'][log_name])} lines, golden {len(lines)}"
        for step, (new, old) in enumerate(zip(got["logs"][log_name], lines)):
            assert new == old, f"{name}/{log_name} line {step + 1}: " + ", ".join(
                f"{k}: {new.get(k)} != {old.get(k)}" for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k))
