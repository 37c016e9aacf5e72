"""`alignkit iterate`: iterated RLHF rounds, the seed's "iterate on the reward model" as one command.

    round_0/eval.json        the starting policy on the validation prompts (and every report_prompts set)
    round_N/samples.jsonl    `samples` answers per prompt from the current policy (unscored)
            labelled.jsonl   the same, scored by the labeller (a function, a reward model or URL), or
            annotate.jsonl   for people: two answers per prompt for `alignkit annotate serve`; the round waits
            votes.jsonl      for the votes exported here by `alignkit annotate export`
            pairs.jsonl      best vs worst of each prompt (or the votes' winners), what the round trains on
            quality.json     the data-quality report of those pairs (`alignkit data inspect`)
            reward/          optional: a reward model retrained on every round's pairs so far
            policy/          the round's DPO / KTO / rejection-sampling SFT run, from the last round's policy
            eval.json        greedy answers scored on every prompt set (with eval_samples, also each set's
                             sampled score: the mean over K sampled answers per prompt), with paired intervals
                             against the start and the previous round
    rounds.json, report.html the round table and a chart of the validation and report scores by round

Every step writes its file atomically and is skipped when the file is there, and each round's training
resumes from its own checkpoints (resume: auto), so a killed run continues where it stopped when it is run
again with the same output_dir (a round evaluated under other eval settings is evaluated again). The stop rule
and the best round look only at `eval_prompts` (greedy, or with stop_on: sampled their sampled score): choose
settings there and report the other sets once.
"""

from __future__ import annotations

import html
import json
import logging
import random
from pathlib import Path

from alignkit.config import DPOConfig, KTOConfig, RewardConfig, SFTConfig, config_with_overrides, save_config
from alignkit.config_sampling import IterateConfig
from alignkit.data.formats import PROMPT_KINDS, load_dataset, prompt_columns
from alignkit.data.load import load_rows
from alignkit.errors import AlignkitError
from alignkit.evaluate.plots import line_chart
from alignkit.evaluate.winrate import mean_ci
from alignkit.feedback.inspect import inspect_data
from alignkit.io import atomic_file, write_json, write_jsonl
from alignkit.rl.samples import best_of_n, label_records, pairs_from_records
from alignkit.train.rejection import load_prompts, sample_records

log = logging.getLogger("alignkit")
TRAINERS = {"dpo": ("dpo", DPOConfig), "kto": ("kto", KTOConfig), "rs": ("sft", SFTConfig)}


# ---------------------------------------------------------------- one round's data

def round_prompts(config: IterateConfig, prompts: list[dict], number: int) -> list[dict]:
    """The round's prompts: all of them, or the next `prompts_per_round` of a seeded shuffle (wrapping around)."""
    if not config.prompts_per_round or config.prompts_per_round >= len(prompts):
        return prompts
    order = list(range(len(prompts)))
    random.Random(config.seed).shuffle(order)
    start = (number - 1) * config.prompts_per_round
    return [prompts[order[(start + i) % len(order)]] for i in range(config.prompts_per_round)]


def sampled(config: IterateConfig, number: int, policy: str, folder: Path) -> list[dict]:
    """round_N/samples.jsonl: sampled now (unscored), or read back when an earlier run got that far."""
    file = folder / "samples.jsonl"
    if file.is_file():
        return load_rows(file)
    rows = round_prompts(config, load_prompts(config, "iterate"), number)
    records = sample_records(config, rows, policy, f"round {number}", label=False)
    write_jsonl(records, file)
    return records


def labelled(config: IterateConfig, number: int, records: list[dict], folder: Path) -> list[dict]:
    """round_N/labelled.jsonl: the samples scored by the labeller; a failing labeller names the round and keeps the samples."""
    from alignkit.rl.rewards import build_rewards

    file = folder / "labelled.jsonl"
    if file.is_file():
        return load_rows(file)
    try:
        records = label_records(records, build_rewards(config.reward_specs()))
    except AlignkitError as error:
        raise AlignkitError(f"round {number}: the labeller failed ({error}); the round's samples are kept in {folder / 'samples.jsonl'}: "
                            f"fix the labeller and run `alignkit iterate` again with the same output_dir to label them") from None
    write_jsonl(records, file)
    return records


def human_pairs(number: int, records: list[dict], folder: Path) -> list[dict]:
    """Writes annotate.jsonl (two distinct answers per prompt) once; reads the exported votes, or says how to get them."""
    batch, votes = folder / "annotate.jsonl", folder / "votes.jsonl"
    if not batch.is_file():
        rows = []
        for record in records:
            answers = list(dict.fromkeys(t for t, ok in zip(record["responses"], record["valid"]) if ok and t.strip()))
            if len(answers) >= 2:
                rows.append({"prompt": record["prompt"], "response_a": answers[0], "response_b": answers[1]})
        if not rows:
            raise AlignkitError(f"round {number}: no prompt has two different finished answers to compare; raise samples, "
                                f"temperature or max_new_tokens (samples kept in {folder / 'samples.jsonl'})")
        write_jsonl(rows, batch)
    if not votes.is_file():
        raise AlignkitError(f"round {number} waits for human votes: run `alignkit annotate serve --db {folder / 'votes.db'} --data {batch}`, "
                            f"collect the votes, then `alignkit annotate export --db {folder / 'votes.db'} --out {votes}` and run "
                            f"`alignkit iterate` again with the same output_dir")
    exported = load_rows(votes) if votes.read_text(encoding="utf-8").strip() else []  # an export of no votes is an empty file
    pairs = [row for row in exported if row.get("chosen") and row.get("rejected") and not row.get("tie")]
    if not pairs:
        raise AlignkitError(f"round {number}: {votes} holds no vote with a winner (empty, or ties only); collect more votes in the "
                            f"annotation app, export them to {votes} again and rerun `alignkit iterate`")
    return pairs


def training_rows(config: IterateConfig, number: int, policy: str, folder: Path) -> tuple[Path, int]:
    """round_N/pairs.jsonl (dpo, kto) or best.jsonl (rs), from the labelled samples or the votes; quality.json beside it."""
    target = folder / ("best.jsonl" if config.method == "rs" else "pairs.jsonl")
    if target.is_file():
        return target, len(load_rows(target))
    records = sampled(config, number, policy, folder)
    if config.human:
        pairs = human_pairs(number, records, folder)
        rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs] if config.method == "rs" else pairs
    elif config.method == "rs":
        rows, report = best_of_n(labelled(config, number, records, folder), config.min_score)
        log.info(f"round {number}: {report.summary()}")
    else:
        rows, report = pairs_from_records(labelled(config, number, records, folder), config.min_gap, config.greedy)
        log.info(f"round {number}: {report.summary()}")
    if not rows:
        what = f"no answer scored at least min_score ({config.min_score})" if config.method == "rs" else \
            f"the labeller scored every prompt's {config.samples} answers alike (no pair with a gap of at least min_gap {config.min_gap})"
        raise AlignkitError(f"round {number}: no usable training rows from {len(records)} prompts: {what}; the labelled answers are in "
                            f"{folder}. Check the labeller, raise samples or temperature, or lower min_gap / min_score, then rerun")
    write_jsonl(rows, target)
    if config.method != "rs":
        write_json(folder / "quality.json", inspect_data(target, test=config.eval_prompts, embeddings=False))
    return target, len(rows)


# ---------------------------------------------------------------- training

def common_values(config: IterateConfig, number: int, cls) -> dict:
    names = set(cls.__dataclass_fields__)
    shared = {k: getattr(config, k) for k in ("trust_remote_code", "allow_unsafe_pickle", "chat_template", "chat_template_path",
                                             "mixed_precision", "dtype", "lora_r", "lora_alpha", "lora_dropout", "target_modules")}
    return {**{k: v for k, v in shared.items() if k in names}, "seed": config.seed + number, "report_to": ["jsonl"], "resume": "auto"}


def retrain_reward(config: IterateConfig, number: int, folder: Path) -> None:
    """round_N/reward: a reward model on reward.data (if any) plus every round's pairs so far."""
    from alignkit import api

    if (folder / "reward" / "summary.json").is_file():
        return
    rows = load_rows(config.reward["data"]) if config.reward.get("data") else []
    for previous in range(1, number + 1):
        rows += load_rows(Path(config.output_dir) / f"round_{previous}" / "pairs.jsonl")
    write_jsonl(rows, folder / "reward_data.jsonl")
    values = {**common_values(config, number, RewardConfig), "model": config.model, "output_dir": str(folder / "reward"),
              **config.reward, "data": str(folder / "reward_data.jsonl")}
    api.run_stage("reward", config_with_overrides(RewardConfig, values, {}, f"iterate round {number} reward"))


def train_round(config: IterateConfig, number: int, policy: str, data: Path, folder: Path) -> str:
    """round_N/policy: the round's DPO, KTO or SFT run from `policy` on `data`; returns the new policy's folder."""
    from alignkit import api

    out = folder / "policy"
    if (out / "summary.json").is_file():
        return str(out)
    stage, cls = TRAINERS[config.method]
    values = {**common_values(config, number, cls), "model": policy, "data": str(data), "output_dir": str(out),
              "eval_data": "", "eval_fraction": 0.0, **({"from_preference": True} if config.method == "kto" else {}), **config.train}
    api.run_stage(stage, config_with_overrides(cls, values, {}, f"iterate round {number} {config.method}"))
    return str(out)


# ---------------------------------------------------------------- evaluation

class Evaluator:
    """Greedy answers of a policy to the validation prompts and every report set, scored by eval_function (or the labeller);
    with eval_samples, also each set's `<set> sampled` score: the mean over that many answers per prompt sampled at
    eval_temperature."""

    def __init__(self, config: IterateConfig):
        from alignkit.rl.rewards import build_rewards

        self.config = config
        sets = {"val": config.eval_prompts, **config.report_prompts}
        self.sets = {name: load_dataset(path, PROMPT_KINDS, f"iterate {name} prompts")[0] for name, path in sets.items()}
        self.rewards = build_rewards(config.eval_specs())
        self.names = [f"{name}{suffix}" for name in self.sets for suffix in ("", " sampled")[: 2 if config.eval_samples else 1]]
        self.stop_set = "val sampled" if config.stop_on == "sampled" else "val"
        self.settings = {"sets": self.names, "max_new_tokens": config.eval_max_new_tokens, "samples": config.eval_samples,
                         "temperature": config.eval_temperature if config.eval_samples else None}  # what a round's eval.json depends on

    def scores(self, policy: str) -> dict[str, list[float]]:
        import torch

        from alignkit.evaluate.compare import mean_over_samples
        from alignkit.models.generation import generate_answers, sample_answers
        from alignkit.models.load import load_causal_lm, load_tokenizer

        config = self.config
        tokenizer = load_tokenizer(policy, config.trust_remote_code, config.chat_template, config.chat_template_path)
        model = load_causal_lm(policy, trust_remote_code=config.trust_remote_code, allow_unsafe_pickle=config.allow_unsafe_pickle)
        score = lambda prompts, texts, columns: self.rewards.raw_scores(prompts, texts, columns)[0].tolist()  # noqa: E731
        bf16 = config.mixed_precision == "bf16"
        out = {}
        for name, rows in self.sets.items():
            prompts, columns = [r["prompt"] for r in rows], prompt_columns(rows)
            torch.manual_seed(config.seed)
            answers = generate_answers(model, tokenizer, prompts, config.eval_max_new_tokens, config.eval_batch_size, bf16=bf16)
            out[name] = [round(float(x), 6) for x in score(prompts, answers, columns)]
            if config.eval_samples:
                torch.manual_seed(config.seed)
                samples = sample_answers(model, tokenizer, prompts, config.eval_samples, config.eval_max_new_tokens,
                                         config.eval_batch_size, config.eval_temperature, bf16=bf16)
                out[f"{name} sampled"] = [round(x, 6) for x in mean_over_samples(score, prompts, samples, columns)]
        return out


def evaluate_round(config: IterateConfig, number: int, policy: str, evaluator: Evaluator, history: list[dict]) -> dict:
    """round_N/eval.json: per prompt set the mean with its interval and the paired differences to the start and the last round."""
    file = Path(config.output_dir) / f"round_{number}" / "eval.json"
    if file.is_file():
        done = json.loads(file.read_text())
        if done.get("settings") == evaluator.settings:  # else written under other eval settings: evaluated again
            return done
    ci = dict(confidence=config.confidence, n_resamples=config.bootstrap, seed=config.seed)
    result = {"round": number, "policy": policy, "settings": evaluator.settings, "sets": {}}
    for name, values in evaluator.scores(policy).items():
        entry = {**mean_ci(values, **ci), "scores": values}
        for key, other in (("vs_start", history[0] if history else None), ("vs_previous", history[-1] if history else None)):
            if other is not None:
                entry[key] = mean_ci([a - b for a, b in zip(values, other["sets"][name]["scores"])], **ci)
        result["sets"][name] = entry
    write_json(file, result)
    return result


# ---------------------------------------------------------------- the loop

def run_iterate(config: IterateConfig) -> dict:
    """Round 0 evaluates the start; rounds 1.. sample, label, train and evaluate until `rounds` or the stop rule."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    evaluator = Evaluator(config)
    history = [evaluate_round(config, 0, config.model, evaluator, [])]
    policy, best, stale, stop = config.model, 0, 0, ""
    for number in range(1, config.rounds + 1):
        folder = out / f"round_{number}"
        folder.mkdir(exist_ok=True)
        data, rows = training_rows(config, number, policy, folder)
        log.info(f"round {number}: {rows} {'answers' if config.method == 'rs' else 'pairs'} in {data}")
        if config.reward:
            retrain_reward(config, number, folder)
        policy = train_round(config, number, policy, data, folder)
        history.append(evaluate_round(config, number, policy, evaluator, history))
        history[-1]["rows"] = rows
        log.info(format_rounds(history, best=None))
        if history[-1]["sets"][evaluator.stop_set]["mean"] > history[best]["sets"][evaluator.stop_set]["mean"] + config.min_improvement:
            best, stale = number, 0
        else:
            stale += 1
        if stale >= config.patience:
            stop = f"validation score ({evaluator.stop_set}) did not improve by {config.min_improvement} for {stale} round(s)"
            break
    summary = {"rounds": history, "best_round": best, "best_policy": history[best]["policy"],
               "stopped": stop or f"ran all {config.rounds} rounds"}
    write_json(out / "rounds.json", summary)
    write_round_report(out, history, best, evaluator.stop_set)
    print(format_rounds(history, best, evaluator.stop_set))
    return summary


def format_rounds(history: list[dict], best: int | None, chosen_on: str = "val") -> str:
    names = list(history[0]["sets"])
    header = f"{'round':<6}" + "".join(f" {name + ' [95% CI]':>24} {name + ' - start [95% CI]':>27}" for name in names) + f" {'rows':>6}"
    lines = [header, "-" * len(header)]
    for h in history:
        line = f"{h['round']:<6}"
        for name in names:
            s = h["sets"][name]
            delta = s.get("vs_start")
            line += f" {s['mean']:>8.3f} [{s['low']:.3f}, {s['high']:.3f}]"
            line += f" {delta['mean']:+8.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]" if delta and h["round"] else f" {'(start)':>27}"
        line += f" {h.get('rows', '-'):>6}" + (f"  <- best on {chosen_on}" if best == h["round"] else "")
        lines.append(line)
    return "\n".join(lines)


def write_round_report(out: Path, history: list[dict], best: int, chosen_on: str = "val") -> None:
    """report.html: the round table and the mean score of every prompt set by round."""
    series = {name: [(h["round"], h["sets"][name]["mean"]) for h in history] for name in history[0]["sets"]}
    chart = line_chart("held-out score by round", series, "mean score", xlabel="round")
    table = format_rounds(history, best, chosen_on).replace("&", "&amp;").replace("<", "&lt;")
    with atomic_file(out / "report.html") as tmp:
        tmp.write_text(f"<!doctype html><meta charset='utf-8'><title>alignkit iterate</title><h1>alignkit iterate: {out}</h1>"
                       f"<p>Best round on the validation prompts ({html.escape(chosen_on)}): {best}.</p><pre>{table}</pre>{chart}")

