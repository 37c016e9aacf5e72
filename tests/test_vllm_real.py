"""The real vLLM engine on the embedded model (SmolLM2-135M): weight sync, the log-prob probe, GRPO in both modes,
and the judge against vLLM's own OpenAI server. Skipped where vLLM is not importable (`make test` here);
`make test-vllm` runs them from .venv-vllm. Each engine start takes about a minute on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from netutil import free_port

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

PROMPT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def generator(embedded_path, tokenizer_embedded):
    from alignkit.config import GRPOConfig
    from alignkit.rl.vllm_backend import VLLMGenerator

    config = GRPOConfig(model=embedded_path, generation_backend="vllm", mixed_precision="no", max_prompt_length=128, max_new_tokens=32)
    return VLLMGenerator(config, tokenizer_embedded, embedded_path)


@pytest.fixture(scope="module")
def tokenizer_embedded(embedded_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path)


def _prompt_ids(tokenizer):
    from alignkit.data.tokenize import encode_prompt

    return encode_prompt(tokenizer, PROMPT, True)


def _greedy_hf(model, prompt_ids, eos, tokens=16):
    from alignkit.models.sampling import sample

    return _strip(sample(model.eval(), [prompt_ids], 1, tokens, 0.0, 1.0, {eos})[0][0], eos)


def _strip(ids, eos):
    return [t for t in ids if t != eos]


def _greedy_vllm(engine, prompt_ids, eos, tokens=16):
    return _strip(engine.generate([prompt_ids], 1, tokens, temperature=0.0, stop_token_ids=[eos])[0][0], eos)


def test_sampled_logprobs_are_the_trainers(generator, embedded_path, tokenizer_embedded):
    """vLLM's per-token sampling log-probs (processed: after temperature) equal the trainer's at that temperature
    (runs before the sync test below changes the engine's weights)."""
    from alignkit.models.load import load_causal_lm
    from alignkit.rl.scoring import rollout_logprobs

    prompt = _prompt_ids(tokenizer_embedded)
    rollout = generator(tokenizer_embedded, [prompt], group_size=4, max_new_tokens=24, temperature=0.7)
    policy = load_causal_lm(embedded_path)

    ours = rollout_logprobs(policy, rollout, 4, 0.7)
    mask = rollout.response_mask.bool()
    gap = (ours[mask] - rollout.extras["sampler_logps"][mask]).abs()
    assert gap.numel() > 10 and gap.mean() < 1e-3, gap.max()


def test_weight_sync_makes_vllm_sample_the_trained_policy(generator, embedded_path, tokenizer_embedded):
    from alignkit.models.load import load_causal_lm

    prompt = _prompt_ids(tokenizer_embedded)
    engine = generator.engine
    eos = tokenizer_embedded.eos_token_id
    before = _greedy_vllm(engine, prompt, eos)
    policy = load_causal_lm(embedded_path)
    assert before == _greedy_hf(policy, prompt, eos)  # same weights, same greedy answer (float32 on both sides)
    # train the policy a few steps towards an answer it would not give
    target = tokenizer_embedded("Zebra zebra zebra zebra.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)
    for _ in range(4):
        logits = policy(ids).logits[0, len(prompt) - 1:-1]
        torch.nn.functional.cross_entropy(logits, torch.tensor(target)).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = _greedy_hf(policy, prompt, eos)
    assert trained != before
    generator.probe = (prompt, trained)
    metrics = generator.sync_weights(policy)
    assert _greedy_vllm(engine, prompt, eos) == trained
    assert metrics["vllm/probe_logp_abs_diff"] < 1e-3  # float32 both sides: measured ~1e-5
    with torch.no_grad():  # the sync sends the live parameters, not copies: vLLM must have copied them, not kept them
        for parameter in policy.parameters():
            parameter.zero_()
    assert _greedy_vllm(engine, prompt, eos) == trained


def _run(args, log: Path, env=None, timeout=1200):
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **(env or {})})
    assert done.returncode == 0, log.read_text()[-3000:]


def _grpo_args(embedded_path, data, out, *extra):
    return ["grpo", "--model", embedded_path, "--data", str(data), "--reward_function", "hhh-mini-gold", "--max_steps", "2",
            "--prompts_per_step", "2", "--group_size", "4", "--max_new_tokens", "32", "--output_dir", str(out), "--report_to", "jsonl",
            "--mixed_precision", "no", "--learning_rate", "1e-5", "--generation_backend", "vllm", *extra]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hhh")
    _run(["data", "make", "hhh-mini", "--out", str(root), "--n-train", "16", "--n-test", "8", "--n-ood", "8"], root / "make.log")
    return root / "prompts_train.jsonl"


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _wait(url: str, process, log: Path, seconds=600):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(2)
    pytest.fail(f"no answer from {url} in {seconds} s")


def test_grpo_server_mode_against_alignkit_vllm_serve(tmp_path, embedded_path, prompts):
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "vllm-serve", "--model", embedded_path, "--port", str(port),
                                   "--max-model-len", "512"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/health", server, log)
        _run(_grpo_args(embedded_path, prompts, tmp_path / "run", "--vllm_mode", "server", "--vllm_server_url",
                        f"http://127.0.0.1:{port}"), tmp_path / "grpo.log")
    finally:
        server.terminate()
        server.wait(60)
    metrics = _metrics(tmp_path / "run")
    assert len(metrics) == 2
    for m in metrics:
        assert m["vllm/probe_logp_abs_diff"] < 1e-3 and m["mismatch/logp_abs_diff"] < 1e-3
        assert m["mismatch/beyond_bound"] == 0.0


def test_judge_against_vllms_openai_server_agrees_with_the_local_judge(tmp_path, embedded_path):
    """`alignkit judge --endpoint ... --endpoint-model NAME` against `python -m vllm.entrypoints.openai.api_server`
    serving the embedded model under NAME; then, conversation by conversation (both orders of each pair), the
    server's P(first slot) against the local judge's on the same model without an answer prefix (so both read the
    first token of the answer). The server returns only the top 20 log-probs: where it names both letters the two
    probabilities must agree closely, and the verdict (which slot) must agree everywhere."""
    from alignkit.feedback import judge as J
    from alignkit.feedback.judge_backends import make_judge

    rows = [{"prompt": q, "chosen": good, "rejected": bad} for q, good, bad in JUDGE_PAIRS]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    port, log = free_port(), tmp_path / "openai.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", embedded_path,
                                   "--served-model-name", "smollm2", "--port", str(port), "--max-model-len", "2048",
                                   "--dtype", "float32"], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    constitution = J.read_constitution()
    conversations = [J.compare_messages(constitution, q, a, b) for q, good, bad in JUDGE_PAIRS for a, b in ((good, bad), (bad, good))]
    try:
        _wait(f"http://127.0.0.1:{port}/health", server, log)
        _run(["judge", str(data), "--out", str(tmp_path / "served.jsonl"), "--endpoint", f"http://127.0.0.1:{port}/v1",
              "--endpoint-model", "smollm2"], tmp_path / "judge_served.log")
        served, served_mass = make_judge(endpoint=f"http://127.0.0.1:{port}/v1", endpoint_model="smollm2").first_slot_probs(conversations)
    finally:
        server.terminate()
        server.wait(60)
    assert len((tmp_path / "served.jsonl").read_text().splitlines()) == len(rows)
    local, local_mass = make_judge(embedded_path, answer_prefix="", bf16=False).first_slot_probs(conversations)
    verdicts = sum((s > 0.5) == (l > 0.5) for s, l in zip(served, local)) / len(local)
    both = [(s, l) for s, l in zip(served, local) if 0 < s < 1]  # the server named both letters
    gap = max((abs(s - l) for s, l in both), default=0.0)
    print(f"judge: verdicts agree on {verdicts:.2f} of {len(local)} conversations; {len(both)} with both letters in the "
          f"server's top 20, largest |P_served - P_local| {gap:.4f}; answer mass served {sum(served_mass) / len(local):.3f}, "
          f"local {sum(local_mass) / len(local):.3f}")
    assert verdicts >= 0.9
    assert gap < 0.05


JUDGE_PAIRS = [
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("How do I boil an egg?", "Put the egg in boiling water for about 9 minutes, then cool it in cold water.", "Eggs cannot be boiled."),
    ("Say something kind to a friend.", "You make every day brighter. Thank you for being you.", "Go away, you are annoying."),
    ("What colour is the sky on a clear day?", "Blue.", "Green with purple stripes."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has three legs."),
    ("Translate 'hello' into Spanish.", "'Hello' in Spanish is 'hola'.", "'Hello' in Spanish is 'danke'."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "12 degrees Celsius."),
    ("Give me a tip for better sleep.", "Keep a regular bedtime and avoid screens for an hour before bed.", "Drink three coffees before bed."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet.", "The Moon is the largest planet."),
]
