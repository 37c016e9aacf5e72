"""Config loading: YAML plus overrides, typed, unknown keys refused with a suggestion."""

from __future__ import annotations

import pytest

from alignkit.config import SFTConfig, load_config
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
    from alignkit.config import PipelineConfig
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
