"""Gateway overhead: the same toy checkpoint through swarmgate (vllm engine), through `vllm serve`, and called directly.

All three run in this one invocation, interleaved per concurrency level, with identical prompts and greedy sampling,
so the ratios are measured side by side. Prints a table and writes JSON.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 256] [--rounds 4] [--concurrency 1 8 32] [--lora] [--out runs/bench/gateway_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def drive(call, prompts: list[str], concurrency: int) -> dict:
    """Run every prompt through ``call`` with at most ``concurrency`` in flight; latency per request."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    tokens = 0

    async def one(p: str) -> None:
        nonlocal tokens
        async with sem:
            t = time.perf_counter()
            tokens += await call(p)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    return {
        "requests": len(prompts),
        "wall_s": wall,
        "rps": len(prompts) / wall,
        "p50_ms": percentile(lat, 0.5) * 1e3,
        "p95_ms": percentile(lat, 0.95) * 1e3,
        "completion_tokens": tokens,
    }


def http_caller(client: httpx.AsyncClient, url: str, model: str, max_tokens: int):
    async def call(prompt: str) -> int:
        r = await client.post(
            f"{url}/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        )
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    return call


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await c.get(f"{url}/v1/models", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError(url)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256, help="requests per measured pass")
    ap.add_argument("--rounds", type=int, default=4, help="measured passes per (target, concurrency)")
    ap.add_argument("--warmup-passes", type=int, default=2, help="unmeasured passes per (target, concurrency)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument(
        "--lora", action="store_true", help="enable multi-LoRA in all three engines (default: off in all three)"
    )
    ap.add_argument(
        "--toy-dir", type=Path, default=None, help="an existing toy world build (default: build/reuse the cached one)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "gateway_overhead.json")
    args = ap.parse_args()

    from gateway.engines import create_engine
    from gateway.engines.base import SamplingParams
    from toyworld.build import ToyWorld, build_toy_world
    from toyworld.tasks import TASKS

    tw = ToyWorld.load(args.toy_dir) if args.toy_dir else build_toy_world(progress=False)
    model = str(tw.base_dir)
    import random

    rng = random.Random(0)
    names = sorted(TASKS)
    prompts = [f"Q: {TASKS[names[i % len(names)]].sample(rng).question}\nA: " for i in range(args.requests)]
    # The same engine configuration for all three targets, so only the serving layer differs.
    engine_args = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "enable_lora": args.lora}
    if args.lora:
        engine_args |= {"max_lora_rank": 16, "max_loras": 8}
    lora_flags = ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "8"] if args.lora else []

    work = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    spec = work / "spec.yaml"
    spec.write_text(f"experts:\n  toy-base: {{engine: vllm, model: {model}, engine_args: {json.dumps(engine_args)}}}\n")
    gw_port, vl_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gw = subprocess.Popen(
        [sys.executable, "-m", "swarmgate.cli", "serve", "--spec", str(spec), "--host", "127.0.0.1",
         "--port", str(gw_port), "--log-level", "warning"],
        cwd=REPO, env=env,
    )  # fmt: skip
    vl = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
         "toy-base", "--host", "127.0.0.1", "--port", str(vl_port), "--max-model-len", "256", "--dtype", "float32",
         "--enforce-eager", "--disable-log-stats", "--uvicorn-log-level", "warning",
         "--gpu-memory-utilization", "0.3", *lora_flags],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    direct = create_engine("vllm", model, **engine_args)
    try:
        await asyncio.gather(
            wait_ready(f"http://127.0.0.1:{gw_port}", gw), wait_ready(f"http://127.0.0.1:{vl_port}", vl), direct.start()
        )
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)

        async def call_direct(prompt: str) -> int:
            return (await direct.complete(prompt, params)).completion_tokens

        results: list[dict] = []
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            targets = {
                "engine (direct)": call_direct,
                "vllm serve": http_caller(client, f"http://127.0.0.1:{vl_port}/v1", "toy-base", args.max_tokens),
                "swarmgate": http_caller(client, f"http://127.0.0.1:{gw_port}/v1", "toy-base", args.max_tokens),
            }
            for c in args.concurrency:
                # vLLM's CPU backend speeds up over its first few hundred requests at a new batch size: warm every
                # target at this concurrency before measuring it.
                for call in targets.values():
                    for _ in range(args.warmup_passes):
                        await drive(call, prompts, c)
                for rnd in range(args.rounds):  # interleaved rounds, alternating order, to spread drift over targets
                    order = list(targets.items()) if rnd % 2 == 0 else list(reversed(targets.items()))
                    for name, call in order:
                        r = await drive(call, prompts, c)
                        results.append({"target": name, "concurrency": c, "round": rnd, **r})
    finally:
        await direct.close()
        for p in (gw, vl):
            p.terminate()
        for p in (gw, vl):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    summary = []
    for c in args.concurrency:
        row = {"concurrency": c}
        for name in ("engine (direct)", "vllm serve", "swarmgate"):
            rs = [r for r in results if r["target"] == name and r["concurrency"] == c]
            row[name] = {
                "rps": statistics.mean(r["rps"] for r in rs),
                "p50_ms": statistics.mean(r["p50_ms"] for r in rs),
                "p95_ms": statistics.mean(r["p95_ms"] for r in rs),
            }
        g, v = row["swarmgate"], row["vllm serve"]
        row["rps_ratio_vs_vllm_serve"] = g["rps"] / v["rps"]
        row["added_p50_ms_vs_vllm_serve"] = g["p50_ms"] - v["p50_ms"]
        summary.append(row)

    lora = "LoRA on" if args.lora else "LoRA off"
    print(
        f"\nGateway overhead on the toy base model ({args.requests} requests/level, max_tokens={args.max_tokens}, "
        f"greedy, {lora} in all three engines)"
    )
    head = f"{'conc':>4} | {'target':<16} | {'req/s':>8} | {'p50 ms':>8} | {'p95 ms':>8}"
    print(head + "\n" + "-" * len(head))
    for row in summary:
        for name in ("engine (direct)", "vllm serve", "swarmgate"):
            m = row[name]
            print(
                f"{row['concurrency']:>4} | {name:<16} | {m['rps']:>8.1f} | {m['p50_ms']:>8.2f} | {m['p95_ms']:>8.2f}"
            )
        print(
            f"{'':>4} | {'gateway/vllm':<16} | {row['rps_ratio_vs_vllm_serve']:>7.3f}x | "
            f"{row['added_p50_ms_vs_vllm_serve']:>+8.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
