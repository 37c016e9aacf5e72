"""`alignkit judge DATA --out OUT.jsonl`: AI feedback with a judge model (pairwise, or critique-and-revise)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.data.load import load_rows
from alignkit.feedback import judge as J
from alignkit.feedback.judge_backends import ANSWER_PREFIX, make_judge
from alignkit.io import write_jsonl


def add_arguments(parser) -> None:
    parser.add_argument("data", help="pairs to judge (prompt+chosen+rejected, or prompt+response_a+response_b); "
                                     "with --mode revise, prompt+completion rows")
    parser.add_argument("--out", required=True, help="output JSONL of preference rows")
    parser.add_argument("--mode", choices=("compare", "revise"), default="compare",
                        help="compare: judge both orders, write rows with a strength; revise: critique and revise each response")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="judge model: alias, Hugging Face directory or hub id")
    parser.add_argument("--answer-prefix", default=None,
                        help="local judge: text that starts its answer so the next token is the verdict (default: 'The better response is Response'; '' to let it answer freely)")
    parser.add_argument("--endpoint", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (replaces --model)")
    parser.add_argument("--endpoint-model", default="default", help="model name sent to the endpoint")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's API key")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds of each endpoint call, retries included")
    parser.add_argument("--retries", type=int, default=3, help="retries per endpoint request (5xx, 429, connection errors)")
    parser.add_argument("--constitution", help="Markdown file of principles (default: configs/constitution.md)")
    parser.add_argument("--limit", type=int, default=0, help="judge only the first N rows")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--drop-inconsistent", action="store_true", help="drop pairs whose verdict flips with the order")
    parser.add_argument("--min-strength", type=float, default=0.0, help="drop pairs judged weaker than this (0..1)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="revise mode: length of critiques and revisions")
    parser.add_argument("--seed", type=int, default=0, help="revise mode: principle sampling")
    parser.add_argument("--report", help="write the bias/agreement report as JSON here (default: OUT with .report.json)")


def _judge(args):
    if args.endpoint:
        return make_judge(endpoint=args.endpoint, endpoint_model=args.endpoint_model, api_key=os.environ.get(args.api_key_env),
                          timeout=args.timeout, retries=args.retries)
    prefix = ANSWER_PREFIX if args.answer_prefix is None else args.answer_prefix
    return make_judge(args.model, batch_size=args.batch_size, answer_prefix=prefix)


def run(args) -> None:
    if not 0 <= args.min_strength <= 1:
        raise AlignkitError(f"--min-strength must be between 0 and 1, got {args.min_strength}")
    constitution = J.read_constitution(args.constitution)
    rows = load_rows(args.data)
    if args.limit:
        rows = rows[:args.limit]
    judge = _judge(args)
    if args.mode == "revise":
        out, dropped = J.critique_and_revise(judge, constitution, J.response_items(rows, args.data), args.seed, args.max_new_tokens)
        report = {"mode": "revise", "responses": len(rows), "rows": len(out), "dropped": dropped}
    else:
        items, labels = J.pair_items(rows, args.data)
        verdicts = J.judge_pairs(judge, constitution, items)
        out, dropped = J.preference_rows(items, verdicts, labels, judge.name, args.drop_inconsistent, args.min_strength)
        report = {"mode": "compare", "judge": judge.name, **J.bias_report(verdicts, labels), "rows": len(out), "dropped": dropped}
        if getattr(judge, "unparsed", 0):
            report["unparsed_answers"] = judge.unparsed
    write_jsonl(out, args.out)
    report_path = Path(args.report) if args.report else Path(args.out).with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_judge_report(report))
    print(f"wrote {len(out)} rows to {args.out}; report {report_path}")


def format_judge_report(report: dict) -> str:
    if report["mode"] == "revise":
        return f"{report['responses']} responses -> {report['rows']} (revision, original) pairs; dropped: {report['dropped'] or 'none'}"
    lines = [f"judge {report['judge']}: {report['pairs']} pairs judged in both orders"]
    if "agreement" in report:
        lines.append(f"  agreement with labels: {report['agreement']:.3f} (A-slot order {report['agreement_x_first_only']:.3f}, "
                     f"B-slot order {report['agreement_x_second_only']:.3f}, on order-consistent pairs {report['agreement_on_consistent'] if report['agreement_on_consistent'] is None else round(report['agreement_on_consistent'], 3)})")
    lines.append(f"  position bias: slot A picked in {report['first_slot_rate']:.3f} of single-order verdicts "
                 f"(mean P(A) {report['mean_first_slot_prob']:.3f}); self-consistency {report['self_consistency']:.3f} "
                 f"({report['inconsistent_first_slot']:.3f} of pairs always A, {report['inconsistent_second_slot']:.3f} always B)")
    lines.append(f"  mean strength {report['mean_strength']:.3f}; mean probability on 'A'/'B' {report['mean_answer_mass']:.3f}")
    if report["dropped"]:
        lines.append(f"  dropped: {report['dropped']}")
    return "\n".join(lines)
