"""Load: a mix of streaming and non-streaming requests over experts and ensembles at rising concurrency, past the
gateway's ``max_concurrency`` + ``max_queue``, against the real ``swarmgate serve`` on loopback.

Every request is accounted for: 200 (a stream counts only when it ends with ``[DONE]`` and no error frame), 429
(queue full), 503 (queued too long), another status, a transport error, or *hung* (no answer within
``--client-timeout``). After each level the gateway must be idle again: ``swarmgate_requests_in_flight`` and
``swarmgate_requests_queued`` back to 0. Reports, per level, req/s of answered requests and their latency, and the
highest sustained req/s whose p95 stays under ``--p95-bound-s`` with nothing lost or hung. Prints a table and writes
JSON; never asserts a time.

    .venv/bin/python benchmarks/load.py [--levels 1 2 4 8 16 32] [--duration 10] [--max-concurrency 4]
        [--max-queue 8] [--engine transformers|vllm] [--p95-bound-s 5] [--out runs/bench/load.json]

Bounded in time (levels x duration + drain) and count (``--max-requests`` per level); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

QUESTIONS = ["add 12 34", "rev abcdef", "sort dcba", "count a in banana", "add 7 58", "rev hello"]
# (name, model, endpoint, stream): experts and a DAG ensemble, chat and text, streamed and whole
MIX = [
    ("adder/chat", "toy-adder", "chat", False),
    ("reverser/chat/stream", "toy-reverser", "chat", True),
    ("big/completions", "toy-big", "completions", False),
    ("dag/chat/stream", "toy-dag", "chat", True),
    ("sorter/completions/stream", "toy-sorter", "completions", True),
    ("dag/chat", "toy-dag", "chat", False),
]


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def write_spec(tmp: Path) -> Path:
    """The toy world's experts plus a DAG ensemble (adder -> reverser)."""
    from toyworld.build import build_toy_world

    tw = build_toy_world(progress=False)
    spec = yaml.safe_load(Path(tw.spec_path).read_text())
    root = Path(tw.spec_path).parent
    for e in spec["experts"].values():
        for key in ("model", "adapter"):
            if key in e:
                e[key] = str((root / e[key]).resolve())
    topo = {
        "format": "swarmgate.topology/1",
        "nodes": [
            {"id": "a", "expert": "toy-adder", "prompt": "{question}"},
            {"id": "r", "expert": "toy-reverser", "prompt": "{question}{responses}"},
        ],
        "edges": [["a", "r"]],
        "final": "r",
    }
    (tmp / "topology.json").write_text(json.dumps(topo))
    spec["ensembles"] = {"toy-dag": {"kind": "dag", "topology": str(tmp / "topology.json")}}
    out = tmp / "spec.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swarmgate serve exited with {proc.returncode}")
            try:
                if (await c.get(f"{base}/ready", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway not ready")
            await asyncio.sleep(0.5)


async def gauges(client: httpx.AsyncClient, base: str) -> dict[str, float]:
    text = (await client.get(f"{base}/metrics", timeout=10)).text
    out = {"in_flight": 0.0, "queued": 0.0}
    for line in text.splitlines():
        if line.startswith("swarmgate_requests_in_flight{"):
            out["in_flight"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("swarmgate_requests_queued "):
            out["queued"] = float(line.rsplit(" ", 1)[1])
    return out


async def one_request(client: httpx.AsyncClient, base: str, i: int, max_tokens: int) -> tuple[str, str, float]:
    """Send request ``i`` of the mix; (kind, outcome, seconds). Outcomes: '200', '429', '503', 'status:N',
    'stream_error', 'transport', 'hung'."""
    kind, model, endpoint, stream = MIX[i % len(MIX)]
    q = QUESTIONS[i % len(QUESTIONS)]
    if endpoint == "chat":
        url = f"{base}/v1/chat/completions"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": q}]}
    else:
        url = f"{base}/v1/completions"
        body = {"model": model, "prompt": f"Q: {q}\nA: "}
    body.update(max_tokens=max_tokens, temperature=0, stream=stream)
    t0 = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return kind, _status(r.status_code), time.perf_counter() - t0
                done, error = False, False
                async for line in r.aiter_lines():
                    if line.startswith("data: [DONE]"):
                        done = True
                    elif line.startswith("data: {") and '"error"' in line[:20]:
                        error = True
                outcome = "200" if done and not error else "stream_error"
        else:
            r = await client.post(url, json=body)
            outcome = _status(r.status_code)
    except httpx.TimeoutException:
        return kind, "hung", time.perf_counter() - t0
    except httpx.HTTPError:
        return kind, "transport", time.perf_counter() - t0
    return kind, outcome, time.perf_counter() - t0


def _status(code: int) -> str:
    return str(code) if code in (200, 429, 503) else f"status:{code}"


async def run_level(
    base: str, concurrency: int, duration_s: float, max_requests: int, timeout_s: float, max_tokens: int
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``duration_s`` (or ``max_requests`` in all); every outcome counted."""
    results: list[tuple[str, str, float]] = []
    sent = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        stop_at = time.perf_counter() + duration_s

        async def worker(w: int) -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and sent < max_requests:
                i = sent
                sent += 1
                results.append(await one_request(client, base, i + w, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
        # the gateway must be idle again: nothing in flight, nothing queued
        idle_deadline = time.monotonic() + 30
        g = await gauges(client, base)
        while (g["in_flight"] or g["queued"]) and time.monotonic() < idle_deadline:
            await asyncio.sleep(0.2)
            g = await gauges(client, base)
    outcomes = Counter(o for _, o, _ in results)
    ok_lat = [s for _, o, s in results if o == "200"]
    return {
        "concurrency": concurrency,
        "sent": sent,
        "answered": len(results),
        "outcomes": dict(outcomes),
        "lost": sent - len(results),
        "wall_s": round(wall, 3),
        "ok_rps": round(len(ok_lat) / wall, 3) if wall else 0.0,
        "p50_s": percentile(ok_lat, 0.5),
        "p95_s": percentile(ok_lat, 0.95),
        "by_kind": {k: dict(Counter(o for kk, o, _ in results if kk == k)) for k in sorted({k for k, _, _ in results})},
        "in_flight_after": g["in_flight"],
        "queued_after": g["queued"],
    }


def print_table(levels: list[dict]) -> None:
    """One line per concurrency level: what was sent, each outcome, req/s, latency and whether the gateway went idle."""
    print()
    head = f"{'conc':>5} {'sent':>6} {'200':>6} {'429':>5} {'503':>5} {'other':>6} {'hung':>5} {'lost':>5} "
    head += f"{'ok req/s':>9} {'p50 s':>7} {'p95 s':>7} {'idle after':>10}"
    print(head)
    for r in levels:
        o = r["outcomes"]
        other = sum(v for k, v in o.items() if k not in ("200", "429", "503", "hung"))
        idle = "yes" if not (r["in_flight_after"] or r["queued_after"]) else "NO"
        p50 = f"{r['p50_s']:.3f}" if r["p50_s"] is not None else "-"
        p95 = f"{r['p95_s']:.3f}" if r["p95_s"] is not None else "-"
        print(
            f"{r['concurrency']:>5} {r['sent']:>6} {o.get('200', 0):>6} {o.get('429', 0):>5} {o.get('503', 0):>5} "
            f"{other:>6} {o.get('hung', 0):>5} {r['lost']:>5} {r['ok_rps']:>9.2f} {p50:>7} {p95:>7} {idle:>10}"
        )


def highest_sustained(levels: list[dict], bound: float) -> dict | None:
    """The level with the most successful req/s whose p95 stayed within ``bound`` seconds, with nothing lost or hung
    and the gateway idle after (None: no such level)."""
    sustained = [
        r
        for r in levels
        if r["p95_s"] is not None
        and r["p95_s"] <= bound
        and not r["lost"]
        and not r["outcomes"].get("hung")
        and not (r["in_flight_after"] or r["queued_after"])
    ]
    return max(sustained, key=lambda r: r["ok_rps"]) if sustained else None


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    ap.add_argument("--max-requests", type=int, default=2000, help="cap per level")
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--queue-timeout-s", type=float, default=10.0)
    ap.add_argument("--client-timeout", type=float, default=120.0, help="a request unanswered this long is 'hung'")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--p95-bound-s", type=float, default=5.0)
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "load.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        spec = write_spec(Path(d))
        port = free_port()
        env = {
            **os.environ,
            "SWARMGATE_SPEC": str(spec),
            "SWARMGATE_HOST": "127.0.0.1",
            "SWARMGATE_PORT": str(port),
            "SWARMGATE_LOG_LEVEL": "warning",
            "SWARMGATE_ENGINE": args.engine,
            "SWARMGATE_MAX_CONCURRENCY": str(args.max_concurrency),
            "SWARMGATE_MAX_QUEUE": str(args.max_queue),
            "SWARMGATE_QUEUE_TIMEOUT_S": str(args.queue_timeout_s),
        }
        proc = subprocess.Popen([sys.executable, "-m", "swarmgate.cli", "serve"], cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(base, proc)
            await run_level(base, 2, 3.0, 50, args.client_timeout, args.max_tokens)  # warm-up (adapters, caches)
            levels = []
            for c in args.levels:
                r = await run_level(base, c, args.duration, args.max_requests, args.client_timeout, args.max_tokens)
                levels.append(r)
                print(f"c={c}: {r['outcomes']} ok {r['ok_rps']} req/s p95 {r['p95_s']}", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()

    print_table(levels)
    best = highest_sustained(levels, args.p95_bound_s)
    if best:
        print(
            f"\nhighest sustained: {best['ok_rps']:.2f} req/s at concurrency {best['concurrency']} "
            f"(p95 {best['p95_s']:.3f} s <= {args.p95_bound_s} s; nothing lost or hung; gateway idle after)"
        )
    else:
        print(f"\nno level kept p95 <= {args.p95_bound_s} s with nothing lost")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "mix": [m[0] for m in MIX],
                "levels": levels,
                "highest_sustained": best,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
