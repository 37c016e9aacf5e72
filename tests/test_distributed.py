"""Two processes (DDP, or FSDP2, over gloo) take the same optimizer step as one process with the doubled batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_two_ranks_match_one_rank_with_double_batch(tmp_path, tiny_path, write_jsonl):
    rows = [{"prompt": f"Spell {w}.", "completion": " ".join(w)} for w in ("cat", "house", "tree", "alignment", "x", "model", "reward", "policy")]
    data = write_jsonl(rows)
    common = ["sft", "--model", tiny_path, "--data", data, "--eval_fraction", "0", "--max_steps", "2", "--learning_rate", "1e-2",
              "--mixed_precision", "no", "--report_to", "jsonl", "--max_grad_norm", "0", "--warmup_ratio", "0", "--chat_template", "always"]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "alignkit.cli", *common, *extra],  # noqa: E731
                                        check=True, capture_output=True, text=True, timeout=600)
    run("--output_dir", str(tmp_path / "one"), "--batch_size", "4")
    result = run("--output_dir", str(tmp_path / "two"), "--batch_size", "2", "--num-processes", "2")
    one = [json.loads(line) for line in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    assert [round(m["loss"], 5) for m in one] == [round(m["loss"], 5) for m in two], result.stderr[-2000:]
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- FSDP2 on 2 CPU processes over gloo

REPO = Path(__file__).resolve().parents[1]
FSDP_CPU = REPO / "configs/accelerate/fsdp_cpu.yaml"
LOSS_TOL = 1e-4  # absolute, per step: 2 FSDP processes x batch b against 1 process x batch 2b (seen: <= 3e-6)
NORM_TOL = 1e-3  # absolute, on gradient norms of 3-4 (seen: <= 1.1e-4: a sum of squares over 3.2M weights, summed in shards)
WEIGHT_TOL = 1e-4  # absolute, per weight after the last step (seen: <= 1.3e-5)
RESUME_TOL = 1e-6  # a resumed FSDP run against the uninterrupted one (seen: bitwise equal)


def _alignkit(stage: str, args: list[str], fsdp: bool = False) -> subprocess.CompletedProcess:
    """`alignkit <stage> args` on one process, or under `accelerate launch` with fsdp_cpu.yaml (2 processes, gloo)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU), "--main_process_port", "0"]
    command = [*(launch if fsdp else [sys.executable]), "-m", "alignkit", stage, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"
    return result


def _logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_steps_close(a: list[dict], b: list[dict], keys: tuple[str, ...], tol: float, grad_norm_tol: float | None = None) -> None:
    """Each metrics.jsonl line's `keys` (where the line has them) within `tol` (`grad_norm_tol` for grad_norm), absolute;
    the lines match one to one."""
    assert [(m["step"], sorted(k for k in keys if k in m)) for m in a] == [(m["step"], sorted(k for k in keys if k in m)) for m in b]
    for x, y in zip(a, b):
        for key in keys:
            limit = grad_norm_tol if key == "grad_norm" and grad_norm_tol is not None else tol
            if key in x:
                assert abs(x[key] - y[key]) <= limit, f"step {x['step']} {key}: {x[key]} vs {y[key]} (tolerance {limit})"


def _assert_weights_close(a: Path, b: Path, tol: float) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(x[name], y[name], atol=tol, rtol=0, msg=lambda m: f"{name}: {m}")


def _assert_ran_sharded(checkpoint: Path) -> None:
    """An FSDP checkpoint's optimizer state is keyed by parameter name (the gathered shards); DDP's by index.

    Guards against accelerate running DDP instead: with `use_cpu` it drops FSDP unless alignkit keeps it.
    """
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert state and all(isinstance(k, str) for k in state), f"{checkpoint}: not an FSDP optimizer state ({list(state)[:3]})"


def test_fsdp_cpu_config_shards_like_the_gpu_config():
    """fsdp_cpu.yaml (tested below) and fsdp.yaml (for GPUs) share their FSDP settings."""
    import yaml

    cpu, gpu = (yaml.safe_load((REPO / f"configs/accelerate/{name}.yaml").read_text()) for name in ("fsdp_cpu", "fsdp"))
    assert cpu["fsdp_config"] == gpu["fsdp_config"] and cpu["fsdp_config"]["fsdp_version"] == 2
    assert cpu["distributed_type"] == "FSDP" and cpu["use_cpu"] and cpu["num_processes"] == 2


def test_fsdp_sft_matches_one_process_and_resumes(tmp_path, tiny_path, write_jsonl):
    """SFT, 3 steps: FSDP on 2 processes x batch 1 x 2 accumulation steps = 1 process x batch 4 (losses, held-out
    losses, gradient norms, weights); the FSDP run resumed from its step-1 checkpoint repeats steps 2-3; the
    checkpoints and the final model load as plain models."""
    from transformers import AutoModelForCausalLM

    words = ("cat", "house", "tree", "alignment", "x", "model", "reward", "policy", "shard", "gloo")
    data = write_jsonl([{"prompt": f"Spell {w}.", "completion": " ".join(w)} for w in words])
    common = ["--model", tiny_path, "--data", data, "--eval_fraction", "0.3", "--eval_every", "1", "--max_steps", "3",
              "--learning_rate", "1e-2", "--mixed_precision", "no", "--report_to", "jsonl", "--max_grad_norm", "1", "--warmup_ratio", "0",
              "--chat_template", "always", "--lora_r", "0", "--save_every", "1"]
    one, fsdp, resumed = tmp_path / "one", tmp_path / "fsdp", tmp_path / "resumed"
    _alignkit("sft", [*common, "--output_dir", str(one), "--batch_size", "4"])
    fsdp_args = [*common, "--batch_size", "1", "--grad_accum_steps", "2"]  # 3 held-out rows: process 1 scores 1, process 0 scores 2
    _alignkit("sft", [*fsdp_args, "--output_dir", str(fsdp)], fsdp=True)

    _assert_ran_sharded(fsdp / "checkpoint-1")
    metrics = ("loss", "grad_norm", "lr", "eval/loss")  # held-out loss after steps 1, 2 and 3
    _assert_steps_close(_logged(one), _logged(fsdp), metrics, LOSS_TOL, NORM_TOL)
    assert sum("eval/loss" in m for m in _logged(fsdp)) == 3 and sum("loss" in m for m in _logged(fsdp)) == 3
    _assert_weights_close(one / "model", fsdp / "model", WEIGHT_TOL)
    _assert_weights_close(one / "checkpoint-2/model", fsdp / "checkpoint-2/model", WEIGHT_TOL)

    # A run stopped after step 1 leaves checkpoint-1 and the log up to it (max_steps 1 would write only the final model,
    # no checkpoint, so the stop is this folder); `--resume auto` then runs steps 2-3 under FSDP.
    resumed.mkdir()
    shutil.copytree(fsdp / "checkpoint-1", resumed / "checkpoint-1")
    for name in ("config.yaml", "config_history.jsonl"):
        shutil.copy(fsdp / name, resumed / name)
    (resumed / "metrics.jsonl").write_text((fsdp / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    _alignkit("sft", [*fsdp_args, "--output_dir", str(resumed), "--resume", "auto"], fsdp=True)
    _assert_steps_close(_logged(fsdp), _logged(resumed), metrics, RESUME_TOL)
    _assert_weights_close(fsdp / "model", resumed / "model", RESUME_TOL)

    for folder in (resumed / "model", resumed / "checkpoint-2/model"):  # plain Hugging Face folders, tied head and all
        saved, state = load_file(folder / "model.safetensors"), AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert saved.keys() == load_file(one / "model/model.safetensors").keys()
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())


def test_fsdp_dpo_matches_one_process(tmp_path, tiny_path, write_jsonl):
    """DPO (frozen reference copy), 3 steps: FSDP on 2 processes x batch 2 = 1 process x batch 4 (losses, rewards,
    weights). The one process scores chosen and rejected in shared-prompt rows, FSDP in separate rows."""
    topics = ("cats", "dogs", "trees", "rivers", "stars", "books", "bread", "music")
    data = write_jsonl([{"prompt": f"Tell me about {t}.", "chosen": f"{t.capitalize()} are wonderful.", "rejected": f"I hate {t}."}
                        for t in topics])
    common = ["--model", tiny_path, "--data", data, "--eval_fraction", "0", "--max_steps", "3", "--learning_rate", "1e-2",
              "--mixed_precision", "no", "--report_to", "jsonl", "--max_grad_norm", "1", "--warmup_ratio", "0", "--chat_template", "always",
              "--lora_r", "0", "--reference", "copy", "--save_every", "1"]
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    _alignkit("dpo", [*common, "--output_dir", str(one), "--batch_size", "4"])
    _alignkit("dpo", [*common, "--output_dir", str(fsdp), "--batch_size", "2"], fsdp=True)

    _assert_ran_sharded(fsdp / "checkpoint-1")
    _assert_steps_close(_logged(one), _logged(fsdp), ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"), LOSS_TOL, NORM_TOL)
    assert _logged(fsdp)[-1]["loss"] < _logged(fsdp)[0]["loss"] - 0.1  # it trained: the steps compared are not all at log 2
    _assert_weights_close(one / "model", fsdp / "model", WEIGHT_TOL)
