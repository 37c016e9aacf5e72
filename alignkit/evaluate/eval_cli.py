"""`alignkit eval --policy DIR --reference DIR --data FILE`: a policy against a reference on held-out prompts.

    alignkit eval --policy runs/demo/ppo --reference runs/demo/sft --data runs/demo/data/prompts_test.jsonl \\
        --gold hhh-mini-gold --reward-model runs/demo/reward --judge smollm2-135m-instruct --out runs/demo/eval

Both models answer every prompt greedily; the policy's win rate against the reference is
judged by the reward model (or ensemble), the gold function and the pairwise judge (both
orders, ties allowed; a local model, or an OpenAI-compatible URL with --judge-model NAME),
each with a bootstrap interval; KL(policy || reference) is measured on sampled answers;
length, distinct-1/2 and refusal rate come with it. `--policy` may be given several times
(name=DIR to name them). Results: `<out>/results.json`, answers in
`<out>/answers/`, and `<out>/report.html` (see `alignkit report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.config import field_help, load_config
from alignkit.config_pipeline import EvalConfig
from alignkit.evaluate.compare import evaluate_models, format_table, is_endpoint
from alignkit.evaluate.report import write_report
from alignkit.evaluate.shift import format_shift


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", action="append", required=True, help="policy model or run directory; repeat for several (name=DIR names one)")
    parser.add_argument("--reference", required=True, help="reference model or run directory (e.g. the SFT model); name=DIR names it")
    parser.add_argument("--out", default="", help="output directory (default: <first policy>/eval)")
    parser.add_argument("--config", help="YAML file of the keys below")
    if "judge_model" not in EvalConfig.__dataclass_fields__:  # the endpoint's model name, until EvalConfig holds it
        parser.add_argument("--judge-model", dest="judge_model", default=None, help="the model an endpoint judge (--judge URL "
                            "or --judge-endpoint) is asked for, e.g. gpt-4o-mini [default: the endpoint's default]")
    defaults, helps = EvalConfig(), field_help(EvalConfig)
    for name, text in helps.items():
        spellings = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])  # --gold-samples and --gold_samples, as the stages take
        parser.add_argument(*spellings, dest=name, default=None, help=f"{text} [default: {getattr(defaults, name)!r}]")


def _named(spec: str, fallback: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    stem = Path(spec.rstrip("/")).name
    return (fallback if stem in ("model", "") else stem), spec


def run(args) -> None:
    overrides = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__ and v is not None}
    config = load_config(EvalConfig, args.config, overrides)
    reference, reference_path = _named(args.reference, "reference")
    models = {reference: reference_path}
    for i, spec in enumerate(args.policy, 1):
        name, path = _named(spec, f"policy{i}")
        if name in models:
            name = f"{name}-{i}"
        models[name] = path
    out = Path(args.out or Path(args.policy[0].partition("=")[2] or args.policy[0]) / "eval")
    if not config.gold and not config.reward_model and not config.judge and not config.judge_endpoint:
        raise AlignkitError("nothing to judge the answers with: pass --gold, --reward-model and/or --judge")
    judge_model = getattr(args, "judge_model", None) or ""
    if judge_model and not (config.judge_endpoint or is_endpoint(config.judge)):
        raise AlignkitError("--judge-model names the model of an OpenAI-compatible endpoint; pass the endpoint's URL as --judge")
    results = evaluate_models(models, reference, config, out, judge_model=judge_model)
    print(format_table(results))
    if "shift" in results:
        print(format_shift(results["shift"]))
    print(f"\nresults: {out / 'results.json'}; report: {write_report(out)}")
