"""Over-optimization and reward-hacking monitors that PPO, GRPO and DPO call while they train.

The monitor is built from the config's `monitor:` section above the recipes (the command line,
the pipeline, `alignkit.grpo(...)`) and passed in; the recipe hands it what only the recipe has,
then calls it once per step (train/monitor.py is the protocol):

    monitor = build_monitor(config, "ppo")          # held-out rows, gold, judge: fails before any model loads
    ...                                             # inside the recipe:
    monitor.bind(accelerator=..., tokenizer=..., reference=..., proxy=rewards, gold=gold)
        metrics.update(monitor.after_step(step, policy, rollout, prompt_rows))
        if monitor.stop: break

**Over-optimization** (Gao et al. 2023, "Scaling laws for reward model overoptimization"):
every `every` steps the monitor samples one answer per held-out prompt and scores it with
the training (proxy) reward, the gold reward or judge when given, and KL(policy || reference)
(k1 on the same samples). It raises an alarm when

- gold has fallen from its best check by more than `gold_drop` while the proxy has risen
  since that check by more than `proxy_rise` (the Goodhart signature: the proxy keeps
  paying for what the gold no longer rewards), or
- the KL exceeds `kl_budget` nats per answer.

After `patience` consecutive alarmed checks the run stops if `stop_on_alarm`. The check
with the best held-out gold (else judge, else proxy) is saved as `<output_dir>/best`
(early stopping keeps the best, not the last). Checks go to `<output_dir>/monitor.jsonl`
and the state to `<output_dir>/monitor.json`.

The KL's reference is the recipe's own: its frozen copy, or the LoRA policy with adapters off;
only a full fine-tune without a reference model in memory (DPO with `reference: precompute`)
makes the monitor load a copy, on the accelerator's device, at its first check.

**Reward hacking** (on each training batch of online RL, on the held-out answers for DPO):
the Pearson correlation between reward and answer length and its trend over the last
`trend_window` batches, the repetition rate, and the *truncation gain*: the proxy reward of
an answer minus that of its first `truncation_fraction` of words, in units of the batch's
reward std. A training batch's rewards are the ones the rollout already computed; only the
cut answers are scored anew. A reward that pays for length shows a high correlation and a positive gain;
a warning is printed when a threshold is crossed.

Without a `monitor:` section (or with `every: 0` and `hacking_every: 0`) `build_monitor`
returns a monitor that does nothing.

A checkpoint carries the monitor's memory: `monitor.state_dict()` (JSON) and, on resume,
`monitor.load_state_dict(state)`, which also drops the monitor.jsonl lines a killed run
wrote after the checkpoint, so the resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from alignkit.config import MonitorConfig  # noqa: F401  (the `monitor:` settings live in the config layer; re-exported)
from alignkit.data.formats import ANSWER_COLUMNS, PROMPT_KINDS, load_dataset, prompt_columns
from alignkit.errors import AlignkitError
from alignkit.evaluate.alarms import Check, HackingAlarms, OverOptimizationDetector, Score, truncation_gain  # noqa: F401
from alignkit.evaluate.metrics import kl_to_reference, refusal_rate, sycophancy_rate
from alignkit.evaluate.winrate import outcomes_from_judge
from alignkit.feedback.judge import judge_pairs, make_judge, read_constitution
from alignkit.io import append_jsonl, truncate_log, write_json
from alignkit.models.generation import generate_answers
from alignkit.models.reference import load_reference_model
from alignkit.models.wrapping import adapters_disabled, strip_wrappers
from alignkit.rl.rewards import FunctionReward, build_rewards
from alignkit.train.loop import save_model
from alignkit.train.monitor import NullMonitor  # noqa: F401  (re-exported)

log = logging.getLogger("alignkit")


class TrainingMonitor:
    """Held-out checks every `settings.every` steps and hacking alarms every `settings.hacking_every` steps."""

    def __init__(self, settings, output_dir: str, rows: list[dict], proxy: Score | None = None, gold: Score | None = None,
                 judge=None, max_new_tokens: int = 48, bf16: bool = True, seed: int = 0, run_config=None):
        self.config, self.output_dir, self.rows = settings, Path(output_dir), rows
        self.proxy, self.gold, self.judge = proxy, gold, judge
        self.max_new_tokens, self.bf16, self.seed = max_new_tokens, bf16, seed
        self.run_config = run_config  # the recipe's config: what a copy of the reference loads from, if one is needed
        self.accelerator = self.tokenizer = self.reference = None
        self.implicit_beta = 0.0
        self.detector = OverOptimizationDetector(settings.gold_drop, settings.proxy_rise, settings.kl_budget, settings.patience)
        self.hacking = HackingAlarms(settings.length_corr_warn, settings.length_corr_trend_warn, settings.repetition_warn,
                                     settings.truncation_gain_warn, settings.trend_window)
        self.alarms: list[dict] = []
        self.stop = False
        self.best_step: int | None = None
        self.reference_answers: list[str] | None = None
        self.online = False  # set once training batches arrive: then the hacking alarms watch those
        self.step = 0  # the last step seen, so that a checkpoint's state knows where it stands

    def bind(self, *, accelerator, tokenizer, reference=None, implicit_beta: float = 0.0, proxy=None, gold=None) -> None:
        """What only the recipe has (see train/monitor.py): a `proxy` or `gold` here fills what the settings left open."""
        self.accelerator, self.tokenizer, self.reference, self.implicit_beta = accelerator, tokenizer, reference, implicit_beta
        if self.proxy is None and proxy is not None:
            self.proxy = lambda prompts, answers, columns: proxy(prompts, answers, columns, update_stats=False).raw.tolist()
        if self.gold is None:
            self.gold = gold

    # -- held-out check
    def _sample(self, model, prompts: list) -> list[str]:
        with torch.random.fork_rng():  # the same random numbers at every check, and the training RNG untouched
            torch.manual_seed(self.seed)
            return generate_answers(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=16,
                                    do_sample=True, temperature=self.config.temperature, top_p=1.0, bf16=self.bf16)

    def _reference_for(self, model):
        """The reference model for KL: the recipe's, the LoRA policy with adapters off (None), or a copy loaded once."""
        if self.reference is None and not hasattr(model, "disable_adapter") and self.run_config is not None:
            log.info("monitor: loading a frozen copy of the starting model as the KL reference")
            self.reference = load_reference_model(self.run_config, self.accelerator)
        return self.reference

    def _judge_win_rate(self, model, prompts: list, answers: list[str]) -> float:
        if self.reference_answers is None:
            reference = self._reference_for(model)
            with contextlib.nullcontext(reference) if reference is not None else adapters_disabled(model) as base:
                self.reference_answers = self._sample(base, prompts)
        verdicts = judge_pairs(self.judge, read_constitution(self.config.constitution or None),
                               list(zip(prompts, answers, self.reference_answers)))
        return float(outcomes_from_judge([v.p_x_first for v in verdicts], [v.p_x_second for v in verdicts]).mean())

    def check(self, step: int, model) -> dict:
        prompts, columns = [r["prompt"] for r in self.rows], prompt_columns(self.rows)
        answers = self._sample(model, prompts)
        kl = kl_to_reference(model, self._reference_for(model), self.tokenizer, prompts, answers, bf16=self.bf16)
        if self.proxy is not None:
            proxy_values = list(self.proxy(prompts, answers, columns))
        else:  # DPO's own reward: beta * log pi/pi_ref of the answer (Rafailov et al. 2023, eq. 5)
            proxy_values = [self.implicit_beta * v for v in kl["per_answer"]]
        check = Check(step, proxy=float(np.nanmean(proxy_values)), kl=kl["kl"])
        if self.gold is not None:
            check.gold = float(np.nanmean(self.gold(prompts, answers, columns)))
        if self.judge is not None:
            check.judge = self._judge_win_rate(model, prompts, answers)
        alarms = self._update_alarms(step, check, model)
        metrics = {"monitor/proxy": check.proxy, "monitor/kl": check.kl, "monitor/alarm": float(bool(alarms)),
                   "monitor/length": sum(len(a.split()) for a in answers) / max(1, len(answers))}
        if check.gold is not None:
            metrics["monitor/gold"] = check.gold
        if check.judge is not None:
            metrics["monitor/judge_win_rate"] = check.judge
        metrics["monitor/refusal_rate"] = refusal_rate(answers)  # over-refusal, DPO's failure on written pairs
        sycophancy = sycophancy_rate(prompts, answers)  # agreeing with a user's false claim: a symptom of over-optimization
        if sycophancy is not None:
            metrics["monitor/sycophancy_rate"] = sycophancy
        if self.config.hacking_every and not self.online:
            score = self.proxy or self._implicit_reward(model)
            gain = truncation_gain(score, prompts, answers, columns, self.config.truncation_fraction, self.config.truncation_samples)
            metrics.update(self.hacking.update(step, proxy_values, [len(a.split()) for a in answers], answers, gain))
        self._record(step, metrics, alarms, answers[:3])
        return metrics

    def _update_alarms(self, step: int, check: Check, model) -> list[str]:
        """Feeds the detector; keeps the best model and decides whether to stop."""
        alarms = self.detector.update(check)
        for alarm in alarms:
            log.warning(f"monitor at step {step}: {alarm}")
        self.alarms += [{"step": step, "alarm": a} for a in alarms]
        if self.detector.best is check and self.config.keep_best and self.accelerator is not None:
            save_model(self.accelerator, model, self.tokenizer, str(self.output_dir / "best"), merge_lora=False)
            self.best_step = step
        if alarms and self.detector.should_stop and self.config.stop_on_alarm:
            log.warning(f"monitor: stopping at step {step} after {self.detector.alarmed_in_a_row} alarmed check(s) in a row"
                        + (f"; the best held-out model (step {self.best_step}) is in {self.output_dir / 'best'}" if self.best_step is not None else ""))
            self.stop = True
        return alarms

    def _implicit_reward(self, model) -> Score:
        """DPO's reward of an answer, beta * log pi(y|x)/pi_ref(y|x), as a score function."""
        def score(prompts, answers, columns):
            per_answer = kl_to_reference(model, self._reference_for(model), self.tokenizer, prompts, answers, bf16=self.bf16)["per_answer"]
            return [self.implicit_beta * v for v in per_answer]

        return score

    # -- hacking alarms on a training batch (online RL)
    def batch_alarms(self, step: int, rollout, prompt_rows: list[dict]) -> dict:
        """On the rollout's own answers and rewards (the training proxy's; a monitor `proxy:` of its own scores anew)."""
        self.online = True
        prompts = [prompt_rows[i]["prompt"] for i in rollout.prompt_index]
        columns = prompt_columns(prompt_rows, rollout.prompt_index)
        answers = list(rollout.responses)
        own_proxy = bool(self.config.proxy) or rollout.rewards is None
        rewards = self.proxy(prompts, answers, columns) if own_proxy else rollout.rewards.tolist()
        gain = truncation_gain(self.proxy, prompts, answers, columns, self.config.truncation_fraction, self.config.truncation_samples,
                               scores=rewards)
        return self.hacking.update(step, rewards, rollout.response_lengths.tolist(), answers, gain)

    def after_step(self, step: int, model, rollout=None, prompt_rows=None) -> dict:
        """What the recipe calls once per optimizer step; returns metrics to log (empty on most steps)."""
        model = strip_wrappers(model)
        self.step = step
        metrics = {}
        if rollout is not None and self.proxy is not None and self.config.hacking_every and step % self.config.hacking_every == 0:
            metrics.update(self.batch_alarms(step, rollout, prompt_rows))
        if self.config.every and step % self.config.every == 0:
            metrics.update(self.check(step, model))
        return metrics

    def _record(self, step: int, metrics: dict, alarms: list[str], examples: list[str]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.output_dir / "monitor.jsonl", {"step": step, **metrics, "alarms": alarms, "examples": examples})
        write_json(self.output_dir / "monitor.json", self.summary())

    def state_dict(self) -> dict:
        """The monitor's memory for a checkpoint (JSON): held-out checks, alarm streak, hacking history."""
        return {"step": self.step, "detector": self.detector.state_dict(), "hacking": self.hacking.state_dict(),
                "alarms": self.alarms, "best_step": self.best_step, "reference_answers": self.reference_answers,
                "online": self.online}

    def load_state_dict(self, state: dict) -> None:
        """Puts `state_dict()` back and drops the monitor.jsonl lines a killed run wrote after the checkpoint's step.

        An empty state (the checkpointed run had no monitor) leaves this one fresh.
        """
        if not state:
            return
        self.step = state["step"]
        self.detector.load_state_dict(state["detector"])
        self.hacking.load_state_dict(state["hacking"])
        self.alarms, self.best_step = state["alarms"], state["best_step"]
        self.reference_answers, self.online = state["reference_answers"], state["online"]
        checks = self.output_dir / "monitor.jsonl"
        if checks.is_file():
            truncate_log(checks, self.step)
            write_json(self.output_dir / "monitor.json", self.summary())

    def summary(self) -> dict:
        best = self.detector.best
        return {"checks": len(self.detector.checks), "alarms": self.alarms, "stopped": self.stop,
                "stopped_at": self.detector.checks[-1].step if self.stop else None,
                "best_step": self.best_step, "best_target": best.target if best else None,
                "best_dir": str(self.output_dir / "best") if self.best_step is not None else None,
                "hacking_warnings": self.hacking.warnings}


# ---------------------------------------------------------------- building it from a recipe's config

def _held_out_rows(source: str, limit: int) -> list[dict]:
    rows, _ = load_dataset(source, PROMPT_KINDS, "monitor", "test", hint="; the monitor needs held-out rows with a `prompt` column")
    seen, out = set(), []
    for row in rows:  # one entry per distinct prompt (preference files repeat prompts)
        key = json.dumps(row["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append({k: v for k, v in row.items() if k not in ANSWER_COLUMNS})
    return out[:limit] if limit else out


def build_monitor(config, stage: str):
    """The monitor for a recipe's config (its `monitor:` section), or a `NullMonitor` when none is configured.

    Everything that can be wrong (the held-out file, the gold or proxy function, the judge) fails here,
    before the recipe loads a model. The recipe then `bind`s its accelerator, tokenizer, reference,
    training reward (the default proxy) and gold judge (the default gold, `eval_reward_function`).
    """
    settings = getattr(config, "monitor", None)  # a MonitorConfig, validated when the config loaded; None: off
    if settings is None or (not settings.every and not settings.hacking_every):
        return NullMonitor()
    source = settings.prompts or getattr(config, "eval_data", "")
    if settings.every and not source:
        raise AlignkitError(f"{stage} monitor: no held-out prompts; set monitor.prompts (or eval_data) to a file of rows with a `prompt` column")
    rows = _held_out_rows(source, settings.max_prompts) if source else []
    gold = FunctionReward(settings.gold) if settings.gold else None
    if gold is None and getattr(config, "eval_reward_function", ""):
        gold = FunctionReward(config.eval_reward_function)
    monitor = TrainingMonitor(settings, config.output_dir, rows, _proxy_score(settings), gold,
                              make_judge(settings.judge) if settings.judge else None,
                              max_new_tokens=settings.max_new_tokens or getattr(config, "max_new_tokens", 48),
                              bf16=getattr(config, "mixed_precision", "bf16") == "bf16", seed=config.seed,
                              run_config=config)
    log.info(f"{stage} monitor: {len(rows)} held-out prompts every {settings.every} steps"
             f" (proxy: {settings.proxy or ('implicit DPO reward' if stage == 'dpo' else 'training reward')}, "
             f"gold: {'yes' if gold or getattr(config, 'eval_reward_function', '') else 'no'}, judge: {settings.judge or 'no'}, "
             f"KL budget: {settings.kl_budget or 'none'}, stop on alarm: {settings.stop_on_alarm}); "
             f"reward-hacking alarms every {settings.hacking_every or 'no'} steps")
    return monitor


def _proxy_score(settings) -> Score | None:
    """A `proxy:` of the monitor's own (a reward model directory or a function); None uses the training reward."""
    if not settings.proxy:
        return None
    spec = {"type": "model", "path": settings.proxy} if Path(settings.proxy).is_dir() else {"type": "function", "function": settings.proxy}
    proxy = build_rewards([spec])
    return lambda prompts, answers, columns: proxy(prompts, answers, columns, update_stats=False).raw.tolist()
