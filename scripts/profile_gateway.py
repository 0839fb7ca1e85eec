"""Where the serving process spends its CPU under load: swarmgate vs `vllm serve`, sampled with py-spy.

Starts both servers on the toy base with the same engine configuration (``benchmarks/gateway_overhead.Servers``),
warms each at the given concurrency, then drives non-streaming ``/v1/completions`` requests while ``py-spy record``
samples the server process. Prints each process's top functions by own samples and the share of a few named
frames, and keeps the raw stacks (``--out``) for a flamegraph. Needs ``pip install py-spy`` (not a dependency).

    .venv/bin/python scripts/profile_gateway.py [--concurrency 32] [--seconds 20] [--out runs/profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gateway_overhead import Servers, drive, http_caller, toy_prompts  # noqa: E402

WATCH = ("Socket.send", "OpenAIServing.", "Request.body", "deepcopy", "Metrics.", "orjson", "httptools_impl")


def summarize(raw: Path, top: int = 12) -> None:
    own: collections.Counter[str] = collections.Counter()
    named: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        frames = stack.split(";")
        own[frames[-1]] += int(n)
        for w in WATCH:
            if any(w in f for f in frames):
                named[w] += int(n)
    print(f"\n{raw.name}: {total} samples; top functions by own samples")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / max(total, 1):5.1f}%  {frame[:120]}")
    print("  frames anywhere on the stack:", ", ".join(f"{w} {100 * named[w] / max(total, 1):.1f}%" for w in WATCH))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "profile")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    model, prompts = toy_prompts(args.requests, None)
    servers = Servers(model)
    await servers.start()
    try:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=1.0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            targets = (
                ("swarmgate", servers.gateway_url, servers.procs[0]),
                ("vllm serve", servers.vllm_url, servers.procs[1]),
            )
            for name, url, proc in targets:
                call = http_caller(client, f"{url}/v1", "toy-base", 16)
                await drive(call, prompts, args.concurrency)  # warm-up
                raw = args.out / f"{name.replace(' ', '_')}.txt"
                cmd = [spy, "record", "--pid", str(proc.pid), "-d", str(args.seconds), "--format", "raw"]
                rec = subprocess.Popen([*cmd, "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL)
                t0, rates = time.monotonic(), []
                while time.monotonic() - t0 < args.seconds + 1:
                    rates.append((await drive(call, prompts, args.concurrency))["rps"])
                rec.wait()
                print(f"{name}: {sum(rates) / len(rates):.1f} req/s at c={args.concurrency} while sampled")
                summarize(raw)
    finally:
        servers.stop()


if __name__ == "__main__":
    asyncio.run(main())
