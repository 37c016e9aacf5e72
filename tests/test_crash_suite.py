"""The crash suite (tests/crash_suite.py) as a slow test: every landed kill resumes to bit-identical metrics and weights."""

from __future__ import annotations

import pytest

import crash_suite


@pytest.mark.slow
def test_every_kill_resumes_to_the_uninterrupted_run(tmp_path):
    results = crash_suite.run_suite(tmp_path, kills=26)
    landed = [r for r in results if not r["hit"].startswith("missed")]
    assert len(landed) >= 20, results
    assert all(r["same_metrics"] and r["same_weights"] for r in landed), [r for r in landed if not (r["same_metrics"] and r["same_weights"])]
