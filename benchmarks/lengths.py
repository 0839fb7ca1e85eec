"""Accuracy of toy models by argument length, per split, beside how many training questions have that length.

Counting's question space is small (two letters, lengths 3-8: 1,008 questions). Test is drawn first, then dev, and
the training pools avoid both, so the shortest strings can end up in test alone. This script shows where that happens
and what it costs each model: per task and split, the number of questions and each model's exact match by the
length of the question's string (its operands' total digits for add/addrev). Greedy decoding on the transformers
engine (the build's own evaluation): quality only, no timing.

    .venv/bin/python benchmarks/lengths.py [--root DIR] [--tasks count] [--models counter big] [--out FILE]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def length_of(question: str) -> int:
    """The length a question is about: its string's letters (count: the string searched), or its operands' digits
    (add/addrev)."""
    from toyworld.tasks import parse, payload

    task = (parse(question) or ("", ""))[0]
    p = payload(question)
    return len(p.replace(" ", "")) if task in ("add", "addrev") else len(p.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="toy world build root (default: the canonical build)")
    parser.add_argument("--tasks", nargs="+", default=["count"], help="tasks to score (default: count)")
    parser.add_argument("--models", nargs="+", default=["counter", "big"], help="models of the build to score")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], help="splits to score")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/lengths.json"))
    args = parser.parse_args(argv)

    import torch

    from benchmarks.phrasings import load_model
    from scoring.text import exact_match
    from toyworld.build import ToyWorld, build_toy_world
    from toyworld.format import render
    from toyworld.train import greedy

    world = ToyWorld.load(args.root) if args.root else build_toy_world()
    config = json.loads((world.root / "toyworld.json").read_text())["config"]
    kw = {"max_new_tokens": config["max_new_tokens"], "batch_size": config["eval_batch"]}
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    models = {name: load_model(world.root, name) for name in args.models}
    result: dict[str, Any] = {}
    for task in args.tasks:
        train = Counter(length_of(e.question) for e in world.examples(task, "train"))
        lengths = sorted({*train, *(length_of(e.question) for s in args.splits for e in world.examples(task, s))})
        result[task] = {"train_questions": {str(n): train.get(n, 0) for n in lengths}, "splits": {}}
        print(f"\n{task}: exact match by length (right / questions); training questions per length")
        print(f"{'':<16}" + "".join(f"{n:>10}" for n in lengths))
        print(f"{'train (count)':<16}" + "".join(f"{train.get(n, 0):>10}" for n in lengths))
        for split in args.splits:
            exs = world.examples(task, split)
            row: dict[str, dict[str, list[int]]] = {}
            for name, model in models.items():
                preds = greedy(model, [render(e.question) for e in exs], **kw)
                cells = {str(n): [0, 0] for n in lengths}
                for p, e in zip(preds, exs, strict=True):
                    cell = cells[str(length_of(e.question))]
                    cell[0] += int(exact_match(p, e.answer))
                    cell[1] += 1
                row[name] = cells
                print(f"{split + ' ' + name:<16}" + "".join(f"{c[0]:>5}/{c[1]:<4}" for c in cells.values()))
            result[task]["splits"][split] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(world.root), "tasks": result}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
