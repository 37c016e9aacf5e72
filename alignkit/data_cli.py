"""`alignkit data ...`: make built-in task datasets, inspect a dataset's quality, turn implicit signals into data,
sample on-policy preference pairs."""

from __future__ import annotations
from alignkit.data.tasks import get_task
from alignkit.feedback.inspect import run_inspect
from alignkit.feedback.on_policy import run_sample_pairs
from alignkit.feedback.signals import run_from_signals


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="action", required=True)
    make = sub.add_parser("make", help="write a built-in task's train/test/ood splits as JSONL")
    make.add_argument("task", help="task name, e.g. hhh-mini")
    make.add_argument("--out", required=True, help="output directory")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--n-train", type=int, default=800)
    make.add_argument("--n-test", type=int, default=100)
    make.add_argument("--n-ood", type=int, default=100, help="held-out prompts in phrasings unseen in train and test")
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
    pairs = sub.add_parser("sample-pairs", help="on-policy pairs: K samples per prompt from a model, scored, best vs worst")
    pairs.add_argument("--model", required=True, help="the model to sample from (usually the SFT model): alias, directory or hub id")
    pairs.add_argument("--prompts", required=True, help="rows with a `prompt` column (file, directory or hub id)")
    pairs.add_argument("--out", required=True, help="output JSONL of preference rows (prompt, chosen, rejected, strength, scores)")
    pairs.add_argument("--reward-function", help="module:function, path/file.py:function or a registered name such as hhh-mini-gold")
    pairs.add_argument("--reward-model", help="reward model or ensemble directory")
    pairs.add_argument("--reward-url", help="an HTTP reward server")
    pairs.add_argument("--samples", type=int, default=4, help="samples per prompt (G)")
    pairs.add_argument("--max-new-tokens", type=int, default=64)
    pairs.add_argument("--max-prompt-length", type=int, default=512, help="longer prompts are skipped (counted)")
    pairs.add_argument("--temperature", type=float, default=1.0)
    pairs.add_argument("--top-p", type=float, default=1.0)
    pairs.add_argument("--min-gap", type=float, default=0.0, help="keep a pair only when best - worst >= this")
    pairs.add_argument("--keep-truncated", action="store_true", help="let responses cut at --max-new-tokens be chosen or rejected")
    pairs.add_argument("--batch-size", type=int, default=64, help="responses sampled together")
    pairs.add_argument("--split", default="train", help="split of a datasets directory or hub id")
    pairs.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.add_argument("--no-bf16", action="store_true", help="sample without bf16 autocast")


def run(args) -> None:
    if args.data_command == "make":
        task = get_task(args.task)
        counts = task.write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, n_ood=args.n_ood)
        for name, count in counts.items():
            print(f"{args.out}/{name}: {count} rows")
    elif args.data_command == "inspect":
        run_inspect(args)
    elif args.data_command == "from-signals":
        run_from_signals(args)
    elif args.data_command == "sample-pairs":
        run_sample_pairs(args)
