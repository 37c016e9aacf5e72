"""Reading datasets into rows (a list of dicts), whatever they are stored as.

Sources: JSONL, JSON (a list of objects, or jsonlines), Parquet and CSV files; a
directory written by `datasets.save_to_disk`; a directory of such files; or a hub
dataset id (`owner/name`), read through `datasets.load_dataset`. `has_split` says
whether a source has a split of its own (a DatasetDict's `test`, `test.jsonl` in a folder).

Every failure names the file and, where there is one, the row. Rows are numbered
from 1 in every format: the Nth object of a JSON file or line of a JSONL file, the
Nth record under a CSV's header. Where the file line differs (a CSV's header is
line 1, so its row 1 is line 2; blank lines in JSONL), messages add it:
`data.csv row 2 (line 3)`. Each row is a `Row`, a plain dict that also remembers
its file and number, so a message about it stays right after a shuffle, a split or
a read of a folder of files. Text must be UTF-8: other bytes are refused with
their offset, binary files as not text, and JSON text holding lone surrogates
(`"\\ud800"`, half of an emoji cut in two) with the row and column.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import json
import os
import re
from pathlib import Path
from typing import Iterator

from alignkit.errors import AlignkitError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON text that may decode to a surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = bytes(range(0, 9)) + bytes(range(14, 32)) + b"\x7f"  # bytes text files do not hold (tab, newlines, form feed aside)
_MAGIC = {b"\x1f\x8b": "gzip-compressed data", b"PK\x03\x04": "a zip archive", b"PAR1": "a Parquet file"}


class Row(dict):
    """A row: a plain dict to every reader, plus where it came from (`source` file, 1-based `number`, file `line`)."""

    __slots__ = ("source", "number", "line", "screening")

    def __init__(self, values=(), source: str = "data", number: int = 0, line: int | None = None):
        super().__init__(values)
        self.source, self.number, self.line, self.screening = str(source), number, line, None

    def where(self) -> str:
        """`file row N`, with the file line where it differs from N."""
        line = f" (line {self.line})" if self.line and self.line != self.number else ""
        return f"{self.source} row {self.number}{line}"


def where(row, source: str, number: int) -> str:
    """The place of `row` for a message: its own file and row when it is a `Row`, else `source row number`."""
    return row.where() if isinstance(row, Row) else f"{source} row {number}"


def load_rows(source: str | os.PathLike, split: str = "train") -> list[dict]:
    """All rows of `source` as `Row`s; `split` picks a split of a datasets directory or hub id."""
    path = Path(source)
    if path.is_file():
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_directory(path, split)
    elif _is_hub_id(str(source)):
        rows = _read_hub(str(source), split)
    else:
        raise _missing(str(source))
    if not rows:
        raise AlignkitError(f"{source} is empty: it holds no rows")
    return rows


def has_split(source: str | os.PathLike, split: str) -> bool:
    """Whether `source` holds a split named `split` of its own: a `save_to_disk` DatasetDict with it, a folder
    with files named for it (`split.jsonl`, `split-*.parquet`, `*_split.jsonl`), or a hub dataset listing it.
    A single file, a single saved Dataset and a folder whose files name no split have none."""
    path = Path(source)
    if path.is_file():
        return False
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            try:
                return split in json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            except (ValueError, OSError, AttributeError):
                return False
        return bool(_split_files(path, split)) and not (path / "dataset_info.json").is_file()
    if _is_hub_id(str(source)):
        try:
            from datasets import get_dataset_split_names

            return split in get_dataset_split_names(str(source))
        except Exception:  # offline, private or missing: no split known, so the training rows give the held-out ones
            return False
    return False


def _split_files(path: Path, split: str) -> list[Path]:
    """The data files of folder `path` named for `split`."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES and p.is_file())
    return [p for p in files if p.stem == split or p.stem.startswith(f"{split}-") or p.stem.endswith(f"_{split}")]


def _is_hub_id(text: str) -> bool:
    """`owner/name`, with no data-file suffix and no local folder called `owner` (then it is a mistyped path)."""
    return bool(HUB_ID.fullmatch(text)) and not text.lower().endswith(FILE_SUFFIXES) and not Path(text).parent.is_dir()


def _missing(source: str) -> AlignkitError:
    """File not found, with the closest name in its folder if one is close."""
    path = Path(source).expanduser()
    folder = path.parent
    if not source or not folder.is_dir():
        return AlignkitError(f"data file {source} does not exist (nor does its folder {folder}); check the path")
    names = [p.name for p in folder.iterdir() if p.is_dir() or p.suffix.lower() in FILE_SUFFIXES]
    by_stem = {Path(n).stem: n for n in names} | {n: n for n in names}
    match = difflib.get_close_matches(path.name, list(by_stem), n=1, cutoff=0.6)
    if match:
        suggestion = by_stem[match[0]] if folder == Path(".") else str(folder / by_stem[match[0]])
        return AlignkitError(f"data file {source} does not exist; did you mean {suggestion}?")
    return AlignkitError(f"data file {source} does not exist; check the path (a hub dataset is named owner/name)")


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise AlignkitError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .parquet or .csv")
    if path.stat().st_size == 0:
        raise AlignkitError(f"{path} is empty: it holds no rows")
    if suffix != ".parquet":
        _refuse_binary(path)
    return readers[suffix](path)


# ---------------------------------------------------------------- text: UTF-8 only, said with the byte offset


def _refuse_binary(path: Path) -> None:
    """Refuses UTF-16 and binary files from their first 4 KiB (a NUL byte, or many control bytes)."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise AlignkitError(f"{path} is UTF-16 text; re-encode it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`)")
    kind = next((what for magic, what in _MAGIC.items() if head.startswith(magic)), None)
    controls = sum(head.count(bytes([b])) for b in _CONTROL)
    if kind or b"\x00" in head or controls > len(head) // 20:
        what = kind or f"binary data ({'a NUL byte at offset ' + str(head.index(0)) if 0 in head else f'{controls} control bytes in its first {len(head)}'})"
        raise AlignkitError(f"{path} is not text: it holds {what}; point to a UTF-8 .jsonl, .json or .csv file, or a .parquet file")


def _not_utf8(path: Path, offset: int, line: int, byte: int) -> AlignkitError:
    return AlignkitError(f"{path}: byte {offset} (line {line}) is 0x{byte:02x}, which is not valid UTF-8; the file is in another "
                         f"encoding (e.g. Latin-1 or Windows-1252): re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, line endings kept (as `open(newline='')` gives them); a leading BOM is dropped."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset + exc.start, number, raw[exc.start]) from None
            offset += len(raw)
            yield line.removeprefix("\ufeff") if number == 1 else line


def _read_text(path: Path) -> str:
    return "".join(_text_lines(path))


def _check_unicode(value, path: Path, place: str, column: str | None = None) -> None:
    """Refuses strings holding lone surrogates (valid JSON escapes, but not text any encoder can write)."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found:
            name = f"column '{column}'" if column else "a value"
            raise AlignkitError(f"{place}: {name} holds a lone surrogate ({ascii(found.group())}), which is not valid Unicode "
                                f"(often half of an emoji cut in two); fix or remove that row")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, path, place, column)
            _check_unicode(item, path, place, column if column is not None else str(key))
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item, path, place, column)


# ---------------------------------------------------------------- the readers


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        place = Row({}, path, len(rows) + 1, line_number).where()
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AlignkitError(f"{path} line {line_number}: not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); "
                                  f"fix or remove that line") from None
        if not isinstance(row, dict):
            raise AlignkitError(f"{place}: expected a JSON object, got {type(row).__name__}")
        if _SURROGATE_ESCAPE.search(line):
            _check_unicode(row, path, place)
        rows.append(Row(row, path, len(rows) + 1, line_number))
    return rows


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
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
    rows = []
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise AlignkitError(f"{path} row {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(Row(row, path, number))
    if _SURROGATE_ESCAPE.search(text):
        for row in rows:
            _check_unicode(row, path, row.where())
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise AlignkitError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    return [Row(row, path, number) for number, row in enumerate(table, start=1)]


def _read_csv(path: Path) -> list[dict]:
    """Rows under the header line; a record with more or fewer values than the header is refused with its row and line."""
    reader = csv.reader(_text_lines(path))
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise AlignkitError(f"{path}: the first line must be a header of column names, got {header!r}")
        rows, line = [], reader.line_num + 1
        for record in reader:
            if record:  # a blank line is no record
                row = Row({}, path, len(rows) + 1, line)
                if len(record) != len(header):
                    more = "more" if len(record) > len(header) else "fewer"
                    raise AlignkitError(f"{row.where()}: {len(record)} value{'s' * (len(record) != 1)}, {more} than the header's {len(header)} columns; "
                                        f"quote values that hold commas or line breaks")
                row.update(zip(header, record))
                rows.append(row)
            line = reader.line_num + 1
    except csv.Error as exc:
        raise AlignkitError(f"{path} line {reader.line_num}: not a readable CSV file ({exc})") from None
    return rows


def _read_directory(path: Path, split: str) -> list[dict]:
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return _read_saved_dataset(path, split)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES and p.is_file())
    chosen = _split_files(path, split) or files
    if not chosen:
        raise AlignkitError(f"{path}: a directory with no dataset in it (no .jsonl/.json/.parquet/.csv files and no save_to_disk output)")
    return [row for file in chosen for row in _read_file(file)]


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a damaged folder
        raise AlignkitError(f"{path}: not a readable save_to_disk folder ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise AlignkitError(f"{path}: no split '{split}'; it has {', '.join(dataset)}")
        dataset = dataset[split]
    return [Row(row, path, number) for number, row in enumerate(dataset.to_list(), start=1)]


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split).to_list()
    except Exception as exc:  # network, auth and missing-dataset errors all land here
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise AlignkitError(
            f"'{name}' is not a local file or directory and could not be loaded as a hub dataset ({reason}); check the path"
        ) from None
    return [Row(row, name, number) for number, row in enumerate(rows, start=1)]
