"""Online RL checkpoints: a PPO / GRPO run stopped after a checkpoint and resumed repeats the uninterrupted
run's metrics and weights bit for bit (fp32 on CPU); NaN losses skip optimizer steps, then stop the run."""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.errors import AlignkitError

recipe = importlib.import_module("alignkit.train.ppo")  # the module; `alignkit.train.ppo` is the function
update = importlib.import_module("alignkit.rl.update")


def capitalized_words(prompts, responses, **columns):
    """The test reward: the share of words that start with a capital letter."""
    return [sum(w[:1].isupper() for w in r.split()) / max(1, len(r.split())) for r in responses]


def _config(stage_dir: Path, prompts: str, tiny_path: str, **overrides) -> dict:
    return dict(model=tiny_path, data=prompts, reward_function=f"{__name__}:capitalized_words", output_dir=str(stage_dir),
                mixed_precision="no", max_new_tokens=8, learning_rate=3e-2, lr_scheduler="linear", report_to=["jsonl"], seed=0,
                **overrides)


def _metrics(run: Path) -> list[str]:
    """metrics.jsonl without the wall-clock values, as canonical JSON text (so NaN compares equal to NaN)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [json.dumps({k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}, sort_keys=True) for r in rows]


def _run_stopped_then_resumed(stage: str, tmp_path, tiny_path, write_jsonl, monkeypatch, stop_in_step: int, resume, **overrides):
    """The uninterrupted run, and a run interrupted during step `stop_in_step` then resumed; returns both summaries."""
    train = functools.partial(importlib.import_module("alignkit.api").run_stage, stage)  # builds the monitor, as the CLI does
    from alignkit.config import GRPOConfig, PPOConfig, config_from_dict

    config_class = {"ppo": PPOConfig, "grpo": GRPOConfig}[stage]
    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(12)], "prompts.jsonl")
    full = train(config_from_dict(config_class, _config(tmp_path / "full", prompts, tiny_path, **overrides), stage))

    real, calls = recipe.make_experience, {"n": 0}

    def killed_during_a_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_in_step:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    run = tmp_path / "resumed"
    monkeypatch.setattr(recipe, "make_experience", killed_during_a_step)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(config_class, _config(run, prompts, tiny_path, **overrides), stage))
    monkeypatch.setattr(recipe, "make_experience", real)
    assert not (run / "model").exists() and len(_metrics(run)) == stop_in_step - 1  # it logged past its last checkpoint
    resumed = train(config_from_dict(config_class, _config(run, prompts, tiny_path, resume=resume(run), **overrides), stage))
    return full, resumed, tmp_path / "full", run


def test_ppo_resume_repeats_the_uninterrupted_run_bitwise(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """PPO with GAE and a value head, adaptive KL, running reward normalisation, shuffled minibatches, a linear
    schedule and the hacking monitor: every one of them is state the checkpoint must carry."""
    full, resumed, a, b = _run_stopped_then_resumed(
        "ppo", tmp_path, tiny_path, write_jsonl, monkeypatch, stop_in_step=6, resume=lambda run: "auto",
        max_steps=6, save_every=2, save_total_limit=1, prompts_per_step=4, batch_size=2, ppo_epochs=2, num_minibatches=2,
        kl_control="adaptive", kl_target=0.01, kl_horizon=50, monitor={"hacking_every": 1})
    assert [p.name for p in b.glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit=1 pruned checkpoint-2
    assert (b / "checkpoint-4" / "value_model.safetensors").is_file()
    assert _metrics(b) == _metrics(a)
    assert [json.loads(m)["step"] for m in _metrics(b)] == [1, 2, 3, 4, 5, 6]
    assert len({json.loads(m)["kl/coef"] for m in _metrics(a)}) == 6  # the adaptive coefficient moved every step
    for name in ("model/model.safetensors", "value_model.safetensors"):
        weights, again = load_file(a / name), load_file(b / name)
        assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights), name
    for key in ("first_reward", "final_reward", "final_kl", "final_kl_coef"):
        assert resumed[key] == full[key], key


def test_grpo_resume_from_a_named_checkpoint_with_lora(tmp_path, tiny_path, write_jsonl, monkeypatch):
    full, resumed, a, b = _run_stopped_then_resumed(
        "grpo", tmp_path, tiny_path, write_jsonl, monkeypatch, stop_in_step=4, resume=lambda run: str(run / "checkpoint-2"),
        max_steps=4, save_every=2, prompts_per_step=3, group_size=4, batch_size=6, lora_r=8)
    assert _metrics(b) == _metrics(a)
    weights, again = load_file(a / "adapter/adapter_model.safetensors"), load_file(b / "adapter/adapter_model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert resumed["final_reward"] == full["final_reward"]


def test_nan_losses_skip_the_optimizer_step_then_stop_the_run(tmp_path, tiny_path, write_jsonl, monkeypatch):
    real, calls = update.microbatch_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # one micro-batch per step here: call n is step n
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] in (2, 3) or calls["n"] >= 5 else loss), metrics

    monkeypatch.setattr(update, "microbatch_loss", poisoned)
    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(8)], "prompts.jsonl")
    config = _config(tmp_path / "run", prompts, tiny_path, max_steps=10, prompts_per_step=2, group_size=2, batch_size=4, max_nan_steps=3)
    with pytest.raises(AlignkitError, match=r"stopped at step 7: .*NaN/inf for 3 steps in a row"):
        importlib.import_module("alignkit.train.grpo").grpo(config)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["nan_skipped"] for m in logged] == [0, 1, 2, 2, 3, 4]
    assert [m["policy/optimizer_steps"] for m in logged] == [1, 0, 0, 1, 0, 0]
