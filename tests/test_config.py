"""Config loading: YAML plus overrides, typed, unknown keys refused with a suggestion."""

from __future__ import annotations

import pytest

from alignkit.config import SFTConfig, config_from_dict, load_config
from alignkit.errors import AlignkitError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("data: a.jsonl\nlearning_rate: 1e-4\nlora_r: 8\n")
    config = load_config(SFTConfig, path, ["--lora_r", "16", "--max-length=128"])
    assert (config.data, config.learning_rate, config.lora_r, config.max_length) == ("a.jsonl", 1e-4, 16, 128)


def test_unknown_key_suggests_closest(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(AlignkitError, match=r"sft.yaml: unknown key 'learning_rat'; did you mean 'learning_rate'\?"):
        load_config(SFTConfig, path)
    with pytest.raises(AlignkitError, match=r"unknown option '--batchsize'; did you mean 'batch_size'\?"):
        load_config(SFTConfig, None, ["--batchsize", "4"])


def test_bad_values_are_named(tmp_path):
    with pytest.raises(AlignkitError, match="key 'batch_size' must be int, got 'eight'"):
        load_config(SFTConfig, None, ["--batch_size", "eight"])
    with pytest.raises(AlignkitError, match="lr_scheduler must be one of linear, cosine, constant"):
        load_config(SFTConfig, None, ["--lr_scheduler", "cosin"])
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(AlignkitError, match="broken.yaml line .*not valid YAML"):
        load_config(SFTConfig, path)
    with pytest.raises(AlignkitError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "missing.yaml")


def test_every_shipped_config_loads_with_its_command():
    """configs/*.yaml name their command on line 1; each must load and validate, so a shipped config never fails on start."""
    import re
    from pathlib import Path

    from alignkit.cli import STAGES, _resolve
    from alignkit.config_pipeline import PipelineConfig
    from alignkit.pipeline import stage_configs

    shipped = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(shipped) >= 7
    for path in shipped:
        command = re.match(r"# alignkit (\w+)", path.read_text()).group(1)
        if command == "pipeline":
            assert set(stage_configs(load_config(PipelineConfig, path))) >= {"sft", "reward", "policy", "eval"}
            continue
        config = load_config(_resolve(STAGES[command][0]), path)
        assert config.output_dir, path


# ---------------------------------------------------------------- the nested `monitor:` section

@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: a config error must surface before the run reaches the model."""
    import alignkit.models.load

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded before the config error was raised")

    monkeypatch.setattr(alignkit.models.load, "load_causal_lm", refuse)
    return calls


@pytest.mark.parametrize("command, body", [
    ("dpo", "data: {pairs}\nlora_r: 4\n"),
    ("ppo", "data: {prompts}\nreward_function: hhh-mini-gold\n"),
])
def test_monitor_typo_fails_at_load_before_any_model(command, body, tmp_path, write_jsonl, tiny_path, capsys, no_model_loads):
    from alignkit.cli import STAGES, _resolve, main

    pairs = write_jsonl([{"prompt": f"Say {i}.", "chosen": "yes", "rejected": "no"} for i in range(8)], "pairs.jsonl")
    prompts = write_jsonl([{"prompt": f"Say {i}."} for i in range(8)], "prompts.jsonl")
    path = tmp_path / f"{command}.yaml"
    path.write_text(f"model: {tiny_path}\noutput_dir: {tmp_path / 'run'}\n" + body.format(pairs=pairs, prompts=prompts)
                    + "monitor:\n  every: 2\n  kl_budjet: 5.0\n")
    expected = rf"{command}.yaml: unknown key 'monitor.kl_budjet'; did you mean 'monitor.kl_budget'\?"
    with pytest.raises(AlignkitError, match=expected):
        load_config(_resolve(STAGES[command][0]), path)
    assert main([command, "--config", str(path)]) == 2  # the whole command, not only the loader
    assert "unknown key 'monitor.kl_budjet'" in capsys.readouterr().err
    assert not no_model_loads and not (tmp_path / "run").exists()


def test_monitor_values_are_checked_at_load(tmp_path):
    from alignkit.config import DPOConfig, PPOConfig

    path = tmp_path / "dpo.yaml"
    path.write_text("monitor:\n  every: five\n")
    with pytest.raises(AlignkitError, match="dpo.yaml: key 'monitor.every' must be int, got 'five'"):
        load_config(DPOConfig, path)
    path.write_text("monitor:\n  patience: 0\n")
    with pytest.raises(AlignkitError, match="monitor.patience must be at least 1"):
        load_config(DPOConfig, path)
    path.write_text("monitor: [every, 2]\n")
    with pytest.raises(AlignkitError, match="key 'monitor' must be a mapping"):
        load_config(DPOConfig, path)
    ppo = {"reward_function": "x:y"}
    assert config_from_dict(PPOConfig, ppo).monitor is None  # no section, or an empty one: off, as before
    assert config_from_dict(PPOConfig, {**ppo, "monitor": {}}).monitor is None
    assert config_from_dict(PPOConfig, {**ppo, "monitor": None}).monitor is None


def test_monitor_command_line_overrides_merge_into_the_yaml_section(tmp_path):
    from alignkit.config import GRPOConfig

    path = tmp_path / "grpo.yaml"
    path.write_text("reward_function: x:y\nmonitor:\n  every: 4\n  max_prompts: 16\n")
    config = load_config(GRPOConfig, path, ["--monitor.every", "5", "--monitor.kl-budget=2.5"])
    assert (config.monitor.every, config.monitor.max_prompts, config.monitor.kl_budget) == (5, 16, 2.5)
    config = load_config(GRPOConfig, None, ["--reward_function", "x:y", "--monitor.every", "3"])
    assert config.monitor.every == 3 and config.monitor.hacking_every == 1  # the other keys keep their defaults
    with pytest.raises(AlignkitError, match=r"unknown option '--monitor.evry'; did you mean 'monitor.every'\?"):
        load_config(GRPOConfig, path, ["--monitor.evry", "5"])
    with pytest.raises(AlignkitError, match="unknown option '--seed.x': seed has no sub-keys"):
        load_config(GRPOConfig, path, ["--seed.x", "1"])


def test_config_with_a_monitor_round_trips_through_save_config(tmp_path):
    import yaml

    from alignkit.config import DPOConfig, MonitorConfig, save_config

    path = tmp_path / "dpo.yaml"
    path.write_text("data: pairs.jsonl\nbeta: 0.2\nmonitor:\n  every: 3\n  gold: hhh-mini-gold\n  stop_on_alarm: true\n")
    config = load_config(DPOConfig, path)
    assert config.monitor == MonitorConfig(every=3, gold="hhh-mini-gold", stop_on_alarm=True)
    save_config(config, tmp_path / "saved.yaml")
    written = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert written["monitor"]["every"] == 3 and written["monitor"]["gold"] == "hhh-mini-gold"  # a nested mapping
    assert load_config(DPOConfig, tmp_path / "saved.yaml") == config
    off = load_config(DPOConfig, None, ["--data", "pairs.jsonl"])
    save_config(off, tmp_path / "off.yaml")
    assert load_config(DPOConfig, tmp_path / "off.yaml") == off and off.monitor is None


def test_monitor_config_is_still_importable_from_the_monitors_module():
    from alignkit.config import MonitorConfig
    from alignkit.evaluate import monitors

    assert monitors.MonitorConfig is MonitorConfig


# ---------------------------------------------------------------- shared fields, removed keys, choices from tables

def test_ppo_and_grpo_refuse_packing_as_an_unknown_key(tmp_path):
    from alignkit.config import GRPOConfig, PPOConfig

    for cls in (PPOConfig, GRPOConfig):
        path = tmp_path / "rl.yaml"
        path.write_text("reward_function: x:y\npacking: true\n")
        with pytest.raises(AlignkitError, match=r"rl.yaml: unknown key 'packing'; did you mean '\w+'\?"):
            load_config(cls, path)
        with pytest.raises(AlignkitError, match=r"unknown option '--packing'; did you mean '\w+'\?"):
            load_config(cls, None, ["--reward_function", "x:y", "--packing", "true"])


def test_shared_fields_keep_each_commands_defaults():
    from alignkit.config import DPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig, field_help

    assert (SFTConfig().learning_rate, DPOConfig().learning_rate, PPOConfig().learning_rate) == (2e-5, 1e-6, 1e-5)
    for cls in (SFTConfig, DPOConfig, KTOConfig, PPOConfig):
        assert cls().merge_lora is True and cls().data_split == "train"
    assert field_help(RewardConfig)["eval_fraction"] == "Share of training pairs held out when eval_data is empty."
    assert "eval_fraction" not in field_help(PPOConfig) and "merge_lora" not in field_help(RewardConfig)


def test_choices_come_from_the_variant_tables():
    from alignkit.config import DPOConfig, PPOConfig
    from alignkit.losses.kl import KL_ESTIMATORS
    from alignkit.losses.policy import AGGREGATIONS, POLICY_LOSSES
    from alignkit.losses.preference import PREFERENCE_LOSSES
    from alignkit.rl.advantages import ESTIMATORS
    from alignkit.rl.kl_control import KL_CONTROLLERS

    with pytest.raises(AlignkitError, match="loss must be one of " + ", ".join(PREFERENCE_LOSSES)):
        load_config(DPOConfig, None, ["--loss", "sigmoidd"])
    for key, table in (("advantage", ESTIMATORS), ("policy_loss", POLICY_LOSSES), ("loss_aggregation", AGGREGATIONS),
                       ("kl_estimator", KL_ESTIMATORS), ("kl_control", KL_CONTROLLERS)):
        with pytest.raises(AlignkitError, match=f"{key} must be one of " + ", ".join(table)):
            load_config(PPOConfig, None, ["--reward_function", "x:y", f"--{key}", "nope"])
