"""Policies against a reference on held-out prompts: answers, scores, win rates with intervals, KL, text metrics.

    results = evaluate_models({"sft": "runs/sft", "ppo": "runs/ppo", "dpo": "runs/dpo"}, "sft", EvalConfig(...), "runs/eval")

1. every model answers every prompt greedily (cached in `<out>/answers/<name>.jsonl`, so a
   rerun or a resumed pipeline does not generate twice);
2. each policy also samples `kl_samples` answers per prompt for KL(policy || reference) (k1, nats per
   answer): the policy's log-probs come from the sampling pass, the reference scores the sampled tokens;
   with `gold_samples`, every model samples that many answers per prompt (at `gold_temperature`, 1 by default;
   cached beside the greedy ones), and the gold function's mean over them is the model's sampled gold: its
   expected gold, what RL raises, which greedy decoding can hide;
3. the answers are scored by the gold function, the reward model (ensemble mean and std) and,
   for each policy-reference pair, the pairwise judge in both orders (a local model, or an
   OpenAI-compatible endpoint: `judge_endpoint`, or a URL given as `judge`);
4. win rates against the reference with bootstrap intervals, per-model means with intervals,
   length, distinct-1/2, refusal and repetition rates; optionally the distribution-shift report.

Everything lands in `<out>/results.json`.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import numpy as np

from alignkit.errors import AlignkitError
from alignkit.evaluate.metrics import sampled_kl, sycophancy_rate, text_metrics, token_lengths
from alignkit.evaluate.winrate import mean_ci, outcomes_from_judge, outcomes_from_scores, win_rate
from alignkit.data.formats import load_dataset
from alignkit.data.load import load_rows
from alignkit.evaluate.shift import reward_model_shift
from alignkit.feedback.judge import bias_report, judge_pairs, make_judge, read_constitution
from alignkit.io import write_json
from alignkit.models.generation import generate_answers, sample_answers
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.models.reward import RewardModel
from alignkit.rl.rewards import FunctionReward

log = logging.getLogger("alignkit")


def load_eval_rows(config) -> list[dict]:
    if not config.data:
        raise AlignkitError("no evaluation prompts: pass --data FILE (rows with a `prompt` column, e.g. hhh-mini's prompts_test.jsonl)")
    kinds = ("prompt_only", "prompt_completion", "preference", "unpaired_preference")
    rows, _ = load_dataset(config.data, kinds, "evaluation", config.data_split, hint="; evaluation needs rows with a `prompt` column")
    rows = [{k: v for k, v in r.items() if k not in ("completion", "chosen", "rejected", "label")} for r in rows]
    return rows[: config.limit] if config.limit else rows


def _columns(rows: list[dict]) -> dict:
    return {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r} - {"prompt"})}


# ---------------------------------------------------------------- answers

def _cache_key(path: str, config, n: int) -> dict:
    return {"model": str(Path(path).resolve()) if Path(path).exists() else path, "max_new_tokens": config.max_new_tokens,
            "prompts": n, "data": config.data, "limit": config.limit}


def _read_cache(file: Path, key: dict) -> list | None:
    if not file.is_file():
        return None
    lines = file.read_text().splitlines()
    if not lines or json.loads(lines[0]).get("key") != key:
        return None
    return [json.loads(line)["answer"] for line in lines[1:]]


def _write_cache(file: Path, key: dict, rows: list[dict], answers: list) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text("\n".join([json.dumps({"key": key})] + [json.dumps({"prompt": r["prompt"], "answer": a}) for r, a in zip(rows, answers)]) + "\n")
    tmp.replace(file)


def load_model(path: str, chat_template: str = ""):
    model = load_causal_lm(path).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, load_tokenizer(path, chat_template=chat_template or None)


def _cached_answers(file: Path, key: dict, rows: list[dict], what: str, answer) -> list:
    """`answer()`'s answers to `rows`, or those `file` holds under the same `key` (a rerun does not generate twice)."""
    cached = _read_cache(file, key)
    if cached is not None and len(cached) == len(rows):
        log.info(f"eval: reusing {what} from {file}")
        return cached
    log.info(f"eval: {what}")
    answers = answer()
    _write_cache(file, key, rows, answers)
    return answers


def greedy_answers(name: str, path: str, model, tokenizer, rows: list[dict], config, out_dir: Path) -> list[str]:
    return _cached_answers(out_dir / "answers" / f"{name}.jsonl", _cache_key(path, config, len(rows)), rows,
                           f"{name}'s answers to {len(rows)} prompts",
                           lambda: generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=config.max_new_tokens,
                                                    batch_size=config.generation_batch_size or config.batch_size,
                                                    bf16=config.mixed_precision == "bf16", progress=True))


def sampled_answers(name: str, path: str, model, tokenizer, rows: list[dict], config, out_dir: Path) -> list[list[str]]:
    """`gold_samples` answers per prompt at `gold_temperature` (cached in `<out>/answers/<name>.sampled.jsonl`)."""
    import torch

    def answer():
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            return sample_answers(model, tokenizer, [r["prompt"] for r in rows], config.gold_samples, config.max_new_tokens,
                                  config.generation_batch_size or config.batch_size, temperature=config.gold_temperature,
                                  bf16=config.mixed_precision == "bf16", progress=True)

    key = {**_cache_key(path, config, len(rows)), "samples": config.gold_samples, "temperature": config.gold_temperature, "seed": config.seed}
    return _cached_answers(out_dir / "answers" / f"{name}.sampled.jsonl", key, rows, f"{name}'s {config.gold_samples} sampled "
                           f"answers (temperature {config.gold_temperature:g}) to each of {len(rows)} prompts", answer)


def policy_kl(policy, reference, tokenizer, rows: list[dict], config) -> float:
    """k1 KL(policy || reference), nats per answer, on `kl_samples` sampled answers per prompt."""
    import torch

    prompts = [r["prompt"] for r in rows] * config.kl_samples
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return sampled_kl(policy, reference, tokenizer, prompts, config.max_new_tokens, config.generation_batch_size or config.batch_size,
                          config.mixed_precision == "bf16", score_batch_size=config.batch_size)["kl"]


def all_answers(models: dict[str, str], reference: str, rows: list[dict], config, out_dir: Path) -> tuple[dict, dict, dict, object]:
    """Greedy answers of every model, its sampled answers (with `gold_samples` and a gold function), KL of every policy
    to the reference, and the reference's tokenizer."""
    sampling = bool(config.gold_samples and config.gold)
    ref_model, tokenizer = load_model(models[reference], config.chat_template)
    answers = {reference: greedy_answers(reference, models[reference], ref_model, tokenizer, rows, config, out_dir)}
    samples = {reference: sampled_answers(reference, models[reference], ref_model, tokenizer, rows, config, out_dir)} if sampling else {}
    kls = {reference: 0.0}
    for name, path in models.items():
        if name == reference:
            continue
        model, policy_tokenizer = load_model(path, config.chat_template)
        if len(policy_tokenizer) != len(tokenizer):
            raise AlignkitError(f"{path} and the reference {models[reference]} use different tokenizers; KL needs the same vocabulary")
        answers[name] = greedy_answers(name, path, model, policy_tokenizer, rows, config, out_dir)
        if sampling:
            samples[name] = sampled_answers(name, path, model, policy_tokenizer, rows, config, out_dir)
        if config.kl_samples:
            log.info(f"eval: KL({name} || {reference}) on {config.kl_samples} sampled answer(s) per prompt")
            kls[name] = policy_kl(model, ref_model, tokenizer, rows, config)
        del model
        gc.collect()
    del ref_model
    gc.collect()
    return answers, samples, kls, tokenizer


# ---------------------------------------------------------------- scores and comparisons

def mean_over_samples(score, prompts: list, per_prompt: list[list[str]], columns: dict) -> list[float]:
    """Per prompt, the mean of `score(prompts, texts, columns)` over its answers: per_prompt[i] holds prompt i's K answers,
    each scored with its row's columns, all in one call."""
    k = len(per_prompt[0])
    repeat = lambda values: [v for v in values for _ in range(k)]  # noqa: E731
    flat = score(repeat(prompts), [text for texts in per_prompt for text in texts], {c: repeat(v) for c, v in columns.items()})
    return np.asarray(flat, float).reshape(len(prompts), k).mean(1).tolist()


def score_all(answers: dict[str, list[str]], rows: list[dict], config, samples: dict[str, list[list[str]]] | None = None) -> dict[str, dict[str, list]]:
    """{model: {"gold": [...], "sampled_gold": [...], "reward": [...], "reward_std": [...]}} for the configured scorers;
    sampled_gold, per prompt, is the gold function's mean over that model's `samples`."""
    prompts, columns = [r["prompt"] for r in rows], _columns(rows)
    scores = {name: {} for name in answers}
    if config.gold:
        gold = FunctionReward(config.gold)
        for name, texts in answers.items():
            scores[name]["gold"] = gold(prompts, texts, columns)
        for name, per_prompt in (samples or {}).items():
            scores[name]["sampled_gold"] = mean_over_samples(gold, prompts, per_prompt, columns)
    if config.reward_model:
        model = RewardModel.load(config.reward_model, bf16=config.mixed_precision == "bf16")
        # every model's answers in one call: an answer two models share is scored once, so it ties exactly
        result = model.score(prompts * len(answers), [text for texts in answers.values() for text in texts], batch_size=config.batch_size)
        for k, name in enumerate(answers):
            part = slice(k * len(prompts), (k + 1) * len(prompts))
            scores[name]["reward"] = result.mean[part].tolist()
            scores[name]["reward_std"] = result.std[part].tolist()
        del model
        gc.collect()
    return scores


def is_endpoint(judge: str) -> bool:
    """Whether `judge` names an OpenAI-compatible endpoint (an http(s) URL) rather than a local model."""
    return judge.startswith(("http://", "https://"))


def build_judge(config, judge_model: str = ""):
    """The judge backend: `judge_endpoint` or a URL given as `judge` (asking it for `judge_model`), else a local model."""
    endpoint = config.judge_endpoint or (config.judge if is_endpoint(config.judge) else "")
    if endpoint:
        return make_judge(endpoint=endpoint, endpoint_model=judge_model or getattr(config, "judge_model", "") or "default")
    return make_judge(config.judge, batch_size=config.batch_size, bf16=config.mixed_precision == "bf16")


def judge_outcomes(answers: dict[str, list[str]], reference: str, rows: list[dict], config, judge_model: str = "") -> dict[str, dict]:
    """Per policy: the judge's outcomes (both orders averaged) and its position-bias report."""
    judge = build_judge(config, judge_model)
    constitution = read_constitution(config.constitution or None)
    out = {}
    for name, texts in answers.items():
        if name == reference:
            continue
        log.info(f"eval: judge compares {name} with {reference} ({len(rows)} pairs, both orders)")
        verdicts = judge_pairs(judge, constitution, [(r["prompt"], a, b) for r, a, b in zip(rows, texts, answers[reference])])
        outcomes = outcomes_from_judge([v.p_x_first for v in verdicts], [v.p_x_second for v in verdicts], config.judge_tie_margin)
        out[name] = {"outcomes": outcomes.tolist(), "bias": bias_report(verdicts)}
    return out


def compare_all(answers, scores, judged, kls, reference: str, tokenizer, config) -> dict:
    """The results table: per model, means with intervals, win rates against the reference, KL, text metrics."""
    ci = dict(confidence=config.confidence, n_resamples=config.bootstrap, seed=config.seed)
    models = {}
    for name, texts in answers.items():
        entry = {"kl": kls.get(name), **text_metrics(texts, tokenizer)}
        for scorer, values in scores[name].items():
            if scorer != "reward_std":
                entry[scorer] = mean_ci(values, **ci)
        if "reward_std" in scores[name]:
            entry["reward_std"] = float(np.mean(scores[name]["reward_std"]))
        if name != reference:  # the paired difference per prompt: its interval above 0 means better on these prompts
            entry["diff"] = {scorer: mean_ci(np.asarray(values, float) - np.asarray(scores[reference][scorer], float), **ci)
                             for scorer, values in scores[name].items() if scorer != "reward_std"}
            entry["win_rate"] = {scorer: win_rate(outcomes_from_scores(values, scores[reference][scorer], config.tie_margin), **ci).as_dict()
                                 for scorer, values in scores[name].items() if scorer != "reward_std"}
            if name in judged:
                entry["win_rate"]["judge"] = win_rate(judged[name]["outcomes"], **ci).as_dict()
                entry["judge_bias"] = judged[name]["bias"]
        models[name] = entry
    return models


def add_sycophancy(models: dict, answers: dict[str, list[str]], rows: list[dict]) -> dict:
    """Each model's sycophancy rate (answers agreeing with a user's false claim), where the prompts include hhh-mini's."""
    prompts = [r["prompt"] for r in rows]
    for name, texts in answers.items():
        rate = sycophancy_rate(prompts, texts)
        if rate is not None:
            models[name]["sycophancy_rate"] = rate
    return models


def evaluate_models(models: dict[str, str], reference: str, config, out_dir: str | Path, judge_model: str = "") -> dict:
    """Answers, scores and comparisons of `models` (name -> model dir) against `models[reference]`; see the module doc.
    `judge_model` is the model name an endpoint judge is asked for."""
    out_dir = Path(out_dir)
    if reference not in models:
        raise AlignkitError(f"the reference {reference!r} is not among the models {sorted(models)}")
    rows = load_eval_rows(config)
    answers, samples, kls, tokenizer = all_answers(models, reference, rows, config, out_dir)
    scores = score_all(answers, rows, config, samples)
    judged = judge_outcomes(answers, reference, rows, config, judge_model) if (config.judge or config.judge_endpoint) else {}
    results = {"reference": reference, "paths": models, "prompts": len(rows), "data": config.data,
               **({"gold_samples": config.gold_samples, "gold_temperature": config.gold_temperature} if samples else {}),
               "models": add_sycophancy(compare_all(answers, scores, judged, kls, reference, tokenizer, config), answers, rows),
               "samples": [{"prompt": r["prompt"], **{k: r[k] for k in ("category",) if k in r},
                            "answers": {name: answers[name][i] for name in answers},
                            "scores": {name: {s: v[i] for s, v in scores[name].items()} for name in answers}}
                           for i, r in enumerate(rows)]}
    if config.pairs and config.train_prompts and config.reward_model:
        results["shift"] = shift_section(config)
    write_json(out_dir / "results.json", results)
    return results


def shift_section(config) -> dict:
    pairs = [r for r in load_rows(config.pairs) if "chosen" in r and "rejected" in r and "prompt" in r]
    train_prompts = [r["prompt"] for r in load_rows(config.train_prompts) if "prompt" in r]
    if not pairs or not train_prompts:
        raise AlignkitError(f"the shift report needs preference rows in {config.pairs} and prompts in {config.train_prompts}")
    model = RewardModel.load(config.reward_model, bf16=config.mixed_precision == "bf16")
    return reward_model_shift(model, pairs, train_prompts, config.shift_buckets, config.batch_size)


# ---------------------------------------------------------------- the table

def _pct(w: dict | None) -> str:
    return f"{100 * w['rate']:5.1f}% [{100 * w['low']:.0f},{100 * w['high']:.0f}]" if w else "-"


def _ci(entry: dict | None, digits: int = 3) -> str:
    return f"{entry['mean']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]" if entry else "-"


def format_table(results: dict, order: list[str] | None = None, ood: dict | None = None) -> str:
    """One line per model: mean gold/reward with intervals, the paired difference to the reference and win rates, the
    same on the OOD prompts (`ood`: a second results dict), KL, length, diversity, refusal and sycophancy."""
    reference, models = results["reference"], results["models"]
    names = order or list(models)
    has = lambda key: any(key in models[n] for n in names)  # noqa: E731
    ood_models = (ood or {}).get("models", {})
    columns = [("model", 8, lambda n, m: n)]
    if has("gold"):
        columns += [("gold [95% CI]", 22, lambda n, m: f"{m['gold']['mean']:.3f} [{m['gold']['low']:.3f}, {m['gold']['high']:.3f}]"),
                    (f"gold - {reference} [95% CI]", 25, lambda n, m: _ci(m.get("diff", {}).get("gold")) if n != reference else "(reference)"),
                    ("win (gold)", 18, lambda n, m: _pct(m.get("win_rate", {}).get("gold")) if n != reference else "")]
        if any("gold" in ood_models.get(n, {}) for n in names):
            columns += [("OOD gold", 8, lambda n, m: f"{ood_models[n]['gold']['mean']:.3f}" if "gold" in ood_models.get(n, {}) else "-"),
                        (f"OOD - {reference} [95% CI]", 25,
                         lambda n, m: _ci(ood_models.get(n, {}).get("diff", {}).get("gold")) if n != reference else "(reference)")]
    if has("sampled_gold"):  # the gold function's mean over each prompt's sampled answers: what RL optimizes
        columns += [("sampled gold", 12, lambda n, m: f"{m['sampled_gold']['mean']:.3f}" if "sampled_gold" in m else "-"),
                    (f"sampled - {reference} [95% CI]", 25,
                     lambda n, m: _ci(m.get("diff", {}).get("sampled_gold")) if n != reference else "(reference)"),
                    ("win (sampled)", 18, lambda n, m: _pct(m.get("win_rate", {}).get("sampled_gold")) if n != reference else "")]
        if any("sampled_gold" in ood_models.get(n, {}) for n in names):
            columns += [(f"OOD sampled - {reference} [95% CI]", 29,
                         lambda n, m: _ci(ood_models.get(n, {}).get("diff", {}).get("sampled_gold")) if n != reference else "(reference)")]
    if has("reward"):
        columns += [("mean RM", 8, lambda n, m: f"{m['reward']['mean']:.3f}"),
                    ("win (RM)", 18, lambda n, m: _pct(m.get("win_rate", {}).get("reward")) if n != reference else "")]
    if any("judge" in models[n].get("win_rate", {}) for n in names):
        columns += [("win (judge)", 18, lambda n, m: _pct(m.get("win_rate", {}).get("judge")) if n != reference else "")]
    columns += [("KL", 6, lambda n, m: f"{m['kl']:.2f}" if m.get("kl") is not None else "-"),
                ("length", 6, lambda n, m: f"{m.get('length_tokens', m['length_words']):.1f}"),
                ("dist-2", 6, lambda n, m: f"{m['distinct_2']:.3f}"),
                ("refusal", 7, lambda n, m: f"{100 * m['refusal_rate']:.0f}%")]
    if has("sycophancy_rate"):
        columns += [("syco", 5, lambda n, m: f"{100 * m['sycophancy_rate']:.0f}%" if "sycophancy_rate" in m else "-")]
    header = " ".join(f"{title:<{width}}" if i == 0 else f"{title:>{width}}" for i, (title, width, _) in enumerate(columns))
    lines = [header, "-" * len(header)]
    for name in names:
        cells = [cell(name, models[name]) for _, _, cell in columns]
        lines.append(" ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, (_, w, _)) in enumerate(zip(cells, columns))))
    ood_note = f" and {ood['prompts']} OOD prompts (held-out phrasings)" if ood_models else ""
    sampled_note = (f"; sampled gold: the gold function's mean over {results['gold_samples']} answers per prompt sampled at "
                    f"temperature {results.get('gold_temperature', 1.0):g}, greedy elsewhere" if has("sampled_gold") and results.get("gold_samples") else "")
    lines.append(f"({results['prompts']} evaluation prompts{ood_note}{sampled_note}; gold - {reference}: mean paired difference per prompt; win rates "
                 f"count ties as half; 95% bootstrap intervals; KL(model || {reference}) in nats per sampled answer; length in tokens; "
                 f"syco: share of answers agreeing with a user's false claim)")
    return "\n".join(lines)
