"""`alignkit pipeline FILE.yaml`: SFT -> reward model -> PPO or GRPO, and DPO -> eval -> report, from one config,
on your own data (`data:`) or a preset task (`task: hhh-mini`, what `alignkit demo` runs).

Everything lands in `workdir`:

    data/        the splits every stage reads: {sft,preference,prompts}_{train,test}.jsonl, and prompts_val.jsonl
                 (training prompts held out from RL/DPO for the monitor) with prompts_rl / preference_rl (the rest)
    sft/         LoRA SFT of the base model                       (alignkit sft)
    reward/      reward model (or ensemble)                       (alignkit reward)
    grpo/ | ppo/ online RL against the reward                     (alignkit grpo / ppo, with the monitor)
    dpo/         DPO on the preference pairs                      (alignkit dpo, with the monitor)
    eval/        answers, results.json: base vs SFT vs RL vs DPO  (alignkit eval)
    report.html  one self-contained page                          (alignkit report)
    pipeline.json  stage status and timings, and the final table

Data. A preset writes its generated files into data/. Your own `data:` names up to three sources, each a
file, folder, `save_to_disk` folder or hub id with an optional `split`, hub `config` and held-out `test`
source: `sft` (SFT rows), `preference` (prompt, chosen, rejected) and `prompts` (defaults to the
preference pairs' prompts). A source without `test` uses its own test split when it has one, else
`data.test_fraction` of its rows held out with the seed (pairs and prompts by prompt, so no test prompt
is trained on). Every source is read and checked (it exists, it is readable, it holds the kind of rows
its stages need) before anything is written or any model loads, then copied into data/; the copy is
reused while `data:`, `seed` and `n_val` stay the same (delete data/ to read the sources again).

Stages. `stages:` picks and orders them (a list, or stage: true/false); the first trained stage starts
from `model`: SFT -> DPO only, or DPO straight from the base model, are just shorter lists. A stage
whose input is missing (RL without a reward model or function, DPO without pairs) is a config error.
The config's `sft`, `reward`, `rl`, `dpo` and `eval` mappings override the wiring below key by key;
every key is checked against that stage's config class before anything runs.

Evaluation. Every model answers the test prompts; the table gives win rates against SFT (or the base
model when there is no SFT stage) with 95% intervals by each scorer configured: a pairwise judge
(`eval.judge`: a model, or an OpenAI-compatible URL with `eval.judge_model`; both orders, ties
allowed), the trained reward model (`eval.reward_model`, on when the reward stage runs) and a Python
function (`eval.function`, or the preset's gold judge); then KL, length and refusal rate.

A stage whose output already exists is reused (delete its folder, or pass `--force STAGE`, to redo it).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, NamedTuple

from alignkit.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, config_from_dict, config_with_overrides, load_config, to_dict
from alignkit.config_pipeline import DataSource, EvalConfig, PipelineConfig
from alignkit import api
from alignkit.pipeline_samples import SamplesConfig, run_samples
from alignkit.errors import AlignkitError
from alignkit.data.formats import ANSWER_COLUMNS, PROMPT_KINDS, detect_format, load_dataset, require_kind, screen_nulls, validate_rows
from alignkit.data.load import Row, has_split, load_rows
from alignkit.data.split import split_holdout
from alignkit.data.tasks import hhh_mini
from alignkit.evaluate.compare import evaluate_models, format_table
from alignkit.evaluate.report import write_report
from alignkit.io import write_json, write_jsonl
from alignkit.train.dpo import PAIR_KINDS
from alignkit.train.sft import SFT_KINDS

log = logging.getLogger("alignkit")
RL_CONFIGS = {"grpo": GRPOConfig, "ppo": PPOConfig}


class Preset(NamedTuple):
    """A built-in task: what writes its data into <workdir>/data, its gold function, and model settings for every stage."""

    write: Callable  # write(out_dir, seed, n_train, n_test, n_ood) -> {file: rows}
    gold: str
    model_args: dict


# hhh-mini's rows are standard strings its models were always trained on through the chat template
PRESETS = {"hhh-mini": Preset(hhh_mini.write_dataset, "hhh-mini-gold", {"chat_template": "always"})}
SOURCE_KINDS = {"sft": SFT_KINDS, "preference": PAIR_KINDS, "prompts": PROMPT_KINDS}
SOURCE_USE = {"sft": "the SFT stage", "preference": "the reward model and DPO", "prompts": "RL and the evaluation"}


# ---------------------------------------------------------------- stage configs (the wiring)

def _model_args(config: PipelineConfig, cls: type) -> dict:
    """The preset's model settings that `cls` has (chat_template: always for hhh-mini)."""
    names = {f.name for f in fields(cls)}
    args = PRESETS[config.preset].model_args if config.preset else {}
    return {k: v for k, v in args.items() if k in names}


def gold_function(config: PipelineConfig) -> str:
    """The Python scorer: `eval.function` (or `eval.gold`), else the preset's gold judge; empty when there is none."""
    return config.eval.get("function") or config.eval.get("gold") or (PRESETS[config.preset].gold if config.preset else "")


def eval_values(config: PipelineConfig, data: Path, reward_dir: str, gold: str) -> dict:
    """The evaluation's EvalConfig values: the pipeline's `eval:` keys translated (function, reward_model: true/false, judge_model)."""
    section = {k: v for k, v in config.eval.items() if k not in ("function", "judge_model", "reward_model", "ood")}
    reward_model = config.eval.get("reward_model", True)
    values = {"data": str(data / "prompts_test.jsonl"), "gold": gold,
              "reward_model": reward_dir if reward_model in (True, None) else (reward_model or ""), "seed": config.seed}
    if config.preset or config.data_sources().preference is not None:  # the shift report: reward model by distance to training prompts
        values.update(train_prompts=str(data / "prompts_train.jsonl"), pairs=str(data / "preference_test.jsonl"))
    return {**values, **_model_args(config, EvalConfig), **section}


def stage_values(config: PipelineConfig) -> dict[str, tuple[type, dict]]:
    """Stage -> (config class, values) for the configured stages: paths between stages, then the YAML's overrides."""
    work, data = Path(config.workdir), Path(config.workdir) / "data"
    stages = config.stage_names()
    start = str(work / "sft") if "sft" in stages else config.model  # what every later stage starts from
    reward_dir = str(work / "reward") if "reward" in stages else ""
    samples_dir = work / "samples" if "samples" in stages else None  # on-policy data for reward, rs and DPO
    gold = gold_function(config)
    common = {"seed": config.seed, "report_to": list(config.report_to)}
    lora = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
    sft = {"model": config.model, "data": str(data / "sft_train.jsonl"), "eval_data": str(data / "sft_test.jsonl"),
           "output_dir": str(work / "sft"), **lora, "learning_rate": 1e-3, "batch_size": 8, "max_length": 256, "eval_every": 0,
           "merge_lora": True, **common}
    reward = {"model": start, "data": str(samples_dir / "reward_pairs.jsonl" if samples_dir else data / "preference_train.jsonl"), "eval_data": str(data / "preference_test.jsonl"),
              "output_dir": str(work / "reward"), "eval_every": 0, **common}
    monitor = {"prompts": str(data / "prompts_val.jsonl"), "gold": gold}
    rl = {"model": start, "data": str(data / "prompts_rl.jsonl"), "reward_model": reward_dir, "eval_reward_function": gold,
          "output_dir": str(work / config.policy), **lora, **common}
    dpo = {"model": start, "data": str(samples_dir / "pairs.jsonl" if samples_dir else data / "preference_rl.jsonl"), "eval_data": str(data / "preference_test.jsonl"),
           "output_dir": str(work / "dpo"), **lora, **common}
    samples = {"model": start, "prompts": str(data / "prompts_rl.jsonl"), "output_dir": str(work / "samples"), "seed": config.seed,
               "task_pairs": str(data / "preference_train.jsonl") if config.preset or config.data_sources().preference else "",
               "reward_function": gold if config.preset else ""}
    rs = {**sft, "model": start, "data": str(work / "samples" / "best.jsonl"), "eval_data": "", "eval_fraction": 0.0,
          "output_dir": str(work / "rs")}
    with_monitor = lambda base, extra: {**base, **extra, "monitor": {**monitor, **extra.get("monitor", {})} if extra.get("monitor") else {}}  # noqa: E731
    values = {
        "sft": (SFTConfig, {**sft, **_model_args(config, SFTConfig), **config.sft}),
        "samples": (SamplesConfig, {**samples, **_model_args(config, SamplesConfig), **config.samples}),
        "reward": (RewardConfig, {**reward, **_model_args(config, RewardConfig), **config.reward}),
        "rs": (SFTConfig, {**rs, **_model_args(config, SFTConfig), **config.rs}),
        "policy": (RL_CONFIGS[config.policy], with_monitor({**rl, **_model_args(config, RL_CONFIGS[config.policy])}, config.rl)),
        "dpo": (DPOConfig, with_monitor({**dpo, **_model_args(config, DPOConfig)}, config.dpo)),
        "eval": (EvalConfig, eval_values(config, data, reward_dir, gold)),
    }
    return {name: values[name] for name in values if name in stages}


def stage_configs(config: PipelineConfig) -> dict:
    """Every configured stage's validated config object; a wrong key fails here, before any training."""
    return {name: config_from_dict(cls, values, f"pipeline {name if name != 'policy' else config.policy}")
            for name, (cls, values) in stage_values(config).items()}


# ---------------------------------------------------------------- data: reading and checking your own sources

def _key(prompt) -> str:
    """A hashable key for a prompt (a string or a list of messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _hub_config_rows(name: str, config_name: str, split: str, kinds: tuple, stage: str) -> list[dict]:
    """A hub dataset's config (subset), checked as `load_dataset` checks a source (it takes no config name)."""
    import datasets  # heavy; only for a hub config

    try:
        rows = datasets.load_dataset(name, config_name, split=split).to_list()
    except Exception as exc:  # network, auth, missing dataset, config or split
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise AlignkitError(f"could not load hub dataset {name} (config {config_name!r}, split {split!r}): {reason}; "
                            f"check the name, config and split") from None
    rows = [Row(row, name, number) for number, row in enumerate(rows, start=1)]
    if not rows:
        raise AlignkitError(f"{name} (config {config_name!r}, split {split!r}) is empty: it holds no rows")
    fmt = detect_format(rows, name)
    require_kind(fmt, kinds, name, stage)
    rows, _ = screen_nulls(rows, fmt, name)
    return validate_rows(rows, fmt, name)


def _read(name: str, path: str, split: str, config_name: str) -> list[dict]:
    """The rows of one source, checked for the kind `data.<name>` needs; errors name the key."""
    kinds, stage = SOURCE_KINDS[name], SOURCE_USE[name]
    try:
        if config_name:
            return _hub_config_rows(path, config_name, split, kinds, stage)
        return load_dataset(path, kinds, stage, split)[0]
    except AlignkitError as exc:
        raise AlignkitError(f"data.{name}: {exc}") from None


def _by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded held-out split of whole prompts: every row of a prompt lands on the same side."""
    keys = list(dict.fromkeys(_key(r["prompt"]) for r in rows))
    train_keys = set(split_holdout(keys, fraction, seed)[0])
    return [r for r in rows if _key(r["prompt"]) in train_keys], [r for r in rows if _key(r["prompt"]) not in train_keys]


def _own_split(name: str, source: DataSource) -> list[dict] | None:
    """The source's own `test_split` rows, or None when it has no such split."""
    if source.split == source.test_split:
        return None
    if source.config:  # a hub config: has_split knows no config name, so try it
        try:
            return _hub_config_rows(source.path, source.config, source.test_split, SOURCE_KINDS[name], SOURCE_USE[name])
        except AlignkitError:
            return None
    return _read(name, source.path, source.test_split, "") if has_split(source.path, source.test_split) else None


def read_source(name: str, source: DataSource, fraction: float, seed: int) -> tuple[list[dict], list[dict], str]:
    """(training rows, held-out rows, where the held-out rows came from) of `data.<name>`."""
    train = _read(name, source.path, source.split, source.config)
    if source.test:
        return train, _read(name, source.test, source.test_split, source.config), source.test
    test = _own_split(name, source)
    if test is not None:
        files = {getattr(r, "source", source.path) for r in test} - {str(source.path)}  # a folder's test files
        return [r for r in train if getattr(r, "source", None) not in files], test, f"{source.path} split {source.test_split}"
    split = split_holdout(train, fraction, seed) if name == "sft" else _by_prompt(train, fraction, seed)
    return *split, f"{fraction:g} of {source.path} held out with seed {seed}"


def prompt_rows(rows: list[dict]) -> list[dict]:
    """One row per distinct prompt, without the answers (other columns stay: reward and gold functions receive them)."""
    seen, out = set(), []
    for row in rows:
        key = _key(row["prompt"])
        if key not in seen:
            seen.add(key)
            out.append({k: v for k, v in row.items() if k not in ANSWER_COLUMNS + ("margin", "strength")})
    return out


def _data_key(config: PipelineConfig) -> dict:
    return {"data": config.data, "seed": config.seed, "n_val": config.n_val}


def read_data(config: PipelineConfig) -> dict | None:
    """Your own data's splits ({file stem: rows}) and where each came from, every source read and checked; None for a
    preset, or when <workdir>/data already holds the copy of the same `data:` (then it is reused)."""
    if config.preset:
        return None
    record = Path(config.workdir) / "data" / "sources.json"
    if record.is_file() and json.loads(record.read_text()).get("key") == _data_key(config):
        log.info(f"data: reusing {record.parent} (the copy of the same data: section; delete it to read the sources again)")
        return None
    sources, splits, origin = config.data_sources(), {}, {}
    for name in ("sft", "preference", "prompts"):
        source = getattr(sources, name)
        if source is not None:
            splits[f"{name}_train"], splits[f"{name}_test"], origin[name] = read_source(name, source, sources.test_fraction, config.seed)
    if sources.prompts is None and sources.preference is not None:
        splits["prompts_train"], splits["prompts_test"] = (prompt_rows(splits[f"preference_{s}"]) for s in ("train", "test"))
        origin["prompts"] = "the prompts of data.preference"
    elif "prompts_train" in splits:
        splits["prompts_train"], splits["prompts_test"] = prompt_rows(splits["prompts_train"]), prompt_rows(splits["prompts_test"])
    for name, rows in splits.items():
        if not rows:
            raise AlignkitError(f"data.{name.rpartition('_')[0]}: no {name.rpartition('_')[2]} rows ({origin[name.rpartition('_')[0]]}); "
                                f"give more rows, a larger data.test_fraction or a `test` source")
    prompts = splits.get("prompts_train", [])
    if prompts and config.n_val >= len(prompts):
        raise AlignkitError(f"n_val ({config.n_val}) must be below the {len(prompts)} training prompts ({origin['prompts']}): "
                            f"the monitor's held-out prompts come out of them; lower n_val")
    return {"splits": splits, "origin": origin}


# ---------------------------------------------------------------- data: writing <workdir>/data

def write_data(config: PipelineConfig, read: dict | None) -> None:
    """The preset's generated files, or the copy of your own sources; then the RL/DPO training prompts minus `n_val`
    held out for the monitor."""
    data = Path(config.workdir) / "data"
    if config.preset:
        if not (data / "prompts_test.jsonl").is_file():
            counts = PRESETS[config.preset].write(data, seed=config.seed, n_train=config.n_train, n_test=config.n_test, n_ood=config.n_ood)
            log.info(f"{config.preset} written to {data}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if not (data / "prompts_val.jsonl").is_file():
            prompts = load_rows(data / "prompts_train.jsonl")
            keep = len(prompts) - config.n_val
            write_monitor_split(data, prompts[:keep], prompts[keep:] if config.n_val else [], data / "preference_train.jsonl")
        return
    if read is None:  # reused
        return
    for name, rows in read["splits"].items():
        write_jsonl(rows, data / f"{name}.jsonl")
    prompts = read["splits"].get("prompts_train", [])
    if prompts:
        rl, val = split_holdout(prompts, config.n_val / len(prompts), config.seed) if config.n_val else (prompts, [])
        pairs = data / "preference_train.jsonl" if "preference_train" in read["splits"] else None
        write_monitor_split(data, rl, val, pairs)
    counts = {name: len(rows) for name, rows in read["splits"].items()}
    write_json(data / "sources.json", {"key": _data_key(config), "held_out": read["origin"], "rows": counts})
    log.info(f"data copied to {data}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def write_monitor_split(data: Path, rl: list[dict], val: list[dict], pairs: Path | None) -> None:
    """prompts_val.jsonl (the monitor's held-out prompts), prompts_rl.jsonl and preference_rl.jsonl (the rest, for RL and DPO)."""
    held = {_key(r["prompt"]) for r in val}
    write_jsonl(val, data / "prompts_val.jsonl")
    write_jsonl(rl, data / "prompts_rl.jsonl")
    if pairs is not None:
        write_jsonl([r for r in load_rows(pairs) if _key(r["prompt"]) not in held], data / "preference_rl.jsonl")


# ---------------------------------------------------------------- stages

def _done(path: Path) -> bool:
    return path.is_file()


def stage_output(name: str, config: PipelineConfig) -> Path:
    """The file whose presence means the stage is finished."""
    work = Path(config.workdir)
    return {"sft": work / "sft" / "model" / "config.json", "reward": work / "reward" / "summary.json",
            "samples": work / "samples" / "summary.json", "rs": work / "rs" / "model" / "config.json",
            "policy": work / config.policy / "summary.json", "dpo": work / "dpo" / "summary.json",
            "eval": work / "eval" / "results.json", "report": work / "report.html"}[name]


def run_stage(name: str, configs: dict, pipeline: PipelineConfig):
    """Runs one pipeline stage; training stages go through alignkit.api, which builds their monitors."""
    if name in ("sft", "reward", "dpo"):
        return api.run_stage(name, configs[name])
    if name == "rs":
        return api.run_stage("sft", configs[name])
    if name == "samples":
        return run_samples(configs[name])
    if name == "policy":
        return api.run_online(configs["policy"], pipeline.policy)
    if name == "eval":
        models, reference = eval_models(pipeline)
        out, judge_model = Path(pipeline.workdir) / "eval", pipeline.eval.get("judge_model", "")
        results = evaluate_models(models, reference, configs["eval"], out, judge_model=judge_model)
        ood = ood_eval_config(pipeline, configs["eval"])
        if ood is not None:  # the same models on prompts phrased unlike anything trained on; no KL (the test set has it)
            evaluate_models(models, reference, ood, out / "ood", judge_model=judge_model)
        return results
    if name == "report":
        return write_report(pipeline.workdir)
    raise AlignkitError(f"unknown stage {name!r}")


def ood_eval_config(pipeline: PipelineConfig, test: EvalConfig) -> EvalConfig | None:
    """The evaluation on out-of-distribution prompts: `eval.ood` (a prompts file, e.g. another dataset), else the
    preset's held-out phrasings (data/prompts_ood.jsonl, with preference_ood.jsonl for the reward model's accuracy)."""
    data = Path(pipeline.workdir) / "data"
    if pipeline.eval.get("ood") is False:  # eval.ood: false skips it (while choosing settings on validation prompts)
        return None
    prompts = pipeline.eval.get("ood") or (str(data / "prompts_ood.jsonl") if (data / "prompts_ood.jsonl").is_file() else "")
    if not prompts:
        return None
    pairs = str(data / "preference_ood.jsonl") if (data / "preference_ood.jsonl").is_file() and not pipeline.eval.get("ood") else ""
    return config_with_overrides(EvalConfig, test, {"data": prompts, "kl_samples": 0, "pairs": pairs if test.pairs else ""}, "eval.ood")


def eval_models(pipeline: PipelineConfig) -> tuple[dict[str, str], str]:
    """(name -> model, the reference's name): the base model (with `eval_base`, or as the reference when there is no
    SFT stage), SFT and every policy stage of this pipeline that has a model."""
    work, stages = Path(pipeline.workdir), pipeline.stage_names()
    reference = "sft" if "sft" in stages else "base"
    models = {"base": pipeline.model} if pipeline.eval_base or reference == "base" else {}
    if "sft" in stages:
        models["sft"] = str(work / "sft")
    for name, stage in (("rs", "rs"), (pipeline.policy, "policy"), ("dpo", "dpo")):
        if stage in stages and (work / name / "model" / "config.json").is_file():
            models[name] = str(work / name)
    return models, reference


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(config: PipelineConfig, force: tuple[str, ...] = ()) -> dict:
    """Runs the configured stages in order, reusing finished ones; returns (and writes) pipeline.json's content."""
    started, cpu_started = time.time(), _cpu_seconds()
    configs = stage_configs(config)
    stages = config.stage_names()
    read = read_data(config)  # every source read and checked before anything is written
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    write_data(config, read)
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
    if "eval" in stages and results_file.is_file():
        results = json.loads(results_file.read_text())
        ood_file = work / "eval" / "ood" / "results.json"
        ood = json.loads(ood_file.read_text()) if ood_file.is_file() else None
        record["table"] = format_table(results, [n for n in ("base", "sft", "rs", config.policy, "dpo") if n in results["models"]], ood)
        record["results"] = {"models": results["models"], "reference": results["reference"], "prompts": results["prompts"],
                             **{k: results[k] for k in ("gold_samples", "gold_temperature") if k in results}}
        if ood:
            record["results"]["ood"] = {"models": ood["models"], "prompts": ood["prompts"], "shift": ood.get("shift")}
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
    parser.add_argument("config", help="pipeline YAML (e.g. configs/demo.yaml, configs/pipeline_own_data.yaml)")
    parser.add_argument("--workdir", help="override the config's workdir")
    parser.add_argument("--force", action="append", default=[], help="rerun this stage even if its output exists (repeatable)")


def run(args) -> None:
    overrides = {"workdir": args.workdir} if args.workdir else {}
    run_pipeline(load_config(PipelineConfig, args.config, overrides), tuple(args.force))
