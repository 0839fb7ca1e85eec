"""The house's layers: which product package may import which.

The server (``gateway``) knows nothing of its trainers or tools; the toy world (a fixture and the embedded default)
knows nothing of the router, the searches or the CLI; the trainers know nothing of the CLI that runs them. Read from
the source with ``ast``: every ``import`` and ``from ... import`` at any depth (inside functions too, so a lazy import
counts), relative imports resolved, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal
name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "scoring", "router", "offline_search", "toyworld", "swarmgate", "benchmarks")
FORBIDDEN: dict[str, frozenset[str]] = {
    "gateway": frozenset({"scoring", "router", "offline_search", "toyworld", "swarmgate", "benchmarks"}),
    "scoring": frozenset({"gateway", "router", "offline_search", "toyworld", "swarmgate", "benchmarks"}),
    "toyworld": frozenset({"gateway", "router", "offline_search", "swarmgate", "benchmarks"}),
    "router": frozenset({"offline_search", "swarmgate", "benchmarks"}),
    "offline_search": frozenset({"router", "swarmgate", "benchmarks"}),
}
"""Package -> the packages it must not import."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in the file at ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            yield node.lineno, stem
            for alias in node.names:  # ``from router import policy`` imports router.policy
                yield node.lineno, f"{stem}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def violations(root: Path) -> list[str]:
    """``file:line: a imports b`` for every import that crosses a forbidden layer under ``root``."""
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            seen = set()
            for line, name in imported_modules(path, root):
                top = name.split(".")[0]
                if top in banned and (line, top) not in seen:
                    seen.add((line, top))
                    found.append(f"{path.relative_to(root)}:{line}: {package} imports {name}")
    return found


def test_packages_import_only_down_the_layers() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file() or package == "benchmarks", f"{package}/ moved?"
    found = violations(ROOT)
    assert not found, "imports across the layers (see tests/test_layers.py):\n  " + "\n  ".join(found)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import router.policy\n", True),
        ("from router.policy import load_policy\n", True),
        ("from router import policy\n", True),
        ("def f():\n    if True:\n        from offline_search import pso\n", True),
        ("import importlib\nimportlib.import_module('swarmgate.cli')\n", True),
        ("from . import base\nfrom ..spec import SpecError\n", False),
        ("from gateway.routing import load_policy\nimport numpy\n", False),
    ],
)
def test_the_walk_finds_every_kind_of_import(tmp_path: Path, source: str, caught: bool) -> None:
    module = tmp_path / "gateway" / "executors" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    found = violations(tmp_path)
    assert bool(found) == caught, found
    if caught:
        assert found[0].startswith("gateway/executors/x.py:")
