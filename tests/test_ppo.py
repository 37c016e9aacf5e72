"""Online RL on the tiny model: rollouts, step-0 log-prob agreement, reward sources and their failures,
and PPO / GRPO raising a function reward."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.rl.rewards import FunctionReward, HTTPReward, Rewards, build_rewards
from alignkit.rl.rollout import cut_at_eos, encode_prompts, generate, pack_rollout, select
from alignkit.rl.scoring import rollout_logprobs
from netutil import free_port


def capitalized_words(prompts, responses, **columns):
    """The test reward: the share of words that start with a capital letter (about 0.3 for the random tiny model)."""
    return [sum(w[:1].isupper() for w in r.split()) / max(1, len(r.split())) for r in responses]


@pytest.fixture(scope="module")
def tiny_model(tiny_path):
    from alignkit.models.load import load_causal_lm

    return load_causal_lm(tiny_path)


# ---------------------------------------------------------------- rollouts

def test_pack_rollout_layout():
    rollout = pack_rollout([[5, 6, 7], [8]], [[10, 2], [11, 12, 13]], [True, False], pad_id=0)
    assert rollout.input_ids.tolist() == [[5, 6, 7, 10, 2, 0], [0, 0, 8, 11, 12, 13]]
    assert rollout.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert rollout.response_mask.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    assert rollout.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 0, 0, 1, 2, 3]]
    assert rollout.finished.tolist() == [True, False]
    batch = select(rollout.tensors(), [0])  # a row's own padding column is cut
    assert batch["input_ids"].tolist() == [[5, 6, 7, 10, 2]]


def test_cut_at_eos():
    assert cut_at_eos([4, 2, 9, 2], {2}, 10) == ([4, 2], True)
    assert cut_at_eos([4, 5, 6], {2}, 2) == ([4, 5], False)


def test_too_long_prompts_are_dropped_and_counted(tokenizer):
    prompts = ["hi", "word " * 200, "hello there"]
    ids, kept, report = encode_prompts(tokenizer, prompts, max_prompt_length=64, mode="drop")
    assert kept == [0, 2] and report.dropped == 1 and "rows 2" in report.summary()
    ids, kept, report = encode_prompts(tokenizer, prompts, max_prompt_length=64, mode="truncate")
    assert len(ids[1]) == 64 and report.truncated == 1
    with pytest.raises(AlignkitError, match="prompt row 2 is .* longer than max_prompt_length=64"):
        encode_prompts(tokenizer, prompts, max_prompt_length=64, mode="error")


def test_generate_samples_groups_and_respects_the_length_limit(tiny_model, tokenizer):
    ids, _, _ = encode_prompts(tokenizer, ["Hi", "Tell me a long story about the sea"], 64)
    torch.manual_seed(0)
    rollout = generate(tiny_model, tokenizer, ids, group_size=3, max_new_tokens=5, bf16=False)
    assert rollout.num_responses == 6 and rollout.prompt_index == [0, 0, 0, 1, 1, 1]
    assert all(len(r) <= 5 for r in rollout.response_ids)
    assert rollout.response_lengths.tolist() == [len(r) for r in rollout.response_ids]
    for row, response in enumerate(rollout.response_ids):  # the response tokens sit where the mask says
        assert rollout.input_ids[row][rollout.response_mask[row].bool()].tolist() == response
        assert rollout.finished[row] == (response[-1] == tokenizer.eos_token_id)


def test_old_and_new_logprobs_agree_at_step_zero(tiny_path, tokenizer):
    """The rollout's log-probs (no grad, whole batch) equal the training forward's (grad, other micro-batches): ratio 1."""
    from alignkit.config import PPOConfig
    from alignkit.models.load import load_policy
    from alignkit.rl.scoring import logprobs_and_values
    from alignkit.rl.value_model import ValueHead
    from alignkit.models.wrapping import disable_dropout

    config = PPOConfig(model=tiny_path, lora_r=8, lora_dropout=0.1, reward_function="x:y")
    policy, _ = load_policy(config)
    disable_dropout(policy)
    ids, _, _ = encode_prompts(tokenizer, ["Hi", "What is the capital of France, please?", "Count to three"], 64)
    torch.manual_seed(0)
    rollout = generate(policy, tokenizer, ids, group_size=2, max_new_tokens=6, bf16=False)
    old = rollout_logprobs(policy, rollout, batch_size=6)
    policy.train()
    head = ValueHead(policy.config.hidden_size)
    tensors = {**rollout.tensors(), "old": old}
    for rows in ([0, 3], [1, 2, 4], [5]):
        batch = select(tensors, rows)
        new, _, values = logprobs_and_values(policy, head, batch)
        assert new.requires_grad and values.shape == new.shape
        mask = batch["response_mask"].bool()
        mask[:, 0] = False
        ratio = torch.exp(new - batch["old"])[mask]
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


# ---------------------------------------------------------------- rewards and their failures

def test_sampled_evaluation_repeats_itself_and_leaves_training_randomness_alone(tiny_model, tokenizer, tmp_path):
    """eval_samples: k sampled answers per prompt from the eval's own seeded stream, the same at every evaluation;
    every answer and its scores are written out."""
    from alignkit.config import PPOConfig
    from alignkit.train.online_eval import evaluate_policy

    config = PPOConfig(model="tiny", reward_function="x:y", eval_samples=3, max_new_tokens=8, mixed_precision="no", seed=5)
    rows = [{"prompt": p, "topic": t} for p, t in (("Tell me a story.", "a"), ("Name a colour.", "b"))]
    seen = []

    def judge(prompts, responses, **columns):
        seen.append((list(prompts), list(responses), columns["topic"]))
        return capitalized_words(prompts, responses)

    rewards = Rewards([("caps", FunctionReward(judge), 1.0)])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = evaluate_policy(tiny_model, tokenizer, rows, rewards, None, config, str(tmp_path / "answers.jsonl"))
    assert torch.equal(torch.get_rng_state(), before)  # training draws the same numbers with or without evaluation
    second = evaluate_policy(tiny_model, tokenizer, rows, rewards, None, config)
    assert first == second and {"eval/reward", "eval/sampled_reward", "eval/sampled_length"} <= set(first)
    greedy, sampled = seen[0], seen[1]
    assert sampled[0] == [p for p in ("Tell me a story.", "Name a colour.") for _ in range(3)]
    assert sampled[2] == ["a", "a", "a", "b", "b", "b"]  # each sample keeps its row's columns
    assert len(set(sampled[1][:3])) > 1  # sampled, not three copies of the greedy answer
    assert first["eval/sampled_reward"] == pytest.approx(sum(capitalized_words(None, sampled[1])) / 6)
    written = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in written] == [None, None, 0, 1, 2, 0, 1, 2]
    assert [r["answer"] for r in written] == greedy[1] + sampled[1]
    assert [r["reward"] for r in written] == pytest.approx(capitalized_words(None, greedy[1] + sampled[1]))


def test_function_reward_errors_speak_to_the_user():
    def raises(prompts, responses):
        raise KeyError("score")

    with pytest.raises(AlignkitError, match="raised KeyError"):
        FunctionReward(raises)(["p"], ["r"])
    with pytest.raises(AlignkitError, match="returned 1 values for 2 responses"):
        FunctionReward(lambda p, r, **c: [1.0])(["p", "q"], ["r", "s"])
    with pytest.raises(AlignkitError, match="must be numbers"):
        FunctionReward(lambda p, r, **c: ["good"])(["p"], ["r"])
    with pytest.raises(AlignkitError, match="cannot import"):
        FunctionReward("no_such_module_xyz:fn")
    with pytest.raises(AlignkitError, match="has no function"):
        FunctionReward("math:no_such_fn")


def test_nan_rewards_are_skipped_and_counted_or_refused():
    nan_second = FunctionReward(lambda p, r, **c: [1.0, float("nan"), None, 3.0])
    result = Rewards([("f", nan_second, 1.0)])(["p"] * 4, ["a", "b", "c", "d"])
    assert result.valid.tolist() == [True, False, False, True]
    assert result.metrics()["reward/skipped"] == 2 and result.metrics()["reward"] == 2.0
    with pytest.raises(AlignkitError, match="response 2"):
        Rewards([("f", nan_second, 1.0)], on_invalid="error")(["p"] * 4, ["a", "b", "c", "d"])
    with pytest.raises(AlignkitError, match="every reward"):
        Rewards([("f", FunctionReward(lambda p, r, **c: [math.nan] * len(r)), 1.0)])(["p"], ["a"])


def test_weighted_sum_normalisation_and_clipping():
    rewards = build_rewards([{"type": "function", "function": "math:fsum", "weight": 0.0},  # resolves; weight 0
                             ], normalize=False)
    assert rewards.sources[0][0] == "math:fsum"
    a = FunctionReward(lambda p, r, **c: [1.0, 2.0, 3.0])
    b = FunctionReward(lambda p, r, **c: [10.0, 0.0, 0.0])
    result = Rewards([("a", a, 2.0), ("b", b, 0.5)], normalize=True, clip=1.0)(["p"] * 3, ["x", "y", "z"])
    assert result.raw.tolist() == [7.0, 4.0, 6.0]
    # running mean 17/3, std 1.5275 -> (1.33/1.53, -1.67/1.53, 0.33/1.53), clipped to [-1, 1]
    assert torch.allclose(result.normalized, torch.tensor([(7 - 17 / 3) / 1.527525, -1.0, (6 - 17 / 3) / 1.527525]), atol=1e-4)
    assert result.per_source == {"a": 2.0, "b": pytest.approx(10 / 3)}


def test_columns_reach_the_reward_function():
    seen = {}

    def reward(prompts, responses, answer):
        seen["answer"] = answer
        return [float(r == a) for r, a in zip(responses, answer)]

    result = Rewards([("f", FunctionReward(reward), 1.0)])(["p", "q"], ["4", "5"], {"answer": ["4", "6"]})
    assert seen["answer"] == ["4", "6"] and result.raw.tolist() == [1.0, 0.0]


def test_unreachable_endpoint_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/score"
    with pytest.raises(AlignkitError, match="did not answer after 2 tries"):
        HTTPReward(url, timeout=2, retries=1, backoff=0.0)(["p"], ["r"])


def test_http_endpoint_round_trip_and_http_errors():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = 500 if body["responses"][0] == "boom" else 200
            answer = {"rewards": [len(r) + len(c) for r, c in zip(body["responses"], body["tag"])]}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(answer if status == 200 else {"error": "bad"}).encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/score"
        assert HTTPReward(url)(["p", "q"], ["abc", "de"], {"tag": ["x", "yy"]}) == [4.0, 4.0]
        with pytest.raises(AlignkitError, match="HTTP 500"):
            HTTPReward(url)(["p"], ["boom"], {"tag": ["x"]})
    finally:
        server.shutdown()


# ---------------------------------------------------------------- experience details

def test_missing_eos_penalty_and_masking(tiny_path, tokenizer):
    from alignkit.config import PPOConfig
    from alignkit.models.load import load_causal_lm
    from alignkit.rl.experience import make_experience

    model = load_causal_lm(tiny_path)  # random: never emits EOS in 4 tokens
    zero = Rewards([("zero", FunctionReward(lambda p, r, **c: [0.0] * len(r)), 1.0)])
    ids, _, _ = encode_prompts(tokenizer, ["a", "b"], 64)
    rows = [{"prompt": "a"}, {"prompt": "b"}]
    base = dict(model=tiny_path, reward_function="x:y", advantage="reinforce", max_new_tokens=4, kl_in="loss",
                whiten_advantages=False, reward_normalize=False, ppo_epochs=2, mixed_precision="no", lora_r=8)
    rollout, metrics = make_experience(model, tokenizer, ids, rows, PPOConfig(**base, missing_eos_penalty=1.0), zero, 0.0,
                                       reference_model=model)
    assert metrics["response/eos_rate"] == 0.0
    mask = rollout.response_mask.bool()
    assert torch.allclose(rollout.extras["advantages"][mask], torch.full((int(mask.sum()),), -1.0))
    assert "kl/ref" in metrics and metrics["kl/ref"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    rollout, metrics = make_experience(model, tokenizer, ids, rows, PPOConfig(**base, mask_truncated_completions=True), zero, 0.0,
                                       reference_model=model)
    assert metrics["response/masked"] == 2 and rollout.response_mask.sum() == 0


# ---------------------------------------------------------------- learning

def _run(stage, tmp_path, write_jsonl, tiny_path, **overrides):
    import alignkit.train

    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(32)], "prompts.jsonl")
    config = dict(model=tiny_path, data=prompts, reward_function=f"{__name__}:capitalized_words", output_dir=str(tmp_path / stage),
                  mixed_precision="no", max_new_tokens=8, learning_rate=3e-2, report_to=["jsonl"], batch_size=32, seed=0,
                  chat_template="always", **overrides)
    summary = getattr(alignkit.train, stage)(config)
    metrics = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics


def _assert_learned(summary, metrics):
    rewards = [m["reward"] for m in metrics if "reward" in m]
    windows = [sum(rewards[i:i + 4]) / 4 for i in range(len(rewards) - 3)]  # 4-step means: one step's mean is noisy
    assert max(windows) > windows[0] + 0.15 and windows[-1] > windows[0], rewards
    for key in ("reward", "reward/normalized", "kl/ref", "policy/approx_kl", "policy/clipfrac", "policy/entropy",
                "response/length", "response/eos_rate", "throughput/generation_tokens_per_s", "throughput/train_tokens_per_s"):
        assert key in metrics[-1], key
    assert (Path(summary["model"]) / "config.json").is_file()


def test_grpo_raises_a_function_reward(tmp_path, write_jsonl, tiny_path):
    summary, metrics = _run("grpo", tmp_path, write_jsonl, tiny_path, max_steps=24, prompts_per_step=8, group_size=8)
    _assert_learned(summary, metrics)
    assert metrics[-1]["kl/ref"] > 0


def test_ppo_raises_a_function_reward(tmp_path, write_jsonl, tiny_path):
    summary, metrics = _run("ppo", tmp_path, write_jsonl, tiny_path, max_steps=15, prompts_per_step=32, ppo_epochs=4, num_minibatches=2)
    _assert_learned(summary, metrics)
    assert "value/explained_var" in metrics[-1] and "value/loss" in metrics[-1]
    assert (tmp_path / "ppo" / "value_model.safetensors").is_file()


def test_frozen_bf16_weights_give_identical_logprobs_under_autocast(tiny_path):
    from alignkit.config import PPOConfig
    from alignkit.models.load import load_policy
    from alignkit.rl.frozen_bf16 import cast_frozen_linears, restore_frozen_linears
    from alignkit.rl.scoring import batch_logprobs

    policy, _ = load_policy(PPOConfig(model=tiny_path, lora_r=8, lora_dropout=0.0, reward_function="x:y"))
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # make the adapters matter
    batch = select(pack_rollout([[5, 6, 7, 8], [9]], [[10, 11, 2], [12, 13]], [True, False], pad_id=2).tensors(), [0, 1])
    before_weights = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = batch_logprobs(policy, batch)[0]
        originals = cast_frozen_linears(policy)
        after = batch_logprobs(policy, batch)[0]
    assert len(originals) > 0 and torch.equal(before, after)
    restore_frozen_linears(originals)
    assert all(torch.equal(p, before_weights[n]) and p.dtype == torch.float32 for n, p in policy.named_parameters())


def test_separate_critic_learns_and_target_kl_stops_early(tiny_path, tokenizer):
    """A critic initialised from the policy fits the returns of a fixed rollout; a tiny target_kl stops after one step."""
    from accelerate import Accelerator

    from alignkit.config import PPOConfig
    from alignkit.models.load import load_causal_lm
    from alignkit.rl.experience import make_experience
    from alignkit.train.loop import NanGuard
    from alignkit.train.ppo_update import policy_update
    from alignkit.train.run import Run
    from alignkit.rl.value_model import Critic, build_value_model
    from alignkit.train.loop import build_optimizer, build_scheduler

    config = PPOConfig(model=tiny_path, reward_function="x:y", value_model="policy", max_new_tokens=6, mixed_precision="no",
                       learning_rate=1e-2, vf_coef=1.0, vf_clip=0.0, ppo_epochs=1, batch_size=8, reward_normalize=False)
    policy = load_causal_lm(tiny_path)
    critic = build_value_model("policy", config, policy)
    assert isinstance(critic, Critic)
    length = Rewards([("len", FunctionReward(lambda p, r, **c: [len(x) / 20 for x in r]), 1.0)])
    ids, _, _ = encode_prompts(tokenizer, ["a", "b", "c", "d"], 64)
    rows = [{"prompt": p} for p in "abcd"]
    torch.manual_seed(0)
    rollout, _ = make_experience(policy, tokenizer, ids, rows, config, length, 0.05, reference_model=load_causal_lm(tiny_path), value_model=critic)
    params = torch.nn.ModuleDict({"policy": policy, "value": critic})
    optimizer = build_optimizer(params, config)
    scheduler = build_scheduler(optimizer, config, 100)
    run = Run(config, "ppo", Accelerator(cpu=True), 0.0, Path("."), NanGuard(5))
    losses = [policy_update(run, policy, critic, optimizer, scheduler, rollout, config, 0.05)["value/loss"] for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses
    # with V_old = 0 and clipping at 0.2 the fitted critic (V ~ returns) is outside the range: the clipped term wins
    clipped = PPOConfig(**{**config.__dict__, "vf_clip": 0.2})
    rollout.extras["values"] = torch.zeros_like(rollout.extras["values"])
    assert policy_update(run, policy, critic, optimizer, scheduler, rollout, clipped, 0.05)["value/clipfrac"] > 0.9
    stopped = policy_update(run, policy, critic, optimizer, scheduler, rollout,
                            PPOConfig(**{**config.__dict__, "ppo_epochs": 4, "target_kl": 1e-12}), 0.05)
    assert stopped["policy/early_stopped"] == 1 and stopped["policy/optimizer_steps"] == 1


def test_value_head_learns_at_its_own_rate(tiny_path):
    """value_learning_rate gives the value head its own AdamW group: Adam's first step moves a parameter by its lr."""
    from alignkit.config import PPOConfig, load_config
    from alignkit.models.load import load_causal_lm
    from alignkit.rl.value_model import ValueHead
    from alignkit.train.loop import build_optimizer

    config = PPOConfig(model=tiny_path, reward_function="x:y", learning_rate=1e-4, value_learning_rate=1e-2, weight_decay=0.0)
    policy = load_causal_lm(tiny_path)
    head = ValueHead(policy.config.hidden_size)
    trainable = torch.nn.ModuleDict({"policy": policy, "value": head})
    optimizer = build_optimizer(trainable, config, {"value": config.value_learning_rate})
    before = {name: p.detach().clone() for name, p in trainable.named_parameters()}
    hidden = policy(torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states[-1][0]
    (head(hidden).sum() + hidden.sum()).backward()
    optimizer.step()
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in trainable.named_parameters()}
    assert moved["value.linear.bias"] == pytest.approx(1e-2, rel=1e-4)
    assert max(v for k, v in moved.items() if k.startswith("policy.")) == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(AlignkitError, match="value_learning_rate must be 0 .use learning_rate. or positive, got -0.001"):
        load_config(PPOConfig, None, ["--model", tiny_path, "--reward_function", "x:y", "--value_learning_rate", "-1e-3"])
