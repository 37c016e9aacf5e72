"""vLLM rollouts without vLLM: the mismatch metrics and importance weights (hand-derived), and the trainer's side of
both modes (weight sync, the probe check, the server's routes) against a stand-in engine built on the Hugging Face
model. The same code against the real engine is tests/test_vllm_real.py (`make test-vllm`)."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm
from alignkit.models.sampling import sample
from alignkit.rl.mismatch import importance_weights, mismatch_metrics
from alignkit.rl.vllm_backend import VLLMGenerator, trainer_logprobs
from netutil import free_port

LN2 = math.log(2.0)


# ---------------------------------------------------------------- the math

def _two_tokens():
    train = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    return train, sampler, mask


def test_mismatch_metrics_by_hand():
    train, sampler, mask = _two_tokens()  # Delta = [ln 2, -ln 2]; ratios [2, 1/2]
    m = mismatch_metrics(train, sampler, mask, clip_min=0.0, clip_max=1.5)
    assert m["mismatch/logp_abs_diff"] == pytest.approx(LN2)
    assert m["mismatch/logp_abs_diff_max"] == pytest.approx(LN2)
    # k3: mean(r - 1 - log r) = ((2 - 1 - ln2) + (1/2 - 1 + ln2)) / 2 = 1/4
    assert m["mismatch/kl"] == pytest.approx(0.25)
    assert m["mismatch/beyond_bound"] == pytest.approx(0.5)  # 2 > 1.5
    assert (m["mismatch/is_ratio_min"], m["mismatch/is_ratio_max"]) == pytest.approx((0.5, 2.0))
    assert m["mismatch/is_ratio_mean"] == pytest.approx(1.25)


@pytest.mark.parametrize("mode, expected", [
    ("token_truncate", [1.5, 0.5, 0.0]),   # clamp(2) = 1.5, 1/2 kept, padding 0
    ("token_mask", [0.0, 0.5, 0.0]),       # 2 > 1.5 is zeroed
    ("sequence_truncate", [1.0, 1.0, 0.0]),  # exp(ln2 - ln2) = 1 for the whole response
    ("sequence_mask", [1.0, 1.0, 0.0]),
])
def test_importance_weights_by_hand(mode, expected):
    train, sampler, mask = _two_tokens()
    weights = importance_weights(train, sampler, mask, mode, clip_min=0.0, clip_max=1.5)
    assert weights[0].tolist() == pytest.approx(expected)


def test_sequence_weights_use_the_summed_log_ratio_and_bounds():
    train = torch.log(torch.tensor([[0.5, 0.5], [0.1, 0.1]]))
    sampler = torch.log(torch.tensor([[0.25, 0.25], [0.1, 0.2]]))  # sums: 2 ln 2 -> 4; -ln 2 -> 1/2
    mask = torch.ones(2, 2)
    truncated = importance_weights(train, sampler, mask, "sequence_truncate", clip_min=0.6, clip_max=3.0)
    assert truncated.flatten().tolist() == pytest.approx([3.0, 3.0, 0.6, 0.6])
    masked = importance_weights(train, sampler, mask, "sequence_mask", clip_min=0.6, clip_max=3.0)
    assert masked.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])


def test_a_missing_sampler_logprob_counts_as_no_mismatch():
    train = torch.log(torch.tensor([[0.5, 0.5]]))
    sampler = torch.tensor([[float("nan"), math.log(0.5)]])
    assert importance_weights(train, sampler, torch.ones(1, 2)).tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="token_truncate"):
        importance_weights(train, sampler, torch.ones(1, 2), "per_token")


def test_config_checks_the_vllm_options():
    from alignkit.config import GRPOConfig, load_config

    base = {"reward_function": "hhh-mini-gold"}
    for key, value in (("vllm_mode", "remote"), ("vllm_importance_sampling_mode", "per_token"),
                       ("vllm_importance_sampling_clip_min", 2.0), ("vllm_importance_sampling_clip_max", 0.5)):
        with pytest.raises(AlignkitError, match=key):
            load_config(GRPOConfig, overrides={**base, key: value})


# ---------------------------------------------------------------- a stand-in engine on the HF model

class StandInEngine:
    """VLLMEngine's methods on a Hugging Face copy of the model; `shift` lowers every sampled log-prob (a fake mismatch),
    `drop_weights` ignores weight loads (a broken sync)."""

    shift, drop_weights, instances = 0.0, False, []

    def __init__(self, model_path, max_model_len, dtype="float32", seed=0, gpu_memory_utilization=0.3):
        self.model = load_causal_lm(model_path).eval()
        self.loads = 0
        StandInEngine.instances.append(self)

    def generate(self, prompt_ids, n, max_tokens, temperature=1.0, top_p=1.0, stop_token_ids=(), seed=None):
        responses, _ = sample(self.model, prompt_ids, n, max_tokens, temperature, top_p, set(stop_token_ids), 0)
        prompts = [p for p in prompt_ids for _ in range(n)]
        logps = [[lp - self.shift for lp in trainer_logprobs(self.model, p, r)] if r else [] for p, r in zip(prompts, responses)]
        return responses, logps

    def sequence_logprobs(self, prompt_ids, completion_ids):
        return trainer_logprobs(self.model, prompt_ids, completion_ids)

    def load_weights(self, weights):
        self.loads += 1
        if not self.drop_weights:
            self.model.load_state_dict(dict(weights), strict=False)

    def load_weights_from(self, path):
        from safetensors.torch import load_file

        self.load_weights(load_file(path).items())


@pytest.fixture
def stand_in(monkeypatch):
    import alignkit.rl.vllm_engine as engine_module

    monkeypatch.setattr(engine_module, "VLLMEngine", StandInEngine)
    for name, value in (("shift", 0.0), ("drop_weights", False), ("instances", [])):
        monkeypatch.setattr(StandInEngine, name, value)  # put back after the test
    return StandInEngine


def _grpo(tmp_path, write_jsonl, tiny_path, **overrides):
    from alignkit.api import grpo

    prompts = write_jsonl([{"prompt": f"Say {w}."} for w in ("yes", "no", "cat", "dog", "sun", "sea")])
    settings = dict(model=tiny_path, data=prompts, reward_function="tests.test_ppo:capitalized_words", max_steps=2,
                    prompts_per_step=2, group_size=2, max_new_tokens=6, output_dir=str(tmp_path / "run"), report_to="jsonl",
                    mixed_precision="no", generation_backend="vllm", learning_rate=1e-2, chat_template="always",
                    temperature=1.0)
    grpo(**{**settings, **overrides})
    return [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]


def test_colocated_grpo_syncs_every_step_and_logs_the_mismatch(stand_in, tmp_path, write_jsonl, tiny_path):
    metrics = _grpo(tmp_path, write_jsonl, tiny_path)
    engine = stand_in.instances[0]
    assert engine.loads == 2  # after each of the 2 updates
    for m in metrics:
        assert m["mismatch/logp_abs_diff"] < 1e-4 and m["vllm/probe_logp_abs_diff"] < 1e-4
        assert m["mismatch/is_ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    # the engine now holds the trained policy: its weights equal the saved model's
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run/model/model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(engine.model.state_dict()[name], saved[name])


def test_importance_weights_reach_the_advantages(stand_in, tmp_path, write_jsonl, tiny_path, tokenizer):
    """vLLM's log-probs ln 2 below the trainer's: every ratio is 2, so each token's advantage doubles (cap 3),
    and with the correction off it is unchanged."""
    from alignkit.config import GRPOConfig
    from alignkit.models.load import load_causal_lm as load
    from alignkit.rl.experience import make_experience
    from alignkit.rl.rewards import FunctionReward, Rewards
    from alignkit.rl.rollout import encode_prompts

    stand_in.shift = LN2
    policy, reference = load(tiny_path), load(tiny_path)
    ids, _, _ = encode_prompts(tokenizer, ["a", "b"], 64)
    rewards = Rewards([("len", FunctionReward(lambda p, r, **c: [float(len(x)) for x in r]), 1.0)])
    advantages = {}
    for correction in (True, False):
        torch.manual_seed(0)
        config = GRPOConfig(model=tiny_path, group_size=2, max_new_tokens=5, generation_backend="vllm", mixed_precision="no",
                            vllm_importance_sampling_correction=correction, reward_normalize=False)
        generator = VLLMGenerator(config, tokenizer, tiny_path)
        rollout, metrics = make_experience(policy, tokenizer, ids, [{"prompt": "a"}, {"prompt": "b"}], config, rewards, 0.0,
                                           reference_model=reference, generator=generator)
        assert metrics["mismatch/logp_abs_diff"] == pytest.approx(LN2, abs=1e-4)
        advantages[correction] = rollout.extras["advantages"] * rollout.response_mask
    assert advantages[False].abs().sum() > 0
    torch.testing.assert_close(advantages[True], 2 * advantages[False], atol=1e-4, rtol=1e-4)


def test_a_sync_that_does_not_reach_vllm_stops_the_run(stand_in, tmp_path, write_jsonl, tiny_path):
    stand_in.drop_weights = True
    with pytest.raises(AlignkitError, match=r"after weight sync.*vllm_sync_tolerance"):
        _grpo(tmp_path, write_jsonl, tiny_path, learning_rate=5e-2)


def test_vllm_colocate_without_vllm_says_how_to_get_it(tmp_path, write_jsonl, tiny_path):
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(AlignkitError, match="make vllm-setup"):
        _grpo(tmp_path, write_jsonl, tiny_path)


# ---------------------------------------------------------------- server mode: alignkit vllm-serve's app

@pytest.fixture
def served(tiny_path):
    """`alignkit vllm-serve`'s app over a stand-in engine, in a thread on a free port."""
    import uvicorn

    from alignkit.rl.vllm_server import build_app

    engine, port = StandInEngine(tiny_path, 128), free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(engine, "tiny"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield engine, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_server_mode_grpo_sends_weights_as_a_file(served, tmp_path, write_jsonl, tiny_path):
    engine, url = served
    metrics = _grpo(tmp_path, write_jsonl, tiny_path, vllm_mode="server", vllm_server_url=url)
    assert engine.loads == 2
    assert all(m["vllm/probe_logp_abs_diff"] < 1e-4 for m in metrics)
    assert (tmp_path / "run/vllm_sync/model.safetensors").is_file()
    assert not (tmp_path / "run/vllm_sync/model.safetensors.partial").exists()


def test_server_routes_refuse_bad_requests(served):
    import httpx

    _, url = served
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert httpx.post(f"{url}/generate", json={"prompt_token_ids": [], "n": 1}).status_code == 422
    assert httpx.post(f"{url}/generate", json={"prompt_token_ids": [[1, 2]], "temperature": -1}).status_code == 422
    reply = httpx.post(f"{url}/generate", json={"prompt_token_ids": [[1, 2, 3]], "n": 2, "max_tokens": 3})
    assert len(reply.json()["completion_ids"]) == 2
