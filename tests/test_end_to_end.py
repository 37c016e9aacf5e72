"""The real embedded model end to end: hhh-mini data -> LoRA SFT -> merged model -> answers scored by the gold judge."""

from __future__ import annotations

import json

import pytest

from alignkit.data.tasks import hhh_mini
from alignkit.train import sft


def test_real_model_lora_sft_round_trip(tmp_path, embedded_path):
    """A few LoRA steps on SmolLM2-135M: loss falls on the rows it saw, the merged model loads and answers."""
    from alignkit.demo import gold_evaluation

    hhh_mini.write_dataset(tmp_path / "data", seed=1, n_train=60, n_test=12)
    rows = [json.loads(line) for line in (tmp_path / "data" / "sft_train.jsonl").read_text().splitlines()][:24]
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = sft({"model": "smollm2-135m-instruct", "data": str(tmp_path / "small.jsonl"), "eval_fraction": 0,
                   "output_dir": str(tmp_path / "run"), "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                   "learning_rate": 2e-3, "max_steps": 6, "batch_size": 8, "warmup_ratio": 0, "report_to": ["jsonl"]})
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    prompts = [json.loads(line) for line in (tmp_path / "data" / "prompts_test.jsonl").read_text().splitlines()][:4]
    answers, scores = gold_evaluation(summary["model"], prompts, max_new_tokens=24)
    assert all(isinstance(a, str) and a for a in answers)
    assert all(-1.0 <= s <= 1.0 for s in scores)


@pytest.mark.slow
def test_demo_sft_beats_base_on_gold_reward(tmp_path):
    """`alignkit demo` in full: the SFT model's mean gold reward on the test split beats the base model's."""
    from alignkit.config import config_from_dict
    from alignkit.demo import DemoConfig, run_demo

    results = run_demo(config_from_dict(DemoConfig, {"workdir": str(tmp_path / "demo")}))
    assert results["sft_gold"] > results["base_gold"] + 0.1
