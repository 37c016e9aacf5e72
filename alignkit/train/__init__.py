"""Training recipes, one per stage; each is also a function of a config dict or dataclass.

    import alignkit.train
    alignkit.train.sft({"model": "smollm2-135m-instruct", "data": "sft.jsonl", "lora_r": 16})

(The recipe modules are imported here so that `alignkit.train.sft` is the function;
import a recipe's internals with `from alignkit.train.sft import ...`.)
"""

from alignkit.train.sft import sft

__all__ = ["sft"]
