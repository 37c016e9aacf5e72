"""`alignkit score`: batch scoring with a reward model or ensemble.

    alignkit score --reward-model runs/reward --data responses.jsonl --out scored.jsonl

Rows are (prompt, response) (or prompt + completion) and get a `reward` column, or
preference rows (prompt, chosen, rejected) and get `reward_chosen`, `reward_rejected`
and `reward_margin`. An ensemble adds, for each score, `_std`, `_members` and
`_conservative` (mean - k * std, k from --k or ensemble.json). The output is the
input rows with these columns added, in the same order.
"""

from __future__ import annotations

import argparse
import logging

from alignkit.errors import AlignkitError
from alignkit.data.formats import detect_format, require_kind, validate_rows
from alignkit.data.load import load_rows
from alignkit.io import write_jsonl
from alignkit.models.reward import RewardModel, RewardScores

log = logging.getLogger("alignkit")
SCORABLE = ("prompt_completion", "unpaired_preference", "preference")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward-model", required=True, help="reward model directory, reward run directory, or ensemble directory")
    parser.add_argument("--data", required=True, help="rows to score: prompt + response (or completion), or prompt + chosen + rejected")
    parser.add_argument("--out", required=True, help="output JSONL: the rows with reward columns added")
    parser.add_argument("--split", default="train", help="split of a datasets directory or hub id")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--k", type=float, default=None, help="ensemble: k of the conservative score mean - k * std (default: ensemble.json's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")
    parser.add_argument("--no-bf16", action="store_true", help="score without bf16 autocast (slower on CPU, float32 exact)")


def read_scorable(source: str, split: str) -> tuple[list[dict], list[dict], str]:
    """(original rows, validated rows with a `completion` column or chosen/rejected, kind)."""
    rows = load_rows(source, split)
    renamed = [{**r, "completion": r["response"]} if "response" in r and "completion" not in r else r for r in rows]
    fmt = detect_format(renamed, source)
    require_kind(fmt, SCORABLE, source, "scoring", hint=" (columns prompt + response, prompt + completion, or prompt + chosen + rejected)")
    return rows, validate_rows(renamed, fmt, source), fmt.kind


def score_columns(scores, name: str, k: float, ensemble: bool) -> list[dict]:
    """Per-row output columns for one RewardScores."""
    out = [{name: float(m)} for m in scores.mean]
    if ensemble:
        conservative = scores.conservative(k)
        for i, row in enumerate(out):
            row.update({f"{name}_std": float(scores.std[i]), f"{name}_members": scores.members[:, i].tolist(),
                        f"{name}_conservative": float(conservative[i])})
    return out


def run(args) -> None:
    if args.batch_size < 1:
        raise AlignkitError(f"--batch-size must be at least 1, got {args.batch_size}")
    rows, valid, kind = read_scorable(args.data, args.split)
    model = RewardModel.load(args.reward_model, device=args.device, dtype=args.dtype, bf16=not args.no_bf16)
    k = model.k if args.k is None else args.k
    ensemble = len(model.members) > 1
    if kind == "preference":
        prompts = [r["prompt"] for r in valid]
        scores = model.score(prompts * 2, [r["chosen"] for r in valid] + [r["rejected"] for r in valid], args.batch_size, progress=True)
        n = len(valid)
        chosen = score_columns(_slice(scores, 0, n), "reward_chosen", k, ensemble)
        rejected = score_columns(_slice(scores, n, 2 * n), "reward_rejected", k, ensemble)
        margins = (scores.mean[:n] - scores.mean[n:]).tolist()
        out = [{**row, **c, **r, "reward_margin": m} for row, c, r, m in zip(rows, chosen, rejected, margins)]
        accuracy = sum(m > 0 for m in margins) / n
        summary = f"{n} pairs: accuracy {accuracy:.3f}, mean margin {sum(margins) / n:.3f}"
    else:
        scores = model.score([r.get("prompt") or [] for r in valid], [r["completion"] for r in valid], args.batch_size, progress=True)
        out = [{**row, **c} for row, c in zip(rows, score_columns(scores, "reward", k, ensemble))]
        summary = f"{len(out)} responses: mean reward {scores.mean.mean():.3f}"
        if ensemble:
            summary += f", mean ensemble std {scores.std.mean():.3f}"
    write_jsonl(out, args.out)
    log.info(f"scored {summary}; wrote {args.out}")


def _slice(scores, start: int, end: int):
    return RewardScores(scores.mean[start:end], scores.std[start:end], scores.members[:, start:end])
