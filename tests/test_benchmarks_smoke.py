"""benchmarks/run_all.py bookkeeping: medians over runs, like-for-like ratios and goals, MFU against both measured peaks,
and BENCHMARKS.md kept outside its markers; plus the smallest end-to-end run of the DPO and GRPO rows.

Only `test_run_all_smallest_dpo_and_grpo_rows` runs models (tiny-llama, one step per side; the TRL sides only where
trl is importable, i.e. after `make bench`); `benchmarks/run_all.py --quick` is the full smoke run.
"""

from __future__ import annotations

import importlib.util
import json

from benchmarks import harness, run_all


def test_summarize_takes_the_median_of_per_run_means():
    runs = [{"step_seconds": [1.0, 3.0], "peak_mib": 10}, {"step_seconds": [4.0, 4.0], "peak_mib": 30},
            {"step_seconds": [1.0, 1.0], "peak_mib": 20}]
    out = harness.summarize(runs, units_per_step=8, flops_per_step=1e9)
    assert out["run_seconds_per_step"] == [2.0, 4.0, 1.0]
    assert out["seconds_per_step"] == 2.0  # median of 2, 4, 1
    assert out["throughput"] == 4.0  # 8 units / 2 s
    assert out["peak_mib"] == 30


def _side(throughput: float, variant: str | None = None) -> dict:
    return {"throughput": throughput, "seconds_per_step": 1.0, "flops_per_step": 1e9, "peak_mib": 100.0,
            "run_seconds_per_step": [1.0], "setup_seconds": 2.0} | ({"variant": variant} if variant else {})


def _stage(stage: str, sides: dict, variant: str | None = None, **extra) -> dict:
    return {"stage": stage, "runs": 1, "unit": "pairs/s", "settings": "settings", "params": 1e6, "tokens_per_step": 100.0,
            "flops": "6·N·T", "shown": f"benchmarks/{stage}.py", "peaks_gflops": {"fp32": 10.0, "bf16": 20.0}, "sides": sides,
            **({"variant": variant} if variant else {}), **extra}


def _dpo() -> dict:  # precompute: alignkit 4, trl-precompute 2; frozen copy: alignkit-copy 3, trl 1.5, bare 2
    return _stage("dpo", {"alignkit": _side(4.0, "precompute"), "trl-precompute": _side(2.0, "precompute"),
                          "alignkit-copy": _side(3.0, "copy"), "trl": _side(1.5, "copy"), "bare": _side(2.0, "copy")}, "reference")


def test_counterparts_pair_sides_that_do_the_same_work():
    sides = _dpo()["sides"]
    assert run_all.counterpart(sides, "alignkit", "trl") == "trl-precompute"
    assert run_all.counterpart(sides, "alignkit", "bare") is None  # the bare loop runs a frozen copy
    assert run_all.counterpart(sides, "alignkit-copy", "trl") == "trl" and run_all.counterpart(sides, "alignkit-copy", "bare") == "bare"
    assert run_all.counterpart(sides, "trl", "trl") is None
    sft = {"alignkit": _side(2.0), "trl": _side(1.0), "bare": _side(1.0)}  # no reference: the plain sides
    assert run_all.counterpart(sft, "alignkit", "trl") == "trl"
    assert run_all.cross_ratios(_dpo()) == [("alignkit", "trl", 4.0 / 1.5)] and run_all.cross_ratios(_stage("sft", sft)) == []


def test_dpo_table_shows_both_like_for_like_ratios_and_labels_the_cross_one():
    lines = run_all.stage_section(_dpo())
    text = "\n".join(lines)
    assert ("| side | reference | step s (median of 1 runs) | pairs/s | vs TRL, like for like | vs bare, like for like | "
            "MFU vs fp32 peak | MFU vs bf16 peak | peak RSS MiB |") in lines
    assert "|---|---|---|---|---|---|---|---|---|" in lines
    assert "| alignkit | precompute | 1.00 | 4.00 | 2.00x (trl-precompute) | n/a | 10.0% | 5.0% | 100 |" in lines
    assert "| alignkit-copy | copy | 1.00 | 3.00 | 2.00x | 1.50x | 10.0% | 5.0% | 100 |" in lines
    assert "| trl | copy | 1.00 | 1.50 |  | 0.75x | 10.0% | 5.0% | 100 |" in lines
    assert "| bare | copy | 1.00 | 2.00 | 1.33x |  | 10.0% | 5.0% | 100 |" in lines
    assert ("**Like for like** (the headline): alignkit / trl-precompute **2.00x** (precompute on both); "
            "alignkit-copy / trl **2.00x** (copy on both).") in lines
    assert "Not like for like, for comparison with earlier tables only: alignkit (precompute) / trl (copy) 2.67x." in lines
    assert "Setup s (load, tokenize, any reference pass; not in the step): alignkit 2" in text


def test_sft_table_has_one_ratio_per_pair_and_grpo_says_which_sides_did_not_run():
    sft = run_all.stage_section(_stage("sft", {"alignkit": _side(2.0), "trl": _side(1.0), "bare": _side(4.0)}))
    assert "| side | step s (median of 1 runs) | pairs/s | vs TRL, like for like | vs bare, like for like | " \
           "MFU vs fp32 peak | MFU vs bf16 peak | peak RSS MiB |" in sft
    assert "| alignkit | 1.00 | 2.00 | 2.00x | 0.50x | 10.0% | 5.0% | 100 |" in sft
    assert "**Like for like** (the headline): alignkit / trl **2.00x**." in sft and not any("Not like for like" in l for l in sft)
    grpo = _stage("grpo", {"trl": _side(1.0, "hf"), "alignkit": _side(2.0, "hf")}, "rollout",
                  skipped={"alignkit-vllm": "`import vllm` fails", "trl-vllm": "`import vllm` fails"})
    lines = run_all.stage_section(grpo)
    assert "| alignkit | hf | 1.00 | 2.00 | 2.00x | n/a | 10.0% | 5.0% | 100 |" in lines
    assert "Not run: alignkit-vllm: `import vllm` fails." in lines and "Not run: trl-vllm: `import vllm` fails." in lines


def test_goals_compare_like_for_like_throughputs_against_the_targets():
    sft = _stage("sft", {"alignkit": _side(1.0), "trl": _side(1 / 1.4), "bare": _side(1 / 0.95)})
    rows = "\n".join(run_all.goal_rows({"sft": sft, "dpo": _dpo()}))
    assert "| SFT: alignkit >= 2x trl | 1.40x | **missed** |" in rows
    assert "| SFT: alignkit >= 0.9x bare | 0.95x | met |" in rows
    assert "| DPO: alignkit >= 2x trl-precompute (precompute on both) | 2.00x | met |" in rows
    assert "| DPO: alignkit-copy >= 2x trl (copy on both) | 2.00x | met |" in rows
    assert "| DPO: alignkit-copy >= 0.9x bare (copy on both) | 1.50x | met |" in rows
    assert "DPO: alignkit >= 0.9x" not in rows  # no bare loop precomputes its reference: no like-for-like goal
    assert "2.67x" not in rows and "GRPO" not in rows  # the cross ratio is no goal; stages not run get no rows
    no_bare = _stage("sft", {"alignkit": _side(1.0), "trl": _side(1.0)})
    assert "| SFT: alignkit >= 0.9x bare loop | n/a | not measured |" in run_all.goal_rows({"sft": no_bare})


def test_peaks_are_measured_per_dtype_and_the_higher_kept(monkeypatch):
    monkeypatch.setattr(run_all, "EMULATED_PEAK_ARGS", ((32,), 0, 1))
    first = run_all.measure_peak((64,), 0, 1, "cpu", bf16_native=False)
    assert first["fp32"]["by_size"].keys() == {64} and first["bf16"]["by_size"].keys() == {32}
    assert first["bf16"]["emulated"] and not first["fp32"]["emulated"] and first["fp32"]["gflops"] > 0
    second = {name: first[name] | {"by_size": by_size} for name, by_size in
              (("fp32", {64: first["fp32"]["gflops"] * 2}), ("bf16", {32: 0.0}))}  # after the stages: fp32 faster, bf16 slower
    peak = run_all.best_peak(first, second)
    assert peak["fp32"]["gflops"] == 2 * first["fp32"]["gflops"] and peak["bf16"]["gflops"] == first["bf16"]["gflops"]
    text = run_all.peak_text(peak, "fp32")
    assert "bf16 is emulated here" in text and "float32 (no autocast)" in text and "2n^3 / seconds" in text


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
    path = tmp_path / "run_all.json"
    stage = {"stage": "sft", "peaks_gflops": {"fp32": 100.0, "bf16": 200.0}, "sides": {}}
    old = {"stage": "reward", "peak_gflops": 100.0, "sides": {}}  # before both peaks: no like-for-like ratios, not kept
    path.write_text(json.dumps({"model": "m", "results": {"sft": stage, "dpo": dict(stage, stage="dpo"), "reward": old}}))
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


def test_stage_command_names_precision_always_and_device_and_steps_only_when_asked():
    from argparse import Namespace

    base = dict(model="m", runs=1, quick=False, precision="fp32")
    json_path = run_all.ROOT / "runs" / "bench" / "sft.json"
    cpu = run_all.stage_command("sft", Namespace(**base, steps=None, device="cpu"), json_path)
    assert cpu == ["benchmarks/sft.py", "--model", "m", "--rounds", "1", *run_all.STAGE_ARGS["sft"], "--precision", "fp32",
                   "--json", "runs/bench/sft.json"]
    cuda = run_all.stage_command("sft", Namespace(**base, steps=8, device="cuda"), json_path)
    assert cuda.count("--steps") == 1 and cuda[cuda.index("--steps") + 1] == "8"
    assert cuda[cuda.index("--device") + 1] == "cuda"


def test_the_grpo_row_runs_at_realistic_settings_with_both_rollouts():
    args = run_all.STAGE_ARGS["grpo"]
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert (value("--prompts"), value("--group"), value("--max-new-tokens"), value("--rollout")) == ("8", "8", "128", "hf,vllm")
    assert value("--micro-batch") == "16" and "--fixed-length" in args  # the same token work on every side
    assert "trl-precompute" in run_all.STAGE_ARGS["dpo"][-1] and "alignkit-copy" in run_all.STAGE_ARGS["dpo"][-1]


def test_run_all_smallest_dpo_and_grpo_rows(tmp_path, monkeypatch):
    """run_all end to end on tiny-llama, one step per side: both DPO pairs (TRL's only where trl is importable), the GRPO
    row with its vLLM sides skipped for a stated reason (no vllm in .venv; --device cpu), the table and the JSON."""
    trl = importlib.util.find_spec("trl") is not None
    dpo_sides = "alignkit,trl-precompute,alignkit-copy,trl" if trl else "alignkit,alignkit-copy"
    monkeypatch.setattr(run_all, "QUICK_ARGS", {
        "dpo": ["--batch-size", "1", "--steps", "1", "--warmup", "0", "--sides", dpo_sides],
        "grpo": ["--prompts", "1", "--group", "2", "--max-new-tokens", "2", "--steps", "1", "--warmup", "0", "--gen-rounds", "0",
                 "--sides", "trl,alignkit,bare" if trl else "alignkit,bare", "--rollout", "hf,vllm", "--micro-batch", "1",
                 "--fixed-length"]})
    monkeypatch.setattr(run_all, "PEAK_ARGS", dict.fromkeys(("full", "quick", "cuda"), ((64,), 0, 1)))
    monkeypatch.setattr(run_all, "EMULATED_PEAK_ARGS", ((32,), 0, 1))
    out, results = tmp_path / "bench.md", tmp_path / "results"
    monkeypatch.setattr("sys.argv", ["run_all.py", "--quick", "--stages", "dpo,grpo", "--out", str(out), "--results-dir", str(results)])
    run_all.main()

    text = out.read_text()
    saved = json.loads((results / "run_all.json").read_text())
    dpo, grpo = saved["results"]["dpo"], saved["results"]["grpo"]
    assert {side: r["variant"] for side, r in dpo["sides"].items()} == {s: "copy" if "copy" in s or s == "trl" else "precompute"
                                                                      for s in dpo_sides.split(",")}
    assert set(grpo["skipped"]) == ({"alignkit-vllm", "trl-vllm"} if trl else {"alignkit-vllm"}) and "alignkit" in grpo["sides"]
    assert {side: r["response_length"] for side, r in grpo["sides"].items()} == dict.fromkeys(grpo["sides"], 2.0)  # --fixed-length
    assert "| side | reference | step s (median of 1 runs) | pairs/s | vs TRL, like for like |" in text
    assert "Not run: alignkit-vllm: `import vllm` fails" in text or "Not run: alignkit-vllm: vLLM rollouts need a GPU" in text
    assert "MFU vs fp32 peak | MFU vs bf16 peak" in text and "**Measured matmul peaks**" in text
    if trl:
        assert "**Like for like** (the headline): alignkit / trl-precompute **" in text and "alignkit-copy / trl **" in text
        assert "Not like for like, for comparison with earlier tables only: alignkit (precompute) / trl (copy)" in text
    else:
        assert "| alignkit | precompute |" in text and "n/a" in text

    again = tmp_path / "again.md"  # --render: the same section from the saved JSON, nothing run
    monkeypatch.setattr("sys.argv", ["run_all.py", "--render", "--out", str(again), "--results-dir", str(results)])
    run_all.main()
    assert again.read_text().split(run_all.BEGIN)[1] == text.split(run_all.BEGIN)[1]


def test_mfu_against_an_emulated_bf16_peak_is_not_shown():
    side = _side(1.0)  # 1e9 FLOPs per 1 s step
    assert run_all.mfu(side, {"fp32": 10.0, "bf16": 20.0}, "bf16") == "5.0%"
    assert run_all.mfu(side, {"fp32": 10.0, "bf16": 1.0}, "bf16") == "n/a (bf16 emulated)"
    assert run_all.mfu(side, {"fp32": 10.0, "bf16": 1.0}, "fp32") == "10.0%"


def test_rollout_benchmark_gives_every_side_the_same_tokens(tmp_path, tiny_path):
    """benchmarks/rollout.py on tiny-llama: generate and alignkit's sampler make exactly prompts x G x new tokens each;
    the vLLM side runs where vLLM imports and is reported as not run elsewhere."""
    from benchmarks import rollout

    out = tmp_path / "rollout.json"
    rollout.main(["--model", tiny_path, "--prompts", "2", "--group", "2", "--max-new-tokens", "4", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert {name: r["tokens"] for name, r in result["results"].items() if name != "vllm"} == {"generate": 16, "alignkit": 16}
    assert "vllm" in result["results"] or result["notes"]["vllm"].startswith("not run")
