"""Golden runs: every recipe on tiny-llama for a few steps, reduced to what must never change under a refactor.

Each run's record is its `metrics.jsonl` without the timing keys, `monitor.jsonl` when a monitor
ran, and the sha256 of every saved tensor (name, dtype, shape and bytes; not the file, whose
header could change without the weights changing). `tests/golden/golden.json` holds the records
of the code before the run-skeleton refactor, one set per CPU capability (`torch.backends.cpu.get_cpu_capability()`:
AVX512, AVX2, ...; float kernels and the bf16 default differ between them, and a near tie in a discrete metric flips);
`test_golden.py` reruns the set of this machine's kind and compares bit for bit every key the record has (a metric
added later is new information, not a change).

Record anew (only when a change is meant to alter the numbers, and say so in the commit):

    .venv/bin/python tests/golden_runs.py --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).with_name("golden") / "golden.json"


def capability() -> str:
    """The key of this machine's records: the CPU capability torch dispatches its kernels for."""
    return torch.backends.cpu.get_cpu_capability()
TIMING = ("seconds", "per_s", "time/", "step_s")  # wall-clock keys: the only values allowed to differ


def capitalized_words(prompts, responses, **columns):
    """The proxy the online runs chase: the share of capitalised words."""
    return [sum(w[:1].isupper() for w in r.split()) / max(1, len(r.split())) for r in responses]


def lowercase_words(prompts, responses, **columns):
    """The monitors' gold: the share of lower-case words."""
    return [sum(w[:1].islower() for w in r.split()) / max(1, len(r.split())) for r in responses]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(root: Path) -> dict[str, str]:
    topics = ["apples", "rivers", "mountains", "cats", "dogs", "trains", "books", "stars", "clouds", "bread", "music", "chess",
              "coffee", "tea", "gardens", "rain"]
    pairs = [{"prompt": f"Tell me about {t}.", "chosen": f"{t.capitalize()} are wonderful and worth learning about.",
              "rejected": "No."} for t in topics]
    unpaired = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"} for p in pairs for k in ("chosen", "rejected")]
    return {
        "sft": _write(root / "sft.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]),
        "pairs": _write(root / "pairs.jsonl", pairs[:12]), "pairs_eval": _write(root / "pairs_eval.jsonl", pairs[12:]),
        "unpaired": _write(root / "unpaired.jsonl", unpaired),
        "prompts": _write(root / "prompts.jsonl", [{"prompt": f"Write about topic {i}."} for i in range(16)]),
        "held_out": _write(root / "held_out.jsonl", [{"prompt": f"Describe thing {i}."} for i in range(6)]),
    }


def _runs(model: str, data: dict[str, str], cache: str) -> dict[str, tuple[str, dict]]:
    """name -> (recipe, config): a few steps of every recipe and reference mode."""
    common = {"model": model, "report_to": ["jsonl"], "seed": 0, "warmup_ratio": 0.0,
              "chat_template": "always"}  # the records render these string rows through the template (auto: raw, as TRL)
    direct = {**common, "data": data["pairs"], "eval_data": data["pairs_eval"], "batch_size": 4, "learning_rate": 1e-3,
              "max_steps": 3, "mixed_precision": "no", "ref_cache_dir": cache, "merge_lora": False}
    monitor_direct = {"every": 2, "gold": f"{__name__}:lowercase_words", "max_prompts": 4, "max_new_tokens": 6}
    online = {**common, "data": data["prompts"], "eval_data": data["held_out"], "reward_function": f"{__name__}:capitalized_words",
              "mixed_precision": "no", "max_new_tokens": 6, "learning_rate": 3e-2, "batch_size": 8, "max_steps": 3,
              "prompts_per_step": 4, "monitor": {"every": 2, "prompts": data["held_out"], "gold": f"{__name__}:lowercase_words",
                                                  "max_new_tokens": 6, "hacking_every": 1}}
    return {
        "sft": ("sft", {**common, "data": data["sft"], "batch_size": 4, "max_steps": 3, "learning_rate": 1e-3, "eval_fraction": 0.25}),
        "sft_lora_packed": ("sft", {**common, "data": data["sft"], "batch_size": 4, "max_steps": 3, "learning_rate": 1e-2,
                                    "lora_r": 4, "lora_alpha": 8, "packing": True, "mixed_precision": "no"}),
        "reward": ("reward", {**common, "data": data["pairs"], "eval_data": data["pairs_eval"], "batch_size": 4, "max_steps": 3,
                              "learning_rate": 1e-3}),
        "reward_ensemble": ("reward", {**common, "data": data["pairs"], "eval_data": data["pairs_eval"], "batch_size": 4,
                                       "max_steps": 2, "learning_rate": 1e-3, "ensemble": 2, "mixed_precision": "no"}),
        "dpo_copy_monitor": ("dpo", {**direct, "reference": "copy", "monitor": monitor_direct}),
        "dpo_precompute": ("dpo", {**direct, "reference": "precompute", "loss": "ipo", "grad_accum_steps": 2}),
        "dpo_adapter_monitor": ("dpo", {**direct, "reference": "adapter", "lora_r": 4, "lora_alpha": 8, "learning_rate": 5e-3,
                                        "monitor": monitor_direct}),
        "kto": ("kto", {**direct, "data": data["unpaired"], "eval_data": "", "eval_fraction": 0.25, "reference": "precompute"}),
        "ppo_monitor": ("ppo", {**online, "advantage": "gae", "group_size": 1, "ppo_epochs": 2, "num_minibatches": 2}),
        "grpo_monitor": ("grpo", {**online, "group_size": 4}),
    }


def tensor_digests(output_dir: Path) -> dict[str, str]:
    """{relative file: sha256 over its tensors} for every safetensors file a run saved."""
    digests = {}
    for path in sorted(output_dir.rglob("*.safetensors")):
        if "checkpoint-" in str(path):
            continue
        digest = hashlib.sha256()
        for name, tensor in sorted(load_file(path).items()):
            tensor = tensor.contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        digests[str(path.relative_to(output_dir))] = digest.hexdigest()
    return digests


def _log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in TIMING)} for line in path.read_text().splitlines()]


def record(name: str, recipe: str, config: dict, root: Path) -> dict:
    import alignkit.api

    output_dir = root / name
    getattr(alignkit.api, recipe)({**config, "output_dir": str(output_dir)})
    logs = {str(p.relative_to(output_dir)): _log(p) for p in sorted(output_dir.rglob("*.jsonl"))
            if "eval_answers" not in str(p) and p.name != "config_history.jsonl"}  # the configs used, not what the run computed
    return {"logs": logs, "weights": tensor_digests(output_dir)}


def run_all(root: Path, names: list[str] | None = None) -> dict[str, dict]:
    from alignkit.models.embedded import tiny_model_path

    data = _data(root)
    runs = _runs(str(tiny_model_path()), data, str(root / "ref_cache"))
    return {name: record(name, recipe, config, root) for name, (recipe, config) in runs.items() if not names or name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record tests/golden/golden.json from this code")
    parser.add_argument("--only", nargs="*", help="run these names only")
    args = parser.parse_args()
    sys.modules.setdefault("golden_runs", sys.modules[__name__])  # the reward specs name this module
    with tempfile.TemporaryDirectory() as tmp:
        records = run_all(Path(tmp), args.only)
    everything = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        everything[capability()] = {**everything.get(capability(), {}), **records}
        GOLDEN.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")
        print(f"wrote the {capability()} records of {GOLDEN}")
        return
    golden = everything.get(capability(), {})
    for name, got in records.items():
        print(name, "same" if got == golden.get(name) else "DIFFERENT")


if __name__ == "__main__":
    main()
