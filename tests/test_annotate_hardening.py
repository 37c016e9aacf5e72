"""The annotation app's hardening: out-of-range integers, a bounded rate limiter, the admin token kept off the command line,
bad paths."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from alignkit.cli import main  # noqa: E402
from alignkit.feedback.annotate.app import create_app  # noqa: E402
from alignkit.feedback.annotate.limits import RateLimiter  # noqa: E402
from alignkit.feedback.annotate.store import MAX_ID, Store  # noqa: E402
from test_annotate import ADMIN_ROUTES, ANNOTATOR_ROUTES, _app, _auth, _call, _new_annotator, _rows  # the app fixtures
from netutil import free_port

ADMIN = "admin-token-for-tests-0123456789"
INJECTIONS = ["'; DROP TABLE votes; --", "Robert'); DROP TABLE annotators;--", "\" OR \"1\"=\"1", "1; DELETE FROM pairs WHERE 1=1",
              "<img src=x onerror=alert(1)>", "%s %d ? :name $1", "ü 中文 \\' \\\" `backtick`"]


# ---------------------------------------------------------------- out-of-range integers, bounded limiter, admin token, paths


def _asgi_flood(app, requests: list[tuple[str, str | None, str]]) -> list[int]:
    """GETs (path, token, client address) straight into the ASGI app, in one event loop; their status codes.

    TestClient cannot vary the client address, and is several times slower per request.
    """
    async def run_all():
        codes = []
        for path, token, host in requests:
            headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
                     "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers, "client": (host, 40000),
                     "server": ("testserver", 80)}
            sent, bodies = [], [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive(bodies=bodies):
                if bodies:
                    return bodies.pop()
                await asyncio.Event().wait()  # the client stays connected; the app cancels this once it has answered

            async def send(message, sent=sent):
                sent.append(message)

            await app(scope, receive, send)
            codes.append(sent[0]["status"])
        return codes

    return asyncio.run(run_all())


def _asgi_get(app, path: str, token: str | None = None, host: str = "10.0.0.1") -> int:
    return _asgi_flood(app, [(path, token, host)])[0]


def _token_key(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()


def _freeze(app, now: list[float]) -> None:
    """Both rate tables read the clock from `now[0]`, so refills happen only when a test moves it."""
    for limiter in app.state.limiters.values():
        limiter.clock = lambda: now[0]


@pytest.mark.parametrize("bad", [2**70, 2**63, -1, -(2**70), 1e30], ids=["2**70", "2**63", "-1", "-2**70", "1e30"])
def test_out_of_range_integers_get_a_json_4xx_on_every_route(tmp_path, bad):
    client, store = _app(tmp_path, _rows(2))
    token = _new_annotator(client, "ann")
    client.get("/api/task", headers=_auth(token))
    checks = [("post", "/api/vote", {"task_id": bad, "choice": "A"}, _auth(token), 422),
              ("post", "/api/vote", {"task_id": 1, "choice": "A", "strength": bad}, _auth(token), 422)]
    # the id inside a token reaches the database on every authenticated route
    forged = _auth(f"ak_{int(bad)}_secret")
    checks += [(m, path, body, forged, 401) for m, path, body in ANNOTATOR_ROUTES + ADMIN_ROUTES]
    # ids in query strings: the routes take none, so they are ignored; bounded ones are validated
    checks += [("get", f"/api/task?task_id={int(bad)}", None, _auth(token), 200),
               ("get", f"/api/admin/export?ties={int(bad)}", None, _auth(ADMIN), 422)]
    for method, path, body, headers, expected in checks:
        response = _call(client, method, path, body, headers)
        assert response.status_code == expected, (path, body, response.status_code, response.text)
        assert "detail" in response.json() or expected == 200
    huge_length = client.post("/api/vote", content=b"{}", headers={**_auth(token), "content-length": str(2**70)})
    assert huge_length.status_code == 413 and "detail" in huge_length.json()
    assert store.votes() == [] and [a["name"] for a in store.annotators()] == ["ann"]
    assert store.authenticate(f"ak_{MAX_ID + 1}_x") is None and store.authenticate("ak_\u00b2_x") is None


def test_out_of_range_ids_over_a_real_connection_keep_the_connection(tmp_path):
    """2**70 used to raise inside SQLite, answer 500 and drop the connection; now a 4xx on the same connection."""
    import uvicorn  # only this test needs a real server

    client, store = _app(tmp_path, _rows(1))
    token = _new_annotator(client, "ann")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            codes = [http.post("/api/vote", json={"task_id": 2**70, "choice": "A"}, headers=_auth(token)).status_code,
                     http.get("/api/me", headers=_auth(f"ak_{2**70}_x")).status_code,
                     http.get("/api/me", headers=_auth(token)).status_code]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert codes == [422, 401, 200]


def test_rate_limiter_buckets_refill_and_evict_the_stalest_key():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_keys=3, clock=lambda: now[0])
    assert [limiter.retry_after("a") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]
    now[0] = 0.5  # one request's worth refilled
    assert limiter.retry_after("a") == 0.0 and limiter.retry_after("a") > 0
    limiter.trust("a")
    for key in ("b", "c"):
        limiter.retry_after(key)
    limiter.retry_after("a")  # touching "a" makes "b" the stalest
    limiter.retry_after("d")
    assert list(limiter.buckets) == ["c", "a", "d"] and limiter.trusted("a") and not limiter.trusted("b")
    for i in range(20_000):
        limiter.retry_after(f"random-{i}")
    assert len(limiter) == 3 and limiter.trusted("a")  # a flood of unknown keys evicts buckets, never trust
    for key in ("t1", "t2", "t3"):
        limiter.trust(key)
    assert list(limiter.trusted_keys) == ["t1", "t2", "t3"]


def test_flood_of_20000_random_tokens_keeps_the_limiter_bounded_and_gets_429s(tmp_path):
    store = Store(tmp_path / "flood.sqlite")
    store.import_pairs(_rows(2))
    app = create_app(store, ADMIN, max_tracked=1000)
    now = [0.0]
    _freeze(app, now)
    ann = store.add_annotator("ann")["token"]
    assert _asgi_get(app, "/api/me", ann, "10.0.0.1") == 200  # authenticated once: from now on only its own bucket counts
    rng = random.Random(0)
    floods = [("/api/me", f"ak_{rng.randrange(10**6)}_{rng.getrandbits(64):x}", "10.0.0.1") for _ in range(20_000)]
    codes = _asgi_flood(app, floods)
    tokens, addresses = app.state.limiters["tokens"], app.state.limiters["addresses"]
    assert codes.count(401) == 100 - 1 and codes.count(429) == 20_000 - 99  # the address's burst of 100, less ann's first request
    assert len(tokens) <= 1000 and len(addresses) == 1
    assert _asgi_get(app, "/api/me", ann, "10.0.0.1") == 200  # the annotator behind the same address is unaffected
    # 5,000 of the tokens from as many addresses (a botnet): no address is over its limit, but both tables stay
    # bounded at 1,000 keys. (To a path without a route: it passes the limiter like any other, and keeps the test fast.)
    spread = [("/api/no-such-route", token, f"172.16.{i // 256}.{i % 256}") for i, (_, token, _) in enumerate(floods[:5000])]
    assert _asgi_flood(app, spread) == [404] * 5000
    assert len(tokens) == 1000 and len(addresses) == 1000 and list(tokens.trusted_keys) == [_token_key(ann)]
    assert _asgi_flood(app, floods[:150]).count(429) == 50  # 10.0.0.1 was evicted (a full bucket again) and is flooded anew
    assert _asgi_get(app, "/api/me", ann, "10.0.0.1") == 200  # ann's trust outlived 20,000 made-up tokens


def test_unauthenticated_flood_is_limited_per_address_while_20_annotators_share_it(tmp_path):
    store = Store(tmp_path / "shared.sqlite")
    store.import_pairs(_rows(40))
    app = create_app(store, ADMIN)
    now = [0.0]
    _freeze(app, now)  # no refill at all: every count below is exact
    tokens = [store.add_annotator(f"ann-{k}")["token"] for k in range(20)]
    nat = "192.0.2.7"  # 20 annotators behind one address, each well within its own burst of 40
    codes = _asgi_flood(app, [("/api/me", t, nat) for _ in range(15) for t in tokens])
    assert codes == [200] * 300
    flood = _asgi_flood(app, [(path, None, nat) for _ in range(100) for path in ("/", "/api/me", "/static/app.js")])
    assert flood.count(429) == 300 - (100 - 20)  # the address's burst of 100, 20 of them spent by the annotators' first requests
    assert _asgi_flood(app, [("/api/me", t, nat) for t in tokens]) == [200] * 20  # annotators keep working through the flood
    assert _asgi_get(app, "/api/me", None, "198.51.100.1") == 401  # another address has its own budget
    late = store.add_annotator("late")["token"]  # a token never seen before counts against its address until it authenticates
    assert _asgi_get(app, "/api/me", late, nat) == 429
    now[0] += 1.0  # 20 requests a second come back
    assert _asgi_get(app, "/api/me", late, nat) == 200


def _serve_capture(monkeypatch, argv: list[str]):
    """Runs `alignkit annotate serve` up to uvicorn.run and returns (exit code, the app it would have served)."""
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.setdefault("app", app))
    return main(["annotate", "serve", *argv]), served.get("app")


def test_admin_token_on_the_command_line_is_refused(tmp_path, write_jsonl, monkeypatch, capsys):
    db = tmp_path / "a.sqlite"
    for form in (["--admin-token", ADMIN], [f"--admin-token={ADMIN}"]):
        code, app = _serve_capture(monkeypatch, ["--db", str(db), "--data", write_jsonl(_rows(2)), *form])
        err = capsys.readouterr().err
        assert code == 2 and app is None and not db.exists()
        assert err.count("\n") == 1 and "--admin-token-file" in err and "ALIGNKIT_ADMIN_TOKEN" in err and ADMIN not in err


def test_serve_help_offers_only_the_file_and_the_variable(capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--admin-token-file PATH" in help_text and "$ALIGNKIT_ADMIN_TOKEN" in help_text and "--admin-token " not in help_text


@pytest.mark.parametrize("source", ["file", "env"])
def test_admin_token_from_a_file_or_the_environment_opens_the_admin_routes(tmp_path, write_jsonl, monkeypatch, capsys, source):
    monkeypatch.delenv("ALIGNKIT_ADMIN_TOKEN", raising=False)
    argv = ["--db", str(tmp_path / "a.sqlite"), "--data", write_jsonl(_rows(2))]
    if source == "file":
        (tmp_path / "token").write_text(ADMIN + "\n")
        argv += ["--admin-token-file", str(tmp_path / "token")]
    else:
        monkeypatch.setenv("ALIGNKIT_ADMIN_TOKEN", ADMIN)
    code, app = _serve_capture(monkeypatch, argv)
    out = capsys.readouterr().out
    assert code == 0 and ADMIN not in out and "generated" not in out
    client = TestClient(app)
    assert client.get("/api/admin/stats", headers=_auth(ADMIN)).json()["pairs"] == 2
    assert client.get("/api/admin/stats", headers=_auth(ADMIN + "x")).status_code == 401


def test_admin_token_file_problems_are_one_sentence(tmp_path, write_jsonl, monkeypatch, capsys):
    monkeypatch.delenv("ALIGNKIT_ADMIN_TOKEN", raising=False)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "short").write_text("tooshort")
    data = write_jsonl(_rows(2))
    for path, words in ((tmp_path / "missing", "is not a file"), (tmp_path, "is not a file"), (tmp_path / "empty", "is empty"),
                        (tmp_path / "short", "at least 16")):
        code, app = _serve_capture(monkeypatch, ["--db", str(tmp_path / "a.sqlite"), "--data", data, "--admin-token-file", str(path)])
        err = capsys.readouterr().err
        assert (code, app) == (2, None) and words in err and err.count("\n") == 1, err
    code, app = _serve_capture(monkeypatch, ["--db", str(tmp_path / "a.sqlite")])  # neither: a token is generated and printed once
    printed = capsys.readouterr().out.split("admin token (generated; pass --admin-token-file PATH or set $ALIGNKIT_ADMIN_TOKEN to fix it): ")[1]
    assert code == 0 and TestClient(app).get("/api/admin/stats", headers=_auth(printed.split()[0])).status_code == 200


def test_directories_as_db_or_out_are_one_sentence(tmp_path, write_jsonl, monkeypatch, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    db = tmp_path / "a.sqlite"
    Store(db).import_pairs(_rows(1))
    monkeypatch.setenv("ALIGNKIT_ADMIN_TOKEN", ADMIN)
    commands = {"serve --db": ["annotate", "serve", "--db", str(folder), "--data", write_jsonl(_rows(1))],
                "add-annotator --db": ["annotate", "add-annotator", "--db", str(folder), "--name", "ann"],
                "export --db": ["annotate", "export", "--db", str(folder), "--out", str(tmp_path / "x.jsonl")],
                "export --out": ["annotate", "export", "--db", str(db), "--out", str(folder)],
                "export --out under a file": ["annotate", "export", "--db", str(db), "--out", str(db / "x.jsonl")],
                "serve --db not a database": ["annotate", "serve", "--db", write_jsonl(["not sqlite"], "x.sqlite")]}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and ("--db" in err or "--out" in err), (name, err)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("flag,value", [("--port", str(2**70)), ("--port", "0"), ("--overlap-annotators", str(2**70)),
                                        ("--seed", str(2**70)), ("--seed", "-1")])
def test_out_of_range_integers_on_the_command_line_are_usage_errors(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", "serve", "--db", str(tmp_path / "a.sqlite"), flag, value])
    assert exit_info.value.code == 2 and "out of range" in capsys.readouterr().err
