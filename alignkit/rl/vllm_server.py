"""`alignkit vllm-serve --model M`: a vLLM engine behind HTTP for a trainer's rollouts (`vllm_mode: server`), as TRL's `trl vllm-serve`.

Run it from the vLLM environment (`make vllm-setup`; `.venv-vllm/bin/alignkit vllm-serve ...`). Routes:

    GET  /health               {"status": "ok", "model": ...}
    POST /generate             {prompt_token_ids: [[int]], n, max_tokens, temperature, top_p, stop_token_ids}
                               -> {completion_ids: [[int]], logprobs: [[float]]}  (prompt i's samples at rows i*n..)
    POST /sequence_logprobs    {prompt_token_ids: [int], completion_ids: [int]} -> {logprobs: [float]}
    POST /reload_weights       {path: a safetensors file or folder} -> {"reloaded": path, "seconds": s}

Requests are served one at a time (the engine is not shared between threads).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from pydantic import BaseModel, Field

from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model folder, alias or hub id (the policy's starting weights)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=1024, help="longest prompt + response in tokens")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the trainer's precision: float32, or bfloat16 where it trains with mixed_precision bf16")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="share of GPU memory vLLM may take (GPU only)")
    parser.add_argument("--seed", type=int, default=0)


class Generate(BaseModel):
    prompt_token_ids: list[list[int]] = Field(min_length=1)
    n: int = Field(1, ge=1)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop_token_ids: list[int] = []
    seed: int | None = None


class Sequence(BaseModel):
    prompt_token_ids: list[int] = Field(min_length=1)
    completion_ids: list[int] = Field(min_length=1)


class Reload(BaseModel):
    path: str


def build_app(engine, model_name: str):
    """The FastAPI app over `engine` (a `VLLMEngine`, or anything with its methods)."""
    from fastapi import FastAPI, HTTPException

    app, lock = FastAPI(title="alignkit vllm-serve"), threading.Lock()

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name}

    @app.post("/generate")
    def generate(request: Generate):
        with lock:
            ids, logps = engine.generate(request.prompt_token_ids, request.n, request.max_tokens, request.temperature,
                                         request.top_p, request.stop_token_ids, request.seed)
        return {"completion_ids": ids, "logprobs": logps}

    @app.post("/sequence_logprobs")
    def sequence_logprobs(request: Sequence):
        with lock:
            return {"logprobs": engine.sequence_logprobs(request.prompt_token_ids, request.completion_ids)}

    @app.post("/reload_weights")
    def reload_weights(request: Reload):
        started = time.perf_counter()
        try:
            with lock:
                engine.load_weights_from(request.path)
        except AlignkitError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"reloaded": request.path, "seconds": time.perf_counter() - started}

    return app


def run(args) -> None:
    import uvicorn

    from alignkit.models.load import resolve_model_path
    from alignkit.rl.vllm_engine import VLLMEngine

    path = resolve_model_path(args.model)
    engine = VLLMEngine(path, args.max_model_len, args.dtype, args.seed, args.gpu_memory_utilization)
    log.info(f"vllm-serve: {path} at http://{args.host}:{args.port}")
    uvicorn.run(build_app(engine, str(path)), host=args.host, port=args.port, log_level="warning")
