"""Chat-template loss masks, checked token by token, and truncation that is always counted."""

from __future__ import annotations

from alignkit.data.formats import DataFormat, detect_format
from alignkit.data.tokenize import encode_completions, fit_prompt_completions, tokenize_sft

MSG = lambda role, text: {"role": role, "content": text}  # noqa: E731


def _masked_text(tokenizer, example):
    """The learned tokens, decoded turn by turn (runs of mask 1)."""
    runs, current = [], []
    for token, keep in zip(example["input_ids"], example["loss_mask"]):
        if keep:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_multi_turn_mask_covers_exactly_the_assistant_turns(tokenizer):
    rows = [{"messages": [MSG("system", "Be brief."), MSG("user", "Hi"), MSG("assistant", "Hello!"),
                          MSG("user", "What is 2+2?"), MSG("assistant", "4")]}]
    [example], report = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=512)
    assert report.kept == 1
    assert _masked_text(tokenizer, example) == ["Hello!<|im_end|>", "4<|im_end|>"]
    # token by token: everything else, including the role headers and the newline after EOS, is masked out
    tokens = [tokenizer.decode([t]) for t in example["input_ids"]]
    learned = [t for t, m in zip(tokens, example["loss_mask"]) if m]
    assert learned == ["Hello", "!", "<|im_end|>", "4", "<|im_end|>"]
    assert tokens[-1] == "\n" and example["loss_mask"][-1] == 0
    assert tokenizer.eos_token == "<|im_end|>"


def test_prompt_completion_learns_only_the_completion_and_eos(tokenizer):
    rows = [{"prompt": "What is the capital of France?", "completion": "Paris."}]
    [example], _ = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=512, chat_template="always")
    assert _masked_text(tokenizer, example) == ["Paris.<|im_end|>"]
    prompt_len = example["loss_mask"].index(1)
    assert tokenizer.decode(example["input_ids"][:prompt_len]).endswith("<|im_start|>assistant\n")


def test_plain_text_rows_learn_everything_plus_eos(tokenizer):
    rows = [{"text": "Once upon a time"}]
    [example], _ = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=512)
    assert example["loss_mask"][0] == 0 and all(example["loss_mask"][1:])  # token 0 has nothing to be predicted from
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_truncation_keeps_completion_and_is_counted(tokenizer):
    long_prompt = "word " * 300
    rows = [{"prompt": long_prompt + "END", "completion": "Fine."}, {"prompt": "short", "completion": "ok"}]
    fmt = DataFormat("prompt_completion", False)
    examples, report = tokenize_sft(rows, fmt, tokenizer, max_length=64, truncation_side="left", chat_template="always")
    assert (report.rows, report.kept, report.truncated, report.dropped) == (2, 2, 1, 0)
    assert len(examples[0]["input_ids"]) == 64
    assert _masked_text(tokenizer, examples[0]) == ["Fine.<|im_end|>"]
    assert "END" in tokenizer.decode(examples[0]["input_ids"])  # left side cut: the prompt's end survives
    examples, report = tokenize_sft(rows, fmt, tokenizer, max_length=64, truncation_side="right", chat_template="always")
    assert "END" not in tokenizer.decode(examples[0]["input_ids"]) and "<|im_start|>system" in tokenizer.decode(examples[0]["input_ids"])
    examples, report = tokenize_sft(rows, fmt, tokenizer, max_length=64, truncation_mode="drop", chat_template="always")
    assert (report.kept, report.dropped) == (1, 1)
    assert "longer than max_length=64: rows 1" in report.summary()


def test_rows_with_nothing_to_learn_are_reported(tokenizer):
    rows = [{"messages": [MSG("user", "Hi")]}, {"messages": [MSG("user", "Hi"), MSG("assistant", "Yo")]}]
    examples, report = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=512)
    assert (report.kept, report.dropped) == (1, 1) and "rows 1" in report.summary()


def test_encode_completions_matches_generation_prompt(tokenizer):
    prompt_ids, (chosen, rejected) = encode_completions(tokenizer, "Hi", ["Hello there", "Go away"], chat_template="always")
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(chosen) == "Hello there<|im_end|>" and tokenizer.decode(rejected) == "Go away<|im_end|>"
    short, (c, r), truncated = fit_prompt_completions(list(range(100)), [chosen, rejected], 50, "left")
    assert truncated and len(short) + max(len(c), len(r)) <= 50 and short[-1] == 99
