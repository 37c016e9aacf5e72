"""`alignkit pipeline` on data alignkit did not generate (tests/fixtures/own_data: TRL conversational pairs on household
chemistry safety and unit conversion): every stage, a judge-based evaluation, SFT -> DPO only, the data checks that run
before any model loads, and the hhh-mini preset still wiring the demo as before."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignkit.config import config_from_dict, load_config
from alignkit.config_pipeline import PipelineConfig
from alignkit.errors import AlignkitError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "own_data"
TINY = {"max_steps": 2, "batch_size": 4, "mixed_precision": "no"}


def _values(tmp_path, tiny_path, **overrides) -> dict:
    return {
        "workdir": str(tmp_path / "pipe"), "model": tiny_path, "n_val": 4, "policy": "grpo",
        "data": {"sft": str(FIXTURE / "sft.jsonl"),  # no test: 10% held out with the seed
                 "preference": {"path": str(FIXTURE / "preference_train.jsonl"), "test": str(FIXTURE / "preference_test.jsonl")}},
        "sft": {**TINY, "lora_r": 0, "learning_rate": 3e-3, "max_steps": 6, "max_length": 128},  # enough to answer with text
        "reward": {**TINY, "normalization_pairs": 8, "max_length": 128},
        "rl": {**TINY, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "max_prompt_length": 64, "max_length": 128,
               "monitor": {"every": 2, "max_prompts": 3}},
        "dpo": {**TINY, "max_length": 128, "eval_data": "", "eval_fraction": 0.0},
        "eval": {"max_new_tokens": 6, "batch_size": 16, "bootstrap": 200, "mixed_precision": "no",
                 "function": f"{FIXTURE / 'score.py'}:score"},
        **overrides,
    }


def _config(tmp_path, tiny_path, **overrides) -> PipelineConfig:
    return config_from_dict(PipelineConfig, _values(tmp_path, tiny_path, **overrides), "my.yaml")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_win_rates(model: dict, scorers: set, n: int) -> None:
    assert set(model["win_rate"]) == scorers
    for w in model["win_rate"].values():
        assert 0 <= w["low"] <= w["rate"] <= w["high"] <= 1 and w["wins"] + w["ties"] + w["losses"] == n


def test_every_stage_on_own_data_with_a_local_judge(tmp_path, tiny_path, capsys):
    from alignkit.cli import main
    from alignkit.evaluate.winrate import outcomes_from_judge, outcomes_from_scores, win_rate
    from alignkit.feedback.judge import judge_pairs, make_judge, read_constitution

    path = tmp_path / "my.yaml"
    values = _values(tmp_path, tiny_path)
    values["eval"] = {**values["eval"], "judge": tiny_path, "judge_tie_margin": 0.0, "pairs": ""}  # pairs: no shift report (test_pipeline's)
    path.write_text(json.dumps(values))  # JSON is YAML
    assert main(["pipeline", str(path)]) == 0
    work = tmp_path / "pipe"
    record = json.loads((work / "pipeline.json").read_text())
    assert {name: s["status"] for name, s in record["stages"].items()} == dict.fromkeys(["sft", "reward", "grpo", "dpo", "eval", "report"], "ran")

    # the data: sft split with the seed, preference from its own test file, prompts from the pairs, 4 held out for the monitor
    data = work / "data"
    sources = json.loads((data / "sources.json").read_text())
    assert sources["rows"] == {"sft_train": 43, "sft_test": 5, "preference_train": 48, "preference_test": 16, "prompts_train": 48, "prompts_test": 16}
    assert sources["held_out"]["sft"].startswith("0.1 of") and sources["held_out"]["preference"].endswith("preference_test.jsonl")
    val, rl, pairs = (_rows(data / f"{name}.jsonl") for name in ("prompts_val", "prompts_rl", "preference_rl"))
    held = {json.dumps(r["prompt"]) for r in val}
    assert len(val) == 4 and len(rl) == 44 and len(pairs) == 44 and not held & {json.dumps(r["prompt"]) for r in rl + pairs}
    test_prompt = _rows(data / "prompts_test.jsonl")[0]
    assert set(test_prompt) == {"prompt", "topic", "expected"} and test_prompt["prompt"][0]["role"] == "user"  # conversational, columns kept

    # the evaluation: win rates against SFT by the judge (both orders), the trained reward model and the function
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["reference"] == "sft" and set(results["models"]) == {"base", "sft", "grpo", "dpo"} and results["prompts"] == 16
    for name in ("base", "grpo", "dpo"):
        model = results["models"][name]
        _check_win_rates(model, {"judge", "reward", "gold"}, 16)
        assert model["judge_bias"]["pairs"] == 16 and model["kl"] is not None and {"length_tokens", "refusal_rate"} <= set(model)
    samples = results["samples"]
    assert all(s["scores"]["sft"]["gold"] in (0.0, 1.0) for s in samples)  # the fixture's scorer, fed `expected`
    # the judge column is the judge's verdict on these answers in both orders (ties allowed); the RM column, its scores
    assert all(s["answers"]["sft"] and not s["answers"]["base"] for s in samples)  # SFT taught the random model to answer
    verdicts = judge_pairs(make_judge(tiny_path, batch_size=16, bf16=False), read_constitution(),
                           [(s["prompt"], s["answers"]["base"], s["answers"]["sft"]) for s in samples])
    judged = outcomes_from_judge([v.p_x_first for v in verdicts], [v.p_x_second for v in verdicts], 0.0)
    assert win_rate(judged, n_resamples=200).as_dict() == results["models"]["base"]["win_rate"]["judge"]
    by_reward = outcomes_from_scores(*([s["scores"][name]["reward"] for s in samples] for name in ("base", "sft")))
    assert win_rate(by_reward, n_resamples=200).as_dict() == results["models"]["base"]["win_rate"]["reward"]
    table = capsys.readouterr().out
    assert "win (judge)" in table and "win (RM)" in table and all(f"\n{name} " in table for name in ("base", "sft", "grpo", "dpo"))
    judge_cell = results["models"]["dpo"]["win_rate"]["judge"]
    assert f"{100 * judge_cell['rate']:5.1f}% [{100 * judge_cell['low']:.0f},{100 * judge_cell['high']:.0f}]" in table
    assert "Win rate against sft" in (work / "report.html").read_text()
    assert (work / "grpo" / "monitor.json").is_file()


def test_sft_then_dpo_only(tmp_path, tiny_path):
    from alignkit.pipeline import run_pipeline

    record = run_pipeline(_config(tmp_path, tiny_path, stages=["sft", "dpo", "eval"], eval_base=False, sft={**TINY, "lora_r": 4}))
    work = tmp_path / "pipe"
    assert list(record["stages"]) == ["sft", "dpo", "eval"]
    assert not (work / "reward").exists() and not (work / "grpo").exists() and not (work / "report.html").exists()
    results = json.loads((work / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"sft", "dpo"} and results["paths"]["sft"] == str(work / "sft")
    _check_win_rates(results["models"]["dpo"], {"gold"}, 16)  # no reward model, no judge: the function alone
    assert "win (gold)" in record["table"] and "gold - sft [95% CI]" in record["table"]
    copied = (work / "data" / "preference_rl.jsonl").stat().st_mtime_ns
    again = run_pipeline(_config(tmp_path, tiny_path, stages=["sft", "dpo", "eval"], eval_base=False, sft={**TINY, "lora_r": 4}))
    assert [s["status"] for s in again["stages"].values()] == ["reused"] * 3 and again["table"] == record["table"]
    assert (work / "data" / "preference_rl.jsonl").stat().st_mtime_ns == copied  # the copy of the same data: is reused


def test_stages_as_a_mapping_and_dpo_straight_from_the_base_model(tmp_path, tiny_path):
    from alignkit.pipeline import eval_models, stage_configs

    config = _config(tmp_path, tiny_path, stages={"sft": False, "dpo": True, "eval": True, "report": False})
    assert config.stage_names() == ["dpo", "eval"]
    configs = stage_configs(config)
    assert set(configs) == {"dpo", "eval"} and configs["dpo"].model == tiny_path and configs["eval"].reward_model == ""
    assert eval_models(config) == ({"base": tiny_path}, "base")  # dpo joins once trained; the base model is the reference
    assert _config(tmp_path, tiny_path, stages=["sft", "reward", "grpo"]).stage_names() == ["sft", "reward", "policy"]


@pytest.mark.parametrize("overrides, message", [
    ({"stages": ["sft", "grpo", "eval"]}, "stages: grpo needs a reward: add reward to stages .* or set rl.reward_function"),
    ({"data": {"sft": str(FIXTURE / "sft.jsonl")}, "stages": ["sft", "dpo"]}, r"stages: dpo needs data.preference \(\(prompt, chosen, rejected\) pairs\); add it"),
    ({"data": {"preference": str(FIXTURE / "preference_train.jsonl")}}, r"stages: sft needs data.sft"),
    ({"stages": ["dpo", "sft"]}, "stages: sft must come before dpo"),
    ({"stages": ["sft", "dpo", "eval"], "eval": {"max_new_tokens": 4}}, "eval has nothing to score the answers with: set eval.judge"),
    ({"stages": ["sft", "dpo", "eval"], "eval": {"reward_model": True, "judge": "tiny-llama"}}, "eval.reward_model: true .* add reward to stages"),
    ({"eval": {"judge": "tiny-llama", "judge_model": "gpt-4o-mini"}}, "eval.judge_model names the model of an OpenAI-compatible endpoint"),
    ({"task": "hhh-mini"}, "task: hhh-mini writes its own data; remove task"),
    ({"stages": {"sft": "yes"}}, "stages.sft must be true or false"),
    ({"data": {"sft": {"pth": "x.jsonl"}}}, "unknown key 'data.sft.pth'; did you mean 'data.sft.path'"),
    ({"data": {"preference": str(FIXTURE / "preference_train.jsonl"), "test_fraction": 1.5}, "stages": ["dpo"]}, "key data.test_fraction must be in"),
])
def test_a_stage_without_its_inputs_is_a_config_error(tmp_path, tiny_path, overrides, message):
    with pytest.raises(AlignkitError, match=message):
        _config(tmp_path, tiny_path, **overrides)


def _no_model_loads(monkeypatch):
    import alignkit.api
    import alignkit.models.load

    for module, name in ((alignkit.models.load, "load_causal_lm"), (alignkit.models.load, "load_policy"), (alignkit.api, "run_stage")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a model loaded before the data was checked"))


@pytest.mark.parametrize("data, message", [
    ({"sft": str(FIXTURE / "sft.jsonl"), "preference": str(FIXTURE / "preference_tran.jsonl")},
     r"data.preference: data file .*preference_tran.jsonl does not exist; did you mean .*preference_train.jsonl"),
    ({"sft": str(FIXTURE / "preference_train.jsonl"), "preference": str(FIXTURE / "preference_train.jsonl")},
     "data.sft: .*preference_train.jsonl is conversational preference data, but the SFT stage needs language-modeling or prompt-completion data"),
    ({"sft": str(FIXTURE / "sft.jsonl"), "preference": {"path": str(FIXTURE / "preference_train.jsonl"), "test": str(FIXTURE / "missing.jsonl")}},
     "data.preference: data file .*missing.jsonl does not exist"),
])
def test_a_missing_or_wrong_data_file_fails_before_any_model_loads(tmp_path, tiny_path, monkeypatch, data, message):
    from alignkit.pipeline import run_pipeline

    _no_model_loads(monkeypatch)
    with pytest.raises(AlignkitError, match=message):
        run_pipeline(_config(tmp_path, tiny_path, data=data))
    assert not (tmp_path / "pipe").exists()


def test_a_sources_own_test_split_is_used(tmp_path, tiny_path, monkeypatch):
    """A folder of train/test files and a save_to_disk DatasetDict: their test split is the held-out one, by prompt otherwise."""
    from datasets import Dataset, DatasetDict

    from alignkit.pipeline import read_data

    pairs, test = _rows(FIXTURE / "preference_train.jsonl"), _rows(FIXTURE / "preference_test.jsonl")
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, rows in (("train", pairs), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    DatasetDict({"train": Dataset.from_list(pairs), "test": Dataset.from_list(test)}).save_to_disk(str(tmp_path / "saved"))
    for source in (folder, tmp_path / "saved"):
        read = read_data(_config(tmp_path, tiny_path, data={"preference": str(source)}, stages=["dpo"]))
        assert [len(read["splits"][k]) for k in ("preference_train", "preference_test", "prompts_train", "prompts_test")] == [48, 16, 48, 16]
        assert read["origin"]["preference"] == f"{source} split test"
    # one file and no test: 10% of the prompts held out with the seed, every pair of a prompt on one side
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("".join(json.dumps(r) + "\n" for r in pairs + [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in pairs]))
    read = read_data(_config(tmp_path, tiny_path, data={"preference": str(doubled)}, stages=["dpo"]))
    train, held = read["splits"]["preference_train"], read["splits"]["preference_test"]
    assert (len(train), len(held)) == (86, 10) and not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in held}
    assert read == read_data(_config(tmp_path, tiny_path, data={"preference": str(doubled)}, stages=["dpo"]))  # the seed decides


def test_hhh_mini_preset_still_wires_the_demo():
    from alignkit.pipeline import stage_configs

    config = load_config(PipelineConfig, Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    assert config.preset == "hhh-mini"
    assert config.stage_names() == ["sft", "samples", "reward", "rs", "policy", "dpo", "eval", "report"]
    configs = stage_configs(config)
    assert set(configs) == {"sft", "samples", "reward", "rs", "policy", "dpo", "eval"}
    assert {configs[s].chat_template for s in ("sft", "samples", "reward", "rs", "policy", "dpo")} == {"always"}  # standard rows
    sft = configs["sft"].output_dir
    assert configs["sft"].data == "runs/demo/data/sft_train.jsonl" and configs["sft"].model == "smollm2-135m-instruct"
    assert configs["samples"].model == configs["reward"].model == configs["rs"].model == configs["policy"].model == configs["dpo"].model == sft
    assert configs["samples"].prompts == "runs/demo/data/prompts_rl.jsonl"  # the monitor's held-out prompts are not sampled on
    assert configs["eval"].reward_model == "runs/demo/reward" and configs["reward"].data == "runs/demo/samples/reward_pairs.jsonl"
    assert configs["policy"].eval_reward_function == configs["policy"].monitor.gold == configs["eval"].gold == "hhh-mini-gold"
    assert configs["dpo"].data == "runs/demo/samples/pairs.jsonl" and configs["eval"].pairs == "runs/demo/data/preference_test.jsonl"
    # no task and no data: the preset too (older configs); your own data: is not the preset
    assert config_from_dict(PipelineConfig, {}).preset == "hhh-mini"
    assert config_from_dict(PipelineConfig, {"data": {"preference": "p.jsonl"}, "stages": ["dpo"]}).preset == ""


def test_example_config_points_at_the_fixture():
    from alignkit.pipeline import stage_configs

    root = Path(__file__).resolve().parents[1]
    config = load_config(PipelineConfig, root / "configs" / "pipeline_own_data.yaml")
    sources = config.data_sources()
    for source in (sources.sft, sources.preference):
        assert (root / source.path).is_file()
    assert config.preset == "" and set(stage_configs(config)) == {"sft", "reward", "policy", "dpo", "eval"}


class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that prefers the longer response, recording the model each request asked for."""

    models: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).models.append(body["model"])
        text = body["messages"][-1]["content"]
        a, b = text.split("[Response A]")[1].split("[Response B]")
        p_a = 0.9 if len(a) > len(b.split("Which response")[0]) else 0.1
        reply = {"choices": [{"message": {"content": "A" if p_a > 0.5 else "B"}, "logprobs": {"content": [{"token": "A", "logprob": 0.0,
                 "top_logprobs": [{"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}]}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_an_endpoint_judge_named_by_url_gets_its_model_name(tmp_path, tiny_path):
    """eval.judge: URL and eval.judge_model reach the endpoint; both orders agree, so the longer answer wins every pair."""
    from alignkit.evaluate.compare import judge_outcomes
    from alignkit.pipeline import stage_configs

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        config = _config(tmp_path, tiny_path, stages=["sft", "dpo", "eval"], eval={"judge": url, "judge_model": "my-judge"})
        settings = stage_configs(config)["eval"]
        assert settings.judge == url and settings.gold == "" and settings.reward_model == ""
        _Endpoint.models = []
        rows = [{"prompt": [{"role": "user", "content": f"How many miles is {k} km?"}]} for k in (3, 5, 8)]
        answers = {"sft": ["No idea."] * 3, "dpo": [f"{k} km is about {k * 0.621371:.2f} miles." for k in (3, 5, 8)]}
        judged = judge_outcomes(answers, "sft", rows, settings, config.eval["judge_model"])
        assert judged["dpo"]["outcomes"] == [1.0, 1.0, 1.0] and judged["dpo"]["bias"]["self_consistency"] == 1.0
        assert _Endpoint.models == ["my-judge"] * 6  # 3 pairs, each in both orders
    finally:
        server.shutdown()
        server.server_close()
