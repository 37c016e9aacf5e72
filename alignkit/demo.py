"""`alignkit demo`: the embedded SmolLM2-135M-Instruct through SFT on hhh-mini, judged by the gold rubric.

1. write the hhh-mini dataset (train/test splits) into `<workdir>/data`;
2. answer the test prompts greedily with the base model and score them with `gold_reward`;
3. LoRA SFT on the demonstrations (skipped when `<workdir>/sft/model` exists);
4. answer the same prompts with the SFT model, score them, and print both side by side.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from alignkit.config import SFTConfig, config_from_dict, option, to_dict

log = logging.getLogger("alignkit")


@dataclass
class DemoConfig:
    workdir: str = option("runs/demo", "Where the data, models and results go; finished stages are reused.")
    model: str = option("smollm2-135m-instruct", "The base model.")
    seed: int = option(0, "Seed for the data and training.")
    n_train: int = option(800, "hhh-mini training prompts.")
    n_test: int = option(100, "hhh-mini test prompts (all are answered before and after).")
    max_new_tokens: int = option(48, "Longest answer generated for evaluation.")
    examples_shown: int = option(6, "Answers printed side by side.")
    sft: dict = option({}, "Overrides for the SFT stage config (see `alignkit sft --help`).")

    def validate(self) -> None:
        config_from_dict(SFTConfig, self.sft_values(), "demo sft")  # fail before any work

    def sft_values(self) -> dict:
        data = Path(self.workdir) / "data"
        return {
            "model": self.model, "data": str(data / "sft_train.jsonl"), "eval_data": str(data / "sft_test.jsonl"),
            "output_dir": str(Path(self.workdir) / "sft"), "seed": self.seed,
            "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 1e-3, "warmup_ratio": 0.05,
            "num_epochs": 1.0, "batch_size": 8, "max_length": 256, "eval_every": 0, "merge_lora": True,
            **self.sft,
        }


def gold_evaluation(model_path: str, rows: list[dict], max_new_tokens: int) -> tuple[list[str], list[float]]:
    """Greedy answers to `rows` (hhh-mini prompt rows) and their gold rewards."""
    import torch

    from alignkit.data.tasks.hhh_mini import gold_rewards
    from alignkit.models.generation import generate_answers
    from alignkit.models.load import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    torch.manual_seed(0)
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, batch_size=25, progress=True)
    return answers, gold_rewards([r["prompt"] for r in rows], answers)


def by_category(rows: list[dict], scores: list[float]) -> dict[str, float]:
    groups = defaultdict(list)
    for row, score in zip(rows, scores):
        groups[row.get("category", "all")].append(score)
    return {name: sum(v) / len(v) for name, v in sorted(groups.items())}


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_results(rows, base, tuned, base_scores, tuned_scores, shown: int) -> str:
    mean = lambda xs: sum(xs) / len(xs)
    lines = ["", f"{'category':<12} {'n':>4} {'base':>7} {'SFT':>7}"]
    base_cat, tuned_cat = by_category(rows, base_scores), by_category(rows, tuned_scores)
    counts = defaultdict(int)
    for row in rows:
        counts[row.get("category", "all")] += 1
    for name in base_cat:
        lines.append(f"{name:<12} {counts[name]:>4} {base_cat[name]:>7.3f} {tuned_cat[name]:>7.3f}")
    lines.append(f"{'all':<12} {len(rows):>4} {mean(base_scores):>7.3f} {mean(tuned_scores):>7.3f}   (mean gold reward, test split)")
    lines.append("")
    seen = set()
    picks = [i for i, r in enumerate(rows) if not (r.get("category") in seen or seen.add(r.get("category")))][:shown]
    for i in picks:
        lines.append(f"[{rows[i].get('category')}] {_clip(str(rows[i]['prompt']), 100)}")
        lines.append(f"  base ({base_scores[i]:+.2f}): {_clip(base[i], 110)}")
        lines.append(f"  SFT  ({tuned_scores[i]:+.2f}): {_clip(tuned[i], 110)}")
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> dict:
    from alignkit.data.load import load_rows
    from alignkit.data.tasks import hhh_mini
    from alignkit.models.load import resolve_model_path
    from alignkit.train.sft import train_sft

    started = time.time()
    workdir, data = Path(config.workdir), Path(config.workdir) / "data"
    if not (data / "prompts_test.jsonl").is_file():
        counts = hhh_mini.write_dataset(data, seed=config.seed, n_train=config.n_train, n_test=config.n_test)
        log.info(f"hhh-mini written to {data}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    rows = load_rows(data / "prompts_test.jsonl")

    log.info(f"[1/3] answering {len(rows)} test prompts with the base model")
    base, base_scores = gold_evaluation(resolve_model_path(config.model), rows, config.max_new_tokens)

    sft_model = workdir / "sft" / "model"
    if (sft_model / "config.json").is_file():
        log.info(f"[2/3] SFT model found at {sft_model}; reusing it")
    else:
        log.info("[2/3] LoRA SFT on the hhh-mini demonstrations")
        train_sft(config_from_dict(SFTConfig, config.sft_values(), "demo sft"))

    log.info(f"[3/3] answering the test prompts with the SFT model")
    tuned, tuned_scores = gold_evaluation(str(sft_model), rows, config.max_new_tokens)

    print(format_results(rows, base, tuned, base_scores, tuned_scores, config.examples_shown))
    results = {
        "base_gold": sum(base_scores) / len(rows), "sft_gold": sum(tuned_scores) / len(rows),
        "base_by_category": by_category(rows, base_scores), "sft_by_category": by_category(rows, tuned_scores),
        "seconds": time.time() - started, "config": to_dict(config),
        "answers": [{"prompt": r["prompt"], "base": b, "sft": t} for r, b, t in zip(rows, base, tuned)],
    }
    (workdir / "demo_results.json").write_text(json.dumps(results, indent=2))
    print(f"\nmean gold reward on the hhh-mini test split: base {results['base_gold']:.3f} -> SFT {results['sft_gold']:.3f}"
          f"  ({results['seconds']:.0f}s; details in {workdir / 'demo_results.json'})")
    return results
