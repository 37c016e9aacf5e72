"""Nothing changed for a user: every recipe's metrics and weights equal the golden records bit for bit (timings aside).

The records (tests/golden/golden.json) were written by `tests/golden_runs.py --write` from the code before the
run-skeleton refactor, one set per CPU capability; see that module for what a run covers and how to record anew.
A key the record lacks (a metric added since) is not compared; every key it has must be equal.
"""

from __future__ import annotations

import json

import pytest

import golden_runs

RECORDS = json.loads(golden_runs.GOLDEN.read_text()).get(golden_runs.capability(), {})


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return golden_runs.run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.skipif(not RECORDS, reason=f"no golden records for {golden_runs.capability()} CPUs; record them with "
                                        f"tests/golden_runs.py --write on the code they must match")
@pytest.mark.parametrize("name", sorted(RECORDS) or ["none"])
def test_run_matches_its_golden_record(records, name):
    golden = RECORDS[name]
    got = records[name]
    assert got["weights"] == golden["weights"], f"{name}: saved weights differ"
    assert sorted(got["logs"]) == sorted(golden["logs"]), f"{name}: other log files"
    for log_name, lines in golden["logs"].items():
        assert len(got["logs"][log_name]) == len(lines), f"{name}/{log_name}: {len(got['logs'][log_name])} lines, golden {len(lines)}"
        for step, (new, old) in enumerate(zip(got["logs"][log_name], lines)):
            new = {k: v for k, v in new.items() if k in old}  # a metric logged since the record is not a change
            assert new == old, f"{name}/{log_name} line {step + 1}: " + ", ".join(
                f"{k}: {new.get(k)} != {old.get(k)}" for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k))
