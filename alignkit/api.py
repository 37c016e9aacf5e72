"""The Python entry points that assemble a stage: validated config -> monitor (when configured) -> recipe.

    import alignkit
    alignkit.grpo({"model": "runs/demo/sft/model", "data": "prompts.jsonl", "reward_function": "hhh-mini-gold",
                   "monitor": {"every": 5, "prompts": "prompts_val.jsonl", "gold": "hhh-mini-gold"}})

`alignkit.sft`, `alignkit.dpo`, ... are these functions. They sit above the recipes
(`alignkit.train.*`, which take a built monitor and never build one) and beside the command line
and the pipeline, which build monitors the same way through `run_stage`.
"""

from __future__ import annotations

from alignkit.config import DPOConfig, GRPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig, config_with_overrides
from alignkit.config_sampling import RejectionSamplingConfig
from alignkit.evaluate.monitors import build_monitor
from alignkit.train.dpo import train_dpo
from alignkit.train.grpo import train_grpo
from alignkit.train.kto import train_kto
from alignkit.train.ppo import train_online, train_ppo
from alignkit.train.rejection import train_rejection_sampling
from alignkit.train.reward import train_reward
from alignkit.train.sft import train_sft

MONITORED = {"dpo": train_dpo, "ppo": train_ppo, "grpo": train_grpo}  # recipes that take a monitor
UNMONITORED = {"sft": train_sft, "reward": train_reward, "kto": train_kto, "rs": train_rejection_sampling}


def run_stage(stage: str, config) -> dict:
    """Runs a stage's recipe on a validated config, with its monitor built from the config's `monitor:` section."""
    if stage in UNMONITORED:
        return UNMONITORED[stage](config)
    return MONITORED[stage](config, build_monitor(config, stage))


def run_online(config: PPOConfig, stage: str) -> dict:
    """PPO or GRPO (the pipeline's `policy:` choice) with its monitor."""
    return train_online(config, stage, build_monitor(config, stage))


def _entry(stage: str, cls):
    def entry(config=None, **overrides) -> dict:
        return run_stage(stage, config_with_overrides(cls, config, overrides, f"{stage} config"))

    entry.__name__ = stage
    entry.__doc__ = (f"Python entry point of `alignkit {stage}`: a {cls.__name__}, a dict or nothing, plus keyword overrides; "
                     f"returns the summary.")
    return entry


sft = _entry("sft", SFTConfig)
reward = _entry("reward", RewardConfig)
dpo = _entry("dpo", DPOConfig)
kto = _entry("kto", KTOConfig)
ppo = _entry("ppo", PPOConfig)
grpo = _entry("grpo", GRPOConfig)
rs = _entry("rs", RejectionSamplingConfig)
