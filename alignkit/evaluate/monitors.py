"""Over-optimization and reward-hacking monitors that PPO, GRPO and DPO call while they train.

The recipe side is three lines (setup, one call per step, stop):

    monitor = build_monitor(config, "ppo", tokenizer, accelerator, proxy=rewards, gold=gold)
    ...
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

**Reward hacking** (on each training batch of online RL, on the held-out answers for DPO):
the Pearson correlation between reward and answer length and its trend over the last
`trend_window` batches, the repetition rate, and the *truncation gain*: the proxy reward of
an answer minus that of its first `truncation_fraction` of words, in units of the batch's
reward std. A reward that pays for length shows a high correlation and a positive gain;
a warning is printed when a threshold is crossed.

Without a `monitor:` section (or with `every: 0` and `hacking_every: 0`) `build_monitor`
returns a monitor that does nothing.

A checkpoint carries the monitor's memory: `monitor.state_dict()` (JSON) and, on resume,
`monitor.load_state_dict(state)`, which also drops the monitor.jsonl lines a killed run
wrote after the checkpoint, so the resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from alignkit.config import MonitorConfig  # noqa: F401  (the `monitor:` settings live in the config layer; re-exported)
from alignkit.evaluate.metrics import kl_to_reference, repetition_rate
from alignkit.io import append_jsonl
from alignkit.models.wrapping import strip_wrappers

log = logging.getLogger("alignkit")

Score = Callable[[list, list[str], dict], list[float]]  # (prompts, answers, columns) -> one number per answer


# ---------------------------------------------------------------- pure logic

@dataclass
class Check:
    step: int
    proxy: float
    gold: float | None = None
    judge: float | None = None
    kl: float | None = None

    @property
    def target(self) -> float:
        """What early stopping maximises: gold, else the judge's win rate, else the proxy."""
        return next(v for v in (self.gold, self.judge, self.proxy) if v is not None)


@dataclass
class OverOptimizationDetector:
    """Alarms from the history of held-out checks; no models, so it is tested on made-up numbers."""

    gold_drop: float = 0.05
    proxy_rise: float = 0.0
    kl_budget: float = 0.0
    patience: int = 1
    checks: list = field(default_factory=list)
    alarmed_in_a_row: int = 0

    @property
    def best(self) -> Check | None:
        return max(self.checks, key=lambda c: c.target) if self.checks else None

    def update(self, check: Check) -> list[str]:
        """Adds a check; returns its alarms (empty when all is well)."""
        self.checks.append(check)
        alarms = []
        held_out = check.gold if check.gold is not None else check.judge
        if held_out is not None:
            name = "gold" if check.gold is not None else "judge"
            peak = max(self.checks, key=lambda c: c.gold if c.gold is not None else c.judge)
            peak_value = peak.gold if peak.gold is not None else peak.judge
            if peak.step < check.step and peak_value - held_out > self.gold_drop and check.proxy - peak.proxy > self.proxy_rise:
                alarms.append(f"over-optimization: held-out {name} fell {peak_value:.3f} -> {held_out:.3f} since step {peak.step} "
                              f"while the proxy reward rose {peak.proxy:.3f} -> {check.proxy:.3f}")
        if self.kl_budget > 0 and check.kl is not None and check.kl > self.kl_budget:
            alarms.append(f"KL budget exceeded: KL(policy || reference) = {check.kl:.2f} nats per answer > kl_budget {self.kl_budget:g}")
        self.alarmed_in_a_row = self.alarmed_in_a_row + 1 if alarms else 0
        return alarms

    @property
    def should_stop(self) -> bool:
        return self.alarmed_in_a_row >= self.patience

    def state_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "alarmed_in_a_row": self.alarmed_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.checks = [Check(**c) for c in state["checks"]]
        self.alarmed_in_a_row = state["alarmed_in_a_row"]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant or there are fewer than 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def trend(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over steps, times the span of steps: the change over the window."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(steps) < 3 or steps.std() == 0:
        return 0.0
    slope = np.polyfit(steps, values, 1)[0]
    return float(slope * (steps.max() - steps.min()))


def truncate_words(text: str, fraction: float) -> str:
    """The first `fraction` of an answer's words (at least one)."""
    parts = text.split()
    return " ".join(parts[: max(1, int(len(parts) * fraction))])


@dataclass
class HackingAlarms:
    """Reward-length correlation and its trend, repetition, truncation gain; warnings on crossing thresholds."""

    length_corr_warn: float = 0.5
    length_corr_trend_warn: float = 0.3
    repetition_warn: float = 0.3
    truncation_gain_warn: float = 0.5
    trend_window: int = 10
    history: list = field(default_factory=list)  # (step, correlation)
    active: set = field(default_factory=set)  # warnings currently above threshold (printed once per crossing)
    warnings: int = 0

    def update(self, step: int, rewards: Sequence[float], lengths: Sequence[float], answers: Sequence[str],
               truncation_gain: float | None = None) -> dict:
        corr = pearson(rewards, lengths)
        self.history.append((step, corr))
        recent = self.history[-self.trend_window:]
        metrics = {
            "hacking/length_corr": corr,
            "hacking/length_corr_trend": trend([s for s, _ in recent], [c for _, c in recent]),
            "hacking/repetition": sum(map(repetition_rate, answers)) / max(1, len(answers)),
        }
        if truncation_gain is not None:
            metrics["hacking/truncation_gain"] = truncation_gain
        checks = {
            "hacking/length_corr": (self.length_corr_warn, "reward rises with answer length"),
            "hacking/length_corr_trend": (self.length_corr_trend_warn, "the reward-length correlation is climbing"),
            "hacking/repetition": (self.repetition_warn, "answers repeat themselves"),
            "hacking/truncation_gain": (self.truncation_gain_warn, "the full answer outscores its own first part by a wide margin (length exploitation?)"),
        }
        for key, (threshold, meaning) in checks.items():
            value = metrics.get(key)
            if value is None or threshold <= 0:
                continue
            if value > threshold and key not in self.active:
                self.active.add(key)
                self.warnings += 1
                log.warning(f"reward-hacking warning at step {step}: {key} = {value:.3f} > {threshold:g}: {meaning}")
            elif value <= threshold:
                self.active.discard(key)
        metrics["hacking/warnings"] = self.warnings
        return metrics

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "active": sorted(self.active), "warnings": self.warnings}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.active, self.warnings = set(state["active"]), state["warnings"]


def truncation_gain(score: Score, prompts: list, answers: list[str], columns: dict, fraction: float, samples: int) -> float:
    """Mean proxy(full) - proxy(first `fraction` of words) over up to `samples` answers, in units of their reward std."""
    picked = [i for i, a in enumerate(answers) if len(a.split()) >= 2][:samples]
    if not picked:
        return 0.0
    cut = {k: [v[i] for i in picked] * 2 for k, v in columns.items()}
    texts = [answers[i] for i in picked] + [truncate_words(answers[i], fraction) for i in picked]
    values = np.asarray(score([prompts[i] for i in picked] * 2, texts, cut), dtype=float)
    full, short = values[: len(picked)], values[len(picked):]
    return float((full - short).mean() / max(values.std(), 1e-6))


# ---------------------------------------------------------------- the monitor the recipes call

class NullMonitor:
    stop = False

    def after_step(self, step, model, rollout=None, prompt_rows=None) -> dict:
        return {}

    def summary(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: a run resumed without a monitor ignores a checkpointed monitor's memory."""


class TrainingMonitor:
    """Held-out checks every `config.every` steps and hacking alarms every `config.hacking_every` steps."""

    def __init__(self, config, output_dir: str, tokenizer, rows: list[dict], proxy: Score | None, gold: Score | None,
                 judge=None, reference=None, implicit_beta: float = 0.0, max_new_tokens: int = 48, bf16: bool = True,
                 save: Callable[[str, object], None] | None = None, seed: int = 0):
        self.config, self.output_dir, self.tokenizer, self.rows = config, Path(output_dir), tokenizer, rows
        self.proxy, self.gold, self.judge, self.reference = proxy, gold, judge, reference
        self.implicit_beta, self.max_new_tokens, self.bf16, self.save, self.seed = implicit_beta, max_new_tokens, bf16, save, seed
        self.detector = OverOptimizationDetector(config.gold_drop, config.proxy_rise, config.kl_budget, config.patience)
        self.hacking = HackingAlarms(config.length_corr_warn, config.length_corr_trend_warn, config.repetition_warn,
                                     config.truncation_gain_warn, config.trend_window)
        self.alarms: list[dict] = []
        self.stop = False
        self.best_step: int | None = None
        self.reference_answers: list[str] | None = None
        self.online = False  # set once training batches arrive: then the hacking alarms watch those
        self.step = 0  # the last step seen, so that a checkpoint's state knows where it stands

    # -- held-out check
    def _sample(self, model, prompts: list) -> list[str]:
        from alignkit.models.generation import generate_answers

        with torch.random.fork_rng():  # the same random numbers at every check, and the training RNG untouched
            torch.manual_seed(self.seed)
            return generate_answers(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=16,
                                    do_sample=True, temperature=self.config.temperature, top_p=1.0, bf16=self.bf16)

    def _judge_win_rate(self, model, prompts: list, answers: list[str]) -> float:
        from alignkit.evaluate.winrate import outcomes_from_judge
        from alignkit.feedback.judge import judge_pairs, read_constitution

        if self.reference_answers is None:
            with self._reference(model) as reference:
                self.reference_answers = self._sample(reference, prompts)
        verdicts = judge_pairs(self.judge, read_constitution(self.config.constitution or None),
                               list(zip(prompts, answers, self.reference_answers)))
        return float(outcomes_from_judge([v.p_x_first for v in verdicts], [v.p_x_second for v in verdicts]).mean())

    def _reference(self, model):
        import contextlib

        from alignkit.evaluate.metrics import adapters_disabled

        return contextlib.nullcontext(self.reference) if self.reference is not None else adapters_disabled(model)

    def check(self, step: int, model) -> dict:
        prompts = [r["prompt"] for r in self.rows]
        columns = {k: [r.get(k) for r in self.rows] for k in sorted({k for r in self.rows for k in r} - {"prompt"})}
        answers = self._sample(model, prompts)
        kl = kl_to_reference(model, self.reference, self.tokenizer, prompts, answers, bf16=self.bf16)
        if self.proxy is not None:
            proxy_values = list(self.proxy(prompts, answers, columns))
        else:  # DPO's own reward: beta * log pi/pi_ref of the answer (Rafailov et al. 2023, eq. 5)
            proxy_values = [self.implicit_beta * v for v in kl["per_answer"]]
        check = Check(step, proxy=float(np.nanmean(proxy_values)), kl=kl["kl"])
        if self.gold is not None:
            check.gold = float(np.nanmean(self.gold(prompts, answers, columns)))
        if self.judge is not None:
            check.judge = self._judge_win_rate(model, prompts, answers)
        alarms = self.detector.update(check)
        for alarm in alarms:
            log.warning(f"monitor at step {step}: {alarm}")
        self.alarms += [{"step": step, "alarm": a} for a in alarms]
        if self.detector.best is check and self.config.keep_best and self.save is not None:
            self.save(str(self.output_dir / "best"), model)
            self.best_step = step
        if alarms and self.detector.should_stop and self.config.stop_on_alarm:
            log.warning(f"monitor: stopping at step {step} after {self.detector.alarmed_in_a_row} alarmed check(s) in a row"
                        + (f"; the best held-out model (step {self.best_step}) is in {self.output_dir / 'best'}" if self.best_step is not None else ""))
            self.stop = True
        metrics = {"monitor/proxy": check.proxy, "monitor/kl": check.kl, "monitor/alarm": float(bool(alarms)),
                   "monitor/length": sum(len(a.split()) for a in answers) / max(1, len(answers))}
        if check.gold is not None:
            metrics["monitor/gold"] = check.gold
        if check.judge is not None:
            metrics["monitor/judge_win_rate"] = check.judge
        if self.config.hacking_every and not self.online:
            score = self.proxy or self._implicit_reward(model)
            lengths = [len(a.split()) for a in answers]
            gain = truncation_gain(score, prompts, answers, columns, self.config.truncation_fraction, self.config.truncation_samples)
            metrics.update(self.hacking.update(step, proxy_values, lengths, answers, gain))
        self._record(step, metrics, alarms, answers[:3])
        return metrics

    def _implicit_reward(self, model) -> Score:
        """DPO's reward of an answer, beta * log pi(y|x)/pi_ref(y|x), as a score function."""
        def score(prompts, answers, columns):
            per_answer = kl_to_reference(model, self.reference, self.tokenizer, prompts, answers, bf16=self.bf16)["per_answer"]
            return [self.implicit_beta * v for v in per_answer]

        return score

    # -- hacking alarms on a training batch (online RL)
    def batch_alarms(self, step: int, rollout, prompt_rows: list[dict]) -> dict:
        self.online = True
        prompts = [prompt_rows[i]["prompt"] for i in rollout.prompt_index]
        columns = {k: [prompt_rows[i].get(k) for i in rollout.prompt_index]
                   for k in sorted({k for r in prompt_rows for k in r} - {"prompt"})}
        answers = list(rollout.responses)
        rewards = self.proxy(prompts, answers, columns)
        gain = truncation_gain(self.proxy, prompts, answers, columns, self.config.truncation_fraction, self.config.truncation_samples)
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
        from alignkit.io import write_json

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
        from alignkit.io import truncate_log, write_json

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
    from alignkit.data.formats import load_dataset

    kinds = ("prompt_only", "prompt_completion", "preference", "unpaired_preference")
    rows, _ = load_dataset(source, kinds, "monitor", "test", hint="; the monitor needs held-out rows with a `prompt` column")
    seen, out = set(), []
    for row in rows:  # one entry per distinct prompt (preference files repeat prompts)
        key = json.dumps(row["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append({k: v for k, v in row.items() if k not in ("completion", "chosen", "rejected", "label")})
    return out[:limit] if limit else out


def build_monitor(config, stage: str, tokenizer, accelerator=None, proxy=None, gold=None):
    """The monitor for a recipe's config (its `monitor:` mapping), or a `NullMonitor` when none is configured.

    `proxy` is the recipe's training reward (a `rl.rewards.Rewards`, scored without updating
    its running statistics); `gold` a callable (prompts, answers, columns) -> floats.
    """
    from alignkit.errors import AlignkitError

    settings = getattr(config, "monitor", None)  # a MonitorConfig, validated when the config loaded; None: off
    if settings is None or (not settings.every and not settings.hacking_every):
        return NullMonitor()
    source = settings.prompts or getattr(config, "eval_data", "")
    if settings.every and not source:
        raise AlignkitError(f"{stage} monitor: no held-out prompts; set monitor.prompts (or eval_data) to a file of rows with a `prompt` column")
    rows = _held_out_rows(source, settings.max_prompts) if source else []
    proxy_score = _proxy_score(settings, proxy)
    gold_spec = settings.gold or ("" if gold is not None else getattr(config, "eval_reward_function", ""))
    gold_score = _function_score(gold_spec) if gold_spec else gold
    judge = None
    if settings.judge:
        from alignkit.feedback.judge import make_judge

        judge = make_judge(settings.judge)
    reference = _reference_model(config, settings)
    bf16 = getattr(config, "mixed_precision", "bf16") == "bf16"

    def save(path: str, model) -> None:
        from alignkit.train.loop import save_model

        if accelerator is not None:
            save_model(accelerator, model, tokenizer, path, merge_lora=False)

    monitor = TrainingMonitor(settings, config.output_dir, tokenizer, rows, proxy_score, gold_score, judge, reference,
                              implicit_beta=_dpo_beta(config) if stage == "dpo" else 0.0,
                              max_new_tokens=settings.max_new_tokens or getattr(config, "max_new_tokens", 48),
                              bf16=bf16, save=save, seed=config.seed)
    log.info(f"{stage} monitor: {len(rows)} held-out prompts every {settings.every} steps"
             f" (proxy: {'training reward' if proxy_score else 'implicit DPO reward' if stage == 'dpo' else 'none'}, "
             f"gold: {'yes' if gold_score else 'no'}, judge: {settings.judge or 'no'}, KL budget: {settings.kl_budget or 'none'}, "
             f"stop on alarm: {settings.stop_on_alarm}); reward-hacking alarms every {settings.hacking_every or 'no'} steps")
    return monitor


def _proxy_score(settings, proxy) -> Score | None:
    if settings.proxy:
        from alignkit.rl.rewards import build_rewards

        spec = {"type": "model", "path": settings.proxy} if Path(settings.proxy).is_dir() else {"type": "function", "function": settings.proxy}
        proxy = build_rewards([spec])
    if proxy is None:
        return None
    return lambda prompts, answers, columns: proxy(prompts, answers, columns, update_stats=False).raw.tolist()


def _function_score(spec: str) -> Score:
    from alignkit.rl.rewards import FunctionReward

    return FunctionReward(spec)


def _reference_model(config, settings):
    """None when the policy is LoRA (adapters off give the reference), else a frozen copy of the starting model."""
    if getattr(config, "lora_r", 0) > 0:
        return None
    from alignkit.models.load import load_causal_lm

    model = load_causal_lm(getattr(config, "reference_model", "") or config.model, config.dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _dpo_beta(config) -> float:
    from alignkit.train.dpo import beta_of

    return beta_of(config)
