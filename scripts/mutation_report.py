"""Mutation score per module from mutmut's results (``mutants/**/*.meta``), as a table and ``mutants/report.json``.

Run by ``make mutation`` after ``mutmut run``. A mutant is *killed* when a test fails on it (or it times out), and
*survived* when every covering test passes; the score is killed / (killed + survived). Mutants of lines no selected
test covers are not generated (``mutate_only_covered_lines``); those whose function no test calls count as
``no tests``. ``mutmut results`` lists the survivors, ``mutmut show NAME`` shows one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 37, 24, -24, 152}  # test failure, timeout / killed by signal, caught by the type checker
SURVIVED = {0}
NO_TESTS = {33}


def classify(code: int | None) -> str:
    if code is None:
        return "not run"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    if code in KILLED or code < 0:
        return "killed"
    return "other"


def main() -> None:
    root = Path("mutants")
    rows: dict[str, Counter[str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root)).removesuffix(".meta")
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        rows[module] = Counter(classify(c) for c in codes.values())
    header = f"{'module':40} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'not run':>8} {'score':>7}"
    print(header)
    print("-" * len(header))
    report = {}
    for module, c in rows.items():
        total = sum(c.values())
        decided = c["killed"] + c["survived"]
        score = c["killed"] / decided if decided else float("nan")
        report[module] = {**c, "total": total, "score": score}
        print(
            f"{module:40} {total:8d} {c['killed']:7d} {c['survived']:9d} {c['no tests']:9d} {c['not run']:8d} "
            f"{score:7.1%}"
        )
    (root / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
