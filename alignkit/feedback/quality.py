"""Preference-data quality metrics as small pure functions (lists and arrays in, numbers out).

`alignkit data inspect` (`feedback/inspect.py`) strings these together into a report;
each one is tested on constructed data whose answer is known by hand.

Row numbers are 1-based wherever they reach the user; indices are 0-based inside.
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections import Counter, defaultdict

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_MERSENNE = (1 << 31) - 1  # prime modulus of the MinHash permutations; products stay below 2**63


# ---------------------------------------------------------------- text helpers


def as_text(value) -> str:
    """A string, or a message list flattened to its contents (one per line)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in value)  # null content: empty
    return str(value)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore)."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Case, punctuation and whitespace folded away: the key for exact-duplicate checks."""
    return " ".join(words(text))


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of `text`; texts shorter than n words give one shingle of all their words."""
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------- duplicates and leakage


def exact_duplicates(keys: list) -> list[list[int]]:
    """Groups (1-based row numbers, size >= 2) of rows whose keys are equal, in first-seen order."""
    groups: dict = defaultdict(list)
    for number, key in enumerate(keys, start=1):
        groups[key].append(number)
    return [rows for rows in groups.values() if len(rows) > 1]


def minhash_signatures(shingle_sets: list[set], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """(N, num_perm) MinHash signatures: min over shingles of (a * h + b) mod p per permutation."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _MERSENNE, size=num_perm, dtype=np.int64)
    b = rng.integers(0, _MERSENNE, size=num_perm, dtype=np.int64)
    out = np.full((len(shingle_sets), num_perm), _MERSENNE, dtype=np.int64)
    for i, items in enumerate(shingle_sets):
        if not items:
            continue
        h = np.array([zlib.crc32(s.encode("utf-8")) & 0x7FFFFFFF for s in items], dtype=np.int64)  # (S,)
        out[i] = ((h[:, None] * a[None, :] + b[None, :]) % _MERSENNE).min(axis=0)  # (S, P) -> (P,)
    return out


def near_duplicates(texts: list[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16,
                    seed: int = 0, max_bucket: int = 300) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j (0-based) whose word-3-gram Jaccard similarity is >= threshold.

    MinHash with LSH banding proposes candidates in about linear time; every candidate is then
    checked with the exact Jaccard, so no reported pair is a false positive. Exact copies (equal
    shingle sets) are reported too; callers that list them separately can filter jaccard == 1.
    A band bucket larger than `max_bucket` (heavily templated data) only pairs its first
    `max_bucket` members, which bounds the work at the cost of recall inside such a bucket.
    """
    sets = [shingles(t) for t in texts]
    signatures = minhash_signatures(sets, num_perm, seed)
    rows = num_perm // bands
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict = defaultdict(list)
        for i, signature in enumerate(signatures):
            if sets[i]:
                buckets[signature[band * rows:(band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            members = members[:max_bucket]
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    found = []
    for i, j in sorted(candidates):
        similarity = jaccard(sets[i], sets[j])
        if similarity >= threshold:
            found.append((i, j, similarity))
    return found


def prompt_leakage(train_prompts: list[str], test_prompts: list[str], threshold: float = 0.8) -> dict:
    """How many distinct test prompts also appear in train: exactly (after `normalise`) or nearly.

    Returns `{"test_prompts", "exact", "near", "leaked_share", "examples": [(test_no, train_no, jaccard)]}`
    with 1-based row numbers of the first matching rows.
    """
    train_keys: dict[str, int] = {}
    for number, prompt in enumerate(train_prompts, start=1):
        train_keys.setdefault(normalise(prompt), number)
    test_keys: dict[str, int] = {}
    for number, prompt in enumerate(test_prompts, start=1):
        test_keys.setdefault(normalise(prompt), number)
    exact = {key: number for key, number in test_keys.items() if key in train_keys}
    examples = [(number, train_keys[key], 1.0) for key, number in exact.items()]
    # Near: only test prompts without an exact twin, matched against distinct train prompts.
    train_list = list(train_keys)
    rest = [key for key in test_keys if key not in exact]
    pairs = near_duplicates(train_list + rest, threshold)
    near: dict[str, tuple[int, float]] = {}
    for i, j, similarity in pairs:
        if i < len(train_list) <= j:
            key = rest[j - len(train_list)]
            if similarity > near.get(key, (0, -1.0))[1]:
                near[key] = (train_keys[train_list[i]], similarity)
    examples += [(test_keys[key], train_no, round(sim, 3)) for key, (train_no, sim) in near.items()]
    total = len(test_keys)
    return {"test_prompts": total, "exact": len(exact), "near": len(near),
            "leaked_share": (len(exact) + len(near)) / total if total else 0.0, "examples": examples[:10]}


# ---------------------------------------------------------------- preference pairs


def length_bias(chosen_lengths: list[float], rejected_lengths: list[float]) -> dict:
    """How often the chosen response is longer, and by how much.

    `chosen_longer` / `rejected_longer` / `equal_length` are shares of pairs; `mean_difference`
    is mean(chosen - rejected); `median_ratio` is the median of chosen / rejected over pairs where
    both are non-empty. A preference set where chosen is nearly always longer teaches a reward
    model that length is quality.
    """
    n = len(chosen_lengths)
    if n == 0:
        return {"pairs": 0}
    pairs = list(zip(chosen_lengths, rejected_lengths))
    ratios = [c / r for c, r in pairs if c > 0 and r > 0]
    return {
        "pairs": n,
        "chosen_longer": sum(c > r for c, r in pairs) / n,
        "rejected_longer": sum(c < r for c, r in pairs) / n,
        "equal_length": sum(c == r for c, r in pairs) / n,
        "mean_difference": sum(c - r for c, r in pairs) / n,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "mean_chosen": sum(chosen_lengths) / n,
        "mean_rejected": sum(rejected_lengths) / n,
    }


def strength_summary(values: list[float], bins: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> dict:
    """Mean, quartiles and a histogram of preference strengths (or margins); empty input -> count 0."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    histogram = [0] * (len(bins) - 1)
    for value in values:
        index = next((k for k in range(len(bins) - 1) if value < bins[k + 1]), len(bins) - 2)
        histogram[max(index, 0)] += 1
    q1, median, q3 = (statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3)
    return {"count": len(values), "mean": sum(values) / len(values), "min": ordered[0], "q1": q1,
            "median": median, "q3": q3, "max": ordered[-1], "bins": list(bins), "histogram": histogram}


def is_tie(row: dict) -> bool:
    """A preference row that prefers nothing: flagged `tie`, zero strength/margin, or identical responses."""
    if row.get("tie") in (True, "true", "True", 1):
        return True
    for column in ("strength", "margin"):
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return True
    return normalise(as_text(row.get("chosen"))) == normalise(as_text(row.get("rejected")))


# ---------------------------------------------------------------- diversity and topics


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams over `texts` (Li et al. 2016, "distinct-n"); 0 if none."""
    total, seen = 0, set()
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def embedding_spread(embeddings: np.ndarray) -> dict:
    """Spread of L2-normalised embeddings (N, D): mean pairwise cosine distance and distance to centroid.

    Identical prompts give 0; prompts on unrelated topics give values near 1 for this kind of model.
    """
    n = len(embeddings)
    if n < 2:
        return {"mean_pairwise_cosine_distance": 0.0, "mean_distance_to_centroid": 0.0}
    # Sum of all pairwise cosines from the norm of the sum: |sum e|^2 = N + sum_{i != j} e_i . e_j
    total = embeddings.sum(axis=0)  # (D,)
    off_diagonal = float(total @ total) - float((embeddings * embeddings).sum())
    mean_cosine = off_diagonal / (n * (n - 1))
    centroid = total / n
    return {"mean_pairwise_cosine_distance": 1.0 - mean_cosine,
            "mean_distance_to_centroid": float(np.linalg.norm(embeddings - centroid, axis=1).mean())}


def default_cluster_count(n: int) -> int:
    """About sqrt(n / 2) topics, between 2 and 12 (1 when there are fewer than 4 items)."""
    if n < 4:
        return 1
    return max(2, min(12, round(math.sqrt(n / 2))))


def topic_clusters(embeddings: np.ndarray, k: int, seed: int = 0, examples: int = 3) -> list[dict]:
    """KMeans topics over (N, D) embeddings: `[{"size", "share", "members", "examples"}]`, largest first.

    `examples` are the 0-based indices of the members nearest the cluster centre.
    """
    from sklearn.cluster import KMeans

    n = len(embeddings)
    k = max(1, min(k, n))
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(embeddings)
    distances = np.linalg.norm(embeddings - model.cluster_centers_[model.labels_], axis=1)  # (N,)
    out = []
    for label in range(k):
        members = np.flatnonzero(model.labels_ == label)
        nearest = members[np.argsort(distances[members])][:examples]
        out.append({"size": int(len(members)), "share": len(members) / n, "members": members.tolist(),
                    "examples": nearest.tolist()})
    return sorted(out, key=lambda c: -c["size"])


# ---------------------------------------------------------------- annotator agreement


def cohen_kappa(labels_a: list, labels_b: list) -> float | None:
    """Cohen's kappa of two annotators over the same items (scikit-learn); None when undefined."""
    from sklearn.metrics import cohen_kappa_score

    if len(labels_a) != len(labels_b) or not labels_a:
        return None
    if len(set(labels_a) | set(labels_b)) == 1:  # one category only: chance agreement is 1, kappa 0/0
        return None
    value = float(cohen_kappa_score(labels_a, labels_b))
    return None if math.isnan(value) else value


def krippendorff_alpha(matrix: list[list]) -> float | None:
    """Nominal Krippendorff's alpha of a (raters, items) matrix of labels, None for missing (`krippendorff`)."""
    import krippendorff

    categories = sorted({v for row in matrix for v in row if v is not None}, key=str)
    if len(categories) < 2:
        return None
    code = {c: float(i) for i, c in enumerate(categories)}
    data = np.array([[code[v] if v is not None else np.nan for v in row] for row in matrix], dtype=float)
    try:
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(value) else value


def annotator_agreement(labels: list[tuple]) -> dict:
    """Agreement over `(item, annotator, label)` triples, on items labelled by two or more annotators.

    Two annotators: Cohen's kappa on the items both labelled. More: nominal Krippendorff's alpha,
    which allows each item its own subset of annotators. Always: raw share of agreeing annotator
    pairs per item (`percent_agreement`). A later label by the same annotator replaces the earlier.
    """
    by_item: dict = defaultdict(dict)
    for item, annotator, label in labels:
        by_item[item][annotator] = label
    shared = {item: votes for item, votes in by_item.items() if len(votes) >= 2}
    annotators = sorted({a for votes in shared.values() for a in votes}, key=str)
    result = {"items": len(shared), "annotators": len(annotators), "labels": sum(len(v) for v in shared.values())}
    if not shared:
        return {**result, "method": None, "value": None, "percent_agreement": None}
    agree = total = 0
    for votes in shared.values():
        values = list(votes.values())
        for x in range(len(values)):
            for y in range(x + 1, len(values)):
                total += 1
                agree += values[x] == values[y]
    result["percent_agreement"] = agree / total
    if len(annotators) == 2:
        first, second = annotators
        items = sorted(shared, key=str)
        result.update(method="cohen_kappa", value=cohen_kappa([shared[i][first] for i in items], [shared[i][second] for i in items]))
    else:
        items = sorted(shared, key=str)
        matrix = [[shared[i].get(a) for i in items] for a in annotators]
        result.update(method="krippendorff_alpha", value=krippendorff_alpha(matrix))
    result["label_counts"] = dict(Counter(str(v) for votes in shared.values() for v in votes.values()))
    return result


def pair_label(chosen: str, rejected: str, tie: bool = False) -> tuple[tuple[str, str], str]:
    """An order-free key for a response pair and which of its two (sorted) members was preferred.

    Two annotators who saw the same pair in different orders get the same key, and the label
    says `first` / `second` of the sorted pair, or `tie`.
    """
    first, second = sorted((chosen, rejected))
    if tie:
        return (first, second), "tie"
    return (first, second), "first" if chosen == first else "second"
