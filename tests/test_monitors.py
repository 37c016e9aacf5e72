"""Over-optimization and reward-hacking monitors: the alarm logic on made-up histories, the hacking signals on
constructed answers, and the alarm firing (and stopping the run) in a deliberately over-optimized GRPO run."""

from __future__ import annotations

import json
import logging

import pytest

from alignkit.evaluate.metrics import distinct_n, refusal_rate, repetition_rate, text_metrics
from alignkit.evaluate.alarms import Check, HackingAlarms, OverOptimizationDetector, pearson, trend, truncation_gain


def capitalized_words(prompts, responses, **columns):
    """The flawed proxy: pays for capitalised words, which the random tiny model can learn to emit in a few steps."""
    return [sum(w[:1].isupper() for w in r.split()) / max(1, len(r.split())) for r in responses]


def lowercase_words(prompts, responses, **columns):
    """The gold: plain lower-case prose. It shares nothing with the proxy's flaw, so chasing the proxy lowers it."""
    return [sum(w[:1].islower() for w in r.split()) / max(1, len(r.split())) for r in responses]


def pays_for_length(prompts, answers, columns):
    return [float(len(a.split())) for a in answers]


# ---------------------------------------------------------------- the alarm logic

def _feed(detector, rows):
    return [detector.update(Check(step, proxy=p, gold=g, kl=kl)) for step, p, g, kl in rows]


def test_gold_falling_while_proxy_rises_raises_the_alarm():
    detector = OverOptimizationDetector(gold_drop=0.05)
    alarms = _feed(detector, [(0, 0.0, 0.50, 0.0), (10, 0.5, 0.60, 1.0), (20, 0.9, 0.58, 2.0), (30, 1.4, 0.40, 4.0)])
    assert alarms[:3] == [[], [], []]  # a dip of 0.02 is within gold_drop
    assert len(alarms[3]) == 1 and "fell 0.600 -> 0.400 since step 10" in alarms[3][0]
    assert detector.best.step == 10 and detector.should_stop


def test_no_alarm_when_gold_and_proxy_rise_together_or_fall_together():
    rising = OverOptimizationDetector()
    assert not any(_feed(rising, [(s, 0.1 * s, 0.05 * s, 0.1 * s) for s in range(10)]))
    both_fall = OverOptimizationDetector()  # a bad update, not over-optimization: the proxy did not rise
    assert not any(_feed(both_fall, [(0, 1.0, 0.6, 0.0), (1, 0.5, 0.3, 1.0)]))


def test_kl_budget_and_patience():
    detector = OverOptimizationDetector(kl_budget=5.0, patience=2)
    alarms = _feed(detector, [(0, 0.0, 0.5, 1.0), (1, 0.1, 0.5, 6.0)])
    assert "KL budget exceeded" in alarms[1][0] and not detector.should_stop  # one alarmed check, patience 2
    _feed(detector, [(2, 0.2, 0.5, 7.0)])
    assert detector.should_stop
    _feed(detector, [(3, 0.2, 0.5, 1.0)])
    assert not detector.should_stop  # the streak resets


def test_early_stopping_target_prefers_gold_then_judge_then_proxy():
    assert Check(0, proxy=1.0, gold=0.2, judge=0.7).target == 0.2
    assert Check(0, proxy=1.0, judge=0.7).target == 0.7
    assert Check(0, proxy=1.0).target == 1.0


# ---------------------------------------------------------------- reward-hacking signals

def test_correlation_and_trend_by_hand():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [5, 5, 5, 5]) == 0.0
    assert trend([0, 10, 20], [0.0, 0.2, 0.4]) == pytest.approx(0.4)  # rose 0.4 over the window


def test_length_paying_reward_sets_off_the_correlation_and_truncation_alarms(caplog):
    answers = [" ".join(["word"] * n) for n in (3, 5, 8, 12, 20, 30)]
    prompts = ["q"] * len(answers)
    gain = truncation_gain(pays_for_length, prompts, answers, {}, fraction=0.5, samples=8)
    assert gain > 0.5  # every answer outscores its own first half
    content_only = lambda p, a, c: [1.0 if a_.startswith("word") else 0.0 for a_ in a]  # noqa: E731
    assert truncation_gain(content_only, prompts, answers, {}, 0.5, 8) == 0.0
    alarms = HackingAlarms()
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        metrics = alarms.update(1, pays_for_length(prompts, answers, {}), [len(a.split()) for a in answers], answers, gain)
        alarms.update(2, pays_for_length(prompts, answers, {}), [len(a.split()) for a in answers], answers, gain)
    assert metrics["hacking/length_corr"] == pytest.approx(1.0)
    warned = [r.getMessage() for r in caplog.records]
    assert sum("hacking/length_corr =" in w for w in warned) == 1  # printed once per crossing, not every batch
    assert any("hacking/truncation_gain" in w for w in warned)
    assert metrics["hacking/repetition"] > 0.5  # "word word word ..." repeats itself


def test_text_metrics_by_hand():
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "b c"], 2) == pytest.approx(3 / 3)
    assert repetition_rate("x y z x y z") == pytest.approx(1 - 3 / 4)
    assert refusal_rate(["I'm sorry, but I can't help with that.", "Sure: 4.", "I cannot assist with hacking."]) == pytest.approx(2 / 3)
    assert text_metrics(["one two", "three"])["length_words"] == 1.5


def test_monitor_state_round_trips_through_json_and_drops_checks_after_the_checkpoint(tmp_path):
    """What a checkpoint carries: a resumed monitor alarms, stops and warns as the uninterrupted one would."""
    from alignkit.config import MonitorConfig
    from alignkit.evaluate.monitors import NullMonitor, TrainingMonitor

    def monitor():
        return TrainingMonitor(MonitorConfig(every=0, patience=2), str(tmp_path), [], proxy=None, gold=None)

    before = monitor()
    _feed(before.detector, [(1, 0.0, 0.6, 0.0), (2, 0.5, 0.4, 1.0)])  # one alarmed check of the two patience needs
    before.hacking.update(2, [1.0, 2.0, 3.0], [1, 2, 3], ["a b", "c d", "e f"])  # reward tracks length: a warning
    before.after_step(2, object())  # nothing due at step 2 here; the monitor notes where it stands
    state = json.loads(json.dumps(before.state_dict()))
    (tmp_path / "monitor.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "monitor/pro')  # killed mid-line

    after = monitor()
    after.load_state_dict(state)
    assert after.state_dict() == before.state_dict()
    assert after.detector.alarmed_in_a_row == 1 and after.hacking.active == {"hacking/length_corr"} and after.hacking.warnings == 1
    assert [json.loads(line)["step"] for line in (tmp_path / "monitor.jsonl").read_text().splitlines()] == [1, 2]
    monitor().load_state_dict({})  # a checkpoint of a run without a monitor: nothing to restore
    assert NullMonitor().state_dict() == {} and NullMonitor().load_state_dict(state) is None


# ---------------------------------------------------------------- the monitor inside real runs on the tiny model

def _prompts(write_jsonl):
    train = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(32)], "prompts.jsonl")
    held_out = write_jsonl([{"prompt": f"Describe thing {i}."} for i in range(16)], "held_out.jsonl")
    return train, held_out


def test_alarm_fires_and_stops_an_over_optimized_grpo_run(tmp_path, write_jsonl, tiny_path):
    """beta = 0 against a proxy that pays for capitalised words, with a gold that pays for lower-case prose."""
    import alignkit

    train, held_out = _prompts(write_jsonl)
    monitor = {"every": 2, "prompts": held_out, "gold": f"{__name__}:lowercase_words", "gold_drop": 0.15,
               "stop_on_alarm": True, "patience": 2, "max_new_tokens": 8}  # two checks in a row: one noisy check is no alarm
    alignkit.grpo(model=tiny_path, data=train, reward_function=f"{__name__}:capitalized_words", kl_coef=0.0,
                        output_dir=str(tmp_path / "grpo"), mixed_precision="no", max_new_tokens=8, learning_rate=3e-2,
                        report_to=["jsonl"], batch_size=32, seed=0, max_steps=30, prompts_per_step=8, group_size=8,
                        monitor=monitor)
    state = json.loads((tmp_path / "grpo" / "monitor.json").read_text())
    checks = [json.loads(line) for line in (tmp_path / "grpo" / "monitor.jsonl").read_text().splitlines()]
    assert state["alarms"] and "over-optimization" in state["alarms"][0]["alarm"], checks
    assert state["stopped"] and state["stopped_at"] < 30  # stopped early, not at max_steps
    assert checks[-1]["monitor/proxy"] > checks[0]["monitor/proxy"] + 0.1  # the proxy rose ...
    assert checks[-1]["monitor/gold"] < max(c["monitor/gold"] for c in checks) - 0.1  # ... while gold fell from its peak
    assert checks[-1]["monitor/kl"] > checks[0]["monitor/kl"]  # the policy drifted from the reference
    assert state["best_step"] < state["stopped_at"] and (tmp_path / "grpo" / "best" / "model" / "config.json").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == state["stopped_at"] and "hacking/length_corr" in metrics[-1]


def test_dpo_monitor_uses_the_implicit_reward_and_the_adapter_reference(tmp_path, write_jsonl, tiny_path):
    import alignkit

    pairs = write_jsonl([{"prompt": f"Say something about {i}.", "chosen": "a calm short answer", "rejected": "LOUD WORDS HERE"}
                         for i in range(16)], "pairs.jsonl")
    alignkit.dpo(model=tiny_path, data=pairs, eval_data=pairs, output_dir=str(tmp_path / "dpo"), lora_r=8,
                       learning_rate=5e-3, batch_size=4, max_steps=4, mixed_precision="no", report_to=["jsonl"],
                       monitor={"every": 2, "gold": f"{__name__}:lowercase_words", "max_prompts": 8, "max_new_tokens": 6})
    checks = [json.loads(line) for line in (tmp_path / "dpo" / "monitor.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [2, 4]
    for check in checks:  # proxy = beta * log pi/pi_ref on the same samples, and KL is their mean log-ratio
        assert check["monitor/proxy"] == pytest.approx(0.1 * check["monitor/kl"], rel=1e-4, abs=1e-6)
    assert checks[-1]["monitor/kl"] != 0.0 and "hacking/length_corr" in checks[-1]
    assert (tmp_path / "dpo" / "best" / "adapter" / "adapter_config.json").is_file()


# ---------------------------------------------------------------- what the monitor costs

def _causal_lms() -> int:
    import gc

    gc.collect()
    return sum(type(o).__name__.endswith("ForCausalLM") for o in gc.get_objects())


def test_dpo_with_a_monitor_holds_two_models_not_three(tmp_path, write_jsonl, tiny_path, monkeypatch):
    """Full fine-tuning, reference: copy: the monitor measures KL against the recipe's own frozen copy."""
    import alignkit
    from alignkit.evaluate.monitors import TrainingMonitor

    pairs = write_jsonl([{"prompt": f"Say something about {i}.", "chosen": "a calm short answer", "rejected": "LOUD WORDS HERE"}
                         for i in range(8)], "pairs.jsonl")
    baseline, during, real = _causal_lms(), [], TrainingMonitor.check

    def counting(self, step, model):
        during.append(_causal_lms())
        return real(self, step, model)

    monkeypatch.setattr(TrainingMonitor, "check", counting)
    alignkit.dpo(model=tiny_path, data=pairs, eval_data=pairs, output_dir=str(tmp_path / "dpo"), reference="copy", learning_rate=1e-3,
                 batch_size=4, max_steps=2, mixed_precision="no", report_to=[], monitor={"every": 1, "max_prompts": 4, "max_new_tokens": 4})
    assert during == [baseline + 2, baseline + 2]  # the policy and the reference, at every check


def test_a_grpo_step_with_the_monitor_scores_each_rollout_once(tmp_path, write_jsonl, tiny_path, monkeypatch):
    """The hacking alarms read the rewards the rollout already has; only the cut answers of the truncation test are new."""
    import alignkit

    recipe = __import__("importlib").import_module("alignkit.train.ppo")
    scored, rollouts, real_experience = [], [], recipe.make_experience

    def recording(*args, **kwargs):
        rollout, metrics = real_experience(*args, **kwargs)
        rollouts.append(list(rollout.responses))
        return rollout, metrics

    monkeypatch.setattr(recipe, "make_experience", recording)
    monkeypatch.setattr(f"{__name__}.SCORED", scored, raising=False)
    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(8)], "prompts.jsonl")
    alignkit.grpo(model=tiny_path, data=prompts, reward_function=f"{__name__}:counted_words", output_dir=str(tmp_path / "grpo"),
                  mixed_precision="no", max_new_tokens=6, report_to=[], max_steps=3, prompts_per_step=2, group_size=4,
                  batch_size=8, monitor={"every": 0, "hacking_every": 1, "truncation_samples": 8})
    assert len(rollouts) == 3
    for responses in rollouts:
        assert sum(call == responses for call in scored) == 1  # the rollout's answers went to the reward once
    cut_calls = sum(any(len(a.split()) >= 2 for a in responses) for responses in rollouts)  # the truncation test's
    assert len(scored) == 3 + cut_calls  # per step: the rollout, then (when an answer has words to cut) its cut answers


SCORED: list = []


def counted_words(prompts, responses, **columns):
    SCORED.append(list(responses))
    return [float(len(r.split())) for r in responses]
