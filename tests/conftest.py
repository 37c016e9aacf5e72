"""Shared fixtures: the tiny test model, the embedded model's tokenizer, temporary data files."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no machine here reaches a hub; fail fast instead of retrying


@pytest.fixture(scope="session")
def tiny_path():
    from alignkit.models.embedded import tiny_model_path

    return str(tiny_model_path())


@pytest.fixture(scope="session")
def embedded_path():
    from alignkit.models.embedded import embedded_model_path

    return str(embedded_model_path())


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from alignkit.models.load import load_tokenizer

    return load_tokenizer(tiny_path)


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(rows, name="data.jsonl") -> path; rows may be dicts or raw strings (written as-is)."""

    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return str(path)

    return write
