"""The pipeline end to end on the tiny model (every stage, eval with all three judges, the report), resuming
finished stages, and config errors caught before any training; `alignkit eval` and `alignkit report` from the CLI."""

from __future__ import annotations

import json

import pytest

from alignkit.config import config_from_dict
from alignkit.config_pipeline import PipelineConfig
from alignkit.errors import AlignkitError


def _config(tmp_path, tiny_path, **overrides):
    tiny = {"max_steps": 2, "batch_size": 4, "mixed_precision": "no"}
    values = {
        "workdir": str(tmp_path / "pipe"), "model": tiny_path, "n_train": 24, "n_test": 6, "n_ood": 6, "n_val": 4, "policy": "grpo",
        "sft": {**tiny, "lora_r": 4, "max_length": 128},
        "reward": {**tiny, "normalization_pairs": 8, "max_length": 128},
        "rl": {**tiny, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "max_prompt_length": 64, "max_length": 128,
               "monitor": {"every": 1, "max_prompts": 3}},
        "dpo": {**tiny, "eval_data": "", "eval_fraction": 0.0, "monitor": {"every": 2, "max_prompts": 3, "max_new_tokens": 6}},
        "eval": {"max_new_tokens": 6, "judge": tiny_path, "batch_size": 8, "bootstrap": 200, "mixed_precision": "no"},
        **overrides,
    }
    return config_from_dict(PipelineConfig, values)


def test_pipeline_runs_every_stage_then_resumes(tmp_path, tiny_path, capsys):
    from alignkit.pipeline import run_pipeline

    config = _config(tmp_path, tiny_path)
    record = run_pipeline(config)
    work = tmp_path / "pipe"
    assert [s["status"] for s in record["stages"].values()] == ["ran"] * 6
    results = json.loads((work / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"base", "sft", "grpo", "dpo"} and results["reference"] == "sft"
    assert results["paths"]["base"] == tiny_path  # the model SFT started from, so the table shows what SFT gained
    for name in ("base", "grpo", "dpo"):
        model = results["models"][name]
        assert set(model["win_rate"]) == {"gold", "reward", "judge"}
        for w in model["win_rate"].values():
            assert 0 <= w["low"] <= w["rate"] <= w["high"] <= 1 and w["wins"] + w["ties"] + w["losses"] == 6
        assert model["kl"] is not None and {"length_tokens", "distinct_2", "refusal_rate"} <= set(model)
    assert results["models"]["sft"]["kl"] == 0.0
    assert len(results["shift"]["buckets"]) == 3 and sum(b["n"] for b in results["shift"]["buckets"]) == results["shift"]["pairs"]
    assert (work / "grpo" / "monitor.json").is_file() and (work / "dpo" / "monitor.json").is_file()
    page = (work / "report.html").read_text()
    assert "Win rate against sft" in page and "<svg" in page and "GRPO" in page
    ood = json.loads((work / "eval" / "ood" / "results.json").read_text())  # the same models on the held-out phrasings
    assert ood["prompts"] == 6 and set(ood["models"]) == set(results["models"]) and "Out of distribution" in page
    assert ood["shift"]["pairs"] == 12  # the reward model's accuracy on OOD pairs (two rejected answers per prompt)
    assert record["results"]["ood"]["models"]["dpo"]["diff"]["gold"]["low"] <= record["results"]["ood"]["models"]["dpo"]["diff"]["gold"]["mean"]
    table = capsys.readouterr().out
    assert "win (gold)" in table and "gold - sft [95% CI]" in table and all(f"\n{name} " in table for name in ("base", "sft", "grpo", "dpo"))

    again = run_pipeline(config)  # everything exists: nothing trains again
    assert [s["status"] for name, s in again["stages"].items() if name != "report"] == ["reused"] * 5
    assert again["table"] == record["table"]


def word_count(prompts, responses, **columns):
    return [float(len(r.split())) for r in responses]


def test_samples_feed_the_reward_model_rejection_sampling_and_on_policy_dpo(tmp_path, tiny_path, capsys):
    from alignkit.pipeline import run_pipeline, stage_configs

    tiny = {"max_steps": 2, "batch_size": 4, "mixed_precision": "no", "lora_r": 4, "max_length": 128}
    config = _config(tmp_path, tiny_path, stages=["sft", "samples", "reward", "rs", "dpo", "eval"], eval_base=False,
                     samples={"samples": 3, "max_new_tokens": 6, "keep_truncated": True, "min_score": 1.0,
                              "reward_function": f"{__file__}:word_count", "mixed_precision": "no"},
                     rs=tiny, eval={"max_new_tokens": 6, "batch_size": 8, "bootstrap": 200, "mixed_precision": "no", "kl_samples": 0})
    configs = stage_configs(config)
    work = tmp_path / "pipe"
    assert configs["dpo"].data == str(work / "samples" / "pairs.jsonl")  # DPO trains on the SFT model's own labelled answers
    assert configs["rs"].data == str(work / "samples" / "best.jsonl") and configs["rs"].model == str(work / "sft")
    assert configs["reward"].data == str(work / "samples" / "reward_pairs.jsonl")
    record = run_pipeline(config)
    assert list(record["stages"]) == ["sft", "samples", "reward", "rs", "dpo", "eval"]
    read = lambda name: [json.loads(line) for line in (work / "samples" / name).read_text().splitlines()]  # noqa: E731
    pairs, best, task = read("pairs.jsonl"), read("best.jsonl"), read("../data/preference_train.jsonl")
    assert pairs and all(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)
    assert all(b["score"] >= 1.0 for b in best)
    assert read("reward_pairs.jsonl") == task + pairs  # the task's pairs, then the on-policy ones
    held_out = {json.loads(line)["prompt"] for line in (work / "data" / "prompts_val.jsonl").read_text().splitlines()}
    assert not held_out & {p["prompt"] for p in pairs}  # the monitor's prompts are not sampled on
    results = json.loads((work / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"sft", "rs", "dpo"}
    for name in ("rs", "dpo"):
        diff = results["models"][name]["diff"]["gold"]
        scores = [s["scores"] for s in results["samples"]]
        assert diff["mean"] == pytest.approx(sum(s[name]["gold"] - s["sft"]["gold"] for s in scores) / len(scores))
    assert "\nrs " in capsys.readouterr().out


def test_a_wrong_stage_key_is_refused_before_anything_runs(tmp_path, tiny_path):
    from alignkit.pipeline import run_pipeline

    config = _config(tmp_path, tiny_path, dpo={"betta": 0.1})
    with pytest.raises(AlignkitError, match="pipeline dpo: unknown key 'betta'; did you mean 'beta'"):
        run_pipeline(config)
    assert not (tmp_path / "pipe").exists()
    with pytest.raises(AlignkitError, match="policy must be one of grpo, ppo"):
        _config(tmp_path, tiny_path, policy="a2c")


def test_demo_config_is_valid_and_names_every_stage():
    from pathlib import Path

    from alignkit.config import load_config
    from alignkit.pipeline import stage_configs

    config = load_config(PipelineConfig, Path(__file__).parents[1] / "configs" / "demo.yaml")
    configs = stage_configs(config)
    assert configs["policy"].monitor.every > 0 and configs["policy"].reward_function == "hhh-mini-gold"
    assert configs["eval"].gold == "hhh-mini-gold" and configs["sft"].output_dir.endswith("sft")
    assert configs["eval"].reward_model.endswith("reward")  # the reward model is judged in eval, on test and OOD pairs
    assert configs["dpo"].data.endswith("samples/pairs.jsonl") and configs["rs"].data.endswith("samples/best.jsonl")
    assert configs["samples"].reward_function == "hhh-mini-gold" and configs["samples"].chat_template == "always"


def test_eval_and_report_commands(tmp_path, tiny_path, write_jsonl, capsys):
    from alignkit.cli import main

    prompts = write_jsonl([{"prompt": f"What is {i} + {i}?"} for i in range(5)], "prompts.jsonl")
    out = tmp_path / "eval"
    code = main(["eval", "--policy", f"mine={tiny_path}", "--reference", f"base={tiny_path}", "--data", prompts,
                 "--gold", f"{__name__}:length_gold", "--max-new-tokens", "4", "--out", str(out), "--mixed-precision", "no"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    # the same model against itself: identical greedy answers, so every comparison is a tie and KL is 0
    assert results["models"]["mine"]["win_rate"]["gold"]["ties"] == 5
    assert results["models"]["mine"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert "report:" in capsys.readouterr().out and (out / "report.html").is_file()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--policy", tiny_path, "--reference", tiny_path, "--data", prompts]) == 2
    assert "nothing to judge the answers with" in capsys.readouterr().err


def test_eval_generates_in_generation_batches_and_scores_in_batch_size(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """generation_batch_size sizes the generate calls (greedy and KL samples); batch_size still sizes scoring; 0 falls back."""
    from alignkit.cli import main
    from alignkit.evaluate import compare, metrics

    generated, sampled, scored = [], [], []
    real_generate, real_batches, real_score = compare.generate_answers, metrics.sampled_batches, metrics._answer_token_logprobs
    monkeypatch.setattr(compare, "generate_answers", lambda *a, **k: generated.append(k["batch_size"]) or real_generate(*a, **k))
    monkeypatch.setattr(metrics, "sampled_batches", lambda *a, **k: (sampled.append(len(b[0])) or b for b in real_batches(*a, **k)))
    monkeypatch.setattr(metrics, "_answer_token_logprobs", lambda model, batch, bf16: scored.append(len(batch["input_ids"])) or real_score(model, batch, bf16))
    prompts = write_jsonl([{"prompt": f"What is {i} + {i}?"} for i in range(5)], "prompts.jsonl")
    common = ["--policy", f"mine={tiny_path}", "--reference", f"base={tiny_path}", "--data", prompts, "--gold", f"{__name__}:length_gold",
              "--max-new-tokens", "3", "--mixed-precision", "no", "--batch-size", "2"]
    assert main(["eval", *common, "--generation-batch-size", "5", "--out", str(tmp_path / "a")]) == 0
    assert generated == [5, 5] and sampled == [5] and scored == [2, 2, 1]  # greedy (reference, policy); KL samples, scored in 2s
    generated.clear(), sampled.clear()
    assert main(["eval", *common, "--out", str(tmp_path / "b")]) == 0
    assert generated == [2, 2] and sampled == [2, 2, 1]


def test_sampled_gold_is_the_gold_mean_over_each_prompts_samples_drawn_once_per_prompt(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """eval --gold-samples 3: each model samples 3 answers per prompt in one sampler call per batch (group_size 3, the
    prompt prefilled once), each prompt's sampled gold is the gold function's mean over its 3 answers (columns passed
    along), the paired difference and the table use it, and a rerun reuses the cached samples."""
    from alignkit.cli import main
    from alignkit.evaluate import compare
    from alignkit.evaluate.compare import format_table
    from alignkit.models import generation

    groups = []
    real_sample = generation.sample
    monkeypatch.setattr(generation, "sample", lambda model, ids, group_size, *a, **k: groups.append((len(ids), group_size)) or real_sample(model, ids, group_size, *a, **k))
    prompts = write_jsonl([{"prompt": f"What is {i} + {i}?", "weight": i + 1} for i in range(4)], "prompts.jsonl")
    args = ["eval", "--policy", f"mine={tiny_path}", "--reference", f"base={tiny_path}", "--data", prompts, "--gold",
            f"{__name__}:weighted_length_gold", "--max-new-tokens", "4", "--mixed-precision", "no", "--batch-size", "4",
            "--kl-samples", "0", "--gold-samples", "3", "--seed", "5", "--out", str(tmp_path / "eval")]
    assert main(args) == 0
    assert groups.count((4, 3)) == 2 and groups.count((4, 1)) == 2  # per model: 4 prompts x 3 samples, and the greedy pass
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["gold_samples"] == 3
    means = {}
    for name in ("base", "mine"):
        lines = (tmp_path / "eval" / "answers" / f"{name}.sampled.jsonl").read_text().splitlines()[1:]
        samples = [json.loads(line)["answer"] for line in lines]
        assert [len(s) for s in samples] == [3, 3, 3, 3]
        means[name] = [sum(-len(a) * (i + 1) for a in s) / 3 for i, s in enumerate(samples)]
        got = [row["scores"][name]["sampled_gold"] for row in results["samples"]]
        assert got == pytest.approx(means[name])
        assert results["models"][name]["sampled_gold"]["mean"] == pytest.approx(sum(means[name]) / 4)
    assert results["models"]["mine"]["diff"]["sampled_gold"]["mean"] == pytest.approx(sum(m - b for m, b in zip(means["mine"], means["base"])) / 4)
    table = format_table(results, ["base", "mine"])
    assert "sampled - base [95% CI]" in table and "win (sampled)" in table and "over 3 answers per prompt sampled at temperature 1" in table

    groups.clear()
    monkeypatch.setattr(compare, "sample_answers", lambda *a, **k: pytest.fail("the cached samples were not reused"))
    assert main(args) == 0 and (4, 3) not in groups
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["models"] == results["models"]


def test_sampled_gold_samples_at_gold_temperature_and_resamples_when_it_changes(tmp_path, tiny_path, write_jsonl, monkeypatch):
    """--gold-temperature reaches the sampler (near 0 the samples are the greedy answer), is part of the cache key (another
    temperature samples again) and is named in results.json and the table."""
    from alignkit.cli import main
    from alignkit.evaluate.compare import format_table
    from alignkit.models import generation

    temperatures = []
    real_sample = generation.sample
    monkeypatch.setattr(generation, "sample", lambda model, ids, group_size, max_new, temperature, *a, **k:
                        temperatures.append((group_size, temperature)) or real_sample(model, ids, group_size, max_new, temperature, *a, **k))
    prompts = write_jsonl([{"prompt": f"What is {i} + {i}?"} for i in range(4)], "prompts.jsonl")
    args = ["eval", "--policy", f"mine={tiny_path}", "--reference", f"base={tiny_path}", "--data", prompts, "--gold",
            f"{__name__}:length_gold", "--max-new-tokens", "4", "--mixed-precision", "no", "--batch-size", "4",
            "--kl-samples", "0", "--gold-samples", "3", "--out", str(tmp_path / "eval")]
    assert main([*args, "--gold-temperature", "0.0001"]) == 0
    assert temperatures.count((3, 0.0001)) == 2 and temperatures.count((1, 0.0)) == 2  # sampled and greedy, per model
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["gold_temperature"] == 0.0001
    for name in ("base", "mine"):
        greedy = [row["answers"][name] for row in results["samples"]]
        lines = (tmp_path / "eval" / "answers" / f"{name}.sampled.jsonl").read_text().splitlines()[1:]
        assert [json.loads(line)["answer"] for line in lines] == [[g] * 3 for g in greedy]
    assert "over 3 answers per prompt sampled at temperature 0.0001" in format_table(results, ["base", "mine"])

    temperatures.clear()
    assert main([*args, "--gold_temperature", "1.5"]) == 0  # the cached samples were drawn at another temperature; both spellings
    assert temperatures.count((3, 1.5)) == 2
    assert "at temperature 1.5" in format_table(json.loads((tmp_path / "eval" / "results.json").read_text()), ["base", "mine"])


def test_gold_temperature_zero_is_refused_naming_the_key():
    from alignkit.config_pipeline import EvalConfig

    with pytest.raises(AlignkitError, match=r"gold_temperature"):
        config_from_dict(EvalConfig, {"data": "prompts.jsonl", "gold": "hhh-mini-gold", "gold_samples": 4, "gold_temperature": 0})


def test_sampled_gold_without_a_gold_function_is_refused_before_anything_runs():
    from alignkit.config_pipeline import EvalConfig

    with pytest.raises(AlignkitError, match=r"gold_samples is 4 but there is no gold function .* set gold .* or gold_samples: 0"):
        config_from_dict(EvalConfig, {"data": "prompts.jsonl", "gold_samples": 4})


def weighted_length_gold(prompts, responses, weight, **columns):
    return [-len(r) * w for r, w in zip(responses, weight)]


def length_gold(prompts, responses, **columns):
    return [-len(r) for r in responses]


def constant(prompts, responses, **columns):
    return [0.0] * len(responses)


def test_samples_stage_with_a_labeller_that_ties_everything_says_what_to_do(tmp_path, tiny_path, write_jsonl):
    from alignkit.pipeline_samples import SamplesConfig, run_samples

    prompts = write_jsonl([{"prompt": f"Tell me about topic {i}."} for i in range(4)], "prompts.jsonl")
    config = config_from_dict(SamplesConfig, {"model": tiny_path, "prompts": prompts, "output_dir": str(tmp_path / "samples"),
                                              "samples": 2, "max_new_tokens": 4, "keep_truncated": True, "mixed_precision": "no",
                                              "reward_function": f"{__file__}:constant"})
    with pytest.raises(AlignkitError, match=r"samples: the labeller scored every prompt's 2 answers alike \(4 prompts.*"
                                            r"Check the labeller, or raise samples.samples or samples.temperature"):
        run_samples(config)
    assert (tmp_path / "samples" / "samples.jsonl").is_file() and not (tmp_path / "samples" / "summary.json").exists()
    with pytest.raises(AlignkitError, match="stages: samples needs a labeller"):
        _config(tmp_path, tiny_path, task="", data={"preference": prompts}, stages=["samples"])
    with pytest.raises(AlignkitError, match="stages: rs fine-tunes on the samples stage's best answers; add samples"):
        _config(tmp_path, tiny_path, stages=["sft", "rs"])
