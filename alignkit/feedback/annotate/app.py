"""The annotation web app (FastAPI): an annotator page, an admin page and a small JSON API.

Auth: every API call carries `Authorization: Bearer <token>`. An annotator token identifies the
annotator (the body never does: vote bodies with unknown fields are refused); admin routes need
the admin token, compared with `hmac.compare_digest`. No cookies, so no CSRF surface; pages are
static files whose script renders all data with `textContent`, under a strict CSP.

| route                          | who       | what                                                   |
|--------------------------------|-----------|--------------------------------------------------------|
| GET  /, /admin                 | anyone    | the static pages (they ask for a token)                |
| GET  /api/me                   | annotator | name and progress                                      |
| GET  /api/guidelines           | annotator | the guidelines text                                    |
| GET  /api/task                 | annotator | the next pair (random left/right order) or done        |
| POST /api/vote                 | annotator | {task_id, choice: A/B/tie, strength: 1-3, comment}     |
| GET  /api/admin/stats          | admin     | progress and live agreement                            |
| GET/POST /api/admin/annotators | admin     | list / create (returns the new token once)             |
| GET  /api/admin/export         | admin     | preference JSONL (?aggregate=votes|majority&ties=0|1)  |

Every integer a client sends (a task id, the id inside a token) must lie in 0..2**63-1 or gets a
4xx; every error is a JSON `{"detail": ...}`. Request rates are limited per token and per client
address in bounded tables (`limits.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from alignkit.errors import AlignkitError
from alignkit.feedback.annotate.limits import RateLimiter
from alignkit.feedback.annotate.store import MAX_ID, Store, TaskNotFound, export_rows

STATIC = Path(__file__).with_name("static")
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Vote(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an `annotator` field in the body is an error, never obeyed

    task_id: int = Field(ge=0, le=MAX_ID)
    choice: Literal["A", "B", "tie"]
    strength: int = Field(2, ge=1, le=3)
    comment: str = Field("", max_length=4000)


class NewAnnotator(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _auth(store: Store, admin_token: str):
    """FastAPI dependencies: `annotator` (returns who the token belongs to) and `admin`."""

    def annotator(request: Request) -> dict:
        token = _bearer(request)
        if token is None:
            raise _unauthorised("log in with your annotator token")
        who = store.authenticate(token)
        if who is None:
            raise _unauthorised("unknown or wrong annotator token")
        request.state.authenticated = True  # the rate limiter stops charging this token to its address
        return who

    def admin(request: Request) -> None:
        token = _bearer(request)
        if token is None:
            raise _unauthorised("admin token required")
        if not hmac.compare_digest(token.encode("utf-8"), admin_token.encode("utf-8")):
            if store.authenticate(token) is not None:
                raise HTTPException(status_code=403, detail="annotator tokens cannot open admin pages")
            raise _unauthorised("wrong admin token")
        request.state.authenticated = True

    return annotator, admin


def _annotator_routes(app: FastAPI, store: Store, annotator, guidelines: str) -> None:
    @app.get("/api/me")
    def me(who: dict = Depends(annotator)):
        return {"name": who["name"], **store.progress(who["id"])}

    @app.get("/api/guidelines")
    def get_guidelines(who: dict = Depends(annotator)):
        return {"text": guidelines}

    @app.get("/api/task")
    def task(who: dict = Depends(annotator)):
        found = store.next_task(who["id"])
        progress = store.progress(who["id"])
        if found is None:
            return {"done": True, "progress": progress}
        return {"done": False, **found, "progress": progress}

    @app.post("/api/vote")
    def vote(body: Vote, who: dict = Depends(annotator)):
        try:
            result = store.vote(who["id"], body.task_id, body.choice, body.strength, body.comment)
        except TaskNotFound:
            raise HTTPException(status_code=404, detail="no such task for this annotator") from None
        return {"ok": True, "pair_id": result["pair_id"], "progress": store.progress(who["id"])}


def _admin_routes(app: FastAPI, store: Store, admin) -> None:
    @app.get("/api/admin/stats", dependencies=[Depends(admin)])
    def stats():
        return store.stats()

    @app.get("/api/admin/annotators", dependencies=[Depends(admin)])
    def list_annotators():
        return store.annotators()

    @app.post("/api/admin/annotators", dependencies=[Depends(admin)])
    def create_annotator(body: NewAnnotator):
        try:
            return store.add_annotator(body.name)
        except AlignkitError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @app.get("/api/admin/export", dependencies=[Depends(admin)])
    def export(aggregate: str = "votes", ties: bool = False):
        try:
            rows = export_rows(store.votes(), aggregate, ties)
        except AlignkitError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return Response(text, media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="annotations.jsonl"'})


def _too_many(wait: float, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(max(1, round(wait)))})


def _body_too_large(request: Request, max_body_bytes: int) -> bool:
    length = request.headers.get("content-length", "")
    if request.method not in ("POST", "PUT", "PATCH"):
        return False
    return not (length.isascii() and length.isdigit() and len(length) <= 18) or int(length) > max_body_bytes


def create_app(store: Store, admin_token: str, guidelines: str = "", max_body_bytes: int = 64 * 1024,
               rate_per_s: float = 20.0, burst: int = 40, address_rate_per_s: float = 20.0, address_burst: int = 100,
               max_tracked: int = 10_000) -> FastAPI:
    """The app over `store`; `admin_token` opens the admin routes, `guidelines` is shown beside each task.

    Requests with bodies over `max_body_bytes` get 413. Each token may make `rate_per_s` requests a
    second (bursts of `burst`); requests without a token, or with one that has not yet authenticated,
    also count against their client address (`address_rate_per_s`, `address_burst`), so floods of
    made-up tokens are limited while annotators sharing an address are not. Over a limit: 429 with
    Retry-After. Each table tracks at most `max_tracked` keys (least recently used dropped first);
    both are in `app.state.limiters`.
    """
    if not admin_token or len(admin_token) < 16 or not admin_token.isascii() or not admin_token.isprintable() or " " in admin_token:
        raise AlignkitError("the admin token must be at least 16 printable ASCII characters without spaces")
    app = FastAPI(title="alignkit annotate", docs_url=None, redoc_url=None, openapi_url=None)
    annotator, admin = _auth(store, admin_token)
    tokens = RateLimiter(rate_per_s, burst, max_tracked)
    addresses = RateLimiter(address_rate_per_s, address_burst, max_tracked)
    app.state.limiters = {"tokens": tokens, "addresses": addresses}

    _limit_requests(app, tokens, addresses, max_body_bytes)
    _error_responses(app)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return FileResponse(STATIC / "admin.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _annotator_routes(app, store, annotator, guidelines)
    _admin_routes(app, store, admin)
    return app


def _limit_requests(app: FastAPI, tokens: RateLimiter, addresses: RateLimiter, max_body_bytes: int) -> None:
    """Body-size and rate limits (per token; per client address until a token has authenticated), and security headers."""
    @app.middleware("http")
    async def limits(request: Request, call_next):
        if _body_too_large(request, max_body_bytes):
            return JSONResponse({"detail": f"request body missing a length or larger than {max_body_bytes} bytes"}, status_code=413)
        token = _bearer(request)
        key = "token:" + hashlib.sha256(token.encode()).hexdigest() if token is not None else None
        if key is None or not tokens.trusted(key):
            wait = addresses.retry_after(request.client.host if request.client else "unknown")
            if wait > 0:
                return _too_many(wait, "too many requests without a valid token from this address; slow down")
        if key is not None:
            wait = tokens.retry_after(key)
            if wait > 0:
                return _too_many(wait, "too many requests for this token; slow down")
        response = await call_next(request)
        if key is not None and getattr(request.state, "authenticated", False):
            tokens.trust(key)
        return response

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def _error_responses(app: FastAPI) -> None:
    """Every failure answers JSON: a user error 400, an out-of-range number 400, anything else 500 (never a reset connection)."""
    @app.exception_handler(AlignkitError)
    def user_error(request: Request, exc: AlignkitError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(OverflowError)
    def out_of_range(request: Request, exc: OverflowError):  # a last guard: every integer input is bounded before this
        return JSONResponse({"detail": f"a number in the request is out of range (0 to {MAX_ID})"}, status_code=400)

    @app.exception_handler(Exception)
    def server_error(request: Request, exc: Exception):
        return JSONResponse({"detail": "internal server error; the server log has the details"}, status_code=500)
