"""The prompt universes of hhh-mini: every prompt, by distribution, category and family.

Two universes hold the same facts in different words (see `hhh_mini_items.DISTRIBUTIONS`):
"id", phrased by `hhh_mini_facts.json`, which train and test are drawn from, and "ood",
phrased by `hhh_mini_ood.json`, which only the ood split is drawn from. No prompt text is in
both. Arithmetic is sampled rather than enumerated (`_arithmetic_stream`); everything else is
listed here, built on first use and cached (about 3,000 prompts per distribution).

Standard library only.
"""

from __future__ import annotations

import functools

from alignkit.data.tasks.hhh_mini_items import Item, _arithmetic_capacity, _fact_families, _format_families, _harmless_families
from alignkit.data.tasks.hhh_mini_items import _honesty_families, _intent_families, _wording
from alignkit.data.tasks.hhh_mini_sycophancy import _sycophancy_families

FAMILY_BUILDERS = {
    "fact": _fact_families,
    "format": _format_families,
    "harmless": _harmless_families,
    "honesty": _honesty_families,
    "intent": _intent_families,
    "sycophancy": _sycophancy_families,
}


@functools.cache
def _universe(distribution: str = "id") -> dict[str, dict[str, list[Item]]]:
    """Every enumerable prompt of `distribution`, by category and family (arithmetic is sampled instead)."""
    facts = _wording(distribution)
    return {category: build(facts) for category, build in FAMILY_BUILDERS.items()}


def _capacity(category: str, distribution: str = "id") -> int:
    """How many distinct prompts `category` has in `distribution`."""
    if category == "arithmetic":
        return _arithmetic_capacity(distribution)
    return sum(len(items) for items in _universe(distribution)[category].values())
