"""alignkit: align language models with human preferences (SFT, reward models, PPO/GRPO, DPO/IPO/KTO).

Kept import-light: `import alignkit` loads no torch; stages live in `alignkit.train`,
the command line in `alignkit.cli`.
"""

__version__ = "0.1.0"
