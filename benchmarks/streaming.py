"""Streaming latency: time to first token (TTFT) and inter-token latency (ITL), swarmgate vs `vllm serve`.

The same checkpoint and engine configuration behind both (``gateway_overhead.Servers``), streamed
``/v1/completions`` requests with greedy sampling and ``ignore_eos`` (every request generates exactly ``max_tokens``
tokens on both servers), interleaved rounds in alternating order per concurrency level. TTFT is measured from
sending the request to the first frame with text; ITL is the gap between consecutive frames with text, per request.
Prints p50/p95 per target, the gateway's added p50s and each server's API-process CPU time per request (as
``gateway_overhead.py`` measures it); writes JSON; never asserts a time.

    .venv/bin/python benchmarks/streaming.py [--requests 64] [--rounds 2] [--concurrency 1 8] [--max-tokens 32]
        [--model DIR] [--quick] [--out runs/bench/streaming.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import (
    CpuMeter,
    Servers,
    client_limits,
    concurrently,
    load_args,
    measure_level,
    percentile,
    toy_prompts,
)

TARGETS = ("vllm serve", "swarmgate")


async def stream_one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[float, list[float]]:
    """(TTFT seconds, inter-token gaps in seconds) of one streamed completion."""
    body = {
        "model": "toy-base",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            frame = json.loads(line[6:])
            if any(c.get("text") for c in frame.get("choices") or []):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError(f"{url}: a stream with no text")
    return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)]


async def drive(client: httpx.AsyncClient, url: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    ttft: list[float] = []
    itl: list[float] = []

    async def one(p: str) -> None:
        first, gaps = await stream_one(client, url, p, max_tokens)
        ttft.append(first)
        itl.extend(gaps)

    wall = await concurrently(one, prompts, concurrency)
    return {
        "requests": len(prompts),
        "wall_s": wall,
        "rps": len(prompts) / wall,
        "ttft_p50_ms": percentile(ttft, 0.5) * 1e3,
        "ttft_p95_ms": percentile(ttft, 0.95) * 1e3,
        "itl_p50_ms": percentile(itl, 0.5) * 1e3 if itl else float("nan"),
        "itl_p95_ms": percentile(itl, 0.95) * 1e3 if itl else float("nan"),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = load_args(ap, requests=128, rounds=3, warmup_passes=1, max_tokens=32, quick=32, out="streaming.json")
    toy_model, prompts = toy_prompts(args.requests, args.toy_dir)
    model = str(args.model) if args.model else toy_model
    servers = Servers(model, max_model_len=max(256, args.max_tokens + 64))
    results: list[dict] = []
    try:
        await servers.start()
        urls = {"vllm serve": servers.vllm_url, "swarmgate": servers.gateway_url}
        meter = CpuMeter({"vllm serve": servers.procs[1].pid, "swarmgate": servers.procs[0].pid})
        async with httpx.AsyncClient(timeout=300, limits=client_limits()) as client:
            for c in args.concurrency:
                targets = {
                    name: functools.partial(drive, client, urls[name], prompts, c, args.max_tokens) for name in TARGETS
                }
                results += await measure_level(
                    targets, c, meter, rounds=args.rounds, warmup_passes=args.warmup_passes, requests=len(prompts)
                )
    finally:
        servers.stop()

    keys = ("rps", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms")
    summary = []
    for c in args.concurrency:
        row: dict = {"concurrency": c}
        for name in TARGETS:
            rs = [r for r in results if r["target"] == name and r["concurrency"] == c]
            row[name] = {k: statistics.median(r[k] for r in rs) for k in keys}
            row[name]["api_cpu_ms_per_request"] = statistics.median(r["cpu_ms_per_request"]["api"] for r in rs)
        g, v = row["swarmgate"], row["vllm serve"]
        row["added_ttft_p50_ms"] = g["ttft_p50_ms"] - v["ttft_p50_ms"]
        row["added_itl_p50_ms"] = g["itl_p50_ms"] - v["itl_p50_ms"]
        vc = v["api_cpu_ms_per_request"]
        row["api_cpu_ratio_vs_vllm_serve"] = g["api_cpu_ms_per_request"] / vc if vc else None
        summary.append(row)

    print(
        f"\nStreaming latency on {model} ({args.requests} requests/level, {args.max_tokens} tokens each, greedy, "
        f"ignore_eos; medians over {args.rounds} interleaved rounds)"
    )
    head = (
        f"{'conc':>4} | {'target':<11} | {'req/s':>7} | {'TTFT p50':>9} | {'TTFT p95':>9} | {'ITL p50':>8} | "
        f"{'ITL p95':>8} | {'API CPU ms/req':>14}"
    )
    print(head + "\n" + "-" * len(head))
    for row in summary:
        for name in TARGETS:
            m = row[name]
            print(
                f"{row['concurrency']:>4} | {name:<11} | {m['rps']:>7.1f} | {m['ttft_p50_ms']:>9.2f} | "
                f"{m['ttft_p95_ms']:>9.2f} | {m['itl_p50_ms']:>8.3f} | {m['itl_p95_ms']:>8.3f} | "
                f"{m['api_cpu_ms_per_request']:>14.2f}"
            )
        print(
            f"{'':>4} | {'added p50':<11} | {'':>7} | {row['added_ttft_p50_ms']:>+9.2f} | {'':>9} | "
            f"{row['added_itl_p50_ms']:>+8.3f} | {'':>8} | {row['api_cpu_ratio_vs_vllm_serve'] or float('nan'):>13.3f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": config, "summary": summary, "runs": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
