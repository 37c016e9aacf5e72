"""Bad data and bad model files, through the command line: one sentence on stderr naming the file, row or
column and what to do, exit code 2, never a traceback and never a run that trains on nothing.

Each case builds its inputs in a temporary folder, runs `alignkit.cli.main`, and checks the error line.
Cases that fail at data loading use the tiny model, so a model load on the way costs little. Row numbers
are 1-based data rows in every format (a CSV's header is not a row; its row N is line N + 1, which
messages add).
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from alignkit.cli import main

PAIR = {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."}
SFT_ROW = {"prompt": "Name a fruit.", "completion": "An apple."}
KTO_ROWS = [{"prompt": "Name a fruit.", "completion": "An apple.", "label": True},
            {"prompt": "Name a colour.", "completion": "A chair.", "label": False}]
TINY = "tiny-llama"


# ---------------------------------------------------------------- inputs


@dataclass
class Files:
    """Writers into the test's folder; every writer returns the path as a string."""

    root: Path
    models: dict

    def bytes(self, data: bytes, name: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def text(self, text: str, name: str) -> str:
        return self.bytes(text.encode("utf-8"), name)

    def jsonl(self, rows: list, name: str = "data.jsonl") -> str:
        return self.text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), name)

    def json(self, value, name: str = "data.json") -> str:
        return self.text(json.dumps(value), name)

    @property
    def out(self) -> str:
        return str(self.root / "out")


def sft(data: str, *extra: str) -> list[str]:
    return ["sft", "--model", TINY, "--data", data, "--max_steps", "1", "--report_to", "jsonl", *extra]


def dpo(data: str, *extra: str) -> list[str]:
    return ["dpo", "--model", TINY, "--data", data, "--max_steps", "1", "--report_to", "jsonl", *extra]


def kto(data: str, *extra: str) -> list[str]:
    return ["kto", "--model", TINY, "--data", data, "--max_steps", "1", "--report_to", "jsonl", *extra]


def reward(data: str, *extra: str) -> list[str]:
    return ["reward", "--model", TINY, "--data", data, "--max_steps", "1", "--report_to", "jsonl", *extra]


def grpo(data: str, *extra: str) -> list[str]:
    return ["grpo", "--model", TINY, "--data", data, "--reward_function", "hhh-mini-gold", "--max_steps", "1",
            "--report_to", "jsonl", *extra]


def inspect(data: str) -> list[str]:
    return ["data", "inspect", data, "--no-embeddings"]


def score(f: Files, data: str, model: str = TINY) -> list[str]:
    return ["score", "--reward-model", model, "--data", data, "--out", f.out + ".jsonl"]


def judge(f: Files, data: str, model: str = TINY) -> list[str]:
    return ["judge", data, "--out", f.out + ".jsonl", "--model", model]


LATIN1 = '{"prompt": "Caf\xe9?", "completion": "Oui."}\n'.encode("latin-1")
LATIN1_JSON = b'[{"prompt": "Caf\xe9", "chosen": "a", "rejected": "b"}]'
LATIN1_CSV = b"prompt,chosen,rejected\nx,a,b\ny,\xe9t\xe9,c\n"
SURROGATE_BYTES = b'{"prompt": "a", "chosen": "\xed\xa0\x80", "rejected": "b"}\n'  # UTF-8 encoders refuse to write these
BINARY = bytes(range(256)) * 4
SURROGATE_ROW = '{"prompt": "Hi \\ud83d", "completion": "Hello."}'  # the JSON escape of half an emoji


# ---------------------------------------------------------------- the cases: (id, argv from Files, substrings of the error)


CASES = [
    # text that is not UTF-8, binary files, lone surrogates
    ("sft-latin1-jsonl", lambda f: sft(f.bytes(LATIN1, "latin.jsonl")), ["latin.jsonl", f"byte {LATIN1.index(0xe9)} (line 1)", "UTF-8"]),
    ("dpo-latin1-json", lambda f: dpo(f.bytes(LATIN1_JSON, "p.json")), ["p.json", f"byte {LATIN1_JSON.index(0xe9)}", "UTF-8"]),
    ("reward-latin1-csv", lambda f: reward(f.bytes(LATIN1_CSV, "p.csv")), ["p.csv", f"byte {LATIN1_CSV.index(0xe9)} (line 3)", "UTF-8"]),
    ("kto-latin1-later-line", lambda f: kto(f.bytes(json.dumps(KTO_ROWS[0]).encode() + b"\n" + LATIN1, "u.jsonl")), ["u.jsonl", "line 2", "UTF-8"]),
    ("sft-binary-jsonl", lambda f: sft(f.bytes(BINARY, "bin.jsonl")), ["bin.jsonl", "is not text", "NUL byte"]),
    ("inspect-binary-jsonl", lambda f: inspect(f.bytes(BINARY, "bin.jsonl")), ["bin.jsonl", "is not text"]),
    ("score-binary-csv", lambda f: score(f, f.bytes(b"prompt,completion\n" + BINARY, "bin.csv")), ["bin.csv", "is not text"]),
    ("inspect-gzip-jsonl", lambda f: inspect(f.bytes(gzip.compress(b'{"prompt": "x"}\n'), "z.jsonl")), ["z.jsonl", "gzip"]),
    ("grpo-utf16-prompts", lambda f: grpo(f.bytes('{"prompt": "Hi"}\n'.encode("utf-16"), "p16.jsonl")), ["p16.jsonl", "UTF-16"]),
    ("dpo-encoded-surrogate-bytes", lambda f: dpo(f.bytes(SURROGATE_BYTES, "s.jsonl")), ["s.jsonl", f"byte {SURROGATE_BYTES.index(0xed)}", "UTF-8"]),
    ("sft-lone-surrogate", lambda f: sft(f.jsonl([SFT_ROW, SURROGATE_ROW])), ["data.jsonl row 2", "column 'prompt'", "lone surrogate"]),
    ("kto-lone-surrogate-json", lambda f: kto(f.text(f"[{json.dumps(KTO_ROWS[0])}, {SURROGATE_ROW}]", "k.json")), ["k.json row 2", "column 'prompt'", "surrogate"]),
    ("inspect-lone-surrogate", lambda f: inspect(f.jsonl([SURROGATE_ROW])), ["data.jsonl row 1", "lone surrogate"]),
    ("judge-lone-surrogate", lambda f: judge(f, f.jsonl([PAIR, '{"prompt": "x", "chosen": "\\udc00", "rejected": "b"}'])), ["row 2", "column 'chosen'", "surrogate"]),
    # null values: named as null, not as missing
    ("dpo-null-chosen", lambda f: dpo(f.jsonl([{**PAIR, "chosen": None}])), ["data.jsonl: row 1", "column 'chosen' is null"]),
    ("reward-null-rejected-every-row", lambda f: reward(f.jsonl([{**PAIR, "rejected": None}] * 3)), ["no usable rows", "row 1", "column 'rejected' is null", "all 3"]),
    ("sft-null-completion", lambda f: sft(f.jsonl([{**SFT_ROW, "completion": None}] * 2)), ["row 1", "column 'completion' is null"]),
    ("kto-null-label", lambda f: kto(f.jsonl([{**KTO_ROWS[0], "label": None}])), ["row 1", "column 'label' is null"]),
    ("grpo-null-prompt", lambda f: grpo(f.jsonl([{"prompt": None}, {"prompt": None}])), ["row 1", "column 'prompt' is null"]),
    ("score-null-completion", lambda f: score(f, f.jsonl([SFT_ROW, {**SFT_ROW, "completion": None}])), ["data.jsonl row 2", "column 'completion' is null"]),
    ("judge-null-chosen", lambda f: judge(f, f.jsonl([{**PAIR, "chosen": None}])), ["row 1", "column 'chosen' is null"]),
    ("sft-null-message-content", lambda f: sft(f.jsonl([{"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}])),
     ["row 1", "message 1 content is null"]),
    # wrong types
    ("sft-number-completion", lambda f: sft(f.jsonl([{**SFT_ROW, "completion": 3}])), ["data.jsonl row 1", "column 'completion' must be a string, got int"]),
    ("dpo-list-in-standard-rows", lambda f: dpo(f.jsonl([PAIR, {**PAIR, "chosen": ["a"]}])), ["row 2", "column 'chosen' must be a string, got list"]),
    ("kto-label-maybe", lambda f: kto(f.jsonl([KTO_ROWS[0], {**KTO_ROWS[1], "label": "maybe"}])), ["row 2", "column 'label' must be true or false"]),
    ("reward-margin-text", lambda f: reward(f.jsonl([{**PAIR, "margin": "big"}])), ["row 1", "column 'margin' must be a number"]),
    ("sft-row-not-object", lambda f: sft(f.jsonl([SFT_ROW, "[1, 2]"])), ["data.jsonl row 2", "expected a JSON object, got list"]),
    ("sft-robot-role", lambda f: sft(f.jsonl([{"messages": [{"role": "robot", "content": "x"}]}])), ["row 1", "role 'robot'"]),
    ("score-dict-prompt", lambda f: score(f, f.jsonl([{"prompt": {"a": 1}, "response": "x"}])), ["row 1", "column 'prompt' must be a string"]),
    ("grpo-broken-json-line", lambda f: grpo(f.jsonl([{"prompt": "a"}, '{"prompt": "b'])), ["data.jsonl line 2", "not valid JSON"]),
    # empty files
    ("sft-empty-file", lambda f: sft(f.text("", "e.jsonl")), ["e.jsonl is empty"]),
    ("dpo-blank-lines", lambda f: dpo(f.text("\n\n  \n", "e.jsonl")), ["e.jsonl is empty"]),
    ("inspect-empty-csv", lambda f: inspect(f.text("", "e.csv")), ["e.csv is empty"]),
    ("score-empty-json-list", lambda f: score(f, f.text("[]", "e.json")), ["e.json is empty"]),
    ("grpo-header-only-csv", lambda f: grpo(f.text("prompt\n", "h.csv")), ["h.csv is empty"]),
    ("judge-empty", lambda f: judge(f, f.text("", "e.jsonl")), ["e.jsonl is empty"]),
    # rows with nothing to learn: refused when no row is left
    ("sft-empty-completions", lambda f: sft(f.jsonl([{**SFT_ROW, "completion": ""}] * 3)), ["no usable rows", "data.jsonl", "empty completion"]),
    ("sft-blank-completions", lambda f: sft(f.jsonl([{**SFT_ROW, "completion": "  \n"}] * 2)), ["no usable rows", "empty completion"]),
    ("sft-empty-assistant-turns", lambda f: sft(f.jsonl([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}] * 2)),
     ["no usable rows", "empty assistant turns"]),
    ("sft-empty-text", lambda f: sft(f.jsonl([{"text": ""}] * 2)), ["no usable rows", "empty text"]),
    ("dpo-identical-pairs", lambda f: dpo(f.jsonl([{**PAIR, "rejected": PAIR["chosen"]}] * 4)), ["no usable rows", "data.jsonl", "chosen identical to rejected"]),
    ("dpo-empty-pairs", lambda f: dpo(f.jsonl([{**PAIR, "chosen": "", "rejected": ""}] * 2)), ["no usable rows", "chosen identical to rejected"]),
    ("dpo-empty-chosen", lambda f: dpo(f.jsonl([{**PAIR, "chosen": ""}] * 2)), ["no usable rows", "empty chosen or rejected response"]),
    ("reward-identical-pairs", lambda f: reward(f.jsonl([{**PAIR, "rejected": PAIR["chosen"]}] * 4)), ["no usable rows", "chosen identical to rejected"]),
    ("kto-empty-completions", lambda f: kto(f.jsonl([{**r, "completion": ""} for r in KTO_ROWS] * 2)), ["no usable rows", "empty completion"]),
    ("kto-from-identical-pairs", lambda f: kto(f.jsonl([{**PAIR, "rejected": PAIR["chosen"]}] * 2), "--from_preference", "true"),
     ["no usable rows", "labelled both desirable and undesirable"]),
    # missing columns and the wrong kind of data
    ("sft-unknown-columns", lambda f: sft(f.jsonl([{"question": "a", "answer": "b"}])), ["data.jsonl row 1", "fit no known format"]),
    ("dpo-given-sft-rows", lambda f: dpo(f.jsonl([SFT_ROW])), ["data.jsonl", "DPO needs preference data"]),
    ("reward-missing-rejected", lambda f: reward(f.jsonl([PAIR, {"prompt": "x", "chosen": "a"}])), ["data.jsonl row 2", "missing column 'rejected'"]),
    ("kto-given-sft-rows", lambda f: kto(f.jsonl([SFT_ROW])), ["data.jsonl", "KTO needs unpaired-preference data"]),
    ("grpo-rows-without-prompt", lambda f: grpo(f.jsonl([{"text": "hello"}])), ["data.jsonl", "needs", "prompt"]),
    ("score-text-rows", lambda f: score(f, f.jsonl([{"text": "hello"}])), ["data.jsonl", "scoring needs"]),
    ("judge-missing-response-b", lambda f: judge(f, f.jsonl([{"prompt": "a", "response_a": "b"}])), ["row 1", "response_b"]),
    # CSV: data row N is line N + 1
    ("sft-csv-extra-value", lambda f: sft(f.text("prompt,completion\na,b\nc,d,e\n", "s.csv")), ["s.csv row 2 (line 3)", "3 values", "more than the header's 2"]),
    ("reward-csv-missing-value", lambda f: reward(f.text("prompt,chosen,rejected\na,b,c\nd,e\n", "r.csv")), ["r.csv row 2 (line 3)", "fewer than the header's 3"]),
    ("dpo-csv-multiline-field", lambda f: dpo(f.text('prompt,chosen,rejected\n"a\nb",c,d\ne,f,g,h\n', "m.csv")), ["m.csv row 2 (line 4)"]),
    ("kto-csv-bad-label", lambda f: kto(f.text("prompt,completion,label\na,b,true\nc,d,maybe\n", "k.csv")), ["k.csv row 2 (line 3)", "column 'label'"]),
    ("reward-csv-empty-pairs", lambda f: reward(f.text("prompt,chosen,rejected\na,,\nb,,\n", "e.csv")), ["no usable rows", "e.csv", "chosen identical to rejected"]),
    ("grpo-csv-no-header", lambda f: grpo(f.text(",\na\n", "n.csv")), ["n.csv", "header"]),
    # folders of files
    ("sft-folder-two-formats", lambda f: (f.jsonl([SFT_ROW], "d/a.jsonl"), sft(f.jsonl([PAIR], "d/b.jsonl").rsplit("/", 1)[0]))[1],
     ["a.jsonl holds standard prompt-completion rows", "b.jsonl holds standard preference rows"]),
    ("dpo-folder-four-formats", lambda f: (f.text("prompt,chosen,rejected\na,b,c\n", "d/a.csv"), f.json([{"prompt": "a", "completion": "b"}], "d/b.json"),
                                            f.jsonl(KTO_ROWS, "d/c.jsonl"), f.jsonl([{"prompt": "p"}], "d/d.jsonl"), dpo(f.root / "d"))[-1],
     ["a.csv holds standard preference rows", "b.json holds standard prompt-completion rows"]),
    ("score-folder-conversational-and-standard", lambda f: (f.jsonl([PAIR], "d/a.jsonl"),
                                                            f.jsonl([{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}],
                                                                      "rejected": [{"role": "assistant", "content": "c"}]}], "d/b.jsonl"),
                                                            score(f, str(f.root / "d")))[-1],
     ["a.jsonl holds standard preference rows", "b.jsonl holds conversational preference rows"]),
    ("sft-folder-without-data", lambda f: (f.text("x", "d/readme.txt"), sft(str(f.root / "d")))[1], ["a directory with no dataset"]),
    ("sft-unsupported-suffix", lambda f: sft(f.text("prompt\nx\n", "data.txt")), ["data.txt", "unsupported file type '.txt'"]),
    # paths: typos, folders, files where folders belong
    ("sft-data-typo-no-suffix", lambda f: (f.jsonl([SFT_ROW], "train.jsonl"), sft("trian"))[1], ["data file trian does not exist", "did you mean train.jsonl?"]),
    ("dpo-data-typo-suffix", lambda f: (f.jsonl([PAIR], "pairs.jsonl"), dpo("pairs.jsonn"))[1], ["pairs.jsonn does not exist", "did you mean pairs.jsonl?"]),
    ("kto-data-typo-in-folder", lambda f: (f.jsonl(KTO_ROWS, "data/kto_train.jsonl"), kto("data/kto_trian.jsonl"))[1],
     ["data/kto_trian.jsonl does not exist", "did you mean data/kto_train.jsonl?"]),
    ("grpo-data-folder-typo", lambda f: (f.jsonl([{"prompt": "a"}], "data/prompts.jsonl"), grpo("data/promts"))[1], ["does not exist", "did you mean data/prompts.jsonl?"]),
    ("inspect-missing-folder", lambda f: inspect("nowhere/data.jsonl"), ["data file nowhere/data.jsonl does not exist", "nor does its folder"]),
    ("score-data-typo", lambda f: (f.jsonl([SFT_ROW], "scored.jsonl"), score(f, "socred.jsonl"))[1], ["socred.jsonl does not exist", "did you mean scored.jsonl?"]),
    ("judge-missing-file", lambda f: judge(f, "missing.jsonl"), ["data file missing.jsonl does not exist"]),
    ("sft-config-is-a-folder", lambda f: ["sft", "--config", str(f.root)], ["is a folder", "YAML file"]),
    ("dpo-config-missing", lambda f: ["dpo", "--config", "nope.yaml"], ["config file nope.yaml does not exist"]),
    ("sft-output-dir-is-a-file", lambda f: sft(f.jsonl([SFT_ROW]), "--output_dir", f.text("x", "taken")), ["output_dir", "taken is an existing file"]),
    ("reward-output-dir-under-a-file", lambda f: reward(f.jsonl([PAIR]), "--output_dir", f.text("x", "taken") + "/run"), ["output_dir", "cannot be created", "is a file"]),
    # model folders
    ("sft-truncated-safetensors", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["truncated"]), ["model.safetensors is truncated", "save the model again"]),
    ("reward-truncated-safetensors", lambda f: reward(f.jsonl([PAIR]), "--model", f.models["truncated"]), ["model.safetensors is truncated"]),
    ("score-truncated-safetensors", lambda f: score(f, f.jsonl([SFT_ROW]), f.models["truncated"]), ["model.safetensors is truncated"]),
    ("judge-truncated-safetensors", lambda f: judge(f, f.jsonl([PAIR]), f.models["truncated"]), ["model.safetensors is truncated"]),
    ("dpo-garbage-safetensors-header", lambda f: dpo(f.jsonl([PAIR]), "--model", f.models["garbage_header"]), ["model.safetensors is", "safetensors"]),
    ("sft-invalid-config-json", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["bad_config"]), ["config.json is not valid JSON", "line 1"]),
    ("kto-config-json-list", lambda f: kto(f.jsonl(KTO_ROWS), "--model", f.models["list_config"]), ["config.json must hold a JSON object"]),
    ("sft-pickle-only-model", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["pickled"]), ["pickle-based weights (pytorch_model.bin)", "--allow_unsafe_pickle"]),
    ("sft-adapter-with-pickle-only-base", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["adapter_on_pickle"]),
     ["pickle-based weights (pytorch_model.bin)", "the base model named in", "adapter_config.json"]),
    ("dpo-adapter-with-pickle-only-base", lambda f: dpo(f.jsonl([PAIR]), "--model", f.models["adapter_on_pickle"]), ["the base model named in", "--allow_unsafe_pickle"]),
    ("sft-adapter-without-base", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["adapter_no_base"]), ["adapter_config.json names no base model"]),
    ("sft-adapter-truncated-weights", lambda f: sft(f.jsonl([SFT_ROW]), "--model", f.models["adapter_truncated"]), ["adapter_model.safetensors is truncated"]),
    ("score-broken-ensemble-json", lambda f: score(f, f.jsonl([SFT_ROW]), f.models["bad_ensemble"]), ["ensemble.json is not valid JSON"]),
    # reward-function files
    ("grpo-reward-function-syntax-error", lambda f: grpo(f.jsonl([{"prompt": "a"}]), "--reward_function", f.text("def fn(p, r):\n    return [1.0 for _ in r\n", "bad_reward.py") + ":fn"),
     ["bad_reward.py", "line 2", "fix the file"]),
    ("grpo-reward-function-raises-on-import", lambda f: grpo(f.jsonl([{"prompt": "a"}]), "--reward_function", f.text("x = 1\nundefined_name\n", "raising_reward.py") + ":fn"),
     ["raising_reward.py", "NameError at line 2"]),
    ("grpo-reward-function-missing-file", lambda f: grpo(f.jsonl([{"prompt": "a"}]), "--reward_function", "no_such_file.py:fn"), ["no_such_file.py does not exist"]),
    ("grpo-reward-function-binary-file", lambda f: grpo(f.jsonl([{"prompt": "a"}]), "--reward_function", f.bytes(b"x = '\xff\xfe'\n", "latin_reward.py") + ":fn"),
     ["latin_reward.py", "line 1"]),
]


# ---------------------------------------------------------------- model folders, built once


def _copy_tiny(root: Path, name: str) -> Path:
    from alignkit.models.embedded import tiny_model_path

    folder = root / name
    shutil.copytree(tiny_model_path(), folder, ignore=shutil.ignore_patterns("alignkit-complete"))
    return folder


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Damaged model folders: truncated weights, a garbage header, invalid configs, pickle-only weights and adapters."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("models")
    folders = {}
    _cut_in_half((folders.setdefault("truncated", _copy_tiny(root, "truncated")) / "model.safetensors"))
    garbage = _copy_tiny(root, "garbage_header")
    (garbage / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not a json header!}" + b"\0" * 64)
    folders["garbage_header"] = garbage
    (folders.setdefault("bad_config", _copy_tiny(root, "bad_config")) / "config.json").write_text('{"model_type": "llama",')
    (folders.setdefault("list_config", _copy_tiny(root, "list_config")) / "config.json").write_text("[1, 2]")
    pickled = folders.setdefault("pickled", _copy_tiny(root, "pickled"))
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()

    base = AutoModelForCausalLM.from_pretrained(_copy_tiny(root, "base"))
    adapter = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    adapter.save_pretrained(root / "adapter_on_pickle")
    config = json.loads((root / "adapter_on_pickle" / "adapter_config.json").read_text())
    (root / "adapter_on_pickle" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(pickled)}))
    folders["adapter_on_pickle"] = root / "adapter_on_pickle"
    shutil.copytree(root / "adapter_on_pickle", root / "adapter_no_base")
    (root / "adapter_no_base" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    folders["adapter_no_base"] = root / "adapter_no_base"
    shutil.copytree(root / "adapter_on_pickle", root / "adapter_truncated")
    (root / "adapter_truncated" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": TINY}))
    _cut_in_half(root / "adapter_truncated" / "adapter_model.safetensors")
    folders["adapter_truncated"] = root / "adapter_truncated"
    (root / "bad_ensemble").mkdir()
    (root / "bad_ensemble" / "ensemble.json").write_text('{"members": [')
    folders["bad_ensemble"] = root / "bad_ensemble"
    return {name: str(path) for name, path in folders.items()}


# ---------------------------------------------------------------- the test


def test_there_are_enough_cases():
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("build, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence(build, expected, tmp_path, monkeypatch, capsys, models):
    monkeypatch.chdir(tmp_path)  # relative paths (typos, did-you-mean) are read from here
    argv = [str(a) for a in build(Files(tmp_path, models))]
    if argv[0] in ("sft", "dpo", "kto", "reward", "grpo") and "--output_dir" not in argv and "--config" not in argv:
        argv += ["--output_dir", str(tmp_path / "run")]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"alignkit {argv[0]}: error: ")]
    assert code == 2 and len(errors) == 1, f"exit {code}; stderr:\n{err}"
    assert err.rstrip().endswith(errors[0]), f"the error must be the last thing printed:\n{err}"
    message = errors[0].split(": error: ", 1)[1]
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    assert not (tmp_path / "run" / "model").exists(), "nothing may be trained"


# ---------------------------------------------------------------- rows dropped but the rest usable: counted, never silent


def test_dropped_rows_are_counted_per_reason_in_summary(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rows = [SFT_ROW, {**SFT_ROW, "completion": None}, {**SFT_ROW, "completion": ""}, *[{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(5)]]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(sft(str(data), "--output_dir", str(tmp_path / "run"), "--eval_fraction", "0")) == 0
    report = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert (report["rows"], report["kept"], report["dropped"]) == (8, 6, 2)
    assert report["reasons"] == {"column 'completion' is null": 1, "empty completion": 1}
    assert "column 'completion' is null: 1 (rows 2)" in caplog.text and "empty completion: rows 3" in caplog.text


def test_identical_pairs_are_dropped_and_counted_for_dpo(tmp_path, tokenizer):
    from alignkit.data.formats import load_dataset
    from alignkit.train.dpo import tokenize_pairs

    rows = [PAIR, {**PAIR, "rejected": PAIR["chosen"]}, {**PAIR, "chosen": "  "}, {**PAIR, "prompt": "Name a tool."}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, _ = load_dataset(str(tmp_path / "p.jsonl"), ("preference",), "DPO")
    examples, report = tokenize_pairs(loaded, tokenizer, max_length=64)
    assert [e["row"] for e in examples] == [1, 4]
    assert report.as_dict()["reasons"] == {"chosen identical to rejected": 1, "empty chosen or rejected response": 1}


def test_a_held_out_split_may_lose_every_row(tmp_path, tokenizer):
    """The file's training rows are usable, so a held-out split whose rows all drop is no reason to refuse the run."""
    from alignkit.data.formats import load_dataset
    from alignkit.data.tokenize import tokenize_sft

    rows = [SFT_ROW, SFT_ROW, {**SFT_ROW, "completion": ""}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, fmt = load_dataset(str(tmp_path / "s.jsonl"), ("prompt_completion",), "SFT")
    train, report = tokenize_sft(loaded[:2], fmt, tokenizer, 64)
    held_out, eval_report = tokenize_sft(loaded[2:], fmt, tokenizer, 64)
    assert (len(train), len(held_out), eval_report.examples) == (2, 0, {"empty completion": [3]})


def test_utf8_with_bom_and_crlf_lines_read_as_usual(tmp_path):
    from alignkit.data.load import load_rows

    (tmp_path / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    (tmp_path / "bom.csv").write_bytes(codecs.BOM_UTF8 + b'prompt,completion\r\n"x, y",z\r\n')
    assert load_rows(str(tmp_path / "bom.jsonl")) == [{"prompt": "a"}, {"prompt": "b"}]
    assert load_rows(str(tmp_path / "bom.csv")) == [{"prompt": "x, y", "completion": "z"}]


def test_a_valid_emoji_escape_is_not_a_lone_surrogate(tmp_path):
    from alignkit.data.load import load_rows

    (tmp_path / "e.jsonl").write_text('{"prompt": "smile \\ud83d\\ude00"}\n')
    assert load_rows(str(tmp_path / "e.jsonl"))[0]["prompt"] == "smile \U0001F600"
