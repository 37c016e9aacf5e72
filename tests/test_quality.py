"""Data-quality metrics and `alignkit data inspect`, each checked on constructed data with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignkit.cli import main
from alignkit.feedback import quality
from alignkit.feedback.inspect import format_report, inspect_data, render_html


def test_exact_duplicates_group_row_numbers():
    keys = [quality.normalise(t) for t in ["Hello, world!", "other", "hello world", "other ", "third"]]
    assert quality.exact_duplicates(keys) == [[1, 3], [2, 4]]


def test_near_duplicates_report_exact_jaccard():
    base = "the quick brown fox jumps over the lazy dog today"
    changed = "the quick brown fox jumps over the lazy dog tonight"  # 8 shingles each, 7 shared -> 7/9
    texts = [base, changed, "an entirely different sentence about cooking pasta at home"]
    pairs = quality.near_duplicates(texts, threshold=0.7)
    assert pairs == [(0, 1, pytest.approx(7 / 9))]
    assert quality.near_duplicates(texts, threshold=0.8) == []


def test_prompt_leakage_counts_exact_and_near():
    train = ["What is the capital of France?", "Write a short poem about the sea and the moon tonight", "How do I boil an egg?"]
    test = ["what is the capital of france", "Write a short poem about the sea and the moon today", "Name three colours."]
    leak = quality.prompt_leakage(train, test, threshold=0.7)
    assert (leak["test_prompts"], leak["exact"], leak["near"]) == (3, 1, 1)
    assert leak["leaked_share"] == pytest.approx(2 / 3)
    assert (1, 1, 1.0) in leak["examples"] and any(t == 2 and r == 2 for t, r, _ in leak["examples"])


def test_length_bias_when_chosen_is_always_longer():
    bias = quality.length_bias([10, 20, 30, 8], [5, 10, 10, 4])
    assert bias["chosen_longer"] == 1.0 and bias["rejected_longer"] == 0.0
    assert bias["mean_difference"] == pytest.approx((5 + 10 + 20 + 4) / 4)
    assert bias["median_ratio"] == pytest.approx(2.0)  # ratios 2, 2, 3, 2


def test_strength_summary_and_ties():
    s = quality.strength_summary([0.1, 0.5, 0.5, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.6) and s["median"] == pytest.approx(0.5)
    assert s["histogram"] == [1, 0, 2, 0, 2]  # 1.0 falls in the last bin
    assert quality.is_tie({"chosen": "Same.", "rejected": "same"})
    assert quality.is_tie({"chosen": "x", "rejected": "y", "strength": 0})
    assert quality.is_tie({"chosen": "x", "rejected": "y", "tie": True})
    assert not quality.is_tie({"chosen": "x", "rejected": "y", "strength": 0.3})


def test_distinct_n_by_hand():
    assert quality.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert quality.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert quality.distinct_n(["x y", "x y"], 2) == pytest.approx(1 / 2)


def test_embedding_spread_extremes():
    same = np.tile(np.array([[1.0, 0.0, 0.0]]), (4, 1))
    orthogonal = np.eye(3)
    assert quality.embedding_spread(same)["mean_pairwise_cosine_distance"] == pytest.approx(0.0)
    assert quality.embedding_spread(orthogonal)["mean_pairwise_cosine_distance"] == pytest.approx(1.0)
    brute = np.mean([1 - orthogonal[i] @ orthogonal[j] for i in range(3) for j in range(3) if i != j])
    assert quality.embedding_spread(orthogonal)["mean_pairwise_cosine_distance"] == pytest.approx(brute)


def test_topic_clusters_find_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    points = np.concatenate([centres[k] + 0.1 * rng.standard_normal((n, 3)) for k, n in enumerate((6, 4, 2))])
    topics = quality.topic_clusters(points, 3, examples=2)
    assert [t["size"] for t in topics] == [6, 4, 2]
    assert sorted(topics[0]["members"]) == list(range(6)) and set(topics[0]["examples"]) <= set(range(6))


def test_cohen_kappa_known_value():
    # Confusion [[4, 1], [1, 4]]: p_o = 0.8, p_e = 0.5, kappa = (0.8 - 0.5) / 0.5 = 0.6
    a = ["x"] * 5 + ["y"] * 5
    b = ["x"] * 4 + ["y"] + ["x"] + ["y"] * 4
    assert quality.cohen_kappa(a, b) == pytest.approx(0.6)
    assert quality.cohen_kappa(["x", "x"], ["x", "x"]) is None  # undefined, not a crash


def test_krippendorff_alpha_known_value():
    # Units (0,0,0), (1,1,1), (0,0,1), (1,1,0): coincidences o00 = o11 = 4, o01 = o10 = 2, n = 12,
    # D_o = 4/12, D_e = 2 * 6 * 6 / (12 * 11) = 6/11, alpha = 1 - (1/3) / (6/11) = 7/18.
    matrix = [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 0]]
    assert quality.krippendorff_alpha(matrix) == pytest.approx(7 / 18)
    assert quality.krippendorff_alpha([[0, 1, None], [0, 1, 1]]) == pytest.approx(1.0)


def test_annotator_agreement_picks_the_method():
    two = [(i, "ann", x) for i, x in enumerate("xxxxxyyyyy")] + [(i, "bob", x) for i, x in enumerate("xxxxyxyyyy")]
    result = quality.annotator_agreement(two + [(99, "ann", "x")])  # item 99 has one label: ignored
    assert result["method"] == "cohen_kappa" and result["value"] == pytest.approx(0.6) and result["items"] == 10
    assert result["percent_agreement"] == pytest.approx(0.8)
    matrix = [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 0]]
    three = [(item, f"r{r}", v) for r, row in enumerate(matrix) for item, v in enumerate(row)]
    result = quality.annotator_agreement(three)
    assert result["method"] == "krippendorff_alpha" and result["value"] == pytest.approx(7 / 18)


def _pref(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def test_inspect_report_on_constructed_file(write_jsonl):
    rows = [_pref(f"Question number {i} about topic {i}?", f"A long and careful answer number {i} with detail.", f"No {i}.", strength=0.5)
            for i in range(6)]
    rows.append(dict(rows[0]))  # an exact duplicate
    rows.append(_pref("Is this a tie?", "Same answer.", "same answer", strength=0.0))
    path = write_jsonl(rows, "train.jsonl")
    test = write_jsonl([{"prompt": "question number 3 about topic 3"}, {"prompt": "A fresh prompt"}], "test.jsonl")
    report = inspect_data(path, test=test, embeddings=False)
    assert report["rows"] == 8 and report["formats"] == {"standard preference": 8}
    assert report["duplicates"]["exact_extra_rows"] == 1 and report["duplicates"]["exact_examples"] == [[1, 7]]
    assert report["leakage"]["exact"] == 1 and report["leakage"]["test_prompts"] == 2
    words = report["preference"]["length_words"]
    assert words["chosen_longer"] == pytest.approx(7 / 8) and words["equal_length"] == pytest.approx(1 / 8)
    assert report["preference"]["ties"] == 1
    assert report["preference"]["strength"]["count"] == 8
    assert "Length bias" in format_report(report)


def test_inspect_agreement_from_annotator_column(write_jsonl):
    # Two annotators on 10 pairs with confusion [[4, 1], [1, 4]] over which response wins: kappa 0.6.
    # Bob sees some pairs with chosen/rejected swapped relative to Ann; pair_label makes that order-free.
    rows = []
    ann = "xxxxxyyyyy"
    bob = "xxxxyxyyyy"
    for i in range(10):
        first, second = f"reply one to {i}", f"reply two to {i}"
        for name, pick in (("ann", ann[i]), ("bob", bob[i])):
            chosen, rejected = (first, second) if pick == "x" else (second, first)
            rows.append(_pref(f"prompt {i}", chosen, rejected, annotator=name))
    report = inspect_data(write_jsonl(rows), embeddings=False)
    agreement = report["preference"]["agreement"]
    assert agreement["method"] == "cohen_kappa" and agreement["value"] == pytest.approx(0.6)


def test_inspect_embeddings_separate_topics(write_jsonl):
    cooking = ["How long should I boil pasta?", "What temperature do I bake bread at?", "How do I make a tomato sauce?",
               "How do I roast vegetables in the oven?"]
    maths = ["What is the derivative of x squared?", "How do I solve a quadratic equation?", "What is the integral of sin x?",
             "How do I compute a matrix determinant?"]
    report = inspect_data(write_jsonl([{"prompt": p} for p in cooking + maths]), clusters=2)
    topics = report["diversity"]["topics"]
    assert [t["size"] for t in topics] == [4, 4]
    for topic in topics:  # each cluster holds one subject only
        assert all(e in cooking for e in topic["examples"]) or all(e in maths for e in topic["examples"])
    narrow = inspect_data(write_jsonl([{"prompt": f"How long should I boil pasta for {n} people?"} for n in range(2, 10)], "n.jsonl"))
    assert report["diversity"]["mean_pairwise_cosine_distance"] > narrow["diversity"]["mean_pairwise_cosine_distance"] + 0.2


def test_inspect_cli_writes_self_contained_html(write_jsonl, tmp_path, capsys):
    rows = [_pref("<script>alert('x')</script>", "a longer chosen answer", "short"), _pref("another prompt here", "yes it is", "no")]
    out = tmp_path / "report.html"
    assert main(["data", "inspect", write_jsonl(rows), "--html", str(out), "--json", str(tmp_path / "r.json"), "--no-embeddings"]) == 0
    page = out.read_text()
    assert "<script" not in page and "Length bias" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
    assert json.loads((tmp_path / "r.json").read_text())["preference"]["length_words"]["chosen_longer"] == 1.0
    assert "Length bias" in capsys.readouterr().out
    report = inspect_data(write_jsonl(rows, "b.jsonl"), embeddings=False)
    report["diversity"]["topics"] = [{"size": 2, "share": 1.0, "examples": [rows[0]["prompt"]]}]
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page  # data is escaped


def test_inspect_missing_file_is_a_user_error(capsys):
    assert main(["data", "inspect", "no/such/file.jsonl", "--no-embeddings"]) == 2
    assert "does not exist" in capsys.readouterr().err
