"""`alignkit pipeline configs/demo.yaml`: SFT -> reward model -> PPO or GRPO, and DPO -> eval -> report, from one config.

Everything lands in `workdir`:

    data/        the task's splits (+ prompts_val.jsonl: training prompts held out from RL/DPO for the monitor)
    sft/         LoRA SFT of the base model                       (alignkit sft)
    reward/      reward model (or ensemble) from the SFT model     (alignkit reward)
    grpo/ | ppo/ online RL from the SFT model against the reward   (alignkit grpo / ppo, with the monitor)
    dpo/         DPO from the SFT model on the preference pairs    (alignkit dpo, with the monitor)
    eval/        answers, results.json: base vs SFT vs RL vs DPO   (alignkit eval)
    report.html  one self-contained page                           (alignkit report)
    pipeline.json  stage status and timings, and the final table

A stage whose output already exists is reused (delete its folder, or pass `--force STAGE`,
to redo it). The config's `sft`, `reward`, `rl`, `dpo` and `eval` mappings override the
wiring below key by key; every key is checked against that stage's config class before
anything runs.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

from alignkit.config import (
    DPOConfig, EvalConfig, GRPOConfig, PipelineConfig, PPOConfig, RewardConfig, SFTConfig, config_from_dict, load_config, to_dict,
)
from alignkit import api
from alignkit.errors import AlignkitError
from alignkit.data.load import load_rows
from alignkit.data.tasks import hhh_mini
from alignkit.evaluate.compare import evaluate_models, format_table
from alignkit.evaluate.report import write_report
from alignkit.io import write_json, write_jsonl

log = logging.getLogger("alignkit")
RL_CONFIGS = {"grpo": GRPOConfig, "ppo": PPOConfig}


# ---------------------------------------------------------------- stage configs (the wiring)

def stage_values(config: PipelineConfig) -> dict[str, tuple[type, dict]]:
    """Stage -> (config class, values): paths between stages, then the YAML's overrides."""
    work, data = Path(config.workdir), Path(config.workdir) / "data"
    sft_dir = str(work / "sft")
    common = {"seed": config.seed, "report_to": ["jsonl"]}
    gold = "hhh-mini-gold"
    sft = {"model": config.model, "data": str(data / "sft_train.jsonl"), "eval_data": str(data / "sft_test.jsonl"),
           "output_dir": sft_dir, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 1e-3,
           "batch_size": 8, "max_length": 256, "eval_every": 0, "merge_lora": True, **common}
    reward = {"model": sft_dir, "data": str(data / "preference_train.jsonl"), "eval_data": str(data / "preference_test.jsonl"),
              "output_dir": str(work / "reward"), "eval_every": 0, **common}
    monitor = {"prompts": str(data / "prompts_val.jsonl"), "gold": gold}
    rl = {"model": sft_dir, "data": str(data / "prompts_rl.jsonl"), "reward_model": str(work / "reward"),
          "eval_reward_function": gold, "output_dir": str(work / config.policy), "lora_r": 16, "lora_alpha": 32,
          "lora_dropout": 0.0, **common}
    dpo = {"model": sft_dir, "data": str(data / "preference_rl.jsonl"), "eval_data": str(data / "preference_test.jsonl"),
           "output_dir": str(work / "dpo"), "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, **common}
    evaluation = {"data": str(data / "prompts_test.jsonl"), "gold": gold, "reward_model": str(work / "reward"),
                  "train_prompts": str(data / "prompts_train.jsonl"), "pairs": str(data / "preference_test.jsonl"), "seed": config.seed}
    with_monitor = lambda base, extra: {**base, **extra, "monitor": {**monitor, **extra.get("monitor", {})} if extra.get("monitor") else {}}  # noqa: E731
    return {
        "sft": (SFTConfig, {**sft, **config.sft}),
        "reward": (RewardConfig, {**reward, **config.reward}),
        "policy": (RL_CONFIGS[config.policy], with_monitor(rl, config.rl)),
        "dpo": (DPOConfig, with_monitor(dpo, config.dpo)),
        "eval": (EvalConfig, {**evaluation, **config.eval}),
    }


def stage_configs(config: PipelineConfig) -> dict:
    """Every stage's validated config object; a wrong key fails here, before any training."""
    return {name: config_from_dict(cls, values, f"pipeline {name if name != 'policy' else config.policy}")
            for name, (cls, values) in stage_values(config).items()}


# ---------------------------------------------------------------- data

def write_data(config: PipelineConfig) -> None:
    """The task's splits, plus the RL/DPO training prompts minus `n_val` held out for the monitor."""
    data = Path(config.workdir) / "data"
    if not (data / "prompts_test.jsonl").is_file():
        counts = hhh_mini.write_dataset(data, seed=config.seed, n_train=config.n_train, n_test=config.n_test)
        log.info(f"{config.task} written to {data}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not (data / "prompts_val.jsonl").is_file():
        prompts = load_rows(data / "prompts_train.jsonl")
        val = prompts[len(prompts) - config.n_val:] if config.n_val else []
        held = {r["prompt"] for r in val}
        write_jsonl(val, data / "prompts_val.jsonl")
        write_jsonl(prompts[: len(prompts) - config.n_val], data / "prompts_rl.jsonl")
        write_jsonl([r for r in load_rows(data / "preference_train.jsonl") if r["prompt"] not in held], data / "preference_rl.jsonl")


# ---------------------------------------------------------------- stages

def _done(path: Path) -> bool:
    return path.is_file()


def stage_output(name: str, config: PipelineConfig) -> Path:
    """The file whose presence means the stage is finished."""
    work = Path(config.workdir)
    return {"sft": work / "sft" / "model" / "config.json", "reward": work / "reward" / "summary.json",
            "policy": work / config.policy / "summary.json", "dpo": work / "dpo" / "summary.json",
            "eval": work / "eval" / "results.json", "report": work / "report.html"}[name]


def run_stage(name: str, configs: dict, pipeline: PipelineConfig):
    """Runs one pipeline stage; training stages go through alignkit.api, which builds their monitors."""
    if name in ("sft", "reward", "dpo"):
        return api.run_stage(name, configs[name])
    if name == "policy":
        return api.run_online(configs["policy"], pipeline.policy)
    if name == "eval":
        return evaluate_models(eval_models(pipeline), "sft", configs["eval"], Path(pipeline.workdir) / "eval")
    if name == "report":
        return write_report(pipeline.workdir)
    raise AlignkitError(f"unknown stage {name!r}")


def eval_models(pipeline: PipelineConfig) -> dict[str, str]:
    """The base model (with `eval_base`), SFT and every policy stage of this pipeline that has a model."""
    work = Path(pipeline.workdir)
    models = {"base": pipeline.model} if pipeline.eval_base else {}
    models["sft"] = str(work / "sft")
    for name in (pipeline.policy, "dpo"):
        if (work / name / "model" / "config.json").is_file():
            models[name] = str(work / name)
    return models


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(config: PipelineConfig, force: tuple[str, ...] = ()) -> dict:
    """Runs the configured stages in order, reusing finished ones; returns (and writes) pipeline.json's content."""
    started, cpu_started = time.time(), _cpu_seconds()
    configs = stage_configs(config)
    stages = ["policy" if s in ("ppo", "grpo") else s for s in config.stages]
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    write_data(config)
    record = {"config": to_dict(config), "stages": {}}
    for number, name in enumerate(stages, 1):
        label = config.policy if name == "policy" else name
        output = stage_output(name, config)
        if _done(output) and name not in force and label not in force and name != "report":
            log.info(f"[{number}/{len(stages)}] {label}: done already ({output}); reusing it")
            record["stages"][label] = {"status": "reused", "seconds": 0.0, "cpu_seconds": 0.0}
            continue
        log.info(f"[{number}/{len(stages)}] {label}")
        stage_started, stage_cpu = time.time(), _cpu_seconds()
        run_stage(name, configs, config)
        record["stages"][label] = {"status": "ran", "seconds": time.time() - stage_started, "cpu_seconds": _cpu_seconds() - stage_cpu}
        log.info(f"{label}: {record['stages'][label]['seconds']:.0f}s wall, {record['stages'][label]['cpu_seconds']:.0f}s CPU")
    record["seconds"], record["cpu_seconds"] = time.time() - started, _cpu_seconds() - cpu_started
    results_file = work / "eval" / "results.json"
    if results_file.is_file():
        import json

        results = json.loads(results_file.read_text())
        record["table"] = format_table(results, [n for n in ("base", "sft", config.policy, "dpo") if n in results["models"]])
        record["results"] = {"models": results["models"], "reference": results["reference"], "prompts": results["prompts"]}
    write_json(work / "pipeline.json", record)
    if "report" in stages:  # again, so the page shows the final table and timings

        write_report(work)
    print(format_final(record, work))
    return record


def format_final(record: dict, work: Path) -> str:
    lines = ["", "stage timings (wall / CPU seconds):"]
    for name, stage in record["stages"].items():
        lines.append(f"  {name:<8} {stage['status']:<7} {stage['seconds']:>6.0f} / {stage['cpu_seconds']:>6.0f}")
    lines.append(f"  {'total':<16} {record['seconds']:>6.0f} / {record['cpu_seconds']:>6.0f}")
    if record.get("table"):
        lines += ["", record["table"]]
    if (work / "report.html").is_file():
        lines.append(f"\nreport: {work / 'report.html'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- `alignkit pipeline`

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML (e.g. configs/demo.yaml)")
    parser.add_argument("--workdir", help="override the config's workdir")
    parser.add_argument("--force", action="append", default=[], help="rerun this stage even if its output exists (repeatable)")


def run(args) -> None:
    overrides = {"workdir": args.workdir} if args.workdir else {}
    run_pipeline(load_config(PipelineConfig, args.config, overrides), tuple(args.force))
