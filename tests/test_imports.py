"""Every module imports (optional GPU-only backends excepted), so nothing rots unseen."""

from __future__ import annotations

import importlib
import pkgutil

import alignkit

OPTIONAL: set[str] = set()  # vllm itself is imported only when an engine is built (rl/vllm_engine.py)


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(alignkit.__path__, "alignkit.")]
    assert len(names) > 10
    for name in names:
        if name not in OPTIONAL:
            importlib.import_module(name)
