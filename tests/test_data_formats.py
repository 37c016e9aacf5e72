"""Loading and format detection: good rows of every format pass, bad rows fail naming the place."""

from __future__ import annotations

import json

import pytest

from alignkit.data.formats import detect_format, load_dataset, validate_rows
from alignkit.data.load import load_rows
from alignkit.errors import AlignkitError

MSG = lambda role, text: {"role": role, "content": text}  # noqa: E731

GOOD = {
    ("language_modeling", False): {"text": "Once upon a time."},
    ("language_modeling", True): {"messages": [MSG("user", "Hi"), MSG("assistant", "Hello!")]},
    ("prompt_completion", False): {"prompt": "2+2?", "completion": "4"},
    ("prompt_completion", True): {"prompt": [MSG("user", "2+2?")], "completion": [MSG("assistant", "4")]},
    ("prompt_only", False): {"prompt": "Say hi."},
    ("prompt_only", True): {"prompt": [MSG("user", "Say hi.")]},
    ("preference", False): {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ("preference", True): {"prompt": [MSG("user", "2+2?")], "chosen": [MSG("assistant", "4")], "rejected": [MSG("assistant", "5")]},
    ("unpaired_preference", False): {"prompt": "2+2?", "completion": "4", "label": True},
    ("unpaired_preference", True): {"prompt": [MSG("user", "2+2?")], "completion": [MSG("assistant", "5")], "label": False},
}


@pytest.mark.parametrize("kind,conversational", list(GOOD))
def test_detects_every_format(kind, conversational):
    rows = [GOOD[(kind, conversational)]] * 3
    fmt = detect_format(rows)
    assert (fmt.kind, fmt.conversational) == (kind, conversational)
    assert len(validate_rows(rows, fmt)) == 3


BAD = [
    # (format key, bad second row, words the error must contain)
    (("prompt_completion", False), {"prompt": "x"}, ["row 2", "completion"]),
    (("prompt_completion", False), {"prompt": "x", "completion": 3}, ["row 2", "completion", "string"]),
    (("preference", False), {"prompt": "x", "chosen": "a"}, ["row 2", "rejected"]),
    (("preference", True), {"prompt": [MSG("user", "x")], "chosen": "a", "rejected": [MSG("assistant", "b")]}, ["row 2", "chosen", "list of messages"]),
    (("language_modeling", True), {"messages": [{"role": "robot", "content": "x"}]}, ["row 2", "role", "robot"]),
    (("language_modeling", True), {"messages": [{"role": "user"}]}, ["row 2", "content"]),
    (("unpaired_preference", False), {"prompt": "x", "completion": "y", "label": "maybe"}, ["row 2", "label"]),
    (("preference", False), {"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}, ["row 2", "margin", "number"]),
]


@pytest.mark.parametrize("key,bad,words", BAD)
def test_bad_rows_name_row_and_column(key, bad, words):
    rows = [GOOD[key], bad]
    with pytest.raises(AlignkitError) as err:
        validate_rows(rows, detect_format(rows), "pairs.jsonl")
    message = str(err.value)
    assert message.startswith("pairs.jsonl row 2")
    for word in words:
        assert word in message


def test_unknown_columns_are_refused():
    with pytest.raises(AlignkitError, match="row 1.*fit no known format"):
        detect_format([{"question": "x", "answer": "y"}], "qa.jsonl")


def test_implicit_prompt_is_split_from_shared_prefix():
    rows = [{"chosen": [MSG("user", "2+2?"), MSG("assistant", "4")], "rejected": [MSG("user", "2+2?"), MSG("assistant", "5")]}]
    row = validate_rows(rows, detect_format(rows))[0]
    assert row["prompt"] == [MSG("user", "2+2?")]
    assert row["chosen"] == [MSG("assistant", "4")] and row["rejected"] == [MSG("assistant", "5")]
    rows = [{"chosen": "Q: capital of France? A: Paris", "rejected": "Q: capital of France? A: Rome"}]
    row = validate_rows(rows, detect_format(rows))[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Q: capital of France? A:", " Paris", " Rome")  # TRL's extract_prompt


def test_csv_labels_become_bools(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\nhi,hello,true\nhi,go away,0\n")
    rows, fmt = load_dataset(str(path), ("unpaired_preference",), "KTO")
    assert [r["label"] for r in rows] == [True, False]


def test_wrong_kind_for_stage_says_what_is_needed(write_jsonl):
    path = write_jsonl([GOOD[("preference", False)]])
    with pytest.raises(AlignkitError, match="standard preference data, but SFT needs language-modeling or prompt-completion"):
        load_dataset(path, ("language_modeling", "prompt_completion"), "SFT")


def test_malformed_jsonl_line_is_named(write_jsonl):
    path = write_jsonl([GOOD[("prompt_only", False)], '{"prompt": "unterminated'])
    with pytest.raises(AlignkitError, match=r"data.jsonl line 2: not valid JSON"):
        load_rows(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(AlignkitError, match="empty.jsonl is empty"):
        load_rows(str(path))
    path.write_text("\n\n")
    with pytest.raises(AlignkitError, match="empty.jsonl is empty"):
        load_rows(str(path))


def test_missing_file_and_unreachable_hub(tmp_path):
    with pytest.raises(AlignkitError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(AlignkitError, match="could not be loaded as a hub dataset"):
        load_rows("some-org/some-dataset-that-is-not-here")


def test_json_parquet_csv_and_saved_dataset_agree(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "a.csv").write_text("prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(5)))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for source in ("a.json", "a.parquet", "a.csv", "saved"):
        assert load_rows(str(tmp_path / source)) == rows, source
    with pytest.raises(AlignkitError, match="no split 'test'"):
        load_rows(str(tmp_path / "saved"), split="test")
