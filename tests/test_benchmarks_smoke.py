"""benchmarks/run_all.py bookkeeping: medians over runs, ratios and goals, and BENCHMARKS.md kept outside its markers.

No model runs here; `benchmarks/run_all.py --quick` is the end-to-end smoke run.
"""

from __future__ import annotations

from benchmarks import harness, run_all


def test_summarize_takes_the_median_of_per_run_means():
    runs = [{"step_seconds": [1.0, 3.0], "peak_mib": 10}, {"step_seconds": [4.0, 4.0], "peak_mib": 30},
            {"step_seconds": [1.0, 1.0], "peak_mib": 20}]
    out = harness.summarize(runs, units_per_step=8, flops_per_step=1e9)
    assert out["run_seconds_per_step"] == [2.0, 4.0, 1.0]
    assert out["seconds_per_step"] == 2.0  # median of 2, 4, 1
    assert out["throughput"] == 4.0  # 8 units / 2 s
    assert out["peak_mib"] == 30


def _stage(alignkit_s: float, trl_s: float, bare_s: float, copy_s: float | None = None) -> dict:
    sides = {"alignkit": alignkit_s, "trl": trl_s, "bare": bare_s} | ({"alignkit-copy": copy_s} if copy_s else {})
    return {"sides": {side: {"throughput": 1 / s} for side, s in sides.items()}}


def test_goals_compare_throughputs_against_the_targets():
    results = {"sft": _stage(1.0, 1.4, 0.95), "dpo": _stage(1.0, 2.5, 1.5, copy_s=2.0)}
    rows = "\n".join(run_all.goal_rows(results))
    assert "| SFT: alignkit >= 1.5x TRL | 1.40x | **missed** |" in rows
    assert "| SFT: alignkit >= 0.9x bare loop | 0.95x | met |" in rows
    assert "| DPO: alignkit >= 2x TRL | 2.50x | met |" in rows
    assert "| DPO: alignkit-copy >= 0.9x bare loop | 0.75x | **missed** |" in rows
    assert "GRPO" not in rows  # stages not run get no rows


def test_write_section_keeps_hand_written_text_and_replaces_its_own(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# alignkit benchmarks\n\n## GRPO\n\nhand-written notes\n")
    run_all.write_section(path, f"{run_all.BEGIN}\nfirst\n{run_all.END}\n")
    run_all.write_section(path, f"{run_all.BEGIN}\nsecond\n{run_all.END}\n")
    text = path.read_text()
    assert text.startswith("# alignkit benchmarks\n")
    assert text.count(run_all.BEGIN) == 1 and "second" in text and "first" not in text
    assert text.index(run_all.END) < text.index("## GRPO") and text.endswith("hand-written notes\n")


def test_a_partial_run_keeps_the_other_stages_of_the_same_model(tmp_path):
    import json

    path = tmp_path / "run_all.json"
    stage = {"stage": "sft", "peak_gflops": 100.0, "sides": {}}
    path.write_text(json.dumps({"model": "m", "results": {"sft": stage, "dpo": dict(stage, stage="dpo")}}))
    kept = run_all.earlier_results(path, "m", skip=["dpo"])
    assert list(kept) == ["sft"] and kept["sft"]["carried"]
    assert run_all.earlier_results(path, "other-model", skip=[]) == {}


def test_online_rl_table_pairs_prompts_and_pools_seeds_per_prompt(tmp_path):
    import json

    from benchmarks import online_rl_table

    def run(name, before, after):  # {prompt: (greedy gold, [sampled golds])} at step 0 and step 2
        folder = tmp_path / name
        (folder / "eval_answers").mkdir(parents=True)
        for step, answers in ((0, before), (2, after)):
            rows = [{"prompt": p, "sample": None, "gold": g, "reward": 0.0} for p, (g, _) in answers.items()]
            rows += [{"prompt": p, "sample": i, "gold": v, "reward": 1.0 + step} for p, (_, s) in answers.items() for i, v in enumerate(s)]
            (folder / "eval_answers" / f"step-{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text(json.dumps({"steps": 2, "final_kl": 0.5, "seconds": 10.0}))
        return folder

    a = run("a", {"p": (1.0, [0.0, 1.0]), "q": (0.0, [0.0, 0.0])}, {"p": (1.0, [1.0, 1.0]), "q": (1.0, [0.0, 1.0])})
    b = run("b", {"p": (0.0, [1.0, 1.0]), "q": (0.0, [1.0, 1.0])}, {"p": (0.0, [1.0, 1.0]), "q": (0.0, [0.0, 1.0])})
    one = online_rl_table.row("ppo", "0", [a])
    assert (one["greedy"]["before"], one["greedy"]["after"]) == (0.5, 1.0)
    assert (one["sampled"]["before"], one["sampled"]["after"], one["sampled"]["delta"]) == (0.25, 0.75, 0.5)
    assert one["rm"]["delta"] == 2.0 and one["sampled"]["low"] <= 0.5 <= one["sampled"]["high"]
    pooled = online_rl_table.row("ppo", "mean", [a, b])  # per-prompt changes: p (+0.5, 0), q (+0.5, -0.5)
    assert pooled["sampled"]["delta"] == 0.125 and pooled["kl"] == 0.5
    assert "| PPO | mean | 0.250 -> 0.500 | 0.625 -> 0.750 | +0.125" in online_rl_table.table([pooled])
    # rescored: both runs compared against one shared "before" file (a's step 0) instead of their own
    shared_start = [(a / "eval_answers" / "step-0.jsonl", run / "eval_answers" / "step-2.jsonl") for run in (a, b)]
    rescored = online_rl_table.row("ppo", "mean", [a, b], shared_start)  # p (+0.5, +0.5), q (+0.5, +0.5)
    assert (rescored["sampled"]["before"], rescored["sampled"]["delta"]) == (0.25, 0.5)


def test_validation_prompts_are_new_and_stratified_like_test(tmp_path):
    """The validation prompts for choosing RL settings share no prompt with the demo's splits and keep test's category mix."""
    import json
    from collections import Counter

    from alignkit.data.tasks.hhh_mini import write_dataset
    from benchmarks import online_rl_table

    write_dataset(tmp_path / "data", seed=0)
    path = online_rl_table.validation_prompts(tmp_path / "validation.jsonl", data=tmp_path / "data")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    demo = {json.loads(line)["prompt"] for split in ("train", "test") for line in (tmp_path / "data" / f"prompts_{split}.jsonl").open()}
    test_mix = Counter(json.loads(line)["category"] for line in (tmp_path / "data" / "prompts_test.jsonl").open())
    mix = Counter(row["category"] for row in rows)
    assert len(rows) >= 90 and not demo & {row["prompt"] for row in rows}
    assert set(mix) == set(test_mix) and all(mix[c] <= test_mix[c] for c in mix)
    assert sum(mix[c] == test_mix[c] for c in mix) >= 3  # the task runs out of some categories, not of most


def test_stage_command_names_device_and_steps_only_when_asked():
    from argparse import Namespace

    base = dict(model="m", runs=1, quick=False)
    json_path = run_all.ROOT / "runs" / "bench" / "sft.json"
    cpu = run_all.stage_command("sft", Namespace(**base, steps=None, device="cpu"), json_path)
    assert cpu == ["benchmarks/sft.py", "--model", "m", "--rounds", "1", *run_all.STAGE_ARGS["sft"], "--json", "runs/bench/sft.json"]
    cuda = run_all.stage_command("sft", Namespace(**base, steps=8, device="cuda"), json_path)
    assert cuda.count("--steps") == 1 and cuda[cuda.index("--steps") + 1] == "8"
    assert cuda[cuda.index("--device") + 1] == "cuda"
