"""Search throughput on the toy world: a 10-particle x 10-iteration swarm, per engine, with and without the output
cache.

Two searches, each run from scratch into its own directory, per engine (transformers, and vllm where it imports):

- ``swarm``: Model Swarms with the default toy config (multitask exact match on sort + count);
- ``graph``: the Heterogeneous Swarms role-step with the default toy config (``addrev``), weight-step off.

Patience is off, so every variant runs all iterations. Before the timed runs each engine does one short warm-up
search (discarded). Reported per run: the search loop's wall time (engine start excluded, reported apart), utility
evaluations (particle x iteration scorings on the dev split) per second, generations run vs answered from the cache,
and the best dev/test utility (identical across variants when the engines agree). Prints a table and writes JSON;
never asserts a time.

    .venv/bin/python benchmarks/swarm_search.py [--searches swarm graph] [--engines transformers vllm]
        [--particles 10] [--iterations 10] [--dev-limit 50] [--out runs/bench/swarm_search.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _configure(
    search: str, engine: str, cache: bool, args: argparse.Namespace, particles: int, iterations: int, dev: int
):
    from offline_search.config import default_config_path, load_graph_config, load_swarm_config

    path = Path(args.config) if args.config and search == "swarm" else default_config_path(search)  # type: ignore[arg-type]
    load = load_swarm_config if search == "swarm" else load_graph_config
    cfg: Any = load(path, {"engine": engine, "cache": cache, "seed": args.seed})
    update: dict[str, Any] = {
        "swarm_size": particles,
        "pso": cfg.pso.model_copy(update={"max_iterations": iterations, "patience": iterations + 1}),
        "data": cfg.data.model_copy(update={"dev_limit": dev, "test_limit": args.test_limit}),
    }
    if search == "graph":
        update["weight_step"] = cfg.weight_step.model_copy(update={"iterations": 0})
    return cfg.model_copy(update=update), path


async def one_run(
    search: str, engine: str, cache: bool, args: argparse.Namespace, out: Path, *, warmup: bool = False
) -> dict:
    from offline_search.config import prepare
    from offline_search.hetero_swarms import run_graph_search
    from offline_search.model_swarms import run_swarm_search

    shutil.rmtree(out, ignore_errors=True)
    if warmup:
        cfg, path = _configure(search, engine, cache, args, 4, 1, 4)
    else:
        cfg, path = _configure(search, engine, cache, args, args.particles, args.iterations, args.dev_limit)
    prepared = prepare(cfg, path, output_dir=str(out))
    run = run_swarm_search if search == "swarm" else run_graph_search
    t0 = time.perf_counter()
    result = await run(prepared, progress=not args.quiet)
    total = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    its = [r for r in lines if r["event"] == "iteration"]
    start = next((r["seconds"] for r in lines if r["event"] == "engine_started"), None)
    loop_s = sum(r["seconds"] for r in its)
    evals = len(its) * cfg.swarm_size
    s = result.summary
    gen = s.get("generation", {})
    best_dev, best_test = (
        (s["best"]["dev"], s["best"]["test"]) if search == "swarm" else (s["dag"]["dev"], s["dag"]["test"])
    )
    return {
        "search": search,
        "engine": engine,
        "cache": cache,
        "particles": cfg.swarm_size,
        "iterations": len(its),
        "dev_examples": s["dev_examples"],
        "utility_evaluations": evals,
        "search_wall_s": round(loop_s, 2),
        "evals_per_s": round(evals / loop_s, 3),
        "generations_run": sum(r.get("generated", 0) for r in its) if search == "swarm" else gen.get("generated"),
        "generations_from_cache": sum(r.get("cache_hits", 0) for r in its)
        if search == "swarm"
        else gen.get("cache_hits"),
        "engine_start_s": start,
        "total_wall_s": round(total, 2),
        "best_dev": round(best_dev, 4),
        "best_test": round(best_test, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--searches", nargs="+", default=["swarm", "graph"], choices=["swarm", "graph"])
    ap.add_argument("--engines", nargs="+", default=None, help="default: transformers, plus vllm where it imports")
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--dev-limit", type=int, default=50, help="dev examples per task")
    ap.add_argument("--test-limit", type=int, default=200, help="test examples per task for the final report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=None, help="swarm config (default: the toy world's)")
    ap.add_argument("--out", default="runs/bench/swarm_search.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    engines = args.engines or ["transformers", *(["vllm"] if importlib.util.find_spec("vllm") else [])]

    from toyworld.build import build_toy_world

    build_toy_world(progress=False)  # outside the timings
    rows = []
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        for engine in engines:
            print(f">> {engine}: warm-up", flush=True)
            asyncio.run(one_run("swarm", engine, True, args, Path(tmp) / "warmup", warmup=True))
            for search in args.searches:
                for cache in (False, True):
                    print(f">> {search}, {engine}, cache {'on' if cache else 'off'}", flush=True)
                    rows.append(
                        asyncio.run(one_run(search, engine, cache, args, Path(tmp) / f"{search}-{engine}-{cache}"))
                    )
    head = ["search", "engine", "cache", "iterations", "utility_evaluations", "search_wall_s", "evals_per_s",
            "generations_run", "generations_from_cache", "engine_start_s", "best_dev", "best_test"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in head) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "dev_limit_per_task": args.dev_limit, "load_avg_at_end": os.getloadavg()}
    out.write_text(json.dumps({"benchmark": "swarm_search", "meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
