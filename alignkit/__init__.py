"""alignkit: align language models with human preferences (SFT, reward models, PPO/GRPO, DPO/IPO/KTO).

Kept import-light: `import alignkit` loads no torch. The stage entry points `alignkit.sft`,
`alignkit.reward`, `alignkit.dpo`, `alignkit.kto`, `alignkit.ppo` and `alignkit.grpo` (alignkit/api.py,
which also builds a configured monitor) load on first use; the recipes live in `alignkit.train`,
the command line in `alignkit.cli`.
"""

__version__ = "0.1.0"

ENTRY_POINTS = ("sft", "reward", "dpo", "kto", "ppo", "grpo", "rs")


def __getattr__(name: str):
    if name in ENTRY_POINTS:
        from alignkit import api  # heavy (torch, transformers): loaded only when a stage is called

        return getattr(api, name)
    raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
