"""Model loading (aliases, errors, LoRA) and the selective-head log-probs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignkit.config import ModelArgs
from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm, load_policy, resolve_model_path
from alignkit.models.logprobs import sequence_logprobs, token_logprobs


def test_embedded_model_answers_capital_of_france(embedded_path):
    from alignkit.models.generation import generate_answers
    from alignkit.models.load import load_tokenizer

    model, tokenizer = load_causal_lm("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct")
    assert resolve_model_path("smollm2-135m-instruct") == embedded_path
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576 and model.config.vocab_size == 49152
    question = [{"role": "user", "content": "What is the capital of France?"}]  # conversational: through the chat template
    [answer] = generate_answers(model, tokenizer, [question], max_new_tokens=20)
    assert "Paris" in answer


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(AlignkitError, match="model 'no-such-model' was not found: .*alias"):
        load_causal_lm("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignkitError, match="holds no config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(AlignkitError, match="target_modules .*not in this model"):
        load_policy(ModelArgs(model="tiny-llama", lora_r=4, target_modules=["query_key_value"]))


def test_lora_trains_only_adapters(tiny_path):
    model, _ = load_policy(ModelArgs(model=tiny_path, lora_r=4, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_token_logprobs_equal_full_log_softmax(tiny_path):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_path)
    ids = torch.randint(0, 1000, (3, 9))
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    mask = torch.zeros_like(ids)
    mask[:, 4:] = 1
    mask[2, 6:] = 0
    mask[0, 0] = 1  # position 0 has no predecessor and must never be scored
    logps, entropy = token_logprobs(model, ids, attention, mask, with_entropy=True)
    full = F.log_softmax(model(input_ids=ids, attention_mask=attention).logits.float(), -1)  # (B, T, V)
    expected = torch.zeros_like(logps)
    expected[:, 1:] = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected = expected * mask
    expected[:, 0] = 0
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=1e-5)
    ent = -(full.exp() * full).sum(-1)
    torch.testing.assert_close(entropy[0, 5], ent[0, 4], atol=1e-4, rtol=1e-4)
    assert sequence_logprobs(logps, mask).shape == (3,)
    torch.testing.assert_close(sequence_logprobs(logps, mask, average=True)[1], logps[1, 4:].mean())


def test_entropy_carries_gradients_only_when_asked(tiny_path):
    """As a metric the entropy builds no graph (TRL computes it under no_grad); an entropy bonus needs its gradient."""
    torch.manual_seed(0)
    model = load_causal_lm(tiny_path)
    ids = torch.randint(0, 1000, (2, 7))
    attention, mask = torch.ones_like(ids), torch.ones_like(ids)
    logps, metric = token_logprobs(model, ids, attention, mask, with_entropy=True, entropy_grad=False)
    _, bonus = token_logprobs(model, ids, attention, mask, with_entropy=True)
    assert logps.requires_grad and not metric.requires_grad and bonus.requires_grad
    assert torch.equal(metric, bonus.detach())
    bonus.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    hot, _ = token_logprobs(model, ids, attention, mask, temperature=2.0)  # logits / T before the softmax
    full = F.log_softmax(model(input_ids=ids, attention_mask=attention).logits.float() / 2.0, -1)
    torch.testing.assert_close(hot[:, 1:], full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_path, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(AlignkitError, match="pickle-based weights \\(pytorch_model.bin\\).*--allow_unsafe_pickle"):
        load_causal_lm(str(folder))
    model = load_causal_lm(str(folder), allow_unsafe_pickle=True)
    assert model.config.hidden_size == 64


def test_generation_and_kl_autocast_bf16_only_where_it_is_native(tiny_path, tokenizer, monkeypatch):
    """bf16=True (the default) autocasts only where bf16 is native: emulated bf16 (AVX2-only CPUs) is ~100x slower."""
    from alignkit.evaluate.metrics import kl_to_reference
    from alignkit.models import precision
    from alignkit.models.generation import generate_answers

    model = load_causal_lm(tiny_path)
    real_autocast, bf16_autocasts = torch.autocast, []

    def spy(device_type, dtype=None, enabled=True, **kwargs):
        if dtype == torch.bfloat16:
            bf16_autocasts.append(enabled)
        return real_autocast(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    for native in (False, True):
        monkeypatch.setattr(precision, "bf16_is_native", lambda device_type="cpu", native=native: native)
        [answer] = generate_answers(model, tokenizer, ["Hi"], max_new_tokens=2)
        kl_to_reference(model, model, tokenizer, ["Hi"], [answer or "x"])
    assert bf16_autocasts == [False, False, False, True, True, True]  # generation, then the policy's and reference's log-probs
