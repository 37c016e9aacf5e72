"""DPO, IPO and KTO from the demo SFT model on hhh-mini, judged by the gold rubric: one table.

    .venv/bin/python benchmarks/direct_alignment_table.py                    # after `alignkit demo`
    .venv/bin/python benchmarks/direct_alignment_table.py --methods dpo --steps 20
    .venv/bin/python benchmarks/direct_alignment_table.py --pairs runs/onpolicy/pairs.jsonl --out runs/direct_alignment_onpolicy

Each method trains LoRA adapters on the SFT model (`runs/demo/sft/model`) on a seeded
subset of `--train-rows` training rows (preference pairs for DPO/IPO, unpaired rows for
KTO), with the reference precomputed once (the SFT model itself; DPO and IPO share the
cache, and a rerun with other settings reuses it), then:

- gold reward: mean `gold_reward` of greedy answers (max 48 new tokens) to the
  hhh-mini test prompts;
- implicit-reward accuracy: share of held-out test pairs where the trained model's
  implicit reward log(pi/pi_ref) is higher for the chosen answer than for the rejected
  (the SFT row has every margin 0, so no accuracy);
- KL to reference: mean log pi(y_w|x) - log pi_ref(y_w|x) over the held-out chosen
  answers, in nats per answer (the `kl/ref` metric the recipes log).

Method settings live in METHODS below; `--steps`, `--lr` and `--beta` override them all, `--rpo-alpha` the pairwise ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.config import DPOConfig, config_from_dict  # noqa: E402
from alignkit.data.tasks.hhh_mini import gold_rewards  # noqa: E402
from alignkit.losses.preference import PairLogps, preference_loss  # noqa: E402
from alignkit.models.generation import generate_answers  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from alignkit.train import dpo, kto  # noqa: E402
from alignkit.train.dpo import tokenize_pairs  # noqa: E402
from alignkit.models.reference import compute_logps  # noqa: E402

LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "batch_size": 8, "max_length": 256,
        "warmup_ratio": 0.1, "lr_scheduler": "cosine", "reference": "precompute", "seed": 0, "report_to": ["jsonl"]}
METHODS = {
    "dpo": {"recipe": "dpo", "loss": "sigmoid", "beta": 0.1, "learning_rate": 1e-4, "max_steps": 100},
    "ipo": {"recipe": "dpo", "loss": "ipo", "beta": 0.1, "learning_rate": 1e-4, "max_steps": 100},
    "kto": {"recipe": "kto", "beta": 0.1, "learning_rate": 1e-4, "max_steps": 100},
    # with the NLL of the chosen answer added (RPO): keeps chosen answers (and their EOS) likely as the margin grows
    "dpo_rpo": {"recipe": "dpo", "loss": "sigmoid", "beta": 0.1, "learning_rate": 1e-4, "max_steps": 100, "rpo_alpha": 1.0},
    "ipo_rpo": {"recipe": "dpo", "loss": "ipo", "beta": 0.1, "learning_rate": 1e-4, "max_steps": 100, "rpo_alpha": 1.0},
}


def train_subset(data: Path, name: str, rows: int, out: Path) -> Path:
    """The first `rows` rows of `name` in a seeded shuffle (the whole file when rows <= 0), as a file under `out`."""
    lines = (data / name).read_text().splitlines()
    if 0 < rows < len(lines):
        lines = [lines[i] for i in sorted(random.Random(0).sample(range(len(lines)), rows))]
    path = out / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def train(method: str, settings: dict, data: Path, sft: str, out: Path, rows: int, pairs: Path | None = None) -> dict:
    """Trains one method, or reuses `<out>/<method>` when a finished run with the same settings is there.

    With `pairs` (a preference file, e.g. from `alignkit data sample-pairs`) every method trains on it;
    KTO through `from_preference` (each pair gives one desirable and one undesirable row).
    """
    finished = out / method / "summary.json"
    if finished.is_file():
        import yaml

        ran = yaml.safe_load((out / method / "config.yaml").read_text())
        if all(ran.get(k) == v for k, v in settings.items() if k != "recipe") and ran.get("model") == sft:
            logging.getLogger("alignkit").info(f"{method}: reusing the finished run in {out / method}")
            return json.loads(finished.read_text())
    recipe = settings.pop("recipe")
    files = {"dpo": ("preference_train.jsonl", "preference_test.jsonl"), "kto": ("kto_train.jsonl", "kto_test.jsonl")}[recipe]
    train_file = train_subset(pairs.parent, pairs.name, rows, out) if pairs else train_subset(data, files[0], rows, out)
    config = {**LORA, **settings, "model": sft, "data": str(train_file), "eval_data": str(data / files[1]), "output_dir": str(out / method)}
    if pairs and recipe == "kto":  # pairs in, for training and for the held-out split alike
        config.update(from_preference=True, eval_data=str(data / "preference_test.jsonl"))
    return (dpo if recipe == "dpo" else kto)(config)


def cached_row(path: Path, model: str, compute) -> dict:
    """A table row (gold, accuracy, KL, answers) saved beside the model it measures, reused while that model is unchanged."""
    stamp = Path(model) / "model.safetensors"
    stamp = stamp.stat().st_mtime if stamp.is_file() else None
    if path.is_file():
        row = json.loads(path.read_text())
        if row.pop("model_mtime", None) == stamp:
            return row
    row = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**row, "model_mtime": stamp}))
    tmp.replace(path)  # a killed run leaves no half-written row
    return row


def pair_metrics(model, reference_table, examples, tokenizer) -> dict:
    """Implicit-reward accuracy and KL on chosen over held-out pairs, against the SFT reference table."""
    policy = compute_logps(model, examples, tokenizer.pad_token_id, 16, lambda: torch.autocast("cpu", dtype=torch.bfloat16), "cpu",
                           share_prompt=True, desc="held-out pairs")
    lengths = torch.tensor([[float(len(c)) for _, c in e["sequences"]] for e in examples])
    logps = PairLogps(policy[:, 0], policy[:, 1], reference_table[:, 0], reference_table[:, 1], lengths[:, 0], lengths[:, 1])
    _, metrics = preference_loss("sigmoid", logps, beta=1.0)
    return {"accuracy": metrics["rewards/accuracy"].item(), "kl": metrics["kl/ref"].item()}


def gold(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[float, list[str]]:
    torch.manual_seed(0)
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=25)
    return statistics.mean(gold_rewards(prompts, answers)), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default="runs/demo/sft/model", help="the SFT model (made by `alignkit demo`)")
    parser.add_argument("--data", default="runs/demo/data", help="hhh-mini folder (`alignkit data make hhh-mini --out DIR`)")
    parser.add_argument("--out", default="runs/direct_alignment")
    parser.add_argument("--methods", default="dpo,ipo,kto")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--beta", type=float)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rpo-alpha", type=float, help="NLL weight on the chosen answer for the pairwise methods (RPO)")
    parser.add_argument("--kto-steps", type=int, help="KTO's steps, when it should differ from --steps")
    parser.add_argument("--train-rows", type=int, default=800, help="training rows drawn from each train file (0: all)")
    parser.add_argument("--pairs", help="train every method on this preference file instead of hhh-mini's own pairs "
                                        "(e.g. on-policy pairs from `alignkit data sample-pairs`)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "accelerate", "peft", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(args.sft)
    prompts = [json.loads(line)["prompt"] for line in (data / "prompts_test.jsonl").read_text().splitlines()]
    pair_rows = [json.loads(line) for line in (data / "preference_test.jsonl").read_text().splitlines()]
    config = config_from_dict(DPOConfig, {"model": args.sft, "data": "x"})
    examples, _ = tokenize_pairs(pair_rows, tokenizer, config.max_length, config.truncation_side, config.truncation_mode)
    reference = {}  # the SFT model's pair log-probs, computed when a method's row is not cached

    def reference_table():
        if "table" not in reference:
            sft_model = load_causal_lm(args.sft)
            reference["table"] = compute_logps(sft_model, examples, tokenizer.pad_token_id, 16,
                                               lambda: torch.autocast("cpu", dtype=torch.bfloat16), "cpu", share_prompt=True, desc="reference pairs")
        return reference["table"]

    def sft_row() -> dict:
        score, sft_answers = gold(load_causal_lm(args.sft), tokenizer, prompts, args.max_new_tokens)
        return {"method": "SFT (reference)", "gold": score, "accuracy": None, "kl": 0.0, "settings": "", "train_s": 0.0, "answers": sft_answers}

    rows = [cached_row(out / "sft_row.json", args.sft, sft_row)]

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        settings = dict(METHODS[method])
        if method == "kto" and args.kto_steps:
            settings["max_steps"] = args.kto_steps
        settings.update({k: v for k, v in (("max_steps", args.steps), ("learning_rate", args.lr), ("beta", args.beta)) if v is not None})
        if args.rpo_alpha is not None and settings["recipe"] == "dpo":
            settings["rpo_alpha"] = args.rpo_alpha
        described = f"beta={settings['beta']}, lr={settings['learning_rate']:g}, {settings['max_steps']} steps x {LORA['batch_size']}"
        described += f", rpo_alpha={settings['rpo_alpha']}" if settings.get("rpo_alpha") else ""
        started = time.time()
        summary = train(method, dict(settings), data, args.sft, out, args.train_rows, Path(args.pairs) if args.pairs else None)

        def method_row():
            model = load_causal_lm(summary["model"])
            score, method_answers = gold(model, tokenizer, prompts, args.max_new_tokens)
            return {"method": method.upper(), "gold": score, **pair_metrics(model, reference_table(), examples, tokenizer),
                    "settings": described, "train_s": summary["seconds"] - summary["setup_seconds"], "total_s": time.time() - started,
                    "answers": method_answers}

        rows.append(cached_row(out / method / "table_row.json", summary["model"], method_row))

    answers = {row["method"].split(" ")[0].lower(): row.pop("answers") for row in rows}
    (out / "answers.json").write_text(json.dumps({"prompts": prompts, "answers": answers}, indent=1))
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    print(f"\nhhh-mini test split: {len(prompts)} prompts (greedy, max {args.max_new_tokens} new tokens), {len(examples)} held-out pairs")
    print("| method | gold reward | implicit-reward accuracy | KL to ref (nats, held-out chosen) | settings | train s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        accuracy = "n/a (all margins 0)" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(f"| {row['method']} | {row['gold']:.3f} | {accuracy} | {row['kl']:.2f} | {row['settings']} | {row['train_s']:.0f} |")


if __name__ == "__main__":
    main()
