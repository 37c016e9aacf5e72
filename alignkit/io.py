"""The ground floor for files: atomic writes of files and folders, JSON and JSONL, log truncation on resume.

Every writer in the package goes through here, so a reader never sees half a file or half a
model folder: the content is written to a temporary name beside the target and renamed into
place only once it is complete. Temporary files and folders get the permissions a plain
`open()` / `mkdir()` would give under the user's umask (`mkstemp` / `mkdtemp` alone make them
private). Standard library only, and `alignkit.errors` for the one check that speaks to the user.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from alignkit.errors import AlignkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(folder: Path) -> None:
    """Gives `folder` and everything in it the modes a plain mkdir/open would under the umask (libraries that
    write through private temporary files, as safetensors does, leave 0600 behind)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `target` and renames it to `target` only if the block succeeds.

    An existing `target` stays in place, and loadable, until the new one is complete; then it is
    replaced, or, with `keep_existing` (a cache that a concurrent builder may have filled first),
    kept and the new folder discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _follow_umask(tmp)
        if target.exists() and keep_existing:
            return
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data) -> None:
    """Atomic JSON write, indented; values JSON cannot hold (paths, numpy scalars) go in as strings."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> int:
    """Atomic JSON-lines write, one row a line, flushed to disk before the rename; returns the row count."""
    count = 0
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
    return count


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Appends one JSON line (a log: metrics.jsonl, monitor.jsonl); a line cut by a kill is dropped on resume."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _logged_step(line: str) -> float:
    """A JSONL log line's step; a line cut short by a kill counts as after every checkpoint (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Keeps the lines of a JSONL log up to `step`, so a resumed run appends from its checkpoint."""
    path = Path(path)
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step] if path.is_file() else []
    path.write_text("".join(line + "\n" for line in kept))


def check_output_dir(path: str | os.PathLike, key: str = "output_dir") -> None:
    """Refuses an output folder that cannot be one: an existing file, or a path through a file. Called when a
    config is validated, so the mistake shows before any model loads."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise AlignkitError(f"{key} {path} is an existing file, not a folder; choose a folder (it is created if missing)")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AlignkitError(f"{key} {path} cannot be created: {parent} is a file; choose a folder")
            break
