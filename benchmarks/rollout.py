"""Rollout tokens/s: vLLM vs alignkit's own sampler vs bare `model.generate`, same prompts, same lengths, one run.

    .venv-vllm/bin/python benchmarks/rollout.py --prompts 8 --group 4 --max-new-tokens 64 --rounds 3

Runs from the vLLM environment (`make vllm-setup`), where vLLM, alignkit and transformers all import; without vLLM
the vLLM side is reported as not run. Every side answers the same hhh-mini prompts (chat template applied), G
samples each at temperature 1, and generates exactly `--max-new-tokens` tokens per sample (EOS ignored:
`ignore_eos` in vLLM, no stop ids for alignkit's sampler, `min_new_tokens` for `generate`), so the token counts
are equal and the ratio is one of speed alone. All sides run float32 in this one process, in alternation
(`--rounds` times; median seconds), after one untimed warm-up call each. vLLM runs in process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) with `VLLM_CPU_OMP_THREADS_BIND=nobind`, so it uses torch's threads as the
other sides do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load_prompts(tokenizer, count: int) -> list[list[int]]:
    from alignkit.data.tasks.hhh_mini import generate
    from alignkit.data.tokenize import encode_prompt

    specs = generate(seed=0, n_train=max(count, 14), n_test=7, n_ood=7)["train"][:count]
    return [encode_prompt(tokenizer, spec["prompt"], True) for spec in specs]


def bare_generate(model, tokenizer, prompts, group, new_tokens):
    """`model.generate` on the left-padded batch, each prompt repeated G times."""
    rows = [p for p in prompts for _ in range(group)]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    return out[:, width:].numel()


def alignkit_sample(model, tokenizer, prompts, group, new_tokens):
    from alignkit.models.sampling import sample

    with torch.no_grad():
        responses, _ = sample(model, prompts, group, new_tokens, 1.0, 1.0, set(), tokenizer.pad_token_id)
    return sum(map(len, responses))


def vllm_side(path: str, max_len: int):
    """A callable like the others, or the reason vLLM cannot run here."""
    try:
        from alignkit.rl.vllm_engine import VLLMEngine
        engine = VLLMEngine(path, max_len, "float32", 0)
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported in the table, not raised
        return None, f"not run: {exc}"

    def run(_model, _tokenizer, prompts, group, new_tokens):
        params = engine.vllm.SamplingParams(n=group, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=new_tokens, ignore_eos=True)
        outputs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return sum(len(s.token_ids) for o in outputs for s in o.outputs)

    return run, ""


def measure(sides: dict, model, tokenizer, prompts, args) -> dict:
    seconds = {name: [] for name in sides}
    tokens = {}
    for name, side in sides.items():  # warm-up
        side(model, tokenizer, prompts, args.group, args.max_new_tokens)
    for _ in range(args.rounds):
        for name, side in sides.items():
            started = time.perf_counter()
            tokens[name] = side(model, tokenizer, prompts, args.group, args.max_new_tokens)
            seconds[name].append(time.perf_counter() - started)
    return {name: {"tokens": tokens[name], "seconds": statistics.median(seconds[name]), "runs": seconds[name],
                   "tokens_per_s": tokens[name] / statistics.median(seconds[name])} for name in sides}


def table(results: dict, notes: dict, args) -> str:
    base = results.get("generate", {}).get("tokens_per_s")
    lines = [f"Rollouts: {args.prompts} prompts x G={args.group}, {args.max_new_tokens} new tokens each, float32, "
             f"{torch.get_num_threads()} threads, median of {args.rounds}.", "",
             "| side | tokens | seconds | tokens/s | vs generate |", "|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else ""
        lines.append(f"| {name} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {ratio} |")
    for name, note in notes.items():
        lines.append(f"| {name} | | | {note} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    path = str(resolve_model_path(args.model))
    tokenizer, model = load_tokenizer(path), load_causal_lm(path).eval()
    prompts = load_prompts(tokenizer, args.prompts)
    sides, notes = {"generate": bare_generate, "alignkit": alignkit_sample}, {}
    run, why = vllm_side(path, max(map(len, prompts)) + args.max_new_tokens + 8)
    if run is None:
        notes["vllm"] = why
    else:
        sides["vllm"] = run
    results = measure(sides, model, tokenizer, prompts, args)
    print(table(results, notes, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "notes": notes,
                                               "command": " ".join([Path(sys.executable).name, *sys.argv])}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    main()
