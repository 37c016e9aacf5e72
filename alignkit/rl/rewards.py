"""Reward sources for online RL: a trained reward model (or ensemble), a Python function, an HTTP endpoint,
and a weighted sum of several.

Every source is called as `source(prompts, responses, columns) -> list[float]` where
`columns` holds the prompt rows' other columns, one value per response. A Python function
is called in one of two ways, told apart by its signature (`function_style`):

- alignkit's: `fn(prompts, responses, **columns)`, responses as strings;
- TRL's (a `completions` parameter, or only `**kwargs`): `fn(prompts=..., completions=...,
  completion_ids=..., **columns)`, as TRL's GRPOTrainer calls it: for conversational prompts
  (message lists) each completion is `[{"role": "assistant", "content": text}]`, for standard
  prompts a string; `completion_ids` are each completion's token ids (EOS included when it
  stopped there): the sampled ids where the caller passes them (training rollouts), else the
  text re-tokenized (no special tokens) with the tokenizer the source was built with, else None.
  TRL's `trainer_state`, `log_extra` and `log_metric` keywords are not passed; a function without
  `**kwargs` gets only the keywords it names. An `async def` function is awaited.

`Rewards`
combines sources and then applies, in order: the weighted sum, running normalisation
(optional) and clipping (optional). Bad values never pass silently:

- a function that raises, or returns the wrong number of values or non-numbers: an
  `AlignkitError` naming the function and what it returned;
- NaN / None / inf for some responses: those responses are skipped (advantage 0, left
  out of the loss and of every baseline) and counted in `reward/skipped`, or an error
  with `on_invalid: error`; a batch with no valid reward at all is an error;
- an endpoint is read strictly: a list of one finite number per response (or null, which
  counts as invalid as above), plain or as `{"rewards": [...]}`; booleans, numeric strings,
  objects keyed by index, a wrong length and NaN/inf are errors naming the endpoint;
- an endpoint that does not answer within `timeout` seconds in all (the deadline of the whole
  call, `retries` retries included): an error saying so and what to check.

Config form (`rewards:` in a PPO/GRPO config), a list of sources:

    rewards:
      - {type: model, path: runs/rm, weight: 1.0, conservative_k: 1.0}
      - {type: function, function: "my_module:my_reward", weight: 0.5}
      - {type: http, url: "http://localhost:8000/score", timeout: 30, retries: 2}

`hhh-mini-gold` names the hhh-mini gold judge as a function.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from alignkit.errors import AlignkitError
from alignkit.models.reward import RewardModel
from alignkit.http import check_url, post_json
from alignkit.rl.reward_specs import SOURCE_KEYS, check_reward_specs

FUNCTION_ALIASES = {"hhh-mini-gold": "alignkit.data.tasks.hhh_mini:gold_rewards"}


def _check_values(values, count: int, source: str) -> list[float]:
    """`values` as floats (NaN for None), or an error naming `source` when the count or types are wrong."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().flatten().tolist()
    try:
        values = list(values)
    except TypeError:
        raise AlignkitError(f"reward {source} returned {type(values).__name__}, not a list of {count} numbers") from None
    if len(values) != count:
        raise AlignkitError(f"reward {source} returned {len(values)} values for {count} responses; it must return one number per response")
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(math.nan)
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise AlignkitError(f"reward {source} returned {value!r} for response {i + 1}; rewards must be numbers") from None
    return out


# ---------------------------------------------------------------- sources

def resolve_function(spec: str) -> Callable:
    """`module:function`, `path/to/file.py:function` or an alias (hhh-mini-gold) -> the callable."""
    spec = FUNCTION_ALIASES.get(spec, spec)
    module_name, _, name = spec.rpartition(":")
    if not module_name or not name:
        raise AlignkitError(f"reward function {spec!r} must look like module:function or path/file.py:function")
    if module_name.endswith(".py") and not Path(module_name).is_file():
        raise AlignkitError(f"reward function file {module_name} does not exist")
    try:
        module = _import_reward_module(module_name)
    except SyntaxError as exc:  # also a file that is not UTF-8 text
        file = exc.filename or module_name
        named = f"reward function file {file}" if module_name.endswith(".py") else f"reward function {spec}: {file}"
        raise AlignkitError(f"{named} line {exc.lineno}: {exc.msg}; fix the file (`python -m py_compile {file}` shows the spot)") from None
    except ImportError as exc:
        raise AlignkitError(f"reward function {spec}: cannot import {module_name} ({exc}); check the module path and PYTHONPATH") from None
    except AlignkitError:
        raise
    except Exception as exc:  # the user's module failed while running its top level: say where
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(module_name.replace(".", "/") + ".py")
                  or f.filename == str(Path(module_name).resolve())]
        where = f" at line {frames[-1].lineno}" if frames else ""
        raise AlignkitError(f"reward function {spec}: loading {module_name} raised {type(exc).__name__}{where}: {exc}; fix the file") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise AlignkitError(f"reward function {spec}: {module_name} has no function {name!r}")
    return function


def _import_reward_module(module_name: str):
    """The module `module_name` (dotted, or a path to a .py file, imported under its stem); a failed file import leaves no trace in sys.modules."""
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name)
    loader_spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[path.stem] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(path.stem, None)
        raise
    return module


TRL_KEYWORDS = ("prompts", "completions", "completion_ids")  # what TRL passes besides the dataset's columns


def _parameters(function) -> list | None:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return None


def function_style(function) -> str:
    """`trl` for a function that takes TRL's keywords (a `completions` parameter, or nothing but `**kwargs`),
    else `alignkit` (`fn(prompts, responses, **columns)`)."""
    parameters = _parameters(function) or []
    only_kwargs = bool(parameters) and all(p.kind == p.VAR_KEYWORD for p in parameters)
    return "trl" if "completions" in {p.name for p in parameters} or only_kwargs else "alignkit"


def _accepted_keywords(function) -> set | None:
    """The keyword names `function` takes, or None when it takes any (`**kwargs`)."""
    parameters = _parameters(function)
    if parameters is None or any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def as_completions(prompts: list, responses: list[str]) -> list:
    """Responses in TRL's form: `[{"role": "assistant", "content": text}]` after a conversational prompt, else the text."""
    return [[{"role": "assistant", "content": r}] if isinstance(p, list) else r for p, r in zip(prompts, responses)]


class FunctionReward:
    """A Python function, called the alignkit way (`fn(prompts, responses, **columns)`) or TRL's (see the module docstring).

    `tokenizer` (optional) re-tokenizes responses into `completion_ids` for a TRL-style function when the caller
    passes no ids.
    """

    def __init__(self, function, name: str | None = None, tokenizer=None):
        self.function = resolve_function(function) if isinstance(function, str) else function
        self.name = name or (function if isinstance(function, str) else getattr(function, "__name__", "function"))
        self.style, self.tokenizer = function_style(self.function), tokenizer
        self.accepts = _accepted_keywords(self.function)  # a TRL-style function without **kwargs gets only what it names

    def __call__(self, prompts: list, responses: list[str], columns: dict | None = None, completion_ids: list | None = None) -> list[float]:
        columns = columns or {}
        try:
            if self.style == "trl":
                values = self._call_trl(prompts, responses, columns, completion_ids)
            else:
                values = self.function(prompts, responses, **columns)
        except AlignkitError:
            raise
        except Exception as exc:  # the user's code: report it, with its own message
            how = ("fn(prompts=..., completions=..., completion_ids=..., **columns) as TRL calls it" if self.style == "trl"
                   else "fn(prompts, responses, **columns)")
            raise AlignkitError(f"reward function {self.name} raised {type(exc).__name__}: {exc}; it is called as "
                                f"{how}, with {len(responses)} responses") from exc
        return _check_values(values, len(responses), f"function {self.name}")

    def _call_trl(self, prompts: list, responses: list[str], columns: dict, completion_ids: list | None):
        if completion_ids is None and self.tokenizer is not None:
            completion_ids = [self.tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
        keywords = {k: v for k, v in columns.items() if k not in TRL_KEYWORDS}
        keywords.update(prompts=prompts, completions=as_completions(prompts, responses),
                        completion_ids=[list(ids) for ids in completion_ids] if completion_ids is not None else None)
        if self.accepts is not None:
            keywords = {k: v for k, v in keywords.items() if k in self.accepts}
        values = self.function(**keywords)
        return asyncio.run(values) if inspect.iscoroutine(values) else values


class HTTPReward:
    """POSTs `{"prompts": [...], "responses": [...], <column>: [...]}` as JSON to `url`; the answer must be a
    JSON list of one number (or null) per response, or `{"rewards": [...]}` holding such a list.

    `timeout` is the total deadline of one scoring call, retries included; the retry policy is
    `alignkit.http.post_json`'s (connection errors, timeouts, 429 and 5xx, honouring Retry-After).
    """

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 2, backoff: float = 0.5):
        self.url = check_url(url, "reward")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.name = url

    def __call__(self, prompts: list, responses: list[str], columns: dict | None = None) -> list[float]:
        answer = post_json(self.url, {"prompts": prompts, "responses": responses, **(columns or {})},
                           deadline=self.timeout, retries=self.retries, backoff=self.backoff, name="reward endpoint")
        return _endpoint_rewards(answer, len(responses), f"reward endpoint {self.url}")


def _endpoint_rewards(answer, count: int, where: str) -> list[float]:
    """An endpoint's answer read strictly: a list of `count` finite JSON numbers (null -> NaN, skipped).

    Nothing is coerced: booleans, numeric strings, objects keyed by index, a wrong length or NaN/inf
    are errors, since reading them some way or other could silently train on the wrong rewards."""
    values = answer
    if isinstance(answer, dict):
        if "rewards" not in answer:
            raise AlignkitError(f"{where} answered a JSON object without 'rewards' (keys: {sorted(answer)[:10]}); "
                                f"answer a list of numbers or {{\"rewards\": [...]}}")
        values = answer["rewards"]
    if not isinstance(values, list):
        raise AlignkitError(f"{where} answered a JSON {_JSON_TYPES.get(type(values), 'value')} where a list of {count} numbers belongs; "
                            f"answer a list of numbers or {{\"rewards\": [...]}}")
    if len(values) != count:
        raise AlignkitError(f"{where} answered {len(values)} rewards for {count} responses; it must answer one per response")
    rewards = []
    for number, value in enumerate(values, 1):
        if value is None:
            rewards.append(math.nan)  # an explicit "no reward": skipped or an error, as on_invalid says
            continue
        reward = _finite_number(value)
        if reward is None:
            raise AlignkitError(f"{where} answered {json.dumps(value)[:60]} for response {number}; each reward must be "
                                f"a finite JSON number (or null to skip the response)")
        rewards.append(reward)
    return rewards


_JSON_TYPES = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _finite_number(value) -> float | None:
    """`value` as a float when it is a JSON number (not a boolean) that is finite as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return value if math.isfinite(value) else None


class ModelReward:
    """A trained reward model or ensemble directory (`alignkit.models.reward.RewardModel`).

    `conservative_k` > 0 scores an ensemble by mean - k * std (a pessimistic estimate
    that resists over-optimisation, Coste et al. 2024); `standardize` divides by the
    model's own normalisation statistics (mean/std of its training scores).
    """

    def __init__(self, path: str, conservative_k: float = 0.0, batch_size: int = 16, standardize: bool = True,
                 bf16: bool = True, device: str = "cpu"):
        self.model = RewardModel.load(path, device=device, bf16=bf16)
        self.name, self.k, self.batch_size, self.standardize = str(path), conservative_k, batch_size, standardize

    def __call__(self, prompts: list, responses: list[str], columns: dict | None = None) -> list[float]:
        scores = self.model.score(prompts, responses, batch_size=self.batch_size)
        values = torch.as_tensor(scores.conservative(self.k) if self.k else scores.mean, dtype=torch.float32)
        stats = getattr(self.model, "normalization", None) or {}
        if self.standardize and stats.get("std"):
            values = (values - float(stats.get("mean", 0.0))) / float(stats["std"])
        return _check_values(values, len(responses), f"model {self.name}")


def _from_spec(cls, spec: dict, kind: str):
    """A source from its spec, already checked by `check_reward_specs` (keys, required key, numbers)."""
    return cls(**{k: v for k, v in spec.items() if k in SOURCE_KEYS[kind]})


REWARD_SOURCES = {
    "model": lambda spec: _from_spec(ModelReward, spec, "model"),
    "function": lambda spec: _from_spec(FunctionReward, spec, "function"),
    "http": lambda spec: _from_spec(HTTPReward, spec, "http"),
}


# ---------------------------------------------------------------- combining

class RunningMoments:
    """Mean and standard deviation of every value seen so far (Chan et al. parallel update)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


@dataclass
class RewardResult:
    raw: torch.Tensor  # (N,) weighted sum of the sources (0 where invalid)
    normalized: torch.Tensor  # (N,) after running normalisation and clipping: what the optimiser sees
    valid: torch.Tensor  # (N,) bool
    per_source: dict  # source name -> mean raw value over valid responses

    def metrics(self) -> dict:
        valid = self.valid
        mean = lambda x: x[valid].mean().item() if valid.any() else float("nan")
        out = {"reward": mean(self.raw), "reward/normalized": mean(self.normalized),
               "reward/std": self.raw[valid].std().item() if valid.sum() > 1 else 0.0,
               "reward/skipped": int((~valid).sum())}
        if len(self.per_source) > 1:
            out.update({f"reward/{name}": value for name, value in self.per_source.items()})
        return out


class Rewards:
    """A weighted sum of reward sources, then running normalisation and clipping."""

    def __init__(self, sources: list[tuple[str, Callable, float]], normalize: bool = False, clip: float = 0.0,
                 on_invalid: str = "skip"):
        if not sources:
            raise AlignkitError("no reward configured: set reward_model, reward_function, reward_url or rewards")
        if on_invalid not in ("skip", "error"):
            raise AlignkitError(f"on_invalid must be skip or error, got {on_invalid!r}")
        self.sources, self.normalize, self.clip, self.on_invalid = sources, normalize, clip, on_invalid
        self.moments = RunningMoments()

    def __call__(self, prompts: list, responses: list[str], columns: dict | None = None, update_stats: bool = True,
                 completion_ids: list | None = None) -> RewardResult:
        """Scores `responses`; `update_stats=False` (evaluation) leaves the running statistics alone.

        `completion_ids` (each response's sampled token ids, when the caller has them) reach TRL-style functions.
        """
        return self.finish(*self.raw_scores(prompts, responses, columns, completion_ids), update_stats)

    def raw_scores(self, prompts: list, responses: list[str], columns: dict | None = None,
                   completion_ids: list | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(raw (N,), valid (N,), per-source means): the weighted sum of the sources, before any normalisation."""
        total = torch.zeros(len(responses), dtype=torch.float32)
        per_source, valid = {}, torch.ones(len(responses), dtype=torch.bool)
        for name, source, weight in self.sources:
            ids = {"completion_ids": completion_ids} if completion_ids is not None and isinstance(source, FunctionReward) else {}
            values = torch.tensor(source(prompts, responses, columns or {}, **ids), dtype=torch.float32)
            bad = ~torch.isfinite(values)
            if bad.any() and self.on_invalid == "error":
                first = int(bad.nonzero()[0]) + 1
                raise AlignkitError(f"reward {name} gave {values[first - 1].item()} for response {first} "
                                    f"({int(bad.sum())} of {len(values)} not finite); fix it or set on_invalid: skip")
            valid &= ~bad
            values = torch.where(bad, torch.zeros_like(values), values)
            per_source[name] = values[~bad].mean().item() if (~bad).any() else float("nan")
            total += weight * values
        if not valid.any():
            raise AlignkitError(f"every reward in the batch of {len(responses)} was NaN/None/inf; check the reward source")
        return total, valid, per_source

    def finish(self, raw: torch.Tensor, valid: torch.Tensor, per_source: dict, update_stats: bool = True) -> RewardResult:
        """The normalised and clipped rewards of raw scores (N,) already computed (by `__call__`, or gathered over
        several generation rounds by dynamic sampling, so that the running statistics see each response once)."""
        normalized = raw.clone()
        if self.normalize:
            if update_stats:
                self.moments.update(raw[valid])
            normalized = (raw - self.moments.mean) / (self.moments.std + 1e-8)
        if self.clip > 0:
            normalized = normalized.clamp(-self.clip, self.clip)
        normalized = torch.where(valid, normalized, torch.zeros_like(normalized))
        return RewardResult(raw=raw, normalized=normalized, valid=valid, per_source=per_source)

    def state_dict(self) -> dict:
        """The running normalisation statistics (the sources themselves hold no state)."""
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])


def build_rewards(specs: list[dict], normalize: bool = False, clip: float = 0.0, on_invalid: str = "skip", tokenizer=None) -> Rewards:
    """`Rewards` from a list of source specs ({type, weight, ...}); see the module docstring.

    `tokenizer` (the policy's) lets TRL-style functions get `completion_ids` when a caller passes none.
    """
    check_reward_specs(specs)  # every entry, before the first source loads a model
    sources = []
    for spec in specs:
        source = REWARD_SOURCES[spec["type"]](spec)
        if isinstance(source, FunctionReward):
            source.tokenizer = tokenizer
        sources.append((source.name, source, float(spec.get("weight", 1.0))))
    return Rewards(sources, normalize, clip, on_invalid)
