"""TRL's argument names: a config file written for `trl sft|dpo|grpo --config x.yaml` runs unchanged under alignkit.

Three TRL-style YAML files (SFT, DPO, GRPO) run through `alignkit.cli.main` on the tiny model, and the resolved
config.yaml shows alignkit's values; then the name table's rules one by one (conflicts, refusals, per-command
aliases, the command line and the Python entry points), and the README's table against the code's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from alignkit import trl_names
from alignkit.cli import main
from alignkit.config import (
    DPOConfig, GRPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig, config_from_dict, config_with_overrides, load_config, to_dict,
)
from alignkit.errors import AlignkitError

README = Path(__file__).resolve().parent.parent / "README.md"
STAGE_CLASSES = (SFTConfig, DPOConfig, KTOConfig, RewardConfig, PPOConfig, GRPOConfig)
IGNORED_LINE = "ignored TRL keys (no alignkit equivalent): "


def brevity(prompts, completions, **kwargs):
    """The GRPO test's reward, named in the YAML as TRL names one (`test_trl_names.brevity`): shorter is better."""
    return [-float(len(c)) for c in completions]


def write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trl_yaml(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def run(command: str, config: str, caplog) -> tuple[dict, list[dict], list[str]]:
    """Runs `alignkit <command> --config <config>`; returns the run's config.yaml, its metrics and the ignored-key warnings."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([command, "--config", config]) == 0
    out = Path(yaml.safe_load(Path(config).read_text())["output_dir"])
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    warnings = [r.getMessage() for r in caplog.records if IGNORED_LINE in r.getMessage()]
    return resolved, metrics, warnings


def steps(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "loss" in m and "step" in m]


# ---------------------------------------------------------------- TRL files run unchanged


def test_trl_sft_yaml_runs_unchanged(tmp_path, caplog):
    data = write(tmp_path / "sft.jsonl", [{"prompt": f"Say {w}.", "completion": f"{w.capitalize()}."} for w in
                                          "red green blue cyan pink gold gray teal navy lime plum rose".split()])
    config = trl_yaml(tmp_path, "sft", f"""\
# as for `trl sft --config sft.yaml`
model_name_or_path: tiny-llama
dataset_name: {data}
dataset_train_split: train
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 3
learning_rate: 1.0e-3
lr_scheduler_type: constant_with_warmup
warmup_steps: 0
logging_steps: 1
bf16: false
use_peft: true
lora_r: 8
lora_alpha: 16
lora_target_modules: all-linear
max_length: 64
report_to: none
seed: 7
output_dir: {tmp_path / 'sft-run'}
do_eval: false
eval_strategy: "no"
save_strategy: "no"
dataloader_num_workers: 0
""")
    resolved, metrics, warnings = run("sft", config, caplog)
    assert {k: resolved[k] for k in ("model", "data", "data_split", "batch_size", "grad_accum_steps", "max_steps", "learning_rate",
                                     "lr_scheduler", "logging_every", "mixed_precision", "lora_r", "lora_alpha", "max_length",
                                     "report_to", "seed")} == {
        "model": "tiny-llama", "data": data, "data_split": "train", "batch_size": 2, "grad_accum_steps": 2, "max_steps": 3,
        "learning_rate": 1e-3, "lr_scheduler": "constant", "logging_every": 1, "mixed_precision": "no", "lora_r": 8,
        "lora_alpha": 16, "max_length": 64, "report_to": [], "seed": 7}
    assert resolved["target_modules"] == SFTConfig().target_modules  # all-linear: alignkit's every linear layer
    logged, train_rows = steps(metrics), json.loads((Path(resolved["output_dir"]) / "summary.json").read_text())["train_rows"]
    assert [m["step"] for m in logged] == [1, 2, 3] and [m["lr"] for m in logged] == [1e-3] * 3  # constant, no warmup
    assert logged[0]["epoch"] == pytest.approx(2 * 2 / train_rows)  # an optimizer step is 2 micro-batches of 2 rows
    assert (Path(resolved["output_dir"]) / "adapter").is_dir()  # use_peft: true trained LoRA adapters
    assert len(warnings) == 1 and warnings[0].endswith(IGNORED_LINE + "do_eval, eval_strategy (alignkit evaluates on held-out rows "
                                                       "every eval_every steps and at the end), save_strategy, dataloader_num_workers")


def test_trl_dpo_yaml_runs_unchanged(tmp_path, caplog):
    pairs = [{"prompt": f"Name a {w} thing.", "chosen": f"A {w} one.", "rejected": "No."} for w in
             "red green blue cyan pink gold gray teal".split()]
    data = write(tmp_path / "pairs.jsonl", pairs)
    config = trl_yaml(tmp_path, "dpo", f"""\
model_name_or_path: tiny-llama
dataset_name: {data}
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
max_steps: 2
learning_rate: 5.0e-4
beta: 0.2
loss_type: [ipo]
logging_steps: 1
bf16: false
use_peft: true
lora_r: 4
max_length: 64
report_to: none
output_dir: {tmp_path / 'dpo-run'}
per_device_eval_batch_size: 4
disable_dropout: true
eval_strategy: "no"
""")
    resolved, metrics, warnings = run("dpo", config, caplog)
    assert {k: resolved[k] for k in ("model", "data", "batch_size", "max_steps", "beta", "loss", "lora_r", "mixed_precision", "report_to")} == {
        "model": "tiny-llama", "data": data, "batch_size": 2, "max_steps": 2, "beta": 0.2, "loss": "ipo", "lora_r": 4,
        "mixed_precision": "no", "report_to": []}
    assert [m["step"] for m in steps(metrics)] == [1, 2]
    assert len(warnings) == 1 and "per_device_eval_batch_size, disable_dropout, eval_strategy" in warnings[0]


def test_trl_grpo_yaml_runs_unchanged(tmp_path, caplog):
    data = write(tmp_path / "prompts.jsonl", [{"prompt": f"Describe {w} briefly."} for w in "rain snow wind fog sun ice".split()])
    config = trl_yaml(tmp_path, "grpo", f"""\
model_name_or_path: tiny-llama
dataset_name: {data}
reward_funcs: [test_trl_names.brevity]
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
num_generations: 4
max_completion_length: 4
max_steps: 2
learning_rate: 1.0e-4
beta: 0.01
epsilon: 0.3
loss_type: dr_grpo
scale_rewards: none
temperature: 1.0
logging_steps: 1
bf16: false
use_peft: true
lora_r: 8
report_to: none
output_dir: {tmp_path / 'grpo-run'}
log_completions: false
use_vllm: false
num_completions_to_print: 2
""")
    resolved, metrics, warnings = run("grpo", config, caplog)
    # TRL's rollout: 4 x 2 = 8 completions, groups of 4 -> 2 prompts per step, one optimizer step per rollout
    assert {k: resolved[k] for k in ("prompts_per_step", "group_size", "batch_size", "num_minibatches", "grad_accum_steps",
                                     "max_new_tokens", "max_steps", "kl_coef", "clip_range", "loss_aggregation", "scale_rewards",
                                     "reward_function", "lora_r", "mixed_precision")} == {
        "prompts_per_step": 2, "group_size": 4, "batch_size": 4, "num_minibatches": 1, "grad_accum_steps": 1, "max_new_tokens": 4,
        "max_steps": 2, "kl_coef": 0.01, "clip_range": 0.3, "loss_aggregation": "constant", "scale_rewards": False,
        "reward_function": "test_trl_names:brevity", "lora_r": 8, "mixed_precision": "no"}
    logged = [m for m in metrics if "reward" in m and "step" in m and m["step"] >= 1]
    assert [m["step"] for m in logged] == [1, 2] and all(m["response/length"] <= 4 for m in logged)
    assert len(warnings) == 1 and warnings[0].endswith(IGNORED_LINE + "log_completions, num_completions_to_print")


# ---------------------------------------------------------------- the rules, one at a time


def load(cls, values: dict, **kwargs):
    return to_dict(config_from_dict(cls, values, "x.yaml", **kwargs))


def test_a_trl_key_and_its_alignkit_name_must_agree(tmp_path, capsys):
    assert load(SFTConfig, {"num_train_epochs": 2, "num_epochs": 2.0})["num_epochs"] == 2.0
    config = trl_yaml(tmp_path, "both", "num_train_epochs: 3\nnum_epochs: 1\ndataset_name: x.jsonl\n")
    assert main(["sft", "--config", config]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_train_epochs is 3 but num_epochs is 1, and both set alignkit's num_epochs" in err
    assert load(SFTConfig, {"use_peft": True, "lora_r": 8})["lora_r"] == 8
    with pytest.raises(AlignkitError, match="adam_beta1 is 0.8 but adam_betas is"):
        load(SFTConfig, {"adam_beta1": 0.8, "adam_betas": [0.9, 0.99]})


def test_the_command_line_overrides_the_files_other_name(tmp_path):
    config = trl_yaml(tmp_path, "trl", "num_train_epochs: 3\nper_device_train_batch_size: 4\nuse_peft: false\nbf16: true\n")
    loaded = to_dict(load_config(SFTConfig, config, ["--num_epochs", "1", "--lora_r", "8", "--per_device_train_batch_size", "2",
                                                     "--report_to", "none", "--bf16", "false"]))
    assert (loaded["num_epochs"], loaded["lora_r"], loaded["batch_size"], loaded["report_to"], loaded["mixed_precision"]) == (1.0, 8, 2, [], "no")


def test_python_entry_points_read_trl_names():
    config = config_with_overrides(SFTConfig, {"model_name_or_path": "tiny-llama", "per_device_train_batch_size": 3}, {"num_train_epochs": 2})
    assert (config.model, config.batch_size, config.num_epochs) == ("tiny-llama", 3, 2.0)
    again = config_with_overrides(SFTConfig, config, {"gradient_accumulation_steps": 4})  # what alignkit.sft(config, ...) does
    assert again == dataclasses.replace(config, grad_accum_steps=4)


@pytest.mark.parametrize("values, message", [
    ({"fp16": True}, "x.yaml: fp16 is true: alignkit trains float32 or bfloat16 weights with bf16 autocast, not fp16"),
    ({"dtype": "float16"}, "dtype is 'float16': float16 weights are not supported; use bfloat16"),
    ({"torch_dtype": "float16"}, "torch_dtype is 'float16'"),
    ({"load_in_4bit": True}, "bitsandbytes quantization is not supported"),
    ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type is 'polynomial': alignkit has linear, cosine, constant"),
    ({"warmup_steps": 10}, "warmup_steps is 10: .* give warmup_ratio"),
    ({"optim": "adafactor"}, "optim is 'adafactor': alignkit trains with torch's AdamW"),
    ({"dataset_config": "main"}, "dataset_config is 'main': alignkit reads a hub dataset's default configuration"),
    ({"loss_type": "dft"}, "loss_type is 'dft': alignkit's SFT loss is the NLL"),
])
def test_refused_in_one_sentence(values, message):
    with pytest.raises(AlignkitError, match=message):
        load(SFTConfig, values)


def test_fp16_refused_on_the_command_line(capsys):
    assert main(["sft", "--model_name_or_path", "tiny-llama", "--fp16", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("alignkit sft: error: command line: fp16 is true: alignkit trains float32 or bfloat16 weights with bf16 autocast, "
                   "not fp16; remove it (bf16: true is the default)")


def test_refusals_that_change_nothing_pass():
    loaded = load(SFTConfig, {"fp16": False, "optim": "adamw_torch_fused", "load_in_4bit": False, "dataset_config": None, "dtype": "auto"})
    assert loaded["dtype"] == "float32"


def test_aliases_apply_per_command():
    assert load(GRPOConfig, {"beta": 0.0, "reward_function": "x:y"})["kl_coef"] == 0.0  # GRPO's beta is the KL coefficient
    assert load(DPOConfig, {"beta": 0.3})["beta"] == 0.3  # DPO's is its own
    assert load(DPOConfig, {"loss_type": ["hinge"]})["loss"] == "hinge"
    with pytest.raises(AlignkitError, match="loss_type is 'exo_pair': not an alignkit DPO loss; use sigmoid, ipo, hinge, robust"):
        load(DPOConfig, {"loss_type": "exo_pair"})
    with pytest.raises(AlignkitError, match="loss_type is 'cispo'"):
        load(GRPOConfig, {"loss_type": "cispo", "reward_function": "x:y"})
    assert load(DPOConfig, {"precompute_ref_log_probs": True})["reference"] == "precompute"
    assert load(SFTConfig, {"padding_free": True})["packing"] is True
    with pytest.raises(AlignkitError, match="unknown key 'num_generations'"):  # GRPO's name means nothing to SFT
        load(SFTConfig, {"num_generations": 4})
    with pytest.raises(AlignkitError, match="unknown key 'per_device_train_batchsize'; did you mean 'per_device_train_batch_size'"):
        load(SFTConfig, {"per_device_train_batchsize": 4})
    with pytest.raises(AlignkitError, match="unknown option '--no_such_key'"):
        load_config(SFTConfig, None, ["--no_such_key", "1"])


def test_lora_from_use_peft():
    assert load(SFTConfig, {"use_peft": True})["lora_r"] == 16  # TRL's default rank
    assert load(SFTConfig, {"use_peft": False, "lora_r": 32})["lora_r"] == 0  # TRL's lora_r counts only with use_peft
    assert load(SFTConfig, {"lora_target_modules": ["q_proj", "v_proj"]})["target_modules"] == ["q_proj", "v_proj"]


def test_steps_strategies_and_warmup():
    loaded = load(SFTConfig, {"max_steps": 100, "warmup_steps": 10, "save_steps": 0.25, "eval_steps": 20, "eval_strategy": "steps"})
    assert (loaded["warmup_ratio"], loaded["save_every"], loaded["eval_every"]) == (0.1, 25, 20)
    assert load(SFTConfig, {"warmup_steps": 0.2})["warmup_ratio"] == 0.2


def test_eval_keys_without_effect_are_ignored_with_their_reason(tmp_path, caplog):
    data = write(tmp_path / "d.jsonl", [{"text": "a"}])
    with caplog.at_level(logging.WARNING):
        loaded = load(SFTConfig, {"dataset_name": data, "eval_steps": 5, "dataset_test_split": "test", "eval_strategy": "steps"})
    assert loaded["eval_every"] == 5 and loaded["eval_data"] == ""
    assert "dataset_test_split (a single file has no test split; alignkit holds out eval_fraction of it)" in caplog.text
    assert load(SFTConfig, {"dataset_name": "owner/name", "eval_strategy": "steps"})["eval_data"] == "owner/name"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load(SFTConfig, {"eval_steps": 5})["eval_every"] == 0
    assert "eval_steps (eval_strategy is no)" in caplog.text


def test_grpo_batch_geometry_and_steps():
    loaded = load(GRPOConfig, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 4,
                               "num_generations": 8, "num_iterations": 2, "max_steps": 20, "reward_function": "x:y"})
    # 4 x 4 = 16 completions (2 prompts x 8); 4 micro-batches / 2 accumulated = 2 optimizer steps per pass, 2 passes
    assert (loaded["prompts_per_step"], loaded["num_minibatches"], loaded["ppo_epochs"], loaded["max_steps"]) == (2, 2, 2, 5)
    with pytest.raises(AlignkitError, match=r"rollout of per_device_train_batch_size x steps_per_generation = 3 x 1 = 3 completions "
                                             r"must hold whole groups of num_generations \(2\)"):
        load_config(GRPOConfig, None, ["--per_device_train_batch_size", "3", "--num_generations", "2", "--reward_function", "x:y"])
    with pytest.raises(AlignkitError, match="TRL takes generation_batch_size or steps_per_generation, not both"):
        load(GRPOConfig, {"per_device_train_batch_size": 4, "generation_batch_size": 8, "steps_per_generation": 2, "reward_function": "x:y"})
    assert load(GRPOConfig, {"generation_batch_size": 8, "reward_function": "x:y"})["generation_batch_size"] == 8  # alignkit's own, alone
    assert load(GRPOConfig, {"max_completion_length": 512, "reward_function": "x:y"})["max_length"] == 256 + 512


def test_reward_sources():
    loaded = load(GRPOConfig, {"reward_model_name_or_path": "runs/rm", "reward_funcs": ["pkg.mod.fn"], "reward_weights": [1.0, 0.5]})
    assert loaded["rewards"] == [{"type": "model", "path": "runs/rm", "weight": 1.0},
                                 {"type": "function", "function": "pkg.mod:fn", "weight": 0.5}]
    with pytest.raises(AlignkitError, match="TRL's built-in rewards do not ship with alignkit"):
        load(GRPOConfig, {"reward_funcs": ["accuracy_reward"]})


def test_resolved_config_reloads_to_itself_without_a_warning(caplog):
    config = config_from_dict(GRPOConfig, {"per_device_train_batch_size": 4, "num_generations": 4, "report_to": "none",
                                           "reward_funcs": "a.b", "do_eval": True}, "x.yaml")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert config_from_dict(GRPOConfig, to_dict(config), "config.yaml") == config  # resume, api: alignkit's names only
    assert IGNORED_LINE not in caplog.text


def test_hub_names_map_when_the_command_has_them():
    if "hub_private" not in {f.name for f in dataclasses.fields(SFTConfig)}:
        pytest.skip("SFTConfig has no hub fields in this tree")
    loaded = load(SFTConfig, {"hub_private_repo": False, "hub_model_id": "me/model"})
    assert (loaded["hub_private"], loaded["hub_model_id"]) == (False, "me/model")


# ---------------------------------------------------------------- the table against TRL and the README


def test_every_trl_field_is_known(request):
    """TRL's own classes (installed by `make bench`) hold no name the table does not know for that command."""
    trl = pytest.importorskip("trl")
    from transformers import TrainingArguments

    common = [TrainingArguments, trl.ModelConfig, trl.ScriptArguments]
    for ours, theirs in ((SFTConfig, trl.SFTConfig), (DPOConfig, trl.DPOConfig), (KTOConfig, trl.KTOConfig),
                         (RewardConfig, trl.RewardConfig), (GRPOConfig, trl.GRPOConfig)):
        fields = {f.name for cls in common + [theirs] for f in dataclasses.fields(cls)}
        assert fields - trl_names.names_for(ours) == set(), ours.__name__


def test_readme_table_matches_the_code():
    text = README.read_text()
    found = re.search(r"<!-- trl-names: begin[^>]*-->\n(.*?)\n<!-- trl-names: end -->", text, re.S)
    expected = trl_names.markdown_table(STAGE_CLASSES)
    assert found, "README.md lacks the <!-- trl-names: begin --> ... <!-- trl-names: end --> block"
    assert found.group(1) == expected, "README's TRL table is out of date; replace the block's body with:\n" + expected


def test_readme_example_loads(tmp_path, caplog):
    section = README.read_text().split("## Your own data, coming from TRL", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "sft.yaml"
    path.write_text("\n".join(line[3:] for line in example.splitlines()))  # the block is indented under a list item
    with caplog.at_level(logging.WARNING):
        loaded = to_dict(load_config(SFTConfig, path))
    assert (loaded["batch_size"], loaded["grad_accum_steps"], loaded["lr_scheduler"], loaded["lora_r"], loaded["report_to"]) == (8, 2, "cosine", 16, [])
    assert IGNORED_LINE + "eval_strategy" in caplog.text


def test_reward_funcs_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def brevity(completions, **kwargs):\n    return [-len(c) for c in completions]\n")
    assert load(GRPOConfig, {"reward_funcs": "my_rewards.brevity"})["reward_function"] == "my_rewards.py:brevity"
