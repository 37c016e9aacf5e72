"""Training recipes, one per stage; each is also a function of a config dict or dataclass.

    import alignkit.train
    alignkit.train.sft({"model": "smollm2-135m-instruct", "data": "sft.jsonl", "lora_r": 16})

(The recipe modules are imported here so that `alignkit.train.sft` is the function;
import a recipe's internals with `from alignkit.train.sft import ...`.)
"""

from alignkit.train.sft import sft

__all__ = ["sft"]
from alignkit.train.dpo import dpo  # noqa: E402
from alignkit.train.kto import kto  # noqa: E402

__all__ += ["dpo", "kto"]
from alignkit.train.ppo import ppo  # noqa: E402
from alignkit.train.grpo import grpo  # noqa: E402

__all__ += ["ppo", "grpo"]
from alignkit.train.reward import reward  # noqa: E402

__all__ += ["reward"]
