"""Router serving benchmark: decision latency per step (p50/p95) and routed-chain requests/s.

Three measurements, printed as a table and written as JSON:
1. ``decide``: ``RouterPolicy.decide`` alone (encode the state + the MLP), per step, for the trained policy and,
   for comparison, the same network shape over the sentence encoder (random weights: latency only).
2. ``executor``: the chain executor in process over the real toy engines (transformers), N requests at a given
   concurrency; decision latency read from each step's ``decision_ms`` (what the gateway's metrics observe).
3. ``http``: the real gateway (uvicorn, OpenAI chat endpoint) serving ``toy-router``; requests/s and latency, and
   ``decision_ms`` from the response's ``swarmgate`` route field.

    .venv/bin/python benchmarks/router_bench.py [--config router.yaml] [--policy artifacts/router/policy]
        [--requests 120] [--concurrency 1 8] [--skip-http] [--out runs/bench/router_bench.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q * 100)) if xs else float("nan")


def questions_of(cfg: Any, n: int) -> list[str]:
    from router.workflow import load_split

    # training questions: a benchmark's traffic may end up in a request log that `router retrain` reads, and dev /
    # test questions must never become training data (retrain also drops them, and says how many)
    qs = [e.question for e in load_split(cfg, cfg.data.train_split)]
    rng = np.random.default_rng(0)
    return [qs[i] for i in rng.permutation(len(qs))[:n]]


def bench_decide(policy: Any, questions: list[str], answers: list[str]) -> dict[str, Any]:
    """Per-step decision time of the policy over realistic states (each question at steps 0..2)."""
    times: list[float] = []
    for q, a in zip(questions, answers, strict=False):
        for step in range(min(3, policy.max_steps)):
            d = policy.decide(q, a if step else "", step, float(step), None)
            times.append(d.ms)
    return {
        "steps": len(times),
        "p50_ms": pct(times, 0.5),
        "p95_ms": pct(times, 0.95),
        "mean_ms": float(np.mean(times)),
    }


def sentence_twin(policy: Any) -> Any:
    """The policy's network shape over the sentence encoder (random weights): only for latency."""
    from gateway.routing.encoders import SentenceEncoder

    enc = SentenceEncoder()
    rng = np.random.default_rng(0)
    n_in = policy.layout.size(enc.dim)
    layers, prev = [], n_in
    for w, _ in policy.layers:
        out = w.shape[0]
        layers.append((rng.normal(0, 0.05, (out, prev)).astype(np.float32), np.zeros(out, np.float32)))
        prev = out
    return dataclasses.replace(policy, layers=layers, encoder=enc, meta={}, version="sentence-twin", path="")


async def drive(call: Any, items: list[Any], concurrency: int) -> tuple[float, list[float], list[Any]]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    results: list[Any] = []

    async def one(x: Any) -> None:
        async with sem:
            t = time.perf_counter()
            results.append(await call(x))
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(x) for x in items))
    return time.perf_counter() - t0, lat, results


def served(requests: int, concurrency: int, wall: float, lat: list[float], decisions: list[float]) -> dict[str, Any]:
    """What both serving measurements report: requests/s, request latency (seconds in ``lat``) and decision latency
    (ms in ``decisions``)."""
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": wall,
        "rps": requests / wall,
        "latency_p50_ms": pct(lat, 0.5) * 1e3,
        "latency_p95_ms": pct(lat, 0.95) * 1e3,
        "decision_p50_ms": pct(decisions, 0.5),
        "decision_p95_ms": pct(decisions, 0.95),
    }


async def bench_executor(spec_path: Path, questions: list[str], concurrency: int) -> dict[str, Any]:
    from gateway.engines.base import SamplingParams
    from gateway.executors.base import ExecRequest, StepInfo
    from gateway.runtime import Runtime
    from gateway.spec import load_spec

    rt = await Runtime.build(load_spec(spec_path), spec_path=spec_path, force_engine="transformers")
    ex = rt.executors["toy-router"]
    params = SamplingParams(max_tokens=8, temperature=0.0)
    try:
        await ex.stream(ExecRequest([{"role": "user", "content": questions[0]}], params, "warm")).__anext__()

        async def call(q: str) -> list[Any]:
            req = ExecRequest(prompt=[{"role": "user", "content": q}], params=params, request_id="b")
            return [ev for ev in [e async for e in ex.stream(req)] if isinstance(ev, StepInfo)]

        wall, lat, results = await drive(call, questions, concurrency)
    finally:
        await rt.close()
    decisions = [s.extra["decision_ms"] for steps in results for s in steps]
    decisions += [s.extra["stop_decision_ms"] for steps in results for s in steps if "stop_decision_ms" in s.extra]
    steps = [len(s) for s in results]
    return {
        **served(len(questions), concurrency, wall, lat, decisions),
        "decisions": len(decisions),
        "mean_calls": float(np.mean(steps)),
    }


def start_gateway(spec_path: Path, concurrency: int) -> tuple[Any, threading.Thread, str]:
    import socket

    import uvicorn

    from gateway.api.app import create_app
    from gateway.settings import Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(
        Settings(
            spec=spec_path,
            host="127.0.0.1",
            port=port,
            engine="transformers",
            max_concurrency=max(concurrency, 1),
            max_queue=1024,
            log_level="warning",
        )
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}/v1"


async def bench_http(url: str, questions: list[str], concurrency: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def call(q: str) -> dict[str, Any]:
            r = await client.post(
                "/chat/completions",
                json={
                    "model": "toy-router",
                    "messages": [{"role": "user", "content": q}],
                    "temperature": 0,
                    "max_tokens": 8,
                },
            )
            r.raise_for_status()
            return r.json()

        await call(questions[0])
        wall, lat, results = await drive(call, questions, concurrency)
    routes = [c["route"] for body in results for c in body["swarmgate"]["choices"]]
    decisions = [s["decision_ms"] for r in routes for s in r]
    return {
        **served(len(questions), concurrency, wall, lat, decisions),
        "mean_calls": float(np.mean([len(r) for r in routes])),
        "mean_cost": float(np.mean([body["swarmgate"]["cost"] for body in results])),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="router config (default: the packaged toy config)")
    ap.add_argument("--policy", type=Path, default=None, help="policy dir or root (default: the config's policy_dir)")
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-sentence", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "router_bench.json")
    args = ap.parse_args()

    from gateway.routing.policy import load_policy, resolve_policy_dir
    from router.cache import TrajectoryCache
    from router.config import load_config
    from router.deploy import write_chain_spec

    cfg = load_config(args.config)
    policy_root = args.policy or Path(cfg.policy_dir)
    policy = load_policy(policy_root)
    qs = questions_of(cfg, args.requests)
    with TrajectoryCache(cfg.cache) as cache:  # realistic first-step answers for the decide benchmark
        table = cache.table(qs)
    answers = [table.get((policy.experts[1 % len(policy.experts)], q, ""), "12") for q in qs]

    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "policy": {"path": str(resolve_policy_dir(policy_root)), "encoder": policy.meta["encoder"]},
        "decide": {"hashed": bench_decide(policy, qs, answers)},
    }
    if not args.skip_sentence:
        try:
            result["decide"]["sentence (random weights)"] = bench_decide(sentence_twin(policy), qs, answers)
        except RuntimeError as exc:
            print(f"sentence encoder skipped: {exc}")

    with tempfile.TemporaryDirectory() as tmp:
        spec = write_chain_spec(
            Path(tmp) / "spec.yaml", cfg.spec or "", policy_root, experts=policy.experts, max_steps=policy.max_steps
        )
        result["executor"] = [asyncio.run(bench_executor(spec, qs, c)) for c in args.concurrency]
        if not args.skip_http:
            result["http"] = []
            for c in args.concurrency:
                server, thread, url = start_gateway(spec, c)
                try:
                    result["http"].append(asyncio.run(bench_http(url, qs, c)))
                finally:
                    server.should_exit = True
                    thread.join(timeout=60)

    print(f"\nrouter decision latency per step (policy {result['policy']['path']})")
    print("| path | encoder | concurrency | decisions | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    for enc, r in result["decide"].items():
        print(f"| decide() | {enc} | 1 | {r['steps']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} |")
    for r in result["executor"]:
        print(
            f"| executor | hashed | {r['concurrency']} | {r['decisions']} | {r['decision_p50_ms']:.3f} | {r['decision_p95_ms']:.3f} |"
        )
    for r in result.get("http", []):
        print(f"| http | hashed | {r['concurrency']} | - | {r['decision_p50_ms']:.3f} | {r['decision_p95_ms']:.3f} |")
    print("\nrouted-chain throughput (toy world, transformers engine, greedy, max_tokens 8)")
    print("| path | concurrency | requests | req/s | latency p50 ms | latency p95 ms | mean calls |")
    print("|---|---|---|---|---|---|---|")
    for path in ("executor", "http"):
        for r in result.get(path, []):
            print(
                f"| {path} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} | {r['latency_p50_ms']:.1f} | "
                f"{r['latency_p95_ms']:.1f} | {r['mean_calls']:.2f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
