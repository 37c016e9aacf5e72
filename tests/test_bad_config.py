"""Every bad config value is refused when the config loads, as one sentence naming the key, before any
model loads and before any output folder exists.

The corpus is built from the config dataclasses by reflection (NaN for every float key of every
command, a value just outside every declared range, a fraction for every whole-number key), plus
the cases users reported, YAML-only values (lists, `rewards:` entries, `.nan`), the pipeline, the
demo and `alignkit eval`. Each case runs the real command line (`alignkit.cli.main`). Hypothesis
then checks the ranges themselves: any float outside a key's range is refused, any inside accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.cli import STAGES, _resolve, main
from alignkit.config import MonitorConfig, config_from_dict, load_config
from alignkit.config_pipeline import EvalConfig, PipelineConfig
from alignkit.config_loader import Bounds, _number_kind, _section_class, field_bounds
from alignkit.errors import AlignkitError

TRAINING = ("sft", "reward", "dpo", "kto", "ppo", "grpo")
CLASSES = {command: _resolve(STAGES[command][0]) for command in TRAINING}
BASE_ARGS = {command: ["--reward_function", "x:y"] if command in ("ppo", "grpo") else [] for command in TRAINING}
BASE_VALUES = {command: {"reward_function": "x:y"} if command in ("ppo", "grpo") else {} for command in TRAINING}


# ---------------------------------------------------------------- the corpus, from the dataclasses

def numeric_keys(cls, prefix: str = "") -> list[tuple[str, type, Bounds | None]]:
    """(key, int or float, bounds) for every numeric field, nested sections included as `monitor.every`."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section = _section_class(hints[f.name])
        if section is not None:
            keys += numeric_keys(section, f"{prefix}{f.name}.")
        elif _number_kind(hints[f.name]):
            keys.append((prefix + f.name, _number_kind(hints[f.name]), field_bounds(cls, f.name)))
    return keys


def _text(value) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def outside(kind: type, bounds: Bounds) -> list[str]:
    """Values just outside the range, as typed on the command line."""
    step = 1 if kind is int else 0.5
    values = []
    if bounds.ge is not None:
        values.append(bounds.ge - step)
    if bounds.gt is not None:
        values.append(bounds.gt)
    if bounds.le is not None:
        values.append(bounds.le + step)
    if bounds.lt is not None:
        values.append(bounds.lt)
    return [_text(v) for v in values if v not in bounds.allow]


def inside(kind: type, bounds: Bounds) -> list[str]:
    """Values at the edges of the range (and those allowed outside it), as typed on the command line."""
    step = 1 if kind is int else 1e-6
    values = list(bounds.allow)
    values += [bounds.ge] if bounds.ge is not None else [bounds.gt + step] if bounds.gt is not None else []
    values += [bounds.le] if bounds.le is not None else [bounds.lt - step] if bounds.lt is not None else []
    return [_text(v) for v in values]


def yaml_for(command: str, key: str, value: str) -> str:
    """A config file setting `key` (or `monitor.key`) to the YAML text `value`."""
    head, _, name = key.partition(".")
    body = f"{head}:\n  {name}: {value}\n" if name else f"{key}: {value}\n"
    return ("reward_function: x:y\n" if command in ("ppo", "grpo") else "") + body


# what users reported (issue "Reliability", item 1), typed on the command line
REPORTED = [
    ("sft", "batch_size", "1e400"), ("dpo", "batch_size", "1e400"), ("sft", "logging_every", "0"), ("ppo", "logging_every", "0"),
    ("sft", "adam_betas", "0.9"), ("sft", "adam_betas", "1.5,0.999"), ("reward", "adam_betas", "[1.5, 0.999]"),
    ("sft", "seed", "-1"), ("grpo", "seed", "-1"), ("sft", "num_epochs", "nan"), ("kto", "num_epochs", "nan"),
    ("sft", "weight_decay", "nan"), ("dpo", "beta", "nan"), ("kto", "beta", "nan"), ("grpo", "temperature", "nan"),
    ("ppo", "temperature", "nan"), ("sft", "eval_fraction", "1.5"), ("reward", "eval_fraction", "1.5"), ("dpo", "warmup_ratio", "2"),
    ("sft", "max_grad_norm", "-1"), ("sft", "save_every", "-3"), ("reward", "save_every", "-3"), ("sft", "num_epochs", "-2"),
    ("sft", "max_steps", "0"), ("dpo", "max_steps", "0"), ("grpo", "max_steps", "0"), ("sft", "max_steps", "-2"),
    ("sft", "learning_rate", "inf"), ("ppo", "kl_coef", "-inf"), ("sft", "lora_r", "1.5e0"), ("sft", "seed", "4294967296"),
    ("dpo", "monitor.temperature", "nan"), ("grpo", "monitor.patience", "0"), ("ppo", "monitor.every", "-1"),
]
# values that cannot be typed on the command line: `.nan` in a list, list shapes, reward sources
YAML_REPORTED = [
    (command, key, text) for command in ("sft", "ppo") for key, text in [
        ("adam_betas", "[.nan, 0.999]"), ("adam_betas", "[0.9, .inf]"), ("adam_betas", "[0.9, 0.999, 0.5]"),
        ("adam_betas", "[abc, 0.999]"), ("adam_betas", "[true, 0.999]"), ("adam_betas", "[]"), ("batch_size", "1.0e+400"),
        ("seed", "-1"), ("num_epochs", ".nan"), ("weight_decay", ".nan"), ("max_steps", "0"), ("batch_size", "2.5"),
        ("learning_rate", "-.inf"), ("batch_size", "null"), ("learning_rate", "[1, 2]"),
    ]
] + [
    (command, "rewards", text) for command in ("ppo", "grpo") for text in [
        "[{type: function, function: 'x:y', weight: abc}]", "[{type: function, function: 'x:y', weight: .nan}]",
        "[{type: function, function: 'x:y', weight: .inf}]", "[{type: function, function: 'x:y', weight: true}]",
        "[{type: model, path: runs/rm, weight: 1.0, conservative_k: -1}]", "[{type: model, path: runs/rm, batch_size: 0}]",
        "[{type: http, url: 'http://localhost:1', timeout: 0}]", "[{type: http, url: 'http://localhost:1', retries: 1.5}]",
        "[{type: function, weight: 1.0}]", "[{type: nope}]", "[{type: function, function: 'x:y', wieght: 1.0}]", "[3]",
    ]
]
CROSS = [  # cross-field rules, with the key each message must name
    ("ppo", ["--clip_range_high", "0.1"], "clip_range_high"), ("grpo", ["--clip_range_high", "0.19"], "clip_range_high"),
    ("grpo", ["--group_size", "1"], "group_size"), ("ppo", ["--grad_accum_steps", "2"], "grad_accum_steps"),
    ("ppo", ["--max_prompt_length", "500", "--max_new_tokens", "100"], "max_length"),
    ("ppo", ["--num_minibatches", "17"], "num_minibatches"),
    ("reward", ["--seed", "4294967295", "--ensemble", "2"], "seed"), ("dpo", ["--reference", "adapter"], "lora_r"),
]

CLI_CASES = [(c, [f"--{k}", v], k) for c, k, v in REPORTED]
CLI_CASES += [(c, [f"--{key}", value], key) for c in TRAINING for key, kind, bounds in numeric_keys(CLASSES[c])
              for value in outside(kind, bounds)]
CLI_CASES += [(c, [f"--{key}", "2.5"], key) for c in TRAINING for key, kind, _ in numeric_keys(CLASSES[c]) if kind is int]
CLI_CASES += CROSS
YAML_CASES = [(c, key, ".nan") for c in TRAINING for key, kind, _ in numeric_keys(CLASSES[c]) if kind is float]
YAML_CASES += YAML_REPORTED
NOT_ALONE = {("grpo", "group_size", "1"), ("ppo", "max_length", "1"), ("grpo", "max_length", "1")}  # refused by a cross-field rule
VALID_CASES = [(c, key, value) for c in TRAINING for key, kind, bounds in numeric_keys(CLASSES[c]) for value in inside(kind, bounds)
               if (c, key, value) not in NOT_ALONE]


# ---------------------------------------------------------------- the checks

@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """A model load fails the test: a config error must surface before the run reaches any model."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded")

    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def refused(capsys, command: str, argv: list[str], key: str, output) -> str:
    """Runs the command; asserts a clean, one-sentence error naming `key` and no output folder; returns it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"alignkit {command}: error: ") and key in err, err
    assert not output.exists(), f"{output} was created"
    return err


@pytest.mark.parametrize("command, args, key", CLI_CASES, ids=[f"{c}-{' '.join(a)}" for c, a, _ in CLI_CASES])
def test_bad_value_on_the_command_line_is_refused(command, args, key, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, command, [command, *BASE_ARGS[command], *args, "--output_dir", str(out)], key, out)


@pytest.mark.parametrize("command, key, text", YAML_CASES, ids=[f"{c}-{k}: {t}" for c, k, t in YAML_CASES])
def test_bad_value_in_the_yaml_is_refused(command, key, text, tmp_path, capsys):
    path, out = tmp_path / f"{command}.yaml", tmp_path / "out"
    path.write_text(yaml_for(command, key, text) + f"output_dir: {out}\n")
    refused(capsys, command, [command, "--config", str(path)], key, out)


@pytest.mark.parametrize("command, key, value", VALID_CASES, ids=[f"{c}-{k}={v}" for c, k, v in VALID_CASES])
def test_value_at_the_edge_of_its_range_is_accepted(command, key, value):
    config = load_config(CLASSES[command], None, [*BASE_ARGS[command], f"--{key}", value])
    head, _, name = key.partition(".")
    got = getattr(getattr(config, head), name) if name else getattr(config, key)
    assert got == float(value)


def test_reported_messages_name_the_key_the_value_the_range_and_the_fix(tmp_path, capsys):
    out = tmp_path / "out"
    err = refused(capsys, "dpo", ["dpo", "--warmup_ratio", "2", "--output_dir", str(out)], "warmup_ratio", out)
    assert err.strip() == ("alignkit dpo: error: command line: key warmup_ratio must be in [0, 1), got 2.0 "
                           "(a fraction of the optimizer steps); fix it in the YAML or pass --warmup_ratio 0.05")
    err = refused(capsys, "sft", ["sft", "--max_steps", "0", "--output_dir", str(out)], "max_steps", out)
    assert "must be -1 (use num_epochs) or a positive count of optimizer steps, got 0" in err and "--max_steps -1" in err
    err = refused(capsys, "sft", ["sft", "--batch_size", "1e400", "--output_dir", str(out)], "batch_size", out)
    assert "got '1e400'; it takes a whole number, at least 1" in err
    path = tmp_path / "grpo.yaml"
    path.write_text("reward_function: x:y\nmonitor:\n  temperature: .nan\n")
    err = refused(capsys, "grpo", ["grpo", "--config", str(path), "--output_dir", str(out)], "monitor.temperature", out)
    assert f"{path}: key monitor.temperature must be positive, got nan" in err and "--monitor.temperature 1.0" in err
    path.write_text("reward_function: x:y\nrewards: [{type: function, function: 'x:y', weight: abc}]\n")
    err = refused(capsys, "grpo", ["grpo", "--config", str(path), "--output_dir", str(out)], "weight", out)
    assert "rewards entry 1 (type function): weight must be a finite number, got 'abc'" in err


@pytest.mark.parametrize("value", ["0", "-1", "-4"])
def test_num_processes_below_one_is_refused(value, tmp_path, capsys):
    out = tmp_path / "out"
    err = refused(capsys, "sft", ["sft", "--num-processes", value, "--output_dir", str(out)], "--num-processes", out)
    assert f"--num-processes is {value}; it must be at least 1" in err


def test_a_bad_config_with_several_processes_fails_before_any_process_starts(tmp_path, capsys, monkeypatch):
    import alignkit.cli

    monkeypatch.setattr(alignkit.cli, "_launch_distributed", lambda *a: pytest.fail("processes started"))
    out = tmp_path / "out"
    refused(capsys, "sft", ["sft", "--num-processes", "2", "--logging_every", "0", "--output_dir", str(out)], "logging_every", out)


# ---------------------------------------------------------------- pipeline, demo, eval and the Python entry points

PIPELINE_CASES = [
    ("seed: -1\n", "seed"), ("n_train: 0\n", "n_train"), ("n_test: 2.5\n", "n_test"), ("n_val: -1\n", "n_val"),
    ("n_train: 10\nn_val: 10\n", "n_val"), ("rl:\n  kl_coef: .nan\n", "rl.kl_coef"), ("dpo:\n  beta: .inf\n", "dpo.beta"),
    ("rl:\n  kl_coef: -1\n", "kl_coef"), ("dpo:\n  beta: 0\n", "beta"), ("sft:\n  max_steps: 0\n", "max_steps"),
    ("reward:\n  warmup_ratio: 2\n", "warmup_ratio"), ("rl:\n  monitor:\n    patience: 0\n", "monitor.patience"),
    ("eval:\n  confidence: 1.5\n", "confidence"), ("rl:\n  rewards: [{type: function, function: 'x:y', weight: abc}]\n", "weight"),
    ("sft:\n  adam_betas: [0.9]\n", "adam_betas"), ("policy: ppo\nrl:\n  clip_range_high: 0.1\n", "clip_range_high"),
]


@pytest.mark.parametrize("body, key", PIPELINE_CASES, ids=[k for _, k in PIPELINE_CASES])
def test_pipeline_and_demo_refuse_a_bad_value_before_writing_anything(body, key, tmp_path, capsys):
    path, work = tmp_path / "pipeline.yaml", tmp_path / "work"
    path.write_text("model: tiny-llama\nn_train: 40\nn_test: 10\nn_val: 4\n" + body)
    refused(capsys, "pipeline", ["pipeline", str(path), "--workdir", str(work)], key, work)
    demo = tmp_path / "demo.yaml"
    demo.write_text(f"config: {path}\nworkdir: {work}\n")
    refused(capsys, "demo", ["demo", "--config", str(demo)], key, work)


EVAL_CASES = [("--confidence", "1.5"), ("--confidence", "0"), ("--limit", "-1"), ("--bootstrap", "0"), ("--seed", "-1"),
              ("--judge-tie-margin", "nan"), ("--tie-margin", "-inf"), ("--batch-size", "1e400"), ("--kl-samples", "-2")]


@pytest.mark.parametrize("flag, value", EVAL_CASES)
def test_eval_refuses_a_bad_value(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, "eval", ["eval", "--policy", "p", "--reference", "r", "--out", str(out), "--gold", "hhh-mini-gold", f"{flag}={value}"],
            flag[2:].replace("-", "_"), out)


@pytest.mark.parametrize("command", TRAINING)
def test_python_entry_points_are_checked_the_same_way(command, tmp_path):
    import alignkit

    entry = getattr(alignkit, command)
    with pytest.raises(AlignkitError, match=rf"^{command} config: key warmup_ratio must be in \[0, 1\), got 2.0"):
        entry({**BASE_VALUES[command], "output_dir": str(tmp_path / "out")}, warmup_ratio=2.0)
    with pytest.raises(AlignkitError, match=rf"^{command} config: key learning_rate must be positive, got nan"):
        entry(CLASSES[command](**BASE_VALUES[command], learning_rate=math.nan, output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_monitor_built_in_python_is_checked_too():
    from alignkit.config import DPOConfig

    with pytest.raises(AlignkitError, match="key monitor.kl_budget must be 0 .no budget. or positive, got -1.0"):
        config_from_dict(DPOConfig, {"monitor": MonitorConfig(every=2, kl_budget=-1.0)}, "dpo config")


def test_reward_specs_are_checked_before_any_source_loads(monkeypatch):
    from alignkit.models.reward import RewardModel
    from alignkit.rl.rewards import build_rewards

    monkeypatch.setattr(RewardModel, "load", lambda *a, **k: pytest.fail("reward model loaded"))
    for weight in ("abc", math.nan, math.inf, None, True):
        with pytest.raises(AlignkitError, match="rewards entry 2 .type function.: weight must be a finite number"):
            build_rewards([{"type": "model", "path": "runs/rm"}, {"type": "function", "function": "math:fsum", "weight": weight}])
    with pytest.raises(AlignkitError, match=r"rewards entry 1 \(type model\) needs path"):
        build_rewards([{"type": "model"}])


# ---------------------------------------------------------------- every numeric key has a range; ranges hold

ALL_CLASSES = [*CLASSES.values(), EvalConfig, PipelineConfig, MonitorConfig, _resolve(STAGES["demo"][0])]


def test_every_numeric_key_declares_its_range_and_its_default_lies_in_it():
    for cls in ALL_CLASSES:
        for f in dataclasses.fields(cls):
            kind, bounds = _number_kind(typing.get_type_hints(cls)[f.name]), field_bounds(cls, f.name)
            if kind is None and f.name != "adam_betas":
                continue
            assert bounds is not None, f"{cls.__name__}.{f.name} declares no range: add ge=/gt=/le=/lt= to its option()"
            default = getattr(cls(), f.name)
            assert default is None or isinstance(default, list) or bounds.admits(default), f"{cls.__name__}.{f.name}"
    assert load_config(CLASSES["sft"], None, ["--adam_betas", "0.8,0.99"]).adam_betas == [0.8, 0.99]  # numbers, not text


# float keys (cls, key, bounds) and the base values each class needs to validate
FLOAT_KEYS = [(cls, key, bounds) for cls in ALL_CLASSES for key, kind, bounds in numeric_keys(cls) if kind is float]
BASE = {cls: BASE_VALUES.get(command, {}) for command, cls in CLASSES.items()}
BASE[PipelineConfig] = {"n_val": 0}
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _build(cls, key: str, value):
    head, _, name = key.partition(".")
    return config_from_dict(cls, {**BASE.get(cls, {}), head: {name: value} if name else value}, "prop.yaml")


@st.composite
def float_outside(draw):
    cls, key, bounds = draw(st.sampled_from(FLOAT_KEYS))
    low, high = (bounds.ge, bounds.gt), (bounds.le, bounds.lt)
    options = [st.sampled_from([math.nan, math.inf, -math.inf])]
    if low != (None, None):
        edge = bounds.ge if bounds.ge is not None else bounds.gt
        options.append(st.floats(max_value=edge, exclude_max=bounds.ge is not None, allow_nan=False, allow_infinity=False)
                       .filter(lambda v: not bounds.admits(v)))  # -0.0 sits just below 0.0 for hypothesis
    if high != (None, None):
        edge = bounds.le if bounds.le is not None else bounds.lt
        options.append(st.floats(min_value=edge, exclude_min=bounds.le is not None, allow_nan=False, allow_infinity=False)
                       .filter(lambda v: not bounds.admits(v)))
    return cls, key, draw(st.one_of(options))


@st.composite
def float_inside(draw):
    cls, key, bounds = draw(st.sampled_from([k for k in FLOAT_KEYS if k[1] != "clip_range_high"]))  # a CROSS case
    low = bounds.ge if bounds.ge is not None else bounds.gt
    high = bounds.le if bounds.le is not None else bounds.lt
    value = draw(st.floats(min_value=low, max_value=high, exclude_min=bounds.gt is not None, exclude_max=bounds.lt is not None,
                           allow_nan=False, allow_infinity=False))
    return cls, key, value


@PROPERTY
@given(float_outside())
def test_any_float_outside_a_keys_range_is_refused(case):
    cls, key, value = case
    with pytest.raises(AlignkitError, match=rf"^prop\.yaml: key {re.escape(key)} must be .*, got {re.escape(repr(value))} "):
        _build(cls, key, value)


@PROPERTY
@given(float_inside())
def test_any_float_inside_a_keys_range_is_accepted(case):
    cls, key, value = case
    config = _build(cls, key, value)
    head, _, name = key.partition(".")
    assert (getattr(getattr(config, head), name) if name else getattr(config, key)) == value


INT_KEYS = [(cls, key, bounds) for cls in ALL_CLASSES for key, kind, bounds in numeric_keys(cls) if kind is int]


@PROPERTY
@given(st.data())
def test_any_whole_number_outside_a_keys_range_or_any_fraction_is_refused(data):
    cls, key, bounds = data.draw(st.sampled_from(INT_KEYS))
    options = [st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not v.is_integer())]
    if bounds.ge is not None:
        options.append(st.integers(max_value=bounds.ge - 1).filter(lambda v: v not in bounds.allow))
    if bounds.lt is not None:
        options.append(st.integers(min_value=bounds.lt))
    value = data.draw(st.one_of(options))
    with pytest.raises(AlignkitError, match=rf"prop\.yaml: key '?{key}'? must be"):
        _build(cls, key, value)
