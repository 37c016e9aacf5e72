"""Reward functions written for TRL run unchanged: told apart from alignkit's `fn(prompts, responses, **columns)` by their
signature and called as TRL's GRPOTrainer calls them, `fn(prompts=, completions=, completion_ids=, **columns)`."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.errors import AlignkitError
from alignkit.rl.rewards import FunctionReward, Rewards, build_rewards, function_style

MSG = lambda role, text: {"role": role, "content": text}  # noqa: E731
CALLS: list[dict] = []


def reward_len(completions, **kwargs):
    """TRL's documentation example: completions near 20 characters score best."""
    CALLS.append({"completions": completions, **kwargs})
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [-abs(20 - len(t)) for t in texts]


def test_the_signature_says_how_a_function_is_called():
    assert function_style(reward_len) == "trl"
    assert function_style(lambda **kwargs: []) == "trl"
    assert function_style(lambda prompts, completions, completion_ids, **kwargs: []) == "trl"
    assert function_style(lambda prompts, responses, **columns: []) == "alignkit"
    assert function_style(lambda p, r, **c: []) == "alignkit"
    assert function_style(math.fsum) == "alignkit"


def test_trl_function_gets_trls_keywords_and_forms():
    seen = {}

    def reward(prompts, completions, completion_ids, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, answer=answer, rest=kwargs)
        return [float(len(ids)) for ids in completion_ids]

    standard = Rewards([("f", FunctionReward(reward), 1.0)])(["p", "q"], ["4", "five"], {"answer": ["4", "6"]},
                                                                completion_ids=[[10, 2], [11, 12, 2]])
    assert seen == {"prompts": ["p", "q"], "completions": ["4", "five"], "completion_ids": [[10, 2], [11, 12, 2]],
                    "answer": ["4", "6"], "rest": {}}
    assert standard.raw.tolist() == [2.0, 3.0]
    conversation = [MSG("system", "Be brief."), MSG("user", "2+2?")]
    FunctionReward(reward)([conversation], ["4"], {"answer": ["4"]}, completion_ids=[[10, 2]])
    assert seen["prompts"] == [conversation] and seen["completions"] == [[MSG("assistant", "4")]]


def test_a_function_without_kwargs_gets_only_what_it_names():
    def exact(prompts, completions):  # TRL itself would pass completion_ids and more: this one still works here
        return [float(len(c)) for c in completions]

    assert FunctionReward(exact)(["p", "q"], ["ab", "abc"], {"answer": ["x", "y"]}, completion_ids=[[1], [2]]) == [2.0, 3.0]


def test_completion_ids_are_retokenized_when_the_caller_has_none(tokenizer):
    seen = {}

    def reward(completions, completion_ids, **kwargs):
        seen["ids"] = completion_ids
        return [0.0] * len(completions)

    build_rewards([{"type": "function", "function": f"{__name__}:reward_len"}], tokenizer=tokenizer)(["p"], ["The sky is blue."])
    FunctionReward(reward, tokenizer=tokenizer)(["The sky is"], [" blue."])
    assert seen["ids"] == [[4461, 30]]  # " blue" "." (tiny-llama's ids, no special tokens added)
    FunctionReward(reward)(["The sky is"], [" blue."])
    assert seen["ids"] is None  # neither ids nor a tokenizer: documented as None


def test_async_and_failing_trl_functions():
    async def later(completions, **kwargs):
        return [1.0 for _ in completions]

    assert FunctionReward(later)(["p"], ["r"]) == [1.0]

    def broken(completions, **kwargs):
        raise KeyError("score")

    with pytest.raises(AlignkitError, match=r"raised KeyError.*completions=.*as TRL calls it, with 1 responses"):
        FunctionReward(broken)(["p"], ["r"])


def _grpo(tmp_path, write_jsonl, tiny_path, rows):
    import alignkit.train

    CALLS.clear()
    data = write_jsonl(rows, "prompts.jsonl")
    alignkit.train.grpo(dict(model=tiny_path, data=data, reward_function=f"{__name__}:reward_len", output_dir=str(tmp_path / "run"),
                             mixed_precision="no", max_new_tokens=6, learning_rate=1e-2, report_to=["jsonl"], batch_size=8,
                             max_steps=2, prompts_per_step=2, group_size=4, seed=0))
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_grpo_trains_with_a_trl_reward_function(tmp_path, write_jsonl, tiny_path, tokenizer):
    metrics = _grpo(tmp_path, write_jsonl, tiny_path, [{"prompt": f"Write about topic {i}.", "topic": i} for i in range(8)])
    steps = [m for m in metrics if "reward" in m]
    assert len(CALLS) == len(steps) == 2
    for call, step in zip(CALLS, steps):
        assert len(call["prompts"]) == len(call["completions"]) == len(call["completion_ids"]) == len(call["topic"]) == 8
        assert all(isinstance(p, str) and p.startswith("Write about topic") for p in call["prompts"])
        assert all(isinstance(c, str) for c in call["completions"])
        assert all(f"topic {t}." in p for p, t in zip(call["prompts"], call["topic"]))  # the row's columns, per response
        # the sampled ids themselves: 1..6 tokens, decoding to the completion
        assert all(1 <= len(ids) <= 6 and all(isinstance(i, int) for i in ids) for ids in call["completion_ids"])
        assert [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in call["completion_ids"]] == call["completions"]
        assert step["reward"] == pytest.approx(sum(-abs(20 - len(c)) for c in call["completions"]) / 8)


def test_conversational_prompts_reach_a_trl_function_as_messages(tmp_path, write_jsonl, tiny_path):
    rows = [{"prompt": [MSG("user", f"Write about topic {i}.")]} for i in range(8)]
    _grpo(tmp_path, write_jsonl, tiny_path, rows)
    call = CALLS[0]
    assert all(p in [r["prompt"] for r in rows] for p in call["prompts"])
    assert all(isinstance(c, list) and len(c) == 1 and c[0]["role"] == "assistant" and isinstance(c[0]["content"], str)
               for c in call["completions"])
