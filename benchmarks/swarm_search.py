"""Model Swarms throughput: a 10-particle x 10-iteration swarm on the toy world, per engine, with and without the
output cache.

Each variant runs the real search (``offline_search.model_swarms``) from scratch into its own directory: the default
toy config (multitask exact match on add + rev) with patience off, so every variant runs all 10 iterations. Reported:
the search loop's wall time (engine start excluded, reported apart), utility evaluations (particle x iteration
scorings on the dev split) per second, generations actually run vs answered from the cache, and the best dev
utility (identical across variants when the engines agree). Prints a table and writes JSON; never asserts a time.

    .venv/bin/python benchmarks/swarm_search.py [--engines transformers vllm] [--particles 10] [--iterations 10]
        [--dev-limit 32] [--out runs/bench/swarm_search.json]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


async def one_run(engine: str, cache: bool, args: argparse.Namespace, work: Path) -> dict:
    from offline_search.config import default_config_path, load_swarm_config, prepare
    from offline_search.model_swarms import run_swarm_search

    path = Path(args.config) if args.config else default_config_path("swarm")
    out = work / f"{engine}-{'cache' if cache else 'nocache'}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_swarm_config(path, {"engine": engine, "cache": cache, "seed": args.seed})
    cfg = cfg.model_copy(
        update={
            "swarm_size": args.particles,
            "pso": cfg.pso.model_copy(update={"max_iterations": args.iterations, "patience": args.iterations + 1}),
            "data": cfg.data.model_copy(update={"dev_limit": args.dev_limit, "test_limit": args.test_limit}),
        }
    )
    prepared = prepare(cfg, path, output_dir=str(out))
    t0 = time.perf_counter()
    result = await run_swarm_search(prepared, progress=not args.quiet)
    total = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    its = [r for r in lines if r["event"] == "iteration"]
    start = next((r["seconds"] for r in lines if r["event"] == "engine_started"), None)
    loop_s = sum(r["seconds"] for r in its)
    evals = len(its) * args.particles
    s = result.summary
    return {
        "engine": engine,
        "cache": cache,
        "particles": args.particles,
        "iterations": len(its),
        "dev_examples": s["dev_examples"],
        "utility_evaluations": evals,
        "search_wall_s": round(loop_s, 2),
        "evals_per_s": round(evals / loop_s, 3),
        "generations_run": sum(r["generated"] for r in its),
        "generations_from_cache": sum(r["cache_hits"] for r in its),
        "engine_start_s": start,
        "total_wall_s": round(total, 2),
        "best_dev": s["best"]["dev"],
        "best_test": s["best"]["test"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=None, help="default: transformers, plus vllm where it imports")
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--dev-limit", type=int, default=32, help="dev examples per task (2 tasks)")
    ap.add_argument("--test-limit", type=int, default=50, help="test examples per task for the final report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=None, help="swarm config (default: the toy world's)")
    ap.add_argument("--out", default="runs/bench/swarm_search.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    engines = args.engines or ["transformers", *(["vllm"] if importlib.util.find_spec("vllm") else [])]

    if args.config is None:  # the default config runs on the toy world: build it first, outside the timings
        from toyworld.build import build_toy_world

        build_toy_world(progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        for engine in engines:
            for cache in (True, False):
                print(f">> {engine}, cache {'on' if cache else 'off'}", flush=True)
                rows.append(asyncio.run(one_run(engine, cache, args, Path(tmp))))
    head = ["engine", "cache", "iterations", "utility_evaluations", "search_wall_s", "evals_per_s", "generations_run",
            "generations_from_cache", "engine_start_s", "best_dev", "best_test"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in head) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "dev_limit_per_task": args.dev_limit, "load_avg": os.getloadavg()}
    out.write_text(json.dumps({"benchmark": "swarm_search", "meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
