"""``scoring`` sits at the bottom of the house: it imports no other project package, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

import scoring

PROJECT = {"gateway", "router", "offline_search", "toyworld", "swarmgate", "benchmarks"}


def test_scoring_imports_no_other_project_package() -> None:
    found = []
    for path in sorted(Path(scoring.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in PROJECT]
    assert not found
