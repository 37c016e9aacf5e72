"""TRL's dataset semantics: the chat_template switch (auto / always / never), raw standard rows tokenized as TRL
does, implicit prompts split as TRL's `extract_prompt`, a source's own test split as the held-out rows, and
stepwise-supervision rows recognised and refused. Token ids below are tiny-llama's (the SmolLM2 tokenizer),
checked by hand against its vocabulary."""

from __future__ import annotations

import json
import shutil

import pytest

from alignkit.config import SFTConfig, config_from_dict
from alignkit.data.formats import DataFormat, detect_format, load_dataset, load_with_holdout, split_implicit_prompt, validate_rows
from alignkit.data.load import load_rows
from alignkit.data.tokenize import chat_template_mode, encode_completions, encode_prompt, set_chat_template, tokenize_sft
from alignkit.errors import AlignkitError
from alignkit.models.load import load_tokenizer

MSG = lambda role, text: {"role": role, "content": text}  # noqa: E731
THE_SKY_IS, BLUE, GREEN, EOS, BOS = [504, 6376, 314], [4461, 30], [2654, 30], 2, 1  # "The| sky| is", " blue|.", " green|.", <|im_end|>, <|im_start|>
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture
def bos_tokenizer(tiny_path):
    """tiny-llama's tokenizer made to add a BOS (<|im_start|>) to every text it encodes, as Llama's do."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_tokenizer(tiny_path)
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A $B",
                                                             special_tokens=[("<|im_start|>", BOS)])
    return tokenizer


# ---------------------------------------------------------------- tokenization pinned by hand

def test_raw_standard_row_is_prompt_then_completion_then_eos(tokenizer):
    assert chat_template_mode(tokenizer) == "auto"
    prompt_ids, (chosen, rejected) = encode_completions(tokenizer, "The sky is", [" blue.", " green."])
    assert (prompt_ids, chosen, rejected) == (THE_SKY_IS, BLUE + [EOS], GREEN + [EOS])
    assert encode_prompt(tokenizer, "The sky is") == THE_SKY_IS  # what generation continues: no template
    # a completion that already ends in the EOS string gets no second one (TRL's add_eos)
    assert encode_completions(tokenizer, "The sky is", [" blue.<|im_end|>"])[1] == [BLUE + [EOS]]


def test_raw_sft_row_learns_completion_and_eos(tokenizer):
    rows = [{"prompt": "The sky is", "completion": " blue."}, {"text": "The sky is blue."}]
    [example], _ = tokenize_sft(rows[:1], DataFormat("prompt_completion", False), tokenizer, max_length=64)
    assert example == {"input_ids": THE_SKY_IS + BLUE + [EOS], "loss_mask": [0, 0, 0, 1, 1, 1]}
    [text], _ = tokenize_sft(rows[1:], DataFormat("language_modeling", False), tokenizer, max_length=64)
    assert text == {"input_ids": THE_SKY_IS + BLUE + [EOS], "loss_mask": [0, 1, 1, 1, 1, 1]}


def test_bos_is_added_once(bos_tokenizer):
    prompt_ids, (chosen,) = encode_completions(bos_tokenizer, "The sky is", [" blue."])
    assert (prompt_ids, chosen) == ([BOS] + THE_SKY_IS, BLUE + [EOS])  # the raw prompt has the tokenizer's BOS...
    [example], _ = tokenize_sft([{"prompt": "The sky is", "completion": " blue."}], DataFormat("prompt_completion", False),
                                bos_tokenizer, max_length=64)
    assert example["input_ids"] == [BOS] + THE_SKY_IS + BLUE + [EOS]
    templated, _ = encode_completions(bos_tokenizer, [MSG("user", "Hi")], [[MSG("assistant", "Yo")]])
    assert templated.count(BOS) == 3 and bos_tokenizer.decode(templated[:2]) == "<|im_start|>system"  # ...the template writes its own


def test_conversational_row_goes_through_the_template(tokenizer):
    prompt_ids, (completion,) = encode_completions(tokenizer, [MSG("user", "Hi")], [[MSG("assistant", "Hello!")]])
    assert tokenizer.decode(prompt_ids) == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(completion) == "Hello!<|im_end|>"  # ends at EOS: the template's trailing newline is not learned
    rows = [{"prompt": [MSG("user", "Hi")], "completion": [MSG("assistant", "Hello!")]}]
    [example], _ = tokenize_sft(rows, detect_format(rows), tokenizer, max_length=128)
    assert tokenizer.decode(example["input_ids"]) == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    learned = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    assert tokenizer.decode(learned) == "Hello!<|im_end|>"


def test_always_wraps_standard_rows_and_never_refuses_conversational_ones(tokenizer):
    prompt_ids, (completion,) = encode_completions(tokenizer, "Hi", ["Hello!"], chat_template="always")
    assert tokenizer.decode(prompt_ids) == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(completion) == "Hello!<|im_end|>"
    assert encode_prompt(tokenizer, "Hi", "never") == tokenizer("Hi")["input_ids"]
    with pytest.raises(AlignkitError, match="chat_template is never.*conversational.*chat_template: auto"):
        encode_prompt(tokenizer, [MSG("user", "Hi")], "never")


def test_a_tokenizer_without_template_says_what_to_set(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    tokenizer.chat_template = None
    assert encode_prompt(tokenizer, "Hi") == tokenizer("Hi")["input_ids"]  # auto: standard rows need no template
    with pytest.raises(AlignkitError, match="conversational.*has no chat template; set chat_template_path"):
        encode_prompt(tokenizer, [MSG("user", "Hi")])
    with pytest.raises(AlignkitError, match="chat_template is always.*no chat template"):
        encode_prompt(tokenizer, "Hi", "always")


# ---------------------------------------------------------------- the setting: carried by the tokenizer, saved with it

def test_mode_and_template_file_travel_with_the_tokenizer(tiny_path, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    tokenizer = load_tokenizer(tiny_path, chat_template="always", chat_template_path=str(template))
    assert tokenizer.decode(encode_prompt(tokenizer, "Hi")) == "[user] Hi<|im_end|>\n[assistant] "
    tokenizer.save_pretrained(tmp_path / "saved")
    shutil.copy(f"{tiny_path}/config.json", tmp_path / "saved")  # a model folder, as save_model writes it
    again = load_tokenizer(str(tmp_path / "saved"))  # a trained model renders its prompts as it was trained
    assert chat_template_mode(again) == "always" and again.chat_template == template.read_text()
    assert chat_template_mode(load_tokenizer(str(tmp_path / "saved"), chat_template="auto")) == "auto"  # a stage's own setting wins
    with pytest.raises(AlignkitError, match="chat_template must be one of auto, always, never"):
        set_chat_template(again, "sometimes")


def test_config_checks_the_setting_before_any_model_loads(tmp_path):
    assert config_from_dict(SFTConfig, {"data": "x.jsonl"}).chat_template == "auto"
    with pytest.raises(AlignkitError, match="chat_template must be one of auto, always, never; got 'yes'"):
        config_from_dict(SFTConfig, {"chat_template": "yes"})
    with pytest.raises(AlignkitError, match="chat_template_path: .*missing.jinja does not exist"):
        config_from_dict(SFTConfig, {"chat_template_path": str(tmp_path / "missing.jinja")})
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n")
    with pytest.raises(AlignkitError, match="broken.jinja line 2: .*fix the Jinja template"):
        config_from_dict(SFTConfig, {"chat_template_path": str(broken)})


# ---------------------------------------------------------------- implicit prompts: TRL's extract_prompt

@pytest.mark.parametrize("chosen, rejected, expected", [
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),  # the space goes with the completions
    ("Q: capital? A: Paris", "Q: capital? A: Parma", ("Q: capital? A: Par", "is", "ma")),  # a split inside a word stays there
    ("abc", "abcd", ("ab", "c", "cd")),  # one a prefix of the other: its last character stays a completion
    ("Yes.", "No.", ("", "Yes.", "No.")),
])
def test_implicit_prompt_is_trls_extract_prompt(chosen, rejected, expected):
    assert split_implicit_prompt(chosen, rejected) == expected


def test_implicit_conversational_prompt_is_the_shared_messages():
    chosen = [MSG("user", "2+2?"), MSG("assistant", "4")]
    rows = [{"chosen": chosen, "rejected": [MSG("user", "2+2?"), MSG("assistant", "5")]}]
    row = validate_rows(rows, detect_format(rows))[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ([MSG("user", "2+2?")], [MSG("assistant", "4")], [MSG("assistant", "5")])
    assert split_implicit_prompt(chosen, list(chosen)) == ([MSG("user", "2+2?")], [MSG("assistant", "4")], [MSG("assistant", "4")])


# ---------------------------------------------------------------- held-out rows from the source's own test split

def _rows(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} {i}", "completion": f"answer {i}"} for i in range(n)]


def test_a_datasetdict_test_split_is_the_held_out_set(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(_rows(6, "train")), "test": Dataset.from_list(_rows(2, "test"))}).save_to_disk(tmp_path / "dd")
    rows, fmt, held_out, held_out_fmt = load_with_holdout(str(tmp_path / "dd"), ("prompt_completion",), "SFT", "train", 0.5, 0)
    assert [r["prompt"] for r in rows] == [f"train {i}" for i in range(6)]  # all of train, in order
    assert [r["prompt"] for r in held_out] == ["test 0", "test 1"] and held_out_fmt == fmt
    # no test split: a seeded share of train; eval_data: that file
    DatasetDict({"train": Dataset.from_list(_rows(6, "train"))}).save_to_disk(tmp_path / "only_train")
    rows, _, held_out, _ = load_with_holdout(str(tmp_path / "only_train"), ("prompt_completion",), "SFT", "train", 0.5, 0)
    assert len(rows) == 3 and len(held_out) == 3 and all(r["prompt"].startswith("train") for r in held_out)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _rows(1, "other")))
    _, _, held_out, _ = load_with_holdout(str(tmp_path / "dd"), ("prompt_completion",), "SFT", "train", 0.5, 0, eval_data=str(other))
    assert [r["prompt"] for r in held_out] == ["other 0"]


def test_a_folder_with_split_files_holds_out_its_test_file(tmp_path):
    for name, n in (("train", 4), ("test", 2)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, name)))
    rows, _, held_out, _ = load_with_holdout(str(tmp_path), ("prompt_completion",), "SFT", "train", 0.25, 0)
    assert (len(rows), [r["prompt"] for r in held_out]) == (4, ["test 0", "test 1"])
    single = tmp_path / "train.jsonl"  # a single file has no split of its own
    rows, _, held_out, _ = load_with_holdout(str(single), ("prompt_completion",), "SFT", "train", 0.25, 0)
    assert (len(rows), len(held_out)) == (3, 1)


# ---------------------------------------------------------------- stepwise supervision

def test_stepwise_supervision_rows_are_recognised_and_refused(write_jsonl):
    path = write_jsonl([{"prompt": "2+2*3?", "completions": ["2*3 = 6", "2+6 = 8"], "labels": [True, True]}])
    assert str(detect_format(load_rows(path))) == "standard stepwise-supervision"
    for kinds, stage in ((("prompt_only", "prompt_completion", "preference", "unpaired_preference"), "GRPO"),
                         (("language_modeling", "prompt_completion"), "SFT")):
        with pytest.raises(AlignkitError, match=r"stepwise-supervision rows .* which no alignkit stage trains on; " + stage) as error:
            load_dataset(path, kinds, stage)
        assert str(error.value).count(". ") == 0  # one sentence
