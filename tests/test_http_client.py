"""The JSON client (`alignkit.http.post_json`) and the endpoints built on it (`HTTPReward`, `HTTPJudge`) against
a scripted server on 127.0.0.1: a total deadline against trickling and silent servers, retries on 5xx and
429 with Retry-After, no redirects, strict reward schemas, bad bytes and bad JSON as clear errors."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.feedback.judge_backends import make_judge
from alignkit.http import EndpointRefused, post_json
from alignkit.rl.rewards import HTTPReward

SERVER_LIFETIME_S = 30  # the server shuts itself down after this, even if a test never returns


def reply(status: int, body=b"", headers: dict | None = None):
    """A scripted answer: `body` as bytes, or as JSON when it is not bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(handler):
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def trickle(handler, interval: float = 1.5, count: int = 6):
    """Headers at once, then one byte of a 64-byte body every `interval` seconds (or until the client hangs up)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "64")
    handler.end_headers()
    for _ in range(count):
        try:
            handler.wfile.write(b" ")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(interval)


def silent(handler, seconds: float = 4.0):
    """Reads the request and never answers (until `seconds` have passed)."""
    time.sleep(seconds)


class Server:
    """Answers each request with the next entry of `script` (the last one repeats) and records what it got."""

    def __init__(self):
        self.script, self.seen = [reply(200, [])], []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                owner.seen.append({"method": self.command, "path": self.path, "time": time.monotonic(), "body": body})
                step = owner.script[min(len(owner.seen), len(owner.script)) - 1]
                step(self)

            do_POST = do_GET = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopper = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)

    def __enter__(self):
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc):
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        return False


@pytest.fixture
def server():
    with Server() as s:
        yield s


# ---------------------------------------------------------------- deadline


@pytest.mark.parametrize("stall", [trickle, silent], ids=["trickle", "silent"])
def test_a_stalling_server_cannot_hold_a_call_past_its_deadline(server, stall):
    server.script = [stall]
    start = time.monotonic()
    with pytest.raises(AlignkitError, match=r"did not answer after 1 try .*2 s deadline"):
        post_json(server.url + "/score", {"x": 1}, deadline=2, retries=2, backoff=0.1, name="reward endpoint")
    assert time.monotonic() - start < 2 + 1.5  # the deadline is total, not per read, and retries do not extend it
    assert len(server.seen) == 1


def test_trickling_reward_endpoint_is_a_clear_error(server):
    server.script = [trickle]
    start = time.monotonic()
    with pytest.raises(AlignkitError, match=re.escape(f"reward endpoint {server.url}/score did not answer")):
        HTTPReward(server.url + "/score", timeout=2, retries=1)(["p"], ["r"])
    assert time.monotonic() - start < 2 + 1.5


# ---------------------------------------------------------------- retries


def test_server_error_once_then_success_recovers(server):
    server.script = [reply(500, {"error": "boom"}), reply(200, {"rewards": [0.25, -1]})]
    assert HTTPReward(server.url + "/score", timeout=3, retries=2, backoff=0.05)(["p", "q"], ["a", "b"]) == [0.25, -1.0]
    assert [r["body"]["responses"] for r in server.seen] == [["a", "b"], ["a", "b"]]


def test_retry_after_is_honoured(server):
    server.script = [reply(503, b"busy", {"Retry-After": "1"}), reply(200, [0.5])]
    assert HTTPReward(server.url + "/score", timeout=4, retries=1, backoff=0.01)(["p"], ["a"]) == [0.5]
    assert len(server.seen) == 2 and server.seen[1]["time"] - server.seen[0]["time"] >= 1.0


def test_retry_after_beyond_the_deadline_fails_at_once(server):
    server.script = [reply(429, b"slow down", {"Retry-After": "30"})]
    start = time.monotonic()
    with pytest.raises(AlignkitError, match=r"HTTP 429: slow down; the next try would wait 30 s"):
        post_json(server.url, {}, deadline=2, retries=3, backoff=0.01)
    assert time.monotonic() - start < 2 and len(server.seen) == 1


def test_client_errors_are_not_retried(server):
    server.script = [reply(422, {"detail": "prompts must be strings"})]
    with pytest.raises(EndpointRefused, match=r"HTTP 422: \{\"detail\": \"prompts must be strings\"\}") as info:
        post_json(server.url + "/score", {}, deadline=2, retries=3, backoff=0.01, name="reward endpoint")
    assert info.value.status == 422 and len(server.seen) == 1


def test_unreachable_server_is_a_clear_error():
    with Server() as gone:
        url = gone.url
    with pytest.raises(AlignkitError, match=r"did not answer after 2 tries .*check that the server is running"):
        post_json(url, {}, deadline=2, retries=1, backoff=0.01)


# ---------------------------------------------------------------- what the server answers


@pytest.mark.parametrize("body, complaint", [
    ({"0": 0.1, "1": 0.2}, "without 'rewards'"),
    ({"rewards": {"0": 0.1, "1": 0.2}}, "a JSON object where a list of 2 numbers belongs"),
    (["0.5", "0.5"], '"0.5" for response 1'),
    ([True, False], "true for response 1"),
    ([0.5], "1 rewards for 2 responses"),
    ({"rewards": [0.5, 0.5, 0.5]}, "3 rewards for 2 responses"),
    (b"[NaN, 0.5]", "NaN for response 1"),
    (b"[0.5, Infinity]", "Infinity for response 2"),
    (b"[0.5, 1e999]", "Infinity for response 2"),
    ([0.5, [1]], r"\[1\] for response 2"),
    ("0.5", "a JSON string"),
], ids=["keyed-by-index", "rewards-keyed-by-index", "numeric-strings", "booleans", "too-short", "too-long",
        "nan", "inf", "overflow", "nested", "string"])
def test_reward_answers_outside_the_schema_are_errors(server, body, complaint):
    server.script = [reply(200, body)]
    with pytest.raises(AlignkitError, match=re.escape(f"reward endpoint {server.url}/score answered") + ".*" + complaint):
        HTTPReward(server.url + "/score", timeout=2, retries=2, backoff=0.01)(["p", "q"], ["a", "b"])
    assert len(server.seen) == 1  # the server answered: no retry


def test_null_rewards_are_invalid_not_errors(server):
    server.script = [reply(200, {"rewards": [None, 2]})]
    values = HTTPReward(server.url + "/score", timeout=2)(["p", "q"], ["a", "b"], {"tag": ["x", "y"]})
    assert math.isnan(values[0]) and values[1] == 2.0
    assert server.seen[0]["body"] == {"prompts": ["p", "q"], "responses": ["a", "b"], "tag": ["x", "y"]}


@pytest.mark.parametrize("status", [302, 303, 307])
def test_redirects_are_errors_and_never_followed(server, status):
    server.script = [reply(status, b"", {"Location": "/elsewhere"})]
    with pytest.raises(AlignkitError, match=rf"{re.escape(server.url)}/score answered HTTP {status}, a redirect to /elsewhere"):
        HTTPReward(server.url + "/score", timeout=2, retries=2, backoff=0.01)(["p"], ["a"])
    assert [(r["method"], r["path"]) for r in server.seen] == [("POST", "/score")]


@pytest.mark.parametrize("body, complaint", [
    (b'[0.5, "caf\xe9"]', "bytes that are not UTF-8 text (at byte offset 10 of 13); make the server answer UTF-8 JSON"),
    (b"<html>oops</html>", "something that is not JSON"),
    (b"", "something that is not JSON"),
])
def test_bad_bytes_and_bad_json_are_errors(server, body, complaint):
    server.script = [reply(200, body)]
    with pytest.raises(AlignkitError, match=re.escape(f"{server.url}/score answered {complaint}")):
        HTTPReward(server.url + "/score", timeout=2, retries=2, backoff=0.01)(["p", "q"], ["a", "b"])
    assert len(server.seen) == 1


def test_bad_urls_are_refused_up_front():
    with pytest.raises(AlignkitError, match="must start with http:// or https://"):
        HTTPReward("localhost:8000/score")
    with pytest.raises(AlignkitError, match="must start with http:// or https://"):
        make_judge(endpoint="127.0.0.1:8000")


# ---------------------------------------------------------------- the judge endpoint


def test_judge_sends_the_endpoint_model_and_the_key(server):
    server.script = [reply(200, {"choices": [{"message": {"content": "B"}}]})]
    judge = make_judge(endpoint=server.url + "/v1", endpoint_model="judge-7b", api_key="sk-x", timeout=2, retries=0)
    probs, _ = judge.first_slot_probs([[{"role": "user", "content": "A or B?"}]])
    assert probs == [0.0]
    assert server.seen[0]["path"] == "/v1/chat/completions" and server.seen[0]["body"]["model"] == "judge-7b"


def test_judge_cli_passes_the_endpoint_model(server, write_jsonl, tmp_path):
    server.script = [reply(200, {"choices": [{"message": {"content": "A"}}]})]
    data = write_jsonl([{"prompt": "p", "chosen": "x", "rejected": "y"}])
    argv = ["judge", data, "--out", str(tmp_path / "o.jsonl"), "--endpoint", server.url, "--endpoint-model", "judge-7b",
            "--timeout", "2", "--retries", "0"]
    assert main(argv) == 0
    assert {r["body"]["model"] for r in server.seen} == {"judge-7b"}


def test_judge_answer_without_choices_is_an_error(server):
    server.script = [reply(200, [1, 2])]
    judge = make_judge(endpoint=server.url, timeout=2, retries=0)
    with pytest.raises(AlignkitError, match="answered without choices"):
        judge.generate([[{"role": "user", "content": "hi"}]])
