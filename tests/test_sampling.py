"""The rollout sampler (`models/sampling.py`) and the shared-prompt forward (`models/logprobs.py`) on the tiny model:
greedy decoding equals `generate`, samples follow the softmax and HF's top-p rule, early-finished rows stop,
and a prompt run once for its G responses gives the log-probs and gradients of running every row in full."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.sampling import sample, sample_tokens
from alignkit.rl.rollout import encode_prompts, generate, select
from alignkit.rl.scoring import rollout_logprobs


@pytest.fixture(scope="module")
def tiny_model(tiny_path):
    from alignkit.models.load import load_causal_lm

    return load_causal_lm(tiny_path).eval()


PROMPTS = ["Hi", "Tell me a long story about the sea", "What is two plus two?"]


def test_greedy_sampling_equals_generate(tiny_model, tokenizer):
    from alignkit.data.collate import pad_sequences

    ids, _, _ = encode_prompts(tokenizer, PROMPTS, 64)
    input_ids = pad_sequences(ids, tokenizer.pad_token_id, side="left")
    attention = pad_sequences([[1] * len(p) for p in ids], 0, side="left")
    with torch.no_grad():
        out = tiny_model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=12, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    responses, finished = sample(tiny_model, ids, group_size=2, max_new_tokens=12, temperature=0.0,
                                 eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id)
    for i, row in enumerate(out[:, input_ids.shape[1]:].tolist()):
        for g in range(2):  # both copies of a prompt decode greedily from one shared prefill
            assert responses[2 * i + g] == row[:len(responses[2 * i + g])]
            assert len(responses[2 * i + g]) == 12 or finished[2 * i + g]


def test_a_row_that_ends_leaves_the_batch_and_the_others_go_on(tiny_model, tokenizer, monkeypatch):
    import alignkit.models.sampling as sampling

    eos = tokenizer.eos_token_id
    calls = []

    def scripted(logits, temperature, top_p):  # row 0 ends at its 2nd token; the others never do
        calls.append(logits.shape[0])
        tokens = logits.argmax(-1).masked_fill(logits.argmax(-1) == eos, 5)
        if len(calls) == 2:
            tokens[0] = eos
        return tokens

    monkeypatch.setattr(sampling, "sample_tokens", scripted)
    responses, finished = sample(tiny_model, [[3, 4], [3, 4, 5]], group_size=2, max_new_tokens=5, eos_ids={eos}, pad_id=0)
    assert calls == [4, 4, 3, 3, 3]  # the finished row is no longer computed
    assert responses[0][-1] == eos and len(responses[0]) == 2 and finished == [True, False, False, False]
    assert [len(r) for r in responses[1:]] == [5, 5, 5]


def test_sampled_tokens_follow_the_softmax_and_hf_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(2, 12) * 2
    n = 40_000
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.8)):
        scaled = logits / temperature
        expected = torch.softmax(TopPLogitsWarper(top_p)(None, scaled.clone()) if top_p < 1 else scaled, -1)  # (2, 12)
        draws = sample_tokens(logits.repeat_interleave(n, 0), temperature, top_p).view(2, n)
        freq = torch.stack([torch.bincount(row, minlength=12).float() / n for row in draws])
        assert not ((freq > 0) & (expected == 0)).any(), (temperature, top_p)  # nothing outside HF's top-p set
        assert (freq - expected).abs().max() < 0.01, (temperature, top_p)  # 4+ standard errors at n = 40k
    assert sample_tokens(logits, 0.0).tolist() == logits.argmax(-1).tolist()


def test_shared_prompt_forward_gives_the_full_forward_logprobs_and_gradients(tiny_path, tokenizer):
    from alignkit.config import PPOConfig
    from alignkit.models.load import load_policy
    from alignkit.rl.scoring import batch_logprobs

    policy, _ = load_policy(PPOConfig(model=tiny_path, lora_r=8, lora_dropout=0.0, reward_function="x:y"))
    with torch.no_grad():  # adapters that change the output, so their gradients are not trivial
        for name, weight in policy.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05)
    ids, _, _ = encode_prompts(tokenizer, PROMPTS, 64)
    torch.manual_seed(0)
    rollout = generate(policy, tokenizer, ids, group_size=3, max_new_tokens=6, bf16=False)
    batch = select(rollout.tensors(), [0, 1, 2, 4, 5, 7])  # groups of 3, 2 and 1 rows
    unshared = {k: v for k, v in batch.items() if k != "prompt_mask"}
    results = []
    for inputs in (batch, unshared):
        logps, _ = batch_logprobs(policy, inputs)
        (logps * inputs["response_mask"]).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        policy.zero_grad()
        results.append((logps.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-3, atol=1e-5)
    # the reference pass over a whole rollout takes the same path
    assert torch.allclose(rollout_logprobs(policy, rollout, batch_size=9), rollout_logprobs(policy, rollout, batch_size=1), atol=1e-4)


def test_sampler_logprobs_are_the_models_logprobs_of_the_sampled_tokens(tiny_model, tokenizer):
    """`logprobs=True` returns log-softmax of the untempered logits at each sampled token: what a full forward gives."""
    from alignkit.data.collate import collate_prompt_completions
    from alignkit.models.logprobs import token_logprobs

    ids, _, _ = encode_prompts(tokenizer, PROMPTS, 64)
    torch.manual_seed(0)
    responses, finished, logps = sample(tiny_model, ids, group_size=2, max_new_tokens=10, temperature=0.7,
                                        eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id, logprobs=True)
    torch.manual_seed(0)
    again, _ = sample(tiny_model, ids, group_size=2, max_new_tokens=10, temperature=0.7,
                      eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id)
    assert again == responses  # asking for log-probs draws the same tokens
    prompts = [p for p in ids for _ in range(2)]
    batch = collate_prompt_completions(prompts, responses, tokenizer.pad_token_id)
    with torch.no_grad():
        full, _ = token_logprobs(tiny_model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])  # (B, T)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        assert len(logps[row]) == len(response)
        expected = full[row, len(prompt):len(prompt) + len(response)]
        torch.testing.assert_close(torch.tensor(logps[row]), expected, atol=1e-4, rtol=1e-4)


def test_sampled_kl_scores_the_sampled_tokens_under_both_models(tiny_path, tiny_model, tokenizer):
    """KL(policy || reference) per answer = sum over the sampled tokens of log pi - log pi_ref (both from full
    forwards here), and 0 for the policy against itself."""
    import copy

    from alignkit.data.collate import collate_prompt_completions
    from alignkit.data.tokenize import encode_prompt
    from alignkit.evaluate.metrics import sampled_kl
    from alignkit.models.logprobs import token_logprobs

    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    got = sampled_kl(tiny_model, reference, tokenizer, PROMPTS, max_new_tokens=8, batch_size=8, bf16=False)
    encoded = [encode_prompt(tokenizer, p) for p in PROMPTS]
    order = sorted(range(len(PROMPTS)), key=lambda i: len(encoded[i]))  # the batch sampled_kl drew
    torch.manual_seed(1)
    responses, _ = sample(tiny_model, [encoded[i] for i in order], 1, 8, 1.0, 1.0, {tokenizer.eos_token_id}, tokenizer.pad_token_id)
    batch = collate_prompt_completions([encoded[i] for i in order], responses, tokenizer.pad_token_id)
    with torch.no_grad():
        sums = [token_logprobs(m, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0].sum(-1) for m in (tiny_model, reference)]
    expected = [0.0] * len(PROMPTS)
    for k, i in enumerate(order):
        expected[i] = float(sums[0][k] - sums[1][k])
    assert got["per_answer"] == pytest.approx(expected, abs=1e-4)
    assert abs(got["kl"]) > 0.01  # the perturbed reference is another distribution
    torch.manual_seed(1)
    assert sampled_kl(tiny_model, tiny_model, tokenizer, PROMPTS, max_new_tokens=8, bf16=False)["per_answer"] == pytest.approx([0.0] * 3, abs=1e-4)
