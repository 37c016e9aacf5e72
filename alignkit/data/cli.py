"""`alignkit data ...`: make built-in task datasets (inspect and signals join here later)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="action", required=True)
    make = sub.add_parser("make", help="write a built-in task's train/test splits as JSONL")
    make.add_argument("task", help="task name, e.g. hhh-mini")
    make.add_argument("--out", required=True, help="output directory")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--n-train", type=int, default=800)
    make.add_argument("--n-test", type=int, default=100)


def run(args) -> None:
    if args.data_command == "make":
        from alignkit.data.tasks import get_task

        task = get_task(args.task)
        counts = task.write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test)
        for name, count in counts.items():
            print(f"{args.out}/{name}: {count} rows")
