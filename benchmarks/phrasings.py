"""Accuracy of the phrased toy world's models by phrasing: the phrasings they trained on vs each held-out one.

The phrased world (``python -m toyworld --phrased``, ``ToyConfig.phrased()``) asks every task in several phrasings
(``toyworld.tasks.PHRASINGS``); training and dev use the first ones, test all of them in equal shares. This script
scores every model of the build, and the two hand-wired chains, on the test split, per task and per phrasing, so the
cost of a phrasing no expert has seen is visible next to the seen ones. Greedy decoding on the transformers engine
(the build's own evaluation): quality only, no timing.

    .venv/bin/python benchmarks/phrasings.py [--root DIR] [--out runs/bench/phrasings.json] [--router-eval DIR]

Prints a table and writes JSON. With ``--router-eval`` (a ``swarmgate router eval`` output folder on this world, e.g.
``<eval_dir>/test``) it also splits the router (at the lambda dev selected) and its baselines by phrasing, from the
eval's per-question ``episodes.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def score(preds: list[str], examples: list[Any]) -> dict[str, float]:
    """Exact match per phrasing index (as a string key) and over all."""
    from scoring.text import exact_match
    from toyworld.tasks import phrasing_of

    hits: dict[str, list[float]] = {}
    for p, e in zip(preds, examples, strict=True):
        hits.setdefault(str(phrasing_of(e.question)), []).append(exact_match(p, e.answer))
    out = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    out["all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return out


def routing_by_phrasing(folder: Path, seen: list[str], held: list[str]) -> dict[str, Any]:
    """Quality and cost of the router (at the lambda dev selected) and its baselines per phrasing group, read from
    a router eval's ``episodes.jsonl``; prints a table."""
    from toyworld.tasks import phrasing_of

    report = json.loads((folder / "report.json").read_text())
    chosen = report.get("selected_cost_weight")
    groups = {"seen": seen, **{f"held-out {h}": [h] for h in held}, "all": [*seen, *held]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for line in (folder / "episodes.jsonl").read_text().splitlines():
        ep = json.loads(line)
        if ep["method"] == "router" and ep["cost_weight"] != chosen:
            continue
        method = f"router (lambda {chosen:g})" if ep["method"] == "router" else ep["method"]
        k = str(phrasing_of(ep["question"]))
        for group, members in groups.items():
            if k in members:
                cell = out.setdefault(method, {}).setdefault(group, {"n": 0, "quality": 0.0, "cost": 0.0})
                cell["n"] += 1
                cell["quality"] += ep["quality"]
                cell["cost"] += ep["cost"]
    for row in out.values():
        for cell in row.values():
            cell["quality"] /= cell["n"]
            cell["cost"] /= cell["n"]
    split = report.get("split", "?")
    head = f"{'method':<22}" + "".join(f"{g:>18}" for g in groups)
    print(f"\nrouting on {split} by phrasing ({folder}): quality @ cost\n{head}\n{'-' * len(head)}")
    for method, row in out.items():
        cells = [f"{row[g]['quality']:.3f} @ {row[g]['cost']:.2f}" if g in row else "" for g in groups]
        print(f"{method:<22}" + "".join(f"{c:>18}" for c in cells))
    first = next(iter(out.values()), {})  # every method answers the same questions
    print("questions per group: " + ", ".join(f"{g} {first[g]['n']}" for g in groups if g in first))
    return {"folder": str(folder), "split": split, "selected_cost_weight": chosen, "methods": out}


def load_model(root: Path, name: str) -> Any:
    """A toy model of the build at ``root`` by name: ``base`` and ``big`` are full checkpoints, every other model is
    the base with its adapter merged in (for greedy evaluation)."""
    import torch
    from transformers import LlamaForCausalLM

    from toyworld.build import _load_expert

    if name in ("base", "big"):
        return LlamaForCausalLM.from_pretrained(str(root / name), dtype=torch.float32)
    return _load_expert(root, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="a phrased build (default: build or reuse it)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "phrasings.json")
    parser.add_argument(
        "--router-eval", type=Path, default=None, help="a router eval folder (episodes.jsonl) to split by phrasing"
    )
    args = parser.parse_args(argv)

    import torch

    from toyworld.build import CHAINS, EXPERTS, GENERALISTS, ToyWorld, build_toy_world
    from toyworld.format import render
    from toyworld.model import ToyConfig
    from toyworld.tasks import COMPOSED, PHRASINGS, SKILLS
    from toyworld.train import greedy

    world = ToyWorld.load(args.root) if args.root else build_toy_world(config=ToyConfig.phrased())
    config = json.loads((world.root / "toyworld.json").read_text())["config"]
    n_train, n_test = config["phrasings"]
    tasks = [*SKILLS, *COMPOSED]
    data = {t: world.examples(t, "test") for t in tasks}
    kw = {"max_new_tokens": config["max_new_tokens"], "batch_size": config["eval_batch"]}
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))

    results: dict[str, dict[str, dict[str, float]]] = {}
    models: dict[str, Any] = {}
    for name in ("base", *EXPERTS, *GENERALISTS, "big"):
        models[name] = load_model(world.root, name)
        results[name] = {
            t: score(greedy(models[name], [render(e.question) for e in data[t]], **kw), data[t]) for t in tasks
        }
        print(f"scored {name}", file=sys.stderr, flush=True)
    for task, (first, second) in CHAINS.items():
        mid = greedy(models[first], [render(e.question) for e in data[task]], **kw)
        final = greedy(models[second], [render(e.question, [m]) for e, m in zip(data[task], mid, strict=True)], **kw)
        results.setdefault(">".join((first, second)), {})[task] = score(final, data[task])

    held = [str(i) for i in range(n_train, n_test)]
    seen = [str(i) for i in range(n_train)]

    def mean(row: dict[str, float], keys: list[str]) -> float:
        return sum(row[k] for k in keys) / len(keys) if keys else float("nan")

    width = 8 * (1 + len(held)) + 2
    head = f"{'model':<18}" + "".join(f"{t:>{width}}" for t in tasks)
    print(
        f"test exact match, %: seen phrasings (0-{n_train - 1}) / each held-out phrasing ({', '.join(held)})\n"
        f"{head}\n{'-' * len(head)}"
    )
    for name, row in results.items():
        cells = [
            " / ".join(f"{100 * v:5.1f}" for v in [mean(row[t], seen), *(row[t][h] for h in held)]) if t in row else ""
            for t in tasks
        ]
        print(f"{name:<18}" + "".join(f"{c:>{width}}" for c in cells))
    for h in held:
        print(f"held-out phrasing {h}: " + ", ".join(f"{t}: {PHRASINGS[t][int(h)]!r}" for t in tasks))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"root": str(world.root), "phrasings": [n_train, n_test], "held_out": held, "accuracy": results}
    if args.router_eval:
        payload["router_eval"] = routing_by_phrasing(args.router_eval, seen, held)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
