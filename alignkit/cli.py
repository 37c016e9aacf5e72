"""The `alignkit` command: `alignkit <command> [--config file.yaml] [--key value ...]`.

Training stages share one shape: a config dataclass (YAML file plus `--key value`
overrides, unknown keys refused with a suggestion) and a function that runs it.
Adding a stage is adding a line to `STAGES`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from alignkit.errors import AlignkitError
from alignkit.config import field_help, load_config

# command -> (config class path, run function path, one-line description)
STAGES = {
    "sft": ("alignkit.config:SFTConfig", "alignkit.api:sft", "supervised fine-tuning, loss on responses only"),
    "dpo": ("alignkit.config:DPOConfig", "alignkit.api:dpo", "direct alignment on preference pairs: DPO, IPO, hinge, robust, SimPO, ORPO (--loss)"),
    "kto": ("alignkit.config:KTOConfig", "alignkit.api:kto", "direct alignment on unpaired good/bad completions (KTO)"),
    "ppo": ("alignkit.config:PPOConfig", "alignkit.api:ppo", "online RL: PPO with a value model; REINFORCE, RLOO, GRPO via --advantage"),
    "grpo": ("alignkit.config:GRPOConfig", "alignkit.api:grpo", "online RL: GRPO (G samples per prompt, group baseline, KL in the loss)"),
    "demo": ("alignkit.demo:DemoConfig", "alignkit.demo:run_demo", "the demo pipeline (configs/demo.yaml) on the embedded model and hhh-mini: SFT, labelled samples, reward, rs, GRPO, DPO, eval on test and OOD, report"),
    "rs": ("alignkit.config_sampling:RejectionSamplingConfig", "alignkit.api:rs", "rejection-sampling fine-tuning: N samples per prompt, the best by a labeller, SFT on them"),
    "iterate": ("alignkit.config_sampling:IterateConfig", "alignkit.iterate:run_iterate", "iterated RLHF rounds: sample, label (function, reward model or people), train (DPO/KTO/rs), evaluate; stop when validation stops improving"),
    "reward": ("alignkit.config:RewardConfig", "alignkit.api:reward", "Bradley-Terry reward model on preference pairs (--ensemble K for an ensemble)"),
}
# other commands -> (module path with `add_arguments(parser)` and `run(args)`, description)
COMMANDS = {
    "data": ("alignkit.data_cli", "datasets: make built-in tasks, inspect files"),
    "score": ("alignkit.score", "score (prompt, response) or preference rows with a reward model or ensemble"),
    "judge": ("alignkit.feedback.judge_cli", "AI feedback: a judge model compares responses under a constitution (both orders), or critiques and revises"),
    "annotate": ("alignkit.feedback.annotate.cli", "human pairwise annotation: web app, annotators, export to preference JSONL"),
    "eval": ("alignkit.evaluate.eval_cli", "policy vs reference on held-out prompts: win rates (reward model, gold, judge) with CIs, KL, length, diversity"),
    "report": ("alignkit.evaluate.report", "rebuild RUN_DIR/report.html: plots of reward, KL, length, monitors, win rates, sample answers"),
    "vllm-serve": ("alignkit.rl.vllm_server", "serve a vLLM engine over HTTP for PPO/GRPO rollouts (vllm_mode: server; run from .venv-vllm)"),
    "serve-reward": ("alignkit.rl.serve_reward", "serve a reward model or ensemble over HTTP for --reward_url (POST /score, GET /health)"),
    "pipeline": ("alignkit.pipeline", "SFT -> reward model -> PPO/GRPO and DPO -> eval -> report from one YAML, reusing finished stages"),
}


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _stage_help(config_path: str) -> str:
    cls = _resolve(config_path)
    defaults = cls()
    lines = ["config keys (YAML or --key value):"]
    for name, text in field_help(cls).items():
        lines.append(f"  --{name:<24} {text} [default: {getattr(defaults, name)!r}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align language models with human preferences.")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (config_path, _, text) in STAGES.items():
        stage = sub.add_parser(name, help=text, description=text, epilog=_stage_help(config_path),
                               formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True)
        stage.add_argument("--config", help="YAML config file; --key value options override it")
        stage.add_argument("--num-processes", "--num_processes", type=int, default=1,
                           help="run on N processes (DDP through accelerate; gloo on CPU)")
    for name, (module, text) in COMMANDS.items():
        command = sub.add_parser(name, help=text, description=text)
        importlib.import_module(module).add_arguments(command)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "accelerate", "datasets", "peft", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def _launch_distributed(num_processes: int, argv: list[str]) -> int:
    """Re-runs this command under torchrun with N processes; accelerate picks up the process group."""
    import subprocess

    rest, skip = [], False
    for arg in argv:  # drop our own --num-processes option, keep everything else
        if skip:
            skip = False
        elif arg in ("--num-processes", "--num_processes"):
            skip = True
        elif not arg.startswith(("--num-processes=", "--num_processes=")):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
               "-m", "alignkit.cli", *rest]
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in STAGES and not {"-h", "--help"} & set(argv):
        args, rest = parser.parse_known_args(argv)
    else:
        args, rest = parser.parse_args(argv), []
    if not args.command:
        parser.print_help()
        return 1
    _setup_logging(args.verbose)
    try:
        if args.command in STAGES:
            if args.num_processes < 1:
                raise AlignkitError(f"--num-processes is {args.num_processes}; it must be at least 1 (the number of training "
                                    f"processes): pass --num-processes 1, or N > 1 for DDP")
            config_path, run_path, _ = STAGES[args.command]
            config = load_config(_resolve(config_path), args.config, rest)  # checked here, before any process starts
            if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
                return _launch_distributed(args.num_processes, argv)
            _resolve(run_path)(config)
        else:
            importlib.import_module(COMMANDS[args.command][0]).run(args)
    except AlignkitError as exc:
        print(f"alignkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alignkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
