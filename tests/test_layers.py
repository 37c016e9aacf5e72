"""The arrows go one way: data -> models -> losses -> rl -> config -> train -> evaluate/feedback -> api/pipeline/cli.

Every `import` in the package is read, at the top of a module or inside a function (an import in a
function is still an arrow), and checked against the layer order; the module graph must have no
cycle; `losses/` imports only torch. The ground floor (errors, io, http) imports nothing of ours
but errors.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alignkit"

# rank of each layer: a module may import modules of its own rank or below, never above
LAYERS = {
    "errors": 0, "io": 0, "http": 0,
    "data": 1,
    "models": 2,
    "losses": 3,
    "rl": 4,
    "trl_names": 5, "config": 5, "config_loader": 5, "config_checks": 5, "config_pipeline": 5, "config_sampling": 5,
    "train": 6,
    "evaluate": 7, "feedback": 7,
    "api": 8, "pipeline": 8, "pipeline_samples": 8, "iterate": 8, "demo": 8, "score": 8, "data_cli": 8, "cli": 9, "__main__": 9, "": 9,  # "": alignkit/__init__
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The alignkit modules `path` imports, anywhere in its body."""
    name = module_name(path)
    return imports_in(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0], modules)


def imports_in(source: str, package: str, modules) -> set[str]:
    """The alignkit modules a module's source imports, at the top or inside functions; `package` resolves relative imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from alignkit.rl import update` imports the module alignkit.rl.update
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "alignkit" or m.startswith("alignkit.")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m) for m in all_modules()} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS: {missing}"


def test_no_arrow_points_up():
    against = [f"{a} -> {b}" for a, targets in graph().items() for b in sorted(targets)
               if LAYERS[layer_of(b)] > LAYERS[layer_of(a)]]
    assert not against, "imports against the layer order:\n" + "\n".join(against)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_losses_import_only_torch():
    for path in sorted((PACKAGE / "losses").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                root = name.split(".")[0]
                assert root in ("torch", "__future__", "math", "typing", "dataclasses") or name.startswith("alignkit.losses"), \
                    f"{path.name} imports {name}; losses are pure functions of tensors"


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = "import os\ndef f():\n    from alignkit.train.loop import log\n    from ..rl import update\n    import alignkit.io\n"
    assert imports_in(source, "alignkit.evaluate", all_modules()) == {"alignkit.train.loop", "alignkit.rl.update", "alignkit.io"}
