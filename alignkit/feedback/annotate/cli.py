"""`alignkit annotate serve|add-annotator|export`: the human annotation web app and its store."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.data.load import load_rows
from alignkit.feedback.annotate.app import create_app
from alignkit.feedback.annotate.store import export_rows, Store
from alignkit.feedback.judge import read_constitution
from alignkit.io import write_jsonl

ADMIN_TOKEN_ENV = "ALIGNKIT_ADMIN_TOKEN"


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in low..high, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a whole number from {low} to {high}")
        return value

    return parse


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="annotate_command", metavar="action", required=True)
    serve = sub.add_parser("serve", help="run the annotation web app")
    serve.add_argument("--db", required=True, help="SQLite file (created if missing; WAL mode)")
    serve.add_argument("--data", help="pairs to annotate (prompt+chosen+rejected or prompt+response_a+response_b); "
                                      "re-importing the same file adds nothing")
    serve.add_argument("--guidelines", help="Markdown guidelines shown beside each task (default: configs/constitution.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=_bounded_int(1, 65535), default=8000)
    serve.add_argument("--admin-token-file", metavar="PATH",
                       help=f"file holding the admin token (or set ${ADMIN_TOKEN_ENV}); generated and printed when neither is given. "
                            "The token is never taken on the command line, where `ps` shows it to every user")
    serve.add_argument("--admin-token", help=argparse.SUPPRESS)  # only to refuse it with a clear sentence
    serve.add_argument("--overlap", type=float, default=0.2, help="share of imported pairs given to several annotators, for agreement")
    serve.add_argument("--overlap-annotators", type=_bounded_int(2, 1000), default=2, help="annotators per overlapping pair (2-1000)")
    serve.add_argument("--seed", type=_bounded_int(0, 2**63 - 1), default=0, help="which pairs overlap, and the order pairs are handed out")

    add = sub.add_parser("add-annotator", help="create an annotator and print their token")
    add.add_argument("--db", required=True)
    add.add_argument("--name", required=True)

    export = sub.add_parser("export", help="write votes as preference JSONL")
    export.add_argument("--db", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--aggregate", choices=("votes", "majority"), default="votes",
                        help="votes: one row per vote (with annotator); majority: one row per pair with a strict majority")
    export.add_argument("--ties", action="store_true", help="votes mode: also write ties (tie: true, strength 0)")


def _admin_token(path: str | None) -> tuple[str, bool]:
    """The admin token from `--admin-token-file`, else $ALIGNKIT_ADMIN_TOKEN, else a new one; and whether it was generated."""
    if path:
        if not Path(path).is_file():
            raise AlignkitError(f"--admin-token-file {path} is not a file; write the token (16+ characters) into a file only you can read")
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AlignkitError(f"--admin-token-file {path} cannot be read ({exc}); check its permissions and that it holds plain text") from None
        if not token:
            raise AlignkitError(f"--admin-token-file {path} is empty; write the token (16+ characters) into it")
        return token, False
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token, False
    return secrets.token_urlsafe(24), True


def _refuse_token_on_command_line(args) -> None:
    if args.admin_token is not None:
        raise AlignkitError(f"--admin-token is refused because other users can read it in `ps`; "
                            f"put the token in a file and pass --admin-token-file PATH, or set ${ADMIN_TOKEN_ENV}")


def _serve(args) -> None:
    import uvicorn  # the server, needed only by `serve`

    _refuse_token_on_command_line(args)
    token, generated = _admin_token(args.admin_token_file)
    store = Store(args.db)
    if args.data:
        result = store.import_pairs(load_rows(args.data), args.overlap, args.overlap_annotators, args.seed, str(args.data))
        print(f"{args.data}: {result['added']} pairs added ({result['overlap_pairs']} for {args.overlap_annotators} annotators), "
              f"{result['already_present']} already in {args.db}", flush=True)
    if store.pair_count() == 0:
        raise AlignkitError(f"{args.db} holds no pairs; pass --data pairs.jsonl")
    guidelines = read_constitution(args.guidelines)
    app = create_app(store, token, guidelines)
    where = f"http://{args.host}:{args.port}"
    if generated:
        print(f"admin token (generated; pass --admin-token-file PATH or set ${ADMIN_TOKEN_ENV} to fix it): {token}", flush=True)
    print(f"annotators: {where}/   admin: {where}/admin", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: tokens travel in clear text over plain HTTP; put a TLS proxy in front of this server", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def run(args) -> None:
    if args.annotate_command == "serve":
        _serve(args)
    elif args.annotate_command == "add-annotator":
        created = Store(args.db).add_annotator(args.name)
        print(f"annotator {created['name']} (id {created['id']}); token, shown once: {created['token']}")
    elif args.annotate_command == "export":
        _export(args)


def _export(args) -> None:
    if Path(args.out).is_dir():
        raise AlignkitError(f"--out {args.out} is a directory; give a file path such as {Path(args.out) / 'annotations.jsonl'}")
    if not Path(args.db).is_file():
        raise AlignkitError(f"--db {args.db} is not an annotation database file; give the --db that `annotate serve` used")
    rows = export_rows(Store(args.db).votes(), args.aggregate, args.ties)
    try:
        count = write_jsonl(rows, args.out)
    except OSError as exc:
        raise AlignkitError(f"--out {args.out} cannot be written ({exc.strerror or exc}); give a writable file path") from None
    print(f"wrote {count} preference rows to {args.out}")
