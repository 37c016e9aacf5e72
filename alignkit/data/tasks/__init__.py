"""Built-in tasks: seeded generators of alignment data, each with a programmatic gold judge.

A task module offers `generate`, `write_dataset`, the row builders (`sft_rows`,
`preference_rows`, `kto_rows`, `prompt_rows`) and `gold_reward` / `gold_rewards`.
"""

from __future__ import annotations

from types import ModuleType

from alignkit.data.tasks import hhh_mini
from alignkit.errors import AlignkitError

TASKS = {"hhh-mini": hhh_mini}


def get_task(name: str) -> ModuleType:
    """The task module registered as `name`."""
    try:
        return TASKS[name]
    except KeyError:
        raise AlignkitError(f"unknown task {name!r}; known tasks are: {', '.join(sorted(TASKS))}") from None
