"""Held-out evaluation of an online RL policy: greedy and sampled answers, scored by the training reward and the gold judge.

Run before training, every `eval_every` steps and at the end; every answer and its scores go to
`<output_dir>/eval_answers/step-N.jsonl`.
"""

from __future__ import annotations

import torch

from alignkit.data.formats import prompt_columns
from alignkit.io import write_jsonl
from alignkit.models.generation import generate_answers
from alignkit.models.wrapping import strip_wrappers


@torch.no_grad()
def evaluate_policy(model, tokenizer, rows: list[dict], rewards, gold, config, answers_path: str | None = None) -> dict:
    """Held-out prompts answered greedily (eval/*) and, with `eval_samples` > 0, sampled that many times each at the
    rollout's temperature and top-p (eval/sampled_*): scored by the training reward (raw) and the optional gold judge.

    The sampled answers draw from their own random stream, seeded by `config.seed` at every evaluation: training
    draws the same numbers with or without evaluation, and the evaluations before and after share theirs.
    `answers_path`: also write every answer and its scores there (JSON lines; `sample` is null for the greedy one).
    """
    prompts, columns = [r["prompt"] for r in rows], prompt_columns(rows)
    out, records = _score_answers(model, tokenizer, prompts, columns, rewards, gold, config, "eval/")
    if config.eval_samples:
        k = config.eval_samples
        repeated = {key: [v for v in values for _ in range(k)] for key, values in columns.items()}
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            sampled, sampled_records = _score_answers(model, tokenizer, [p for p in prompts for _ in range(k)], repeated,
                                                      rewards, gold, config, "eval/sampled_", do_sample=True)
        out.update(sampled)
        records += [{**r, "sample": i % k} for i, r in enumerate(sampled_records)]
    if answers_path:
        write_jsonl(records, answers_path)
    return out


def _score_answers(model, tokenizer, prompts, columns, rewards, gold, config, prefix: str, do_sample: bool = False):
    """(metrics, one record per answer) for one answer per entry of `prompts`."""
    answers = generate_answers(strip_wrappers(model), tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                               batch_size=max(config.batch_size, 16), do_sample=do_sample, temperature=config.temperature,
                               top_p=config.top_p, bf16=config.mixed_precision == "bf16")
    result = rewards(prompts, answers, columns, update_stats=False)
    out = {f"{prefix}reward": result.raw[result.valid].mean().item(),
           f"{prefix}length": sum(len(tokenizer(a)["input_ids"]) for a in answers) / len(answers)}
    records = [{"prompt": p, "sample": None, "answer": a, "reward": r if ok else None}
               for p, a, r, ok in zip(prompts, answers, result.raw.tolist(), result.valid.tolist())]
    if gold is not None:
        judged = gold(prompts, answers, columns)
        out[f"{prefix}gold"] = sum(judged) / len(answers)
        for record, value in zip(records, judged):
            record["gold"] = value
    return out, records


def answers_file(config, accelerator, step: int) -> str | None:
    """Where evaluation `step`'s answers go (the main process writes them): <output_dir>/eval_answers/step-N.jsonl."""
    return f"{config.output_dir}/eval_answers/step-{step}.jsonl" if accelerator.is_main_process else None
