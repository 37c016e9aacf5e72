"""`alignkit serve-reward`: a reward model (or an ensemble) behind HTTP, speaking the protocol `--reward_url` reads.

    alignkit serve-reward --model runs/reward --port 8001
    alignkit grpo --config configs/grpo.yaml --reward_url http://127.0.0.1:8001/score

POST JSON `{"prompts": [...], "responses": [...], <column>: [...]}` to /score (or /) answers
`{"rewards": [...]}`, one number per response (`alignkit.rl.rewards.HTTPReward` is the client); other
columns are ignored. Prompts are strings or message lists, responses strings. GET /health answers
`{"status": "ok", ...}` once the models are loaded, with the requests and responses served so far.

Several `--model` folders (or one ensemble folder) form an ensemble, scored as `alignkit.models.reward`
scores its ensembles: each folder is shifted by (its training mean - the folders' average mean), so the
std measures disagreement rather than Bradley-Terry's free offsets; `--ensemble-mode conservative` (the
default) answers mean - k * std (k: `--k`, else ensemble.json's, else 1), `mean` the mean. For one plain
model both are its `RewardModel.score`. `--standardize` divides by the training statistics, as
`--reward_model` in GRPO/PPO does.

A request without prompts/responses, with lengths that differ or entries of the wrong type is answered
HTTP 422 with one sentence naming the key; a score that is not finite is HTTP 500, never a NaN.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from pathlib import Path

from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit")
ENSEMBLE_MODES = ("conservative", "mean")
REQUEST_SHAPE = '{"prompts": [...], "responses": [...]}'
_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def add_arguments(parser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="PATH",
                        help="reward model folder written by `alignkit reward` (run, model/ or ensemble folder); "
                             "repeat it or give a comma-separated list for an ensemble")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8001, help="port to listen on")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--ensemble-mode", "--ensemble_mode", choices=ENSEMBLE_MODES, default="conservative",
                        help="ensemble score: conservative (mean - k * std) or mean; one plain model gives its score either way")
    parser.add_argument("--k", type=float, default=None, help="k of the conservative score (default: ensemble.json's, else 1)")
    parser.add_argument("--standardize", action="store_true",
                        help="divide by the training mean/std of the rewards, as --reward_model in grpo/ppo does")
    parser.add_argument("--mixed-precision", "--mixed_precision", default="auto", choices=("auto", "bf16", "no"),
                        help="bf16 autocast: auto (where native), bf16 or no (float32 exact)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def model_paths(values: list[str]) -> list[str]:
    """The --model values, comma-separated lists split; each must be an existing folder."""
    paths = [p.strip() for value in values for p in value.split(",") if p.strip()]
    if not paths:
        raise AlignkitError("--model names no folder; give a reward model folder written by `alignkit reward`")
    for path in paths:
        if not Path(path).expanduser().is_dir():
            raise AlignkitError(f"--model {path} is not an existing folder; give a reward model written by `alignkit reward`")
    return paths


class RewardScorer:
    """One or several loaded `RewardModel`s scored as one ensemble (see the module docstring)."""

    def __init__(self, models: list, mode: str = "conservative", k: float | None = None, standardize: bool = False,
                 batch_size: int = 16):
        self.models, self.mode, self.standardize, self.batch_size = models, mode, standardize, batch_size
        self.k = models[0].k if k is None else k
        means = [float(m.normalization.get("mean", 0.0)) for m in models]
        center = sum(means) / len(means)
        self.shifts = [mean - center for mean in means] if len(models) > 1 else [0.0]
        stds = [float(m.normalization.get("std", 1.0)) for m in models]
        self.normalization = {"mean": center, "std": sum(stds) / len(stds)}
        self.members = sum(len(m.members) for m in models)
        self.lock = threading.Lock()  # one forward at a time: requests arrive on several threads
        self.requests = self.responses = 0

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        """One reward per (prompt, response); an AlignkitError naming the first score that is not finite."""
        import torch

        if not responses:
            return []
        with self.lock:
            members = torch.cat([m.score(prompts, responses, self.batch_size).members - shift
                                 for m, shift in zip(self.models, self.shifts)])  # (K, N)
            self.requests, self.responses = self.requests + 1, self.responses + len(responses)
        values = members.mean(0)
        if self.mode == "conservative" and len(members) > 1:
            values = values - self.k * members.std(0, unbiased=False)
        if self.standardize:
            values = (values - self.normalization["mean"]) / max(self.normalization["std"], 1e-8)
        rewards = values.tolist()
        bad = [i for i, value in enumerate(rewards) if not math.isfinite(value)]
        if bad:
            raise AlignkitError(f"the reward model gave {rewards[bad[0]]} for 'responses'[{bad[0]}] ({len(bad)} of {len(rewards)} "
                                f"not finite), so no rewards are answered; check the model's weights or serve it with --mixed_precision no")
        return rewards

    def describe(self) -> dict:
        return {"status": "ok", "models": [m.path for m in self.models], "members": self.members, "mode": self.mode,
                "k": self.k, "standardize": self.standardize, "requests": self.requests, "responses": self.responses}


def load_scorer(args, paths: list[str]) -> RewardScorer:
    """The models at `paths`, loaded and checked (errors as one-sentence AlignkitErrors)."""
    from alignkit.models.precision import default_device_type, resolve_mixed_precision
    from alignkit.models.reward import RewardModel

    if args.batch_size < 1:
        raise AlignkitError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.k is not None and not (math.isfinite(args.k) and args.k >= 0):
        raise AlignkitError(f"--k must be a finite number, 0 or more, got {args.k}")
    bf16 = resolve_mixed_precision(args.mixed_precision, "--mixed_precision") == "bf16"
    device = args.device or default_device_type()
    models = [RewardModel.load(path, device=device, dtype=args.dtype, bf16=bf16) for path in paths]
    return RewardScorer(models, args.ensemble_mode, args.k, args.standardize, args.batch_size)


# ---------------------------------------------------------------- the request

class RequestError(ValueError):
    """A request the server cannot score; its message is the one sentence answered with HTTP 422."""


def _is_prompt(prompt) -> bool:
    """A string, or a list of {role, content} messages with string values."""
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                            and isinstance(m.get("content"), str) for m in prompt)


def read_request(body) -> tuple[list, list[str]]:
    """(prompts, responses) of a decoded request body, or a RequestError naming the key at fault."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body is a JSON {_JSON_TYPES.get(type(body), 'value')}, not an object {REQUEST_SHAPE}.")
    for key in ("prompts", "responses"):
        if key not in body:
            raise RequestError(f"the request has no '{key}' key; send {REQUEST_SHAPE}.")
        if not isinstance(body[key], list):
            raise RequestError(f"'{key}' is a JSON {_JSON_TYPES.get(type(body[key]), 'value')}, not a list.")
    prompts, responses = body["prompts"], body["responses"]
    if len(prompts) != len(responses):
        raise RequestError(f"'prompts' has {len(prompts)} entries but 'responses' has {len(responses)}; send one prompt per response.")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise RequestError(f"'responses'[{i}] is a JSON {_JSON_TYPES.get(type(response), 'value')}, not a string.")
    for i, prompt in enumerate(prompts):
        if not _is_prompt(prompt):
            raise RequestError(f"'prompts'[{i}] is neither a string nor a list of {{\"role\", \"content\"}} messages with string values.")
    return prompts, responses


# ---------------------------------------------------------------- the app

def create_app(scorer: RewardScorer):
    """The FastAPI app: POST /score (and /) -> {"rewards": [...]}, GET /health."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="alignkit serve-reward", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict:
        return scorer.describe()

    async def score(request):  # a plain Starlette endpoint: the body is read and checked here, one sentence per fault
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return JSONResponse({"detail": f"the request body is not JSON; send {REQUEST_SHAPE}."}, status_code=422)
        try:
            prompts, responses = read_request(body)
        except RequestError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        try:
            rewards = await run_in_threadpool(scorer, prompts, responses)
        except AlignkitError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=500)
        return JSONResponse({"rewards": rewards})

    app.router.add_route("/score", score, methods=["POST"])
    app.router.add_route("/", score, methods=["POST"])
    return app


def _check_port(host: str, port: int) -> None:
    """An AlignkitError now, rather than uvicorn's log line later, when the address cannot be bound."""
    if not 0 <= port <= 65535:
        raise AlignkitError(f"--port must be between 0 and 65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise AlignkitError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None


def run(args) -> None:
    import uvicorn

    paths = model_paths(args.model)
    _check_port(args.host, args.port)
    scorer = load_scorer(args, paths)
    app = create_app(scorer)
    what = f"{len(scorer.models)} reward models" if len(scorer.models) > 1 else scorer.models[0].path
    how = [f"{scorer.members} members, " + (f"mean - {scorer.k:g} * std" if scorer.mode == "conservative" else "mean")] if scorer.members > 1 else []
    how += ["standardized"] if scorer.standardize else []
    details = f" ({', '.join(how)})" if how else ""
    print(f"serving {what}{details} on http://{args.host}:{args.port}/score; GET /health", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
