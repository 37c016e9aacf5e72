"""`alignkit demo` (what `make demo` runs): the pipeline of `configs/demo.yaml` on the embedded model and hhh-mini.

SFT -> labelled samples of the SFT model -> reward model (task + on-policy pairs) -> rs (best-of-N SFT) -> GRPO ->
DPO on the on-policy pairs -> eval on the test prompts and the held-out phrasings (gold, reward model, win rates and
paired differences against SFT with bootstrap intervals, KL, length, refusal, sycophancy) -> report.html, ending with
the table SFT vs rs vs GRPO vs DPO. Finished stages in the workdir are reused. See
`alignkit.pipeline` for the stages and the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignkit.config import load_config, option
from alignkit.config_pipeline import PipelineConfig
from alignkit.data.tasks.hhh_mini import gold_rewards
from alignkit.models.generation import generate_answers
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.pipeline import run_pipeline

# alignkit/configs (a link to the checkout's configs/, package data once installed), so an installed alignkit finds it too
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


@dataclass
class DemoConfig:
    config: str = option("configs/demo.yaml", "The pipeline config (falls back to the one shipped with alignkit).")
    workdir: str = option("", "Override the config's workdir (default: runs/demo).")
    force: list = option([], "Stages to rerun even if their output exists, e.g. [dpo, eval].")


def run_demo(config: DemoConfig) -> dict:
    path = Path(config.config)
    if not path.is_file() and config.config == "configs/demo.yaml":
        path = DEMO_CONFIG
    pipeline = load_config(PipelineConfig, path, {"workdir": config.workdir} if config.workdir else {})
    record = run_pipeline(pipeline, tuple(config.force))
    models = (record.get("results") or {}).get("models", {})
    record.update({f"{name}_gold": m["gold"]["mean"] for name, m in models.items() if "gold" in m})
    return record


def gold_evaluation(model_path: str, rows: list[dict], max_new_tokens: int) -> tuple[list[str], list[float]]:
    """Greedy answers to `rows` (hhh-mini prompt rows) and their gold rewards."""
    import torch


    tokenizer = load_tokenizer(model_path, chat_template="always")  # hhh-mini's standard rows, as the demo trained on them
    model = load_causal_lm(model_path)
    torch.manual_seed(0)
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, batch_size=25, progress=True)
    return answers, gold_rewards([r["prompt"] for r in rows], answers)
