"""`alignkit data ...`: make built-in task datasets, inspect a dataset's quality, turn implicit signals into data."""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="action", required=True)
    make = sub.add_parser("make", help="write a built-in task's train/test splits as JSONL")
    make.add_argument("task", help="task name, e.g. hhh-mini")
    make.add_argument("--out", required=True, help="output directory")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--n-train", type=int, default=800)
    make.add_argument("--n-test", type=int, default=100)
    inspect = sub.add_parser("inspect", help="quality report: formats, duplicates, leakage, length bias, strength, diversity, topics, agreement")
    inspect.add_argument("file", help="dataset file or directory")
    inspect.add_argument("--test", help="held-out file to check for train/test prompt leakage")
    inspect.add_argument("--html", help="also write a self-contained HTML report here")
    inspect.add_argument("--json", help="also write the report's numbers as JSON here")
    inspect.add_argument("--clusters", type=int, default=0, help="topic clusters (0: about sqrt(prompts / 2))")
    inspect.add_argument("--near-threshold", type=float, default=0.8, help="word 3-gram Jaccard at which rows count as near duplicates")
    inspect.add_argument("--no-embeddings", action="store_true", help="skip embedding spread and topics (no model load)")
    signals = sub.add_parser("from-signals", help="implicit signals (thumbs, regenerations) -> KTO rows and preference pairs")
    signals.add_argument("logs", help="JSONL log, one line per response shown")
    signals.add_argument("--out", required=True, help="output directory: kto.jsonl, preference.jsonl, signals_summary.json")
    signals.add_argument("--rules", help="YAML file of rules (see alignkit.feedback.signals.SignalRules)")


def run(args) -> None:
    if args.data_command == "make":
        from alignkit.data.tasks import get_task

        task = get_task(args.task)
        counts = task.write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test)
        for name, count in counts.items():
            print(f"{args.out}/{name}: {count} rows")
    elif args.data_command == "inspect":
        from alignkit.feedback.inspect import run_inspect

        run_inspect(args)
    elif args.data_command == "from-signals":
        from alignkit.feedback.signals import run_from_signals

        run_from_signals(args)
