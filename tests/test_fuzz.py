"""Fuzzing data loading and config parsing: malformed input always ends in the one-sentence AlignkitError.

Run with `-s` to see how many inputs each property tried.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.config import SFTConfig, TrainArgs, config_from_dict, load_config, parse_overrides
from alignkit.data.formats import detect_format, validate_rows
from alignkit.data.load import load_rows
from alignkit.errors import AlignkitError

TRIED: dict[str, int] = {}
COLUMNS = ["prompt", "completion", "chosen", "rejected", "label", "text", "messages", "margin", "strength", "role", "content"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
messages = st.lists(st.dictionaries(st.sampled_from(["role", "content", "name"]), st.one_of(st.sampled_from(["user", "assistant", "system", "robot"]), scalars), max_size=3), max_size=3)
values = st.one_of(scalars, messages, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
rows = st.dictionaries(st.sampled_from(COLUMNS), values, max_size=5)


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


def _load_and_validate(path: Path) -> None:
    try:
        loaded = load_rows(str(path))
        validate_rows(loaded, detect_format(loaded, str(path)), str(path))
    except AlignkitError as exc:
        assert str(exc) and "\n" not in str(exc)  # one sentence, no traceback


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=40), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))), max_size=6))
def test_jsonl_lines(lines):
    _count("jsonl files")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        _load_and_validate(path)


@FUZZ
@given(st.one_of(st.lists(rows, max_size=5), rows, scalars).map(json.dumps), st.sampled_from(["json", "csv"]))
def test_json_and_csv_files(text, suffix):
    _count("json/csv files")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{suffix}"
        path.write_text(text if suffix == "json" else text.replace("{", "\n").replace(",", "\n,"))
        _load_and_validate(path)


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from([f.lower() for f in SFTConfig.__dataclass_fields__]), st.text(string.ascii_letters + "_-", max_size=12)), values, max_size=6))
def test_config_dicts(values_):
    _count("config dicts")
    try:
        config_from_dict(SFTConfig, values_, "fuzz.yaml")
    except AlignkitError as exc:
        assert str(exc).startswith(("fuzz.yaml", *[f for f in TrainArgs.__dataclass_fields__])) or "must" in str(exc)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["--lora_r", "--learning_rate", "--data", "--bogus", "--resume", "--max_length"]), st.text(max_size=8)), max_size=6))
def test_command_line_overrides(argv):
    _count("command lines")
    try:
        load_config(SFTConfig, None, parse_overrides(argv))
    except AlignkitError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_yaml_files(text):
    _count("yaml files")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        try:
            load_config(SFTConfig, path)
        except AlignkitError:
            pass


def test_report_counts():
    """Printed with -s; every property above ran its full budget with no escaped exception."""
    print("fuzz inputs tried:", TRIED, "total", sum(TRIED.values()))
    assert sum(TRIED.values()) >= 5 * 100
