"""The annotation app: task assignment, vote mapping, auth refusals, injection strings, and a load test
with a server SIGKILL and restart (loopback only, bounded in count and time)."""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from alignkit.cli import main  # noqa: E402
from alignkit.feedback.annotate.app import create_app  # noqa: E402
from alignkit.feedback.annotate.store import Store
from alignkit.feedback.annotate import store as store_module  # noqa: E402
from netutil import free_port

ADMIN = "admin-token-for-tests-0123456789"
INJECTIONS = ["'; DROP TABLE votes; --", "Robert'); DROP TABLE annotators;--", "\" OR \"1\"=\"1", "1; DELETE FROM pairs WHERE 1=1",
              "<img src=x onerror=alert(1)>", "%s %d ? :name $1", "ü 中文 \\' \\\" `backtick`"]


def _rows(n: int, tag: str = "") -> list[dict]:
    return [{"prompt": f"prompt {i}{tag}", "chosen": f"GOOD first answer {i}", "rejected": f"bad second answer {i}", "category": "t"}
            for i in range(n)]


def _app(tmp_path, rows, overlap=0.0, k=2, name="a.sqlite"):
    store = Store(tmp_path / name)
    store.import_pairs(rows, overlap, k)
    return TestClient(create_app(store, ADMIN, "Prefer the GOOD answer.")), store


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def _new_annotator(client, name):
    response = client.post("/api/admin/annotators", json={"name": name}, headers=_auth(ADMIN))
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _vote_for(client, token, wanted, strength=2, comment=""):
    """Fetches the next task and votes for the displayed side whose text contains `wanted`; returns the task."""
    task = client.get("/api/task", headers=_auth(token)).json()
    if task["done"]:
        return task
    side = "A" if wanted in task["left"] else "B"
    response = client.post("/api/vote", json={"task_id": task["task_id"], "choice": side, "strength": strength, "comment": comment},
                           headers=_auth(token))
    assert response.status_code == 200, response.text
    return task


def _export(client, **params):
    response = client.get("/api/admin/export", params=params, headers=_auth(ADMIN))
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_import_overlap_share_and_idempotent_reimport(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    assert store.import_pairs(_rows(10), overlap=0.3, overlap_annotators=3) == {"rows": 10, "added": 10, "already_present": 0, "overlap_pairs": 3}
    assert store.import_pairs(_rows(10), overlap=0.3)["added"] == 0
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        assert conn.execute("SELECT replicas, COUNT(*) FROM pairs GROUP BY replicas ORDER BY replicas").fetchall() == [(1, 7), (3, 3)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_votes_map_the_shown_side_back_and_export(tmp_path, monkeypatch):
    flips = itertools.cycle([0, 1, 1, 0, 0, 1])  # both display orders, every run (a random draw showed one order 1 run in 32)
    monkeypatch.setattr(store_module.secrets, "randbelow", lambda n: next(flips))
    client, _ = _app(tmp_path, _rows(6))
    token = _new_annotator(client, "ann")
    shown = []
    for strength in (1, 2, 3, 1, 2, 3):
        shown.append(_vote_for(client, token, "GOOD", strength)["left"])
    assert client.get("/api/task", headers=_auth(token)).json()["done"] is True
    assert {"GOOD" in left for left in shown} == {True, False}  # both display orders occurred
    rows = _export(client)
    assert len(rows) == 6 and all(r["chosen"].startswith("GOOD") and r["rejected"].startswith("bad") for r in rows)
    assert sorted(r["strength"] for r in rows) == [0.333, 0.333, 0.667, 0.667, 1.0, 1.0]
    assert {r["annotator"] for r in rows} == {"ann"} and all(r["category"] == "t" for r in rows)
    me = client.get("/api/me", headers=_auth(token)).json()
    assert (me["name"], me["done"], me["remaining"]) == ("ann", 6, 0)


def test_single_pairs_go_to_one_annotator_and_overlap_to_two(tmp_path):
    client, _ = _app(tmp_path, _rows(3))
    ann, bob = _new_annotator(client, "ann"), _new_annotator(client, "bob")
    first = client.get("/api/task", headers=_auth(ann)).json()
    assert client.get("/api/task", headers=_auth(ann)).json()["task_id"] == first["task_id"]  # reload: same task
    second = client.get("/api/task", headers=_auth(bob)).json()
    assert second["pair_id"] != first["pair_id"]
    client2, _ = _app(tmp_path, _rows(3), overlap=1.0, k=2, name="b.sqlite")
    ann, bob, cid = (_new_annotator(client2, n) for n in ("ann", "bob", "cid"))
    for token in (ann, bob):
        for _ in range(3):
            _vote_for(client2, token, "GOOD")
    assert client2.get("/api/task", headers=_auth(cid)).json()["done"] is True  # both slots of every pair used


def test_live_agreement_known_kappa_and_majority_export(tmp_path):
    client, _ = _app(tmp_path, _rows(10), overlap=1.0, k=2)
    ann, bob = _new_annotator(client, "ann"), _new_annotator(client, "bob")
    # Over pair index i: ann prefers GOOD on 0-4, bob on 0-3 and 5: confusion [[4, 1], [1, 4]] -> kappa 0.6
    for token, good in ((ann, {0, 1, 2, 3, 4}), (bob, {0, 1, 2, 3, 5})):
        for _ in range(10):
            task = client.get("/api/task", headers=_auth(token)).json()
            index = int(task["prompt"].split()[-1])
            wanted = "GOOD" if index in good else "bad"
            side = "A" if wanted in task["left"] else "B"
            client.post("/api/vote", json={"task_id": task["task_id"], "choice": side}, headers=_auth(token))
    stats = client.get("/api/admin/stats", headers=_auth(ADMIN)).json()
    assert stats["votes"] == 20 and stats["agreement"]["method"] == "cohen_kappa"
    assert stats["agreement"]["value"] == pytest.approx(0.6) and stats["agreement"]["percent_agreement"] == pytest.approx(0.8)
    assert stats["agreement_with_source_labels"] == pytest.approx(0.5)
    majority = _export(client, aggregate="majority")
    assert len(majority) == 8  # the two 1-1 splits have no majority
    assert sum(r["chosen"].startswith("GOOD") for r in majority) == 4


def test_ties_exported_only_when_asked(tmp_path):
    client, _ = _app(tmp_path, _rows(1))
    token = _new_annotator(client, "ann")
    task = client.get("/api/task", headers=_auth(token)).json()
    assert client.post("/api/vote", json={"task_id": task["task_id"], "choice": "tie"}, headers=_auth(token)).status_code == 200
    assert _export(client) == []
    (row,) = _export(client, ties="true")
    assert row["tie"] is True and row["strength"] == 0.0


ANNOTATOR_ROUTES = [("get", "/api/me", None), ("get", "/api/task", None), ("get", "/api/guidelines", None),
                    ("post", "/api/vote", {"task_id": 1, "choice": "A"})]
ADMIN_ROUTES = [("get", "/api/admin/stats", None), ("get", "/api/admin/annotators", None),
                ("post", "/api/admin/annotators", {"name": "mallory"}), ("get", "/api/admin/export", None)]


def _call(client, method, path, body, headers):
    return client.request(method.upper(), path, json=body, headers=headers)


@pytest.mark.parametrize("headers", [{}, _auth("ak_1_wrongsecret"), _auth("not-a-token"), {"Authorization": "Basic YWxhZGRpbjpvcGVu"},
                                     _auth(ADMIN)], ids=["none", "wrong-secret", "malformed", "basic", "admin-token"])
def test_annotator_routes_refuse_without_a_valid_annotator_token(tmp_path, headers):
    client, _ = _app(tmp_path, _rows(2))
    _new_annotator(client, "ann")
    for method, path, body in ANNOTATOR_ROUTES:
        response = _call(client, method, path, body, headers)
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"


def test_admin_routes_refuse_annotator_and_wrong_tokens(tmp_path):
    client, store = _app(tmp_path, _rows(2))
    token = _new_annotator(client, "ann")
    for method, path, body in ADMIN_ROUTES:
        assert _call(client, method, path, body, {}).status_code == 401
        assert _call(client, method, path, body, _auth(token)).status_code == 403
        assert _call(client, method, path, body, _auth(ADMIN + "x")).status_code == 401
        assert _call(client, method, path, body, _auth(ADMIN[:-1])).status_code == 401
    assert [a["name"] for a in store.annotators()] == ["ann"]  # mallory was never created


def test_nobody_votes_as_someone_else(tmp_path):
    client, store = _app(tmp_path, _rows(2))
    ann, bob = _new_annotator(client, "ann"), _new_annotator(client, "bob")
    task = client.get("/api/task", headers=_auth(ann)).json()
    # bob may not vote on ann's task, and the body cannot name a voter
    assert client.post("/api/vote", json={"task_id": task["task_id"], "choice": "A"}, headers=_auth(bob)).status_code == 404
    forged = {"task_id": task["task_id"], "choice": "A", "annotator": "ann", "annotator_id": 1}
    assert client.post("/api/vote", json=forged, headers=_auth(bob)).status_code == 422
    assert client.post("/api/vote", json={"task_id": 99999, "choice": "A"}, headers=_auth(ann)).status_code == 404
    assert client.post("/api/vote", json={"task_id": task["task_id"], "choice": "C"}, headers=_auth(ann)).status_code == 422
    assert client.post("/api/vote", json={"task_id": task["task_id"], "choice": "A", "strength": 9}, headers=_auth(ann)).status_code == 422
    assert store.votes() == []
    assert client.post("/api/vote", json={"task_id": task["task_id"], "choice": "A"}, headers=_auth(ann)).status_code == 200
    assert [v["annotator"] for v in store.votes()] == ["ann"]


def test_injection_strings_in_every_text_field_are_stored_verbatim(tmp_path):
    rows = [{"prompt": s, "chosen": "GOOD " + s, "rejected": "bad " + s, "note": s} for s in INJECTIONS]
    client, store = _app(tmp_path, rows)
    names = []
    for s in INJECTIONS[:3]:
        names.append(s)
        token = _new_annotator(client, s)
        assert client.get("/api/me", headers=_auth(token)).json()["name"] == s
    token = _new_annotator(client, "ann")
    for s in INJECTIONS:
        _vote_for(client, token, "GOOD", comment=s)
    exported = _export(client)
    expected = {(s, "GOOD " + s, "bad " + s, s) for s in INJECTIONS}
    assert {(r["prompt"], r["chosen"], r["rejected"], r["note"]) for r in exported} == expected
    assert sorted(r["comment"] for r in exported) == sorted(INJECTIONS)  # each comment was the prompt's own string... as a set
    assert [a["name"] for a in store.annotators()] == names + ["ann"]
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:  # every table is still there and whole
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("pairs", "annotators", "votes")}
    assert counts == {"pairs": len(INJECTIONS), "annotators": 4, "votes": len(INJECTIONS)}


def test_pages_are_served_with_a_strict_policy(tmp_path):
    client, _ = _app(tmp_path, _rows(1))
    for path in ("/", "/admin", "/static/app.js", "/static/admin.js"):
        response = client.get(path)
        assert response.status_code == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]
    for path in ("/static/app.js", "/static/admin.js"):
        assert "innerHTML" not in client.get(path).text


def test_cli_add_annotator_and_export(tmp_path, write_jsonl, capsys):
    db = str(tmp_path / "a.sqlite")
    store = Store(db)
    store.import_pairs(_rows(2))
    assert main(["annotate", "add-annotator", "--db", db, "--name", "ann"]) == 0
    token = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    who = store.authenticate(token)
    assert who["name"] == "ann"
    task = store.next_task(who["id"])
    store.vote(who["id"], task["task_id"], "A" if "GOOD" in task["left"] else "B", 3)
    out = tmp_path / "out.jsonl"
    assert main(["annotate", "export", "--db", db, "--out", str(out)]) == 0
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["chosen"].startswith("GOOD") and row["strength"] == 1.0
    assert main(["annotate", "add-annotator", "--db", db, "--name", "ann"]) == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------- load test with a server kill


def _start_server(db: Path, data: str, port: int, log: Path, token_file: Path | None = None) -> subprocess.Popen:
    """The real server; the admin token comes from `token_file` if given, else from $ALIGNKIT_ADMIN_TOKEN."""
    command = [sys.executable, "-m", "alignkit.cli", "annotate", "serve", "--db", str(db), "--data", data, "--host", "127.0.0.1",
               "--port", str(port), "--overlap", "0.2", "--overlap-annotators", "2"]
    env = {k: v for k, v in os.environ.items() if k != "ALIGNKIT_ADMIN_TOKEN"}
    if token_file is not None:
        command += ["--admin-token-file", str(token_file)]
    else:
        env["ALIGNKIT_ADMIN_TOKEN"] = ADMIN
    proc = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/static/style.css", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start within 60 s")


class _Annotator(threading.Thread):
    """Fetches and votes until done; retries across the outage; remembers every acknowledged vote."""

    def __init__(self, base: str, token: str, seed: int, deadline: float, counter: dict, lock: threading.Lock):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers=_auth(token), timeout=10)
        self.rng, self.deadline, self.counter, self.lock = random.Random(seed), deadline, counter, lock
        self.acked: dict[int, str] = {}  # pair_id -> chosen text
        self.latencies: list[float] = []
        self.retries = 0
        self.retried_votes = 0
        self.error: str | None = None

    def _request(self, method: str, path: str, body=None):
        while time.monotonic() < self.deadline:
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError:
                self.retries += 1
                time.sleep(0.1)
                continue
            if response.status_code >= 500:
                self.retries += 1
                time.sleep(0.1)
                continue
            response.raise_for_status()
            return response.json()
        raise TimeoutError(f"{path}: no answer before the deadline")

    def run(self):
        try:
            while True:
                task = self._request("GET", "/api/task")
                if task["done"]:
                    return
                choice = self.rng.choice("AB")
                started, retries = time.perf_counter(), self.retries
                reply = self._request("POST", "/api/vote", {"task_id": task["task_id"], "choice": choice, "strength": self.rng.randint(1, 3)})
                if self.retries == retries:  # votes that waited out the restart are counted apart
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.retried_votes += 1
                assert reply["pair_id"] == task["pair_id"]
                self.acked[task["pair_id"]] = task["left"] if choice == "A" else task["right"]
                with self.lock:
                    self.counter["acked"] += 1
        except Exception as exc:  # reported by the test, not lost in a thread
            self.error = repr(exc)
        finally:
            self.client.close()


def _unauthorised_writes(base: str, annotator_token: str) -> list[int]:
    """30 writes nobody may make: votes without a valid annotator token or naming a voter, annotators made without the admin token."""
    vote, forged = {"task_id": 1, "choice": "A"}, {"task_id": 1, "choice": "A", "annotator": "annotator-1"}
    attempts = [("/api/vote", vote, {}), ("/api/vote", vote, _auth("ak_1_wrongsecret")), ("/api/vote", vote, _auth(ADMIN)),
                ("/api/vote", vote, _auth(f"ak_{2**70}_x")), ("/api/vote", {"task_id": 2**70, "choice": "A"}, _auth(annotator_token)),
                ("/api/vote", forged, _auth(annotator_token)), ("/api/admin/annotators", {"name": "mallory"}, {}),
                ("/api/admin/annotators", {"name": "mallory"}, _auth(annotator_token)),
                ("/api/admin/annotators", {"name": "mallory"}, _auth(ADMIN[:-1])), ("/api/admin/annotators", {"name": "mallory"}, _auth(ADMIN + "x"))]
    return [httpx.post(base + path, json=body, headers=headers, timeout=10).status_code for _ in range(3) for path, body, headers in attempts]


def test_load_20_annotators_with_server_kill_and_restart(tmp_path, write_jsonl):
    n_pairs, n_annotators, kill_after = 100, 20, 40
    data = write_jsonl([{"prompt": f"load prompt {i}", "response_a": f"first {i}", "response_b": f"second {i}"} for i in range(n_pairs)])
    db, log, port = tmp_path / "load.sqlite", tmp_path / "server.log", free_port()
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN + "\n")
    base = f"http://127.0.0.1:{port}"
    server = _start_server(db, data, port, log)  # admin token from $ALIGNKIT_ADMIN_TOKEN
    try:
        tokens = [httpx.post(f"{base}/api/admin/annotators", json={"name": f"annotator-{k}"}, headers=_auth(ADMIN), timeout=10).json()["token"]
                  for k in range(n_annotators)]
        counter, lock = {"acked": 0}, threading.Lock()
        deadline = time.monotonic() + 100
        workers = [_Annotator(base, t, k, deadline, counter, lock) for k, t in enumerate(tokens)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        while counter["acked"] < kill_after and time.monotonic() < deadline and any(w.is_alive() for w in workers):
            time.sleep(0.005)
        acked_at_kill = counter["acked"]
        server.kill()  # SIGKILL: no shutdown handler runs
        server.wait(timeout=10)
        killed = time.perf_counter()
        server = _start_server(db, data, port, log, token_file)  # same DB and data (re-import adds nothing); token from a file
        downtime = time.perf_counter() - killed
        unauthorised = _unauthorised_writes(base, tokens[0])  # while the annotators finish
        for w in workers:
            w.join(timeout=max(1.0, deadline - time.monotonic()))
        elapsed = time.perf_counter() - started
        assert not any(w.is_alive() for w in workers), "annotators still running at the deadline"
        assert [w.error for w in workers if w.error] == []
        stats = httpx.get(f"{base}/api/admin/stats", headers=_auth(ADMIN), timeout=10).json()
    finally:
        server.kill()
        server.wait(timeout=10)

    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT v.pair_id, an.name, CASE v.choice WHEN 'a' THEN p.response_a ELSE p.response_b END "
                              "FROM votes v JOIN annotators an ON an.id = v.annotator_id JOIN pairs p ON p.id = v.pair_id").fetchall()
        (rows, distinct), = conn.execute("SELECT COUNT(*), COUNT(DISTINCT pair_id || ':' || annotator_id) FROM votes").fetchall()
        wanted = conn.execute("SELECT SUM(replicas), COUNT(*) FROM pairs").fetchone()
        per_pair = conn.execute("SELECT p.replicas, COUNT(v.id) FROM pairs p LEFT JOIN votes v ON v.pair_id = p.id GROUP BY p.id").fetchall()
    acked = {(pair, f"annotator-{k}", json.dumps(text)) for k, w in enumerate(workers) for pair, text in w.acked.items()}
    accepted = [code for code in unauthorised if code < 400]
    print("\nload test safety:", json.dumps({"votes_acknowledged": len(acked), "acknowledged_votes_lost": len(acked - set(stored)),
                                             "stored_but_not_acknowledged": len(set(stored) - acked),
                                             "unauthorised_writes": len(unauthorised), "unauthorised_accepted": len(accepted),
                                             "unauthorised_codes": sorted(set(unauthorised))}))
    assert len(unauthorised) == 30 and accepted == [] and 429 not in unauthorised
    assert [a["name"] for a in stats["annotators"]] == [f"annotator-{k}" for k in range(n_annotators)]  # no mallory
    assert wanted == (120, n_pairs)  # 20% of 100 pairs for two annotators; the second import added no pairs
    assert rows == distinct == 120  # no duplicate vote
    assert set(stored) == acked  # no acknowledged vote lost, nothing stored that was not acknowledged
    assert all(count == replicas for replicas, count in per_pair)  # each pair got exactly the labels it wanted
    assert stats["votes"] == 120 and stats["agreement"]["items"] == 20
    assert acked_at_kill >= kill_after
    latencies = sorted(x for w in workers for x in w.latencies)
    figures = {"annotators": n_annotators, "votes": rows, "acked_before_kill": acked_at_kill,
               "votes_retried_across_restart": sum(w.retried_votes for w in workers), "client_retries": sum(w.retries for w in workers),
               "restart_downtime_s": round(downtime, 2), "wall_s": round(elapsed, 2), "votes_per_s_incl_restart": round(rows / elapsed, 1),
               "steady_vote_latency_p50_ms": round(1000 * statistics.median(latencies), 1),
               "steady_vote_latency_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)}
    print("\nload test:", json.dumps(figures))


def test_oversized_bodies_and_request_floods_are_refused(tmp_path):
    store = Store(tmp_path / "limits.sqlite")
    store.import_pairs(_rows(3), 0.0, 2)
    client = TestClient(create_app(store, ADMIN, "", max_body_bytes=2048, rate_per_s=1.0, burst=5))
    alice, bob = _new_annotator(client, "alice"), _new_annotator(client, "bob")
    task = client.get("/api/task", headers=_auth(alice)).json()
    huge = {"task_id": task["task_id"], "choice": "A", "strength": 2, "comment": "x" * 5000}
    assert client.post("/api/vote", json=huge, headers=_auth(alice)).status_code == 413
    codes = [client.get("/api/me", headers=_auth(alice)).status_code for _ in range(8)]
    assert codes.count(429) >= 3 and codes[0] == 200  # alice used up her burst...
    limited = client.get("/api/me", headers=_auth(alice))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/api/me", headers=_auth(bob)).status_code == 200  # ...bob's bucket is his own
