"""The SFT recipe on the tiny model: held-out loss falls, the saved model reloads in plain transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.train import sft


def _arithmetic_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"Add {a} and {b}.", "completion": f"The sum is {a + b}."})
    return rows


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("sft")
    for name, rows in (("train", _arithmetic_rows(96, 0)), ("test", _arithmetic_rows(24, 1))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = sft({"model": tiny_path, "data": str(root / "train.jsonl"), "eval_data": str(root / "test.jsonl"),
                   "output_dir": str(root / "run"), "learning_rate": 3e-3, "max_steps": 30, "batch_size": 8,
                   "eval_every": 10, "report_to": ["jsonl"]})
    return root, summary


def test_sft_lowers_held_out_loss(sft_run):
    root, summary = sft_run
    evals = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    eval_losses = [m["eval/loss"] for m in evals if "eval/loss" in m]
    assert len(eval_losses) >= 3
    assert eval_losses[-1] < eval_losses[0] - 1.0  # random init: the loss must fall by a wide margin
    assert summary["eval/loss"] == pytest.approx(eval_losses[-1])
    assert (summary["data"]["truncated"], summary["data"]["dropped"]) == (0, 0)


def test_saved_model_reloads_in_plain_transformers(sft_run, tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, summary = sft_run
    model = AutoModelForCausalLM.from_pretrained(root / "run" / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "run" / "model")
    assert tokenizer.chat_template
    ids = tokenizer("Add 2 and 3.", return_tensors="pt").input_ids
    reloaded = model(ids).logits
    original = AutoModelForCausalLM.from_pretrained(tiny_path)(ids).logits
    assert not torch.allclose(reloaded, original)  # it learned something...
    # ...and alignkit's own loading gives the same logits as plain transformers
    from alignkit.models.load import load_causal_lm

    torch.testing.assert_close(load_causal_lm(str(root / "run"))(ids).logits, reloaded)


def test_lora_sft_saves_adapter_and_merged_model(tmp_path, tiny_path, write_jsonl):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(_arithmetic_rows(32, 2))
    sft({"model": tiny_path, "data": data, "output_dir": str(tmp_path / "run"), "lora_r": 4, "lora_alpha": 8,
         "learning_rate": 1e-2, "max_steps": 5, "report_to": ["jsonl"]})
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)


def test_gradient_accumulation_matches_larger_batch(tmp_path, tiny_path, write_jsonl):
    data = write_jsonl(_arithmetic_rows(16, 3))
    common = {"model": tiny_path, "data": data, "eval_fraction": 0, "max_steps": 1, "learning_rate": 1e-2,
              "report_to": ["jsonl"], "mixed_precision": "no", "max_grad_norm": 0}
    sft({**common, "output_dir": str(tmp_path / "a"), "batch_size": 16, "grad_accum_steps": 1})
    sft({**common, "output_dir": str(tmp_path / "b"), "batch_size": 4, "grad_accum_steps": 4})
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def test_missing_data_and_wrong_kind(tmp_path, tiny_path, write_jsonl):
    with pytest.raises(AlignkitError, match="no training data"):
        sft({"model": tiny_path, "output_dir": str(tmp_path)})
    pairs = write_jsonl([{"prompt": "x", "chosen": "a", "rejected": "b"}])
    with pytest.raises(AlignkitError, match="SFT needs .*alignkit reward"):
        sft({"model": tiny_path, "data": pairs, "output_dir": str(tmp_path)})


def test_packing_gives_the_same_loss_as_padding(tiny_path, tokenizer):
    import importlib

    from alignkit.data.collate import collate_lm, collate_packed
    from alignkit.data.formats import detect_format
    from alignkit.data.tokenize import tokenize_sft
    from alignkit.models.load import load_causal_lm

    recipe = importlib.import_module("alignkit.train.sft")
    rows = _arithmetic_rows(6, 4) + [{"text": "A plain text row, every token learned."}, {"text": "Another one."}]
    examples = [e for fmt_rows in (rows[:6], rows[6:]) for e in tokenize_sft(fmt_rows, detect_format(fmt_rows), tokenizer, 512)[0]]
    model = load_causal_lm(tiny_path)
    padded, _ = recipe.batch_loss(model, collate_lm(examples, tokenizer.pad_token_id))
    packed, _ = recipe.batch_loss(model, collate_packed(examples))
    assert collate_packed(examples)["input_ids"].shape[1] < collate_lm(examples, tokenizer.pad_token_id)["input_ids"].numel()
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
