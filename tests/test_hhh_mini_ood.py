"""hhh-mini's ood split: the same facts in held-out phrasings, never used for train or test,
judged by the same gold rubric."""

import json
import re

import pytest

from alignkit.cli import main
from alignkit.data.tasks import hhh_mini
from alignkit.data.tasks.hhh_mini_gold import _lookup, _normalize
from alignkit.data.tasks.hhh_mini_items import FACTS_FILE, OOD_FILE, _facts
from alignkit.errors import AlignkitError


def _strings(value) -> set[str]:
    """Every string anywhere in a JSON value (keys excluded)."""
    if isinstance(value, str):
        return {value}
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*map(_strings, children))


ID_STRINGS = _strings(json.loads(FACTS_FILE.read_text(encoding="utf-8")))
OOD_STRINGS = _strings(json.loads(OOD_FILE.read_text(encoding="utf-8")))


def _made_from(template: str, prompt: str) -> bool:
    """Whether `prompt` is `template` with its {fields} filled in."""
    pattern = re.sub(r"\\\{\w+\\\}", ".+", re.escape(template))
    return re.fullmatch(pattern, prompt, re.IGNORECASE) is not None


@pytest.fixture(scope="module", params=[0, 1])
def splits(request):
    return hhh_mini.generate(seed=request.param)


def test_ood_prompts_are_disjoint_from_train_and_test(splits):
    seen = {_normalize(e["prompt"]) for e in splits["train"] + splits["test"]}
    ood = [_normalize(e["prompt"]) for e in splits["ood"]]
    assert len(set(ood)) == len(ood) == 100
    assert not seen & set(ood)


def test_ood_is_drawn_only_from_held_out_templates(splits):
    for split, examples in splits.items():
        for e in examples:
            assert _made_from(e["template"], e["prompt"]), e
            assert e["distribution"] == ("ood" if split == "ood" else "id")
            if split == "ood":
                assert e["template"] in OOD_STRINGS and e["template"] not in ID_STRINGS, e["prompt"]
            else:
                assert e["template"] in ID_STRINGS and e["template"] not in OOD_STRINGS, e["prompt"]


def test_no_template_of_one_distribution_produces_a_prompt_of_the_other():
    universe = {d: [item for families in hhh_mini._universe(d).values() for items in families.values() for item in items]
                for d in ("id", "ood")}
    assert not {_normalize(i.prompt) for i in universe["id"]} & {_normalize(i.prompt) for i in universe["ood"]}
    id_templates = {item.template for item in universe["id"]} | {t for op in _facts()["arithmetic_templates"].values() for t in op}
    sampled = hhh_mini.generate(seed=2, n_train=0, n_test=0, n_ood=2000)["ood"]  # arithmetic is sampled, not listed
    for prompt in {item.prompt for item in universe["ood"]} | {e["prompt"] for e in sampled}:
        assert not any(_made_from(template, prompt) for template in id_templates), prompt


def test_ood_covers_every_category_evenly(splits):
    counts = {c: sum(e["category"] == c for e in splits["ood"]) for c in hhh_mini.CATEGORIES}
    assert min(counts.values()) >= 14 and max(counts.values()) - min(counts.values()) <= 1


def test_gold_judges_ood_demonstrations_above_every_rejected(splits):
    for e in splits["ood"]:
        assert _lookup(e["prompt"])[0] == e["category"]
        chosen = hhh_mini.gold_reward(e["prompt"], e["demonstration"])
        assert chosen == 1.0, e
        for kind, text in e["rejected"]:
            assert hhh_mini.gold_reward(e["prompt"], text) < chosen, (kind, text, e["prompt"])


def test_ood_rows_keep_category_and_rejected_kind(splits):
    rows = hhh_mini.preference_rows(splits["ood"])
    kinds = {row["rejected_kind"] for row in rows}
    assert {"wrong", "verbose", "harmful", "fabricated", "literal", "off-format", "sycophantic"} <= kinds
    assert {row["category"] for row in rows} == set(hhh_mini.CATEGORIES)


def test_n_ood_leaves_train_and_test_unchanged():
    with_ood, without = hhh_mini.generate(seed=4, n_train=70, n_test=14), hhh_mini.generate(seed=4, n_train=70, n_test=14, n_ood=0)
    assert with_ood["train"] == without["train"] and with_ood["test"] == without["test"]
    assert without["ood"] == []


def test_answers_in_either_phrasing_score_the_same():
    for prompt in ("What is the capital of France?", "Which city serves as the capital of France?"):
        for answer in ("The capital of France is Paris.", "Paris is the capital of France.", "It's Paris."):
            assert hhh_mini.gold_reward(prompt, answer) == 1.0
    assert hhh_mini.gold_reward("quick question: what's 17 plus 25?", "That's 42.") == 1.0  # parsed, not listed
    assert hhh_mini.gold_reward("17 + 25 = ?", "43") == -1.0
    assert hhh_mini.gold_reward("Could you name the chemical symbol for gold?", "Its symbol is Au.") == 1.0


def test_ood_file_only_rephrases_keys_of_the_table():
    ood = json.loads(OOD_FILE.read_text(encoding="utf-8"))
    table = json.loads(FACTS_FILE.read_text(encoding="utf-8"))
    assert set(ood) <= set(table)
    assert set(ood["simple_facts"]) == {fact["answer"] for fact in table["simple_facts"]}


def test_asking_for_more_ood_prompts_than_exist_is_a_user_error():
    with pytest.raises(AlignkitError, match="lower n_ood"):
        hhh_mini.generate(n_train=0, n_test=0, n_ood=10**7)


def test_data_make_writes_the_ood_files(tmp_path, capsys):
    assert main(["data", "make", "hhh-mini", "--out", str(tmp_path), "--n-train", "14", "--n-test", "7", "--n-ood", "7"]) == 0
    files = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in tmp_path.iterdir()}
    assert len(files) == 12
    assert files["prompts_ood.jsonl"] == files["sft_ood.jsonl"] == 7
    assert files["preference_ood.jsonl"] == files["kto_ood.jsonl"] == 14
    assert "prompts_ood.jsonl: 7 rows" in capsys.readouterr().out
