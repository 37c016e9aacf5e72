"""Reading datasets into rows (a list of dicts), whatever they are stored as.

Sources: JSONL, JSON (a list of objects, or jsonlines), Parquet and CSV files; a
directory written by `datasets.save_to_disk`; a directory of such files; or a hub
dataset id, read through `datasets.load_dataset`. Every failure names the file and,
where there is one, the 1-based row.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from alignkit.errors import AlignkitError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def load_rows(source: str | os.PathLike, split: str = "train") -> list[dict]:
    """All rows of `source` as dicts; `split` picks a split of a datasets directory or hub id."""
    path = Path(source)
    if path.is_file():
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_directory(path, split)
    elif _looks_like_path(str(source)):
        raise AlignkitError(f"data file {source} does not exist; check the path")
    else:
        rows = _read_hub(str(source), split)
    if not rows:
        raise AlignkitError(f"{source} is empty: it holds no rows")
    return rows


def _looks_like_path(text: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that is missing is a missing file."""
    return text.lower().endswith(FILE_SUFFIXES) or text.startswith((".", "/", "~")) or text.count("/") > 1 or not text


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise AlignkitError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .parquet or .csv")
    if path.stat().st_size == 0:
        raise AlignkitError(f"{path} is empty: it holds no rows")
    return readers[suffix](path)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlignkitError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise AlignkitError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and "\n{" in text:  # jsonlines saved as .json
            return _read_jsonl(path)
        raise AlignkitError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]} style
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        raise AlignkitError(f"{path}: expected a list of objects, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise AlignkitError(f"{path} row {number}: expected a JSON object, got {type(row).__name__}")
    return data


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise AlignkitError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        try:
            rows = list(csv.DictReader(handle))
        except csv.Error as exc:
            raise AlignkitError(f"{path}: not a readable CSV file ({exc})") from None
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row:
            raise AlignkitError(f"{path} line {number}: more values than header columns")
    return rows


def _read_directory(path: Path, split: str) -> list[dict]:
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return _read_saved_dataset(path, split)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES)
    matching = [p for p in files if p.stem == split or p.stem.startswith(f"{split}-") or p.stem.endswith(f"_{split}")]
    chosen = matching or files
    if not chosen:
        raise AlignkitError(f"{path}: a directory with no dataset in it (no .jsonl/.json/.parquet/.csv files and no save_to_disk output)")
    return [row for file in chosen for row in _read_file(file)]


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise AlignkitError(f"{path}: no split '{split}'; it has {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset.to_list()


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as exc:  # network, auth and missing-dataset errors all land here
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise AlignkitError(
            f"'{name}' is not a local file or directory and could not be loaded as a hub dataset ({reason}); check the path"
        ) from None
