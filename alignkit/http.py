"""One small JSON-over-HTTP client for the services alignkit calls (reward endpoints, judge endpoints).

`post_json(url, payload, deadline=..., retries=..., backoff=...)` POSTs `payload` as JSON and returns
the decoded answer. Its policy:

- `deadline` is the wall-clock budget of the whole call, retries and waits included. httpx's
  timeouts are per operation (a server that trickles one byte a second never trips a read
  timeout), so every attempt runs in a worker thread that the caller stops waiting for when the
  budget is spent, and the worker itself gives up at its next read after that.
- connection errors, timeouts, HTTP 429 and 5xx are retried, up to `retries` times, after
  `backoff * 2**k` seconds or the server's `Retry-After` (seconds), as long as the wait fits in
  what is left of the deadline; once it does not, the call fails at once rather than sleep in vain.
- redirects are not followed (a POST must not silently turn into a GET elsewhere): any 3xx is an
  error naming the url and the Location.
- any other 4xx is an `EndpointRefused` error at once (retrying the same request will not help),
  with the status and the start of the body.
- an answer that is not UTF-8 or not JSON is an error naming the url: the server did answer, so
  it is not retried.

Every failure is an `AlignkitError` whose message names the url and says what to check.
"""

from __future__ import annotations

import json
import math
import threading
import time

import httpx

from alignkit.errors import AlignkitError

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
PREVIEW_CHARS = 200


class EndpointRefused(AlignkitError):
    """The server answered a 4xx other than 429: the request itself is wrong, so it is not retried."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may fix; `wait` is the server's Retry-After."""

    def __init__(self, reason: str, wait: float | None = None, answered: bool = False):
        super().__init__(reason)
        self.reason, self.wait, self.answered = reason, wait, answered


class _OutOfTime(Exception):
    """The deadline passed while an attempt was still under way."""


def check_url(url: str, name: str = "endpoint") -> str:
    """`url` if it is an http(s) url, else an error saying so (called when a client is configured)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise AlignkitError(f"{name} url {url!r} must start with http:// or https://")
    return url


def post_json(url: str, payload, *, deadline: float, retries: int, backoff: float, headers: dict | None = None,
              name: str = "endpoint"):
    """POST `payload` as JSON to `url` and return the decoded JSON answer (see the module docstring)."""
    if not deadline or deadline <= 0:
        raise AlignkitError(f"{name} {url}: the timeout must be a positive number of seconds, got {deadline!r}")
    body = json.dumps(payload, default=str).encode("utf-8")
    sent_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    start = time.monotonic()
    end = start + deadline
    tries, last, answered = 0, "no attempt fitted in the deadline", False
    for attempt in range(retries + 1):
        tries = attempt + 1
        try:
            status, answer_headers, content = _attempt(url, body, sent_headers, end, name)
            return _decode(url, name, status, answer_headers, content)
        except _OutOfTime:
            last, answered = f"no complete answer within the {deadline:g} s deadline", False
            break
        except _Retryable as exc:
            last, answered = exc.reason, exc.answered
            wait = exc.wait if exc.wait is not None else backoff * 2 ** attempt
        if attempt == retries:
            break
        left = end - time.monotonic()
        if wait >= left:
            last += f"; the next try would wait {wait:g} s, more than the {max(left, 0):.1f} s left of the deadline"
            break
        time.sleep(wait)
    outcome, check = (("answered only with errors", "check the server's log") if answered else
                      ("did not answer", "check that the server is running and the url is right"))
    raise AlignkitError(f"{name} {url} {outcome} after {tries} {'try' if tries == 1 else 'tries'} in "
                        f"{time.monotonic() - start:.1f} s ({last}); {check}, or raise the timeout or retries")


def _attempt(url: str, body: bytes, headers: dict, end: float, name: str) -> tuple[int, httpx.Headers, bytes]:
    """One request/response in a worker thread, waited for until `end` at the latest."""
    outcome: dict = {}

    def work():
        try:
            outcome["answer"] = _exchange(url, body, headers, end)
        except BaseException as exc:  # handed to the caller's thread, which re-raises or classifies it
            outcome["error"] = exc

    budget = end - time.monotonic()
    if budget <= 0:
        raise _OutOfTime
    worker = threading.Thread(target=work, name="alignkit-http", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        raise _OutOfTime  # the worker notices the deadline at its next read and closes the connection
    if "answer" in outcome:
        return outcome["answer"]
    raise _classify(outcome["error"], url, name)


def _exchange(url: str, body: bytes, headers: dict, end: float) -> tuple[int, httpx.Headers, bytes]:
    """The request, with every httpx timeout set to the time left and the body read against `end`."""
    timeout = httpx.Timeout(max(end - time.monotonic(), 0.001))
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        with client.stream("POST", url, content=body, headers=headers) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise _OutOfTime
            return response.status_code, response.headers, b"".join(chunks)


def _classify(exc: BaseException, url: str, name: str) -> BaseException:
    """The exception to raise for what went wrong inside an attempt."""
    if isinstance(exc, (_OutOfTime, AlignkitError)):
        return exc
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return AlignkitError(f"{name} url {url!r} is not a usable http(s) url ({exc}); fix the url")
    if isinstance(exc, httpx.TimeoutException):
        return _Retryable(f"timed out: {type(exc).__name__}")
    if isinstance(exc, httpx.TransportError):
        return _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, httpx.DecodingError):
        return AlignkitError(f"{name} {url} answered a compressed body that does not decompress ({exc}); check the server")
    return exc


def _decode(url: str, name: str, status: int, headers: httpx.Headers, content: bytes):
    """The JSON answer of a 2xx, or the error (or retry) that the status calls for."""
    if 300 <= status < 400:
        raise AlignkitError(f"{name} {url} answered HTTP {status}, a redirect to {headers.get('location', '(no Location)')}; "
                            f"redirects are not followed, so set the url to the address that answers the POST itself")
    if status in RETRY_STATUSES:
        raise _Retryable(f"HTTP {status}: {_preview(content)}", _retry_after(headers), answered=True)
    if not 200 <= status < 300:
        detail = _preview(content)
        raise EndpointRefused(f"{name} {url} refused the request with HTTP {status}: {detail}; "
                              f"check the url and what the server expects", status, detail)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AlignkitError(f"{name} {url} answered bytes that are not UTF-8 text (at byte offset {exc.start} of {len(content)}); "
                            f"make the server answer UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AlignkitError(f"{name} {url} answered something that is not JSON ({exc.msg} at character {exc.pos}: "
                            f"{text[:80]!r}); make the server answer JSON") from None


def _preview(content: bytes) -> str:
    text = " ".join(content.decode("utf-8", "replace").split())
    return text[:PREVIEW_CHARS] + ("..." if len(text) > PREVIEW_CHARS else "") or "(empty body)"


def _retry_after(headers: httpx.Headers) -> float | None:
    """The `Retry-After` header in seconds, or None when absent or not a number of seconds."""
    try:
        seconds = float(headers.get("retry-after", "none"))
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None
