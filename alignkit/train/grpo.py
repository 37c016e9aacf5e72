"""GRPO (Shao et al. 2024, "DeepSeekMath", section 4): the online recipe of `train/ppo.py` with GRPO's defaults.

G responses per prompt; advantage (r - mean_group) / (std_group + 1e-4) for every
token of a response (no value model); KL to the reference as beta * k3 in the loss
rather than in the reward; one pass per rollout, so pi_old = pi and the ratio is 1
(the clipped surrogate then reduces to a REINFORCE-style gradient with a group
baseline). Every key of `alignkit ppo` applies; only the defaults differ (GRPOConfig).
"""

from __future__ import annotations

from alignkit.config import GRPOConfig, config_with_overrides
from alignkit.train.ppo import train_online


def train_grpo(config: GRPOConfig, monitor=None) -> dict:
    return train_online(config, "grpo", monitor)


def grpo(config: GRPOConfig | dict | None = None, monitor=None, **overrides) -> dict:
    """Python entry point: `alignkit.train.grpo({"model": ..., "data": ..., "reward_function": ...})`.

    `monitor`: a built monitor (train/monitor.py); `alignkit.grpo(...)` builds one from the config's `monitor:` section.
    """
    return train_grpo(config_with_overrides(GRPOConfig, config, overrides, "grpo config"), monitor)
