"""The annotation store: one SQLite file in WAL mode; every vote is its own committed transaction.

Tables: `pairs` (what to compare, stored as JSON so conversational prompts survive), `annotators`
(a SHA-256 of each token, never the token), `assignments` (which annotator got which pair, and
whether the two responses were shown swapped), `votes` (one per annotator and pair; a second
vote on the same pair replaces the first, so a retried request can never duplicate a vote).

Responses are stored in source order as `a` / `b`; the page shows them in a random order per
assignment and the server maps the clicked side back, so exports never depend on the display.
All SQL is parameterised. `synchronous=FULL` makes each commit durable before the reply is sent,
so killing the server (even with SIGKILL) loses no acknowledged vote.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import sqlite3
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.feedback.quality import annotator_agreement

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    replicas INTEGER NOT NULL DEFAULT 1,
    priority INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pairs_priority ON pairs(priority);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    flipped INTEGER NOT NULL,
    assigned REAL NOT NULL,
    UNIQUE(pair_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS assignments_annotator ON assignments(annotator_id);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
    strength INTEGER NOT NULL CHECK (strength BETWEEN 1 AND 3),
    comment TEXT NOT NULL DEFAULT '',
    shown_flipped INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE(pair_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS votes_annotator ON votes(annotator_id);
"""

MAX_ID = 2**63 - 1  # SQLite's largest INTEGER; ids from clients outside 0..MAX_ID are refused, never passed on
STRENGTH_LEVELS = 3  # 1 slightly, 2 clearly, 3 much better; exported as level / 3
LEASE_SECONDS = 1800.0  # an assignment not voted on within this long frees its slot for others
_TOKEN_PREFIX = "ak"
_TOKEN_SHAPE = re.compile(r"ak_([0-9]{1,19})_(.+)", re.ASCII | re.DOTALL)
_DISPLAY_TO_STORED = {(False, "A"): "a", (False, "B"): "b", (True, "A"): "b", (True, "B"): "a"}


class TaskNotFound(Exception):
    """A vote names a task that does not exist or belongs to another annotator."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if Path(self.path).is_dir():
            raise AlignkitError(f"--db {self.path} is a directory; give a database file path such as {Path(self.path) / 'annotations.sqlite'}")
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with self.connect() as conn:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise AlignkitError(f"{self.path}: SQLite refused WAL mode ({mode}); put the database on a local disk")
                conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise AlignkitError(f"--db {self.path} cannot be opened as a SQLite database ({exc}); "
                                "give a writable path to a new or existing annotation database") from None

    @contextmanager
    def connect(self):
        """A fresh connection in autocommit mode (transactions are explicit), closed afterwards."""
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self):
        """A write transaction that takes the lock up front (no upgrade deadlocks between writers)."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------ pairs

    def import_pairs(self, rows: list[dict], overlap: float = 0.0, overlap_annotators: int = 2, seed: int = 0,
                     source: str = "data") -> dict:
        """Adds pairs (prompt+chosen+rejected or prompt+response_a+response_b rows); re-importing is a no-op.

        A share `overlap` of the new pairs (chosen with `seed`) is assigned to `overlap_annotators`
        annotators each, to measure agreement; the rest to one.
        """
        if not 0.0 <= overlap <= 1.0:
            raise AlignkitError(f"overlap must be between 0 and 1, got {overlap}")
        if overlap_annotators < 2:
            raise AlignkitError(f"overlap_annotators must be at least 2, got {overlap_annotators}")
        parsed = [_pair_from_row(row, number, source) for number, row in enumerate(rows, start=1)]
        rng = random.Random(seed)
        with self.transaction() as conn:
            known = {h for (h,) in conn.execute("SELECT content_hash FROM pairs")}
            start = conn.execute("SELECT COALESCE(MAX(priority), -1) + 1 FROM pairs").fetchone()[0]
            fresh, seen = [], set()
            for pair in parsed:
                if pair["hash"] not in known and pair["hash"] not in seen:
                    seen.add(pair["hash"])
                    fresh.append(pair)
            shared = set(rng.sample(range(len(fresh)), round(overlap * len(fresh))))
            order = list(range(len(fresh)))
            rng.shuffle(order)
            for rank, index in enumerate(order):
                pair = fresh[index]
                conn.execute("INSERT INTO pairs (content_hash, prompt, response_a, response_b, extra, replicas, priority) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (pair["hash"], _dumps(pair["prompt"]), _dumps(pair["a"]), _dumps(pair["b"]), _dumps(pair["extra"]),
                              overlap_annotators if index in shared else 1, start + rank))
        return {"rows": len(rows), "added": len(fresh), "already_present": len(rows) - len(fresh), "overlap_pairs": len(shared)}

    def pair_count(self) -> int:
        with self.connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]

    # ------------------------------------------------------------ annotators

    def add_annotator(self, name: str) -> dict:
        """Creates an annotator and returns its token (shown once; only a hash is kept)."""
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise AlignkitError("an annotator name must be 1 to 200 characters")
        secret = secrets.token_urlsafe(24)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise AlignkitError(f"an annotator named {name!r} already exists; pick another name")
            cursor = conn.execute("INSERT INTO annotators (name, token_hash, created) VALUES (?, ?, ?)", (name, _hash(secret), time.time()))
            annotator_id = cursor.lastrowid
        return {"id": annotator_id, "name": name, "token": f"{_TOKEN_PREFIX}_{annotator_id}_{secret}"}

    def authenticate(self, token: str | None) -> dict | None:
        """The annotator a token belongs to, or None; the secret is compared in constant time."""
        shape = _TOKEN_SHAPE.fullmatch(token or "")
        valid_shape = shape is not None and int(shape.group(1)) <= MAX_ID
        row = None
        if valid_shape:
            with self.connect() as conn:
                row = conn.execute("SELECT id, name, token_hash FROM annotators WHERE id = ?", (int(shape.group(1)),)).fetchone()
        expected = row[2] if row else _hash("no such annotator")
        matches = hmac.compare_digest(_hash(shape.group(2) if valid_shape else ""), expected)
        return {"id": row[0], "name": row[1]} if row and matches else None

    def annotators(self) -> list[dict]:
        with self.connect() as conn:
            rows = conn.execute("SELECT a.id, a.name, a.created, COUNT(v.id) FROM annotators a "
                                "LEFT JOIN votes v ON v.annotator_id = a.id GROUP BY a.id ORDER BY a.id").fetchall()
        return [{"id": i, "name": n, "created": c, "votes": v} for i, n, c, v in rows]

    # ------------------------------------------------------------ tasks and votes

    def next_task(self, annotator_id: int, lease: float = LEASE_SECONDS) -> dict | None:
        """The annotator's open task, or a newly assigned pair that still needs labels; None when done."""
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT a.id FROM assignments a LEFT JOIN votes v ON v.pair_id = a.pair_id AND v.annotator_id = a.annotator_id "
                "WHERE a.annotator_id = ? AND v.id IS NULL ORDER BY a.id LIMIT 1", (annotator_id,)).fetchone()
            if row is None:
                pair = conn.execute(
                    "SELECT p.id FROM pairs p WHERE NOT EXISTS "
                    "  (SELECT 1 FROM assignments mine WHERE mine.pair_id = p.id AND mine.annotator_id = ?) "
                    "AND (SELECT COUNT(*) FROM assignments a LEFT JOIN votes v ON v.pair_id = a.pair_id AND v.annotator_id = a.annotator_id "
                    "     WHERE a.pair_id = p.id AND (v.id IS NOT NULL OR a.assigned > ?)) < p.replicas "
                    "ORDER BY p.priority LIMIT 1", (annotator_id, now - lease)).fetchone()
                if pair is None:
                    return None
                cursor = conn.execute("INSERT INTO assignments (pair_id, annotator_id, flipped, assigned) VALUES (?, ?, ?, ?)",
                                      (pair[0], annotator_id, secrets.randbelow(2), now))
                row = (cursor.lastrowid,)
            task = conn.execute("SELECT a.id, a.flipped, p.id, p.prompt, p.response_a, p.response_b FROM assignments a "
                                "JOIN pairs p ON p.id = a.pair_id WHERE a.id = ?", row).fetchone()
        task_id, flipped, pair_id, prompt, a, b = task
        left, right = (b, a) if flipped else (a, b)
        return {"task_id": task_id, "pair_id": pair_id, "prompt": json.loads(prompt), "left": json.loads(left), "right": json.loads(right)}

    def vote(self, annotator_id: int, task_id: int, choice: str, strength: int, comment: str = "") -> dict:
        """Records (or replaces) the annotator's vote on their task; `choice` is the displayed side A/B or tie."""
        if choice not in ("A", "B", "tie"):
            raise AlignkitError(f"choice must be A, B or tie, got {choice!r}")
        if not 1 <= int(strength) <= STRENGTH_LEVELS:
            raise AlignkitError(f"strength must be 1 to {STRENGTH_LEVELS}, got {strength!r}")
        if not 0 <= int(task_id) <= MAX_ID:
            raise TaskNotFound(task_id)
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute("SELECT pair_id, flipped FROM assignments WHERE id = ? AND annotator_id = ?", (task_id, annotator_id)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            pair_id, flipped = row
            stored = "tie" if choice == "tie" else _DISPLAY_TO_STORED[(bool(flipped), choice)]
            conn.execute("INSERT INTO votes (pair_id, annotator_id, choice, strength, comment, shown_flipped, created, updated) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pair_id, annotator_id) DO UPDATE SET "
                         "choice = excluded.choice, strength = excluded.strength, comment = excluded.comment, updated = excluded.updated",
                         (pair_id, annotator_id, stored, int(strength), comment or "", flipped, now, now))
        return {"pair_id": pair_id, "choice": stored}

    def progress(self, annotator_id: int, lease: float = LEASE_SECONDS) -> dict:
        """Votes cast by this annotator, and how many more pairs could still come their way."""
        with self.connect() as conn:
            done = conn.execute("SELECT COUNT(*) FROM votes WHERE annotator_id = ?", (annotator_id,)).fetchone()[0]
            open_pairs = conn.execute(
                "SELECT COUNT(*) FROM pairs p WHERE NOT EXISTS (SELECT 1 FROM votes mine WHERE mine.pair_id = p.id AND mine.annotator_id = ?) "
                "AND (EXISTS (SELECT 1 FROM assignments mine WHERE mine.pair_id = p.id AND mine.annotator_id = ?) "
                "     OR (SELECT COUNT(*) FROM assignments a LEFT JOIN votes v ON v.pair_id = a.pair_id AND v.annotator_id = a.annotator_id "
                "         WHERE a.pair_id = p.id AND (v.id IS NOT NULL OR a.assigned > ?)) < p.replicas)",
                (annotator_id, annotator_id, time.time() - lease)).fetchone()[0]
        return {"done": done, "remaining": open_pairs}

    # ------------------------------------------------------------ reading votes back

    def votes(self) -> list[dict]:
        """Every vote with its pair, in vote order."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT v.id, v.pair_id, an.name, v.choice, v.strength, v.comment, p.prompt, p.response_a, p.response_b, p.extra, p.replicas "
                "FROM votes v JOIN pairs p ON p.id = v.pair_id JOIN annotators an ON an.id = v.annotator_id ORDER BY v.id").fetchall()
        keys = ("vote_id", "pair_id", "annotator", "choice", "strength", "comment", "prompt", "a", "b", "extra", "replicas")
        out = []
        for row in rows:
            vote = dict(zip(keys, row))
            for key in ("prompt", "a", "b", "extra"):
                vote[key] = json.loads(vote[key])
            out.append(vote)
        return out

    def stats(self) -> dict:
        """Progress and live agreement, for the admin page."""
        votes = self.votes()
        with self.connect() as conn:
            pairs, target = conn.execute("SELECT COUNT(*), COALESCE(SUM(replicas), 0) FROM pairs").fetchone()
            overlap = conn.execute("SELECT COUNT(*) FROM pairs WHERE replicas > 1").fetchone()[0]
        per_pair = defaultdict(int)
        for vote in votes:
            per_pair[vote["pair_id"]] += 1
        agreement = annotator_agreement([(v["pair_id"], v["annotator"], v["choice"]) for v in votes])
        source = [v for v in votes if v["extra"].get("source_choice") in ("a", "b")]
        return {
            "pairs": pairs, "overlap_pairs": overlap, "labels_wanted": target, "votes": len(votes),
            "pairs_done": sum(1 for p, n in per_pair.items() if n >= 1), "ties": sum(v["choice"] == "tie" for v in votes),
            "agreement": agreement, "annotators": self.annotators(),
            "agreement_with_source_labels": (sum(v["choice"] == v["extra"]["source_choice"] for v in source) / len(source)) if source else None,
        }


def _pair_from_row(row: dict, number: int, source: str) -> dict:
    if "chosen" in row and "rejected" in row:
        a, b = row["chosen"], row["rejected"]
        extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
        extra["source_choice"] = "a"  # the file's own label, kept to compare annotators against
    elif "response_a" in row and "response_b" in row:
        a, b = row["response_a"], row["response_b"]
        extra = {k: v for k, v in row.items() if k not in ("prompt", "response_a", "response_b")}
    else:
        raise AlignkitError(f"{source} row {number}: annotation needs prompt+chosen+rejected or prompt+response_a+response_b columns (got {', '.join(sorted(row))})")
    prompt = row.get("prompt")
    if prompt in (None, "") or a in (None, "") or b in (None, ""):
        raise AlignkitError(f"{source} row {number}: prompt and both responses must be non-empty")
    digest = hashlib.sha256(_dumps([prompt, a, b]).encode("utf-8")).hexdigest()
    return {"prompt": prompt, "a": a, "b": b, "extra": extra, "hash": digest}


def export_rows(votes: list[dict], aggregate: str = "votes", ties: bool = False) -> list[dict]:
    """Preference rows from votes.

    `votes`: one row per vote (`annotator`, `strength` = level / 3, `comment`); ties only with
    `ties=True` (as `tie: true`, strength 0). `majority`: one row per pair whose A-vs-B votes have a
    strict majority (ties ignored); strength = mean strength of the winning votes times the winning share.
    """
    table = {"votes": _export_votes, "majority": _export_majority}
    if aggregate not in table:
        raise AlignkitError(f"aggregate must be one of {', '.join(table)}, got {aggregate!r}")
    return table[aggregate](votes, ties)


def _base(vote: dict) -> dict:
    extra = {k: v for k, v in vote["extra"].items() if k != "source_choice"}
    return {**extra, "prompt": vote["prompt"], "pair_id": vote["pair_id"]}


def _export_votes(votes: list[dict], ties: bool) -> list[dict]:
    out = []
    for vote in votes:
        if vote["choice"] == "tie" and not ties:
            continue
        winner, loser = (vote["b"], vote["a"]) if vote["choice"] == "b" else (vote["a"], vote["b"])
        row = {**_base(vote), "chosen": winner, "rejected": loser,
               "strength": 0.0 if vote["choice"] == "tie" else round(vote["strength"] / STRENGTH_LEVELS, 3),
               "annotator": vote["annotator"], "comment": vote["comment"]}
        if vote["choice"] == "tie":
            row["tie"] = True
        out.append(row)
    return out


def _export_majority(votes: list[dict], ties: bool) -> list[dict]:
    by_pair: dict = defaultdict(list)
    for vote in votes:
        by_pair[vote["pair_id"]].append(vote)
    out = []
    for pair_votes in by_pair.values():
        a = [v for v in pair_votes if v["choice"] == "a"]
        b = [v for v in pair_votes if v["choice"] == "b"]
        if len(a) == len(b):
            continue
        winners = a if len(a) > len(b) else b
        first = pair_votes[0]
        winner, loser = (first["a"], first["b"]) if winners is a else (first["b"], first["a"])
        share = len(winners) / len(pair_votes)
        strength = sum(v["strength"] for v in winners) / (len(winners) * STRENGTH_LEVELS) * share
        out.append({**_base(first), "chosen": winner, "rejected": loser, "strength": round(strength, 3),
                    "votes": len(pair_votes), "annotators": [v["annotator"] for v in pair_votes]})
    return out
