"""Value models for PPO: a value head on the policy's backbone, or a separate critic.

- `head`: a linear layer on the policy's final hidden states (shared backbone). The
  policy forward already computes those states at the response positions; a hook on
  the LM head's input picks them up, so log-probs and values come from one forward
  through `token_logprobs`, the same code path as everywhere else.
- `policy` / `reward`: a separate critic, a backbone plus a linear head, initialised
  from the policy's weights or from the reward model's (whose scalar head is the
  natural starting value, Ouyang et al. 2022). It costs a second forward and backward.
  The policy sees a reward model's score standardised by the mean/std stored with it
  (`rl.rewards.ModelReward`); a critic from that model applies the same affine map to
  its head, so its first values are on the scale of the rewards (as OpenRLHF's critic
  does with `normalize_reward`).

V(s_t) for response token t is read from the hidden state at t - 1 (the state that
also predicts token t), so values and log-probs share positions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import AlignkitError
from alignkit.models.wrapping import unwrap
from alignkit.models.load import add_lora, load_causal_lm, resolve_model_path
from alignkit.models.reward import ensemble_layout, read_reward_stats


class ValueHead(nn.Module):
    """hidden (N, H) -> value (N,), initialised to predict 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


@contextlib.contextmanager
def captured_head_inputs(model):
    """Collects the 2-D inputs of the LM head (the hidden states `token_logprobs` projects), in call order."""
    captured: list[torch.Tensor] = []
    head = unwrap(model).get_output_embeddings()

    def hook(module, args):
        if args[0].dim() == 2:
            captured.append(args[0])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def scored_positions(mask: torch.Tensor):
    """(rows, cols) of the tokens `token_logprobs` scores: mask on, column 0 never."""
    scored = mask.bool().clone()
    scored[:, 0] = False
    return scored.nonzero(as_tuple=True)


class Critic(nn.Module):
    """A separate value model: transformer backbone + linear head, values at response positions."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def state_values(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """(N, T) the head's (standardised) output at every position: a reward model's score where a sequence ends."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        per_state = self.head(out.last_hidden_state.to(self.head.weight.dtype)).squeeze(-1).float()
        return (per_state - self.mean) / self.std

    def forward(self, batch: dict) -> torch.Tensor:
        per_state = self.state_values(batch["input_ids"], batch["attention_mask"], batch["position_ids"])  # (N, T)
        values = torch.zeros_like(per_state)
        values[:, 1:] = per_state[:, :-1]  # V for token t comes from the state at t - 1
        return values * batch["response_mask"]


def _critic_source(path: str) -> tuple[str, dict]:
    """The model directory a critic starts from (a model, or an ensemble's first member) and the
    (mean, std) that map its raw score to the standardised score `ModelReward` hands the policy
    (for an ensemble, member 0's offset folded into the shared mean)."""
    layout = ensemble_layout(path)
    if layout is not None:
        dirs, offsets, _, normalization = layout
        return resolve_model_path(dirs[0]), {"mean": normalization["mean"] + offsets[0], "std": normalization["std"]}
    resolved = Path(resolve_model_path(path))
    return str(resolved), (read_reward_stats(resolved) if (resolved / "config.json").is_file() else {})


def load_critic(path: str, args, zero_head: bool, standardize: bool = False) -> Critic:
    """A critic from a causal LM or reward model directory; LoRA on its backbone when `args.lora_r` > 0.

    `standardize`: map the head's output through the reward model's stored (mean, std), as
    `ModelReward` maps its scores.
    """
    from transformers import AutoModelForSequenceClassification


    directory, stats = _critic_source(path)
    model = load_causal_lm(directory, args.dtype, args.trust_remote_code, model_class=AutoModelForSequenceClassification,
                           allow_unsafe_pickle=args.allow_unsafe_pickle, num_labels=1)
    model = unwrap(model)
    head = getattr(model, "score", None)
    if head is None:
        raise AlignkitError(f"critic initialisation: {path} loads as {type(model).__name__} without a `score` head")
    if zero_head:
        nn.init.zeros_(head.weight)
    backbone = model.base_model
    if args.lora_r > 0:
        backbone = add_lora(backbone, args.lora_r, args.lora_alpha, 0.0, args.target_modules, task_type="FEATURE_EXTRACTION")
    head.weight.requires_grad_(True)
    stats = stats if standardize else {}
    return Critic(backbone, head, stats.get("mean", 0.0), max(float(stats.get("std", 1.0)), 1e-8))


def build_value_model(kind: str, args, policy, reward_model_path: str = ""):
    """`head`, `policy` (critic from the policy's weights), `reward` (critic from the reward model), or `none`."""
    if kind == "none":
        return None
    if kind == "head":
        return ValueHead(unwrap(policy).config.hidden_size)
    if kind == "policy":
        return load_critic(args.model, args, zero_head=True)
    if kind == "reward":
        if not reward_model_path:
            raise AlignkitError("value_model: reward needs a reward model (reward_model: PATH)")
        return load_critic(reward_model_path, args, zero_head=False, standardize=True)
    raise AlignkitError(f"value_model must be head, policy, reward or none; got {kind!r}")
