"""Gateway overhead: the same checkpoint through swarmgate (vllm engine), through `vllm serve`, and called directly.

All three run in this one invocation, interleaved per concurrency level (alternating order per round), with identical
prompts, greedy sampling and the same engine configuration, so the ratios are measured side by side. Non-streaming
``/v1/completions`` requests. Reports req/s and latency per target, the gateway's req/s ratio to `vllm serve` per
round (paired: both measured back to back) and its median, and the mean of the gateway's own
``x-swarmgate-overhead-ms`` header. Also the CPU time each process spent per request during the target's own passes
(client, server API process, engine core), read from the kernel's per-process counters: on a shared box CPU time
per request swings far less than req/s, and on a GPU server the API process's CPU is what limits it. Prints a table
and writes JSON; never asserts a time.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 256] [--rounds 4] [--concurrency 1 8 32] [--lora]
        [--model DIR] [--quick] [--out runs/bench/gateway_overhead.json]

``--quick`` (64 requests, 2 rounds, 1 warm-up pass, c = 1 and 8) checks that everything runs on a busy machine; its
numbers are not for quoting. ``--model`` takes any local HF checkpoint (default: the toy world's base), e.g. a real
size model with random weights on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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


async def concurrently(one: Callable[[str], Awaitable[None]], prompts: list[str], concurrency: int) -> float:
    """Run ``one`` on every prompt with at most ``concurrency`` in flight; the wall time in seconds."""
    sem = asyncio.Semaphore(concurrency)

    async def limited(p: str) -> None:
        async with sem:
            await one(p)

    t0 = time.perf_counter()
    await asyncio.gather(*(limited(p) for p in prompts))
    return time.perf_counter() - t0


async def drive(call, prompts: list[str], concurrency: int) -> dict:
    """Run every prompt through ``call`` with at most ``concurrency`` in flight; latency per request."""
    lat: list[float] = []
    tokens = 0

    async def one(p: str) -> None:
        nonlocal tokens
        t = time.perf_counter()
        tokens += await call(p)
        lat.append(time.perf_counter() - t)

    wall = await concurrently(one, prompts, concurrency)
    return {
        "requests": len(prompts),
        "wall_s": wall,
        "rps": len(prompts) / wall,
        "p50_ms": percentile(lat, 0.5) * 1e3,
        "p95_ms": percentile(lat, 0.95) * 1e3,
        "completion_tokens": tokens,
    }


def http_caller(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, overhead: list[float] | None = None):
    """POST /completions; with ``overhead``, collect the gateway's ``x-swarmgate-overhead-ms`` header."""

    async def call(prompt: str) -> int:
        r = await client.post(
            f"{url}/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        )
        r.raise_for_status()
        if overhead is not None and "x-swarmgate-overhead-ms" in r.headers:
            overhead.append(float(r.headers["x-swarmgate-overhead-ms"]))
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


def _cpu_s(proc) -> float:
    """User + system CPU seconds of one process (all its threads); 0 once it is gone."""
    import psutil

    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


class CpuMeter:
    """CPU seconds, per role, of the processes a target runs on: the client (this process, which also hosts the
    direct engine's API side), each server's API process, and the engine cores under each (found by walking the
    process tree at each reading, so a restarted core is still counted)."""

    def __init__(self, servers: dict[str, int]):
        import psutil

        self.me = psutil.Process()
        self.servers = {name: psutil.Process(pid) for name, pid in servers.items()}

    def _cores(self, root) -> list:
        import psutil

        try:
            return root.children(recursive=True)
        except psutil.Error:
            return []

    def read(self) -> dict[str, float]:
        out = {"client": _cpu_s(self.me)}
        server_pids = {p.pid for p in self.servers.values()}
        # the direct engine's core: this process's descendants that are not a server or under one
        under_servers = {c.pid for p in self.servers.values() for c in self._cores(p)} | server_pids
        out["engine (direct) core"] = sum(_cpu_s(c) for c in self._cores(self.me) if c.pid not in under_servers)
        for name, p in self.servers.items():
            out[f"{name} api"] = _cpu_s(p)
            out[f"{name} core"] = sum(_cpu_s(c) for c in self._cores(p))
        return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], target: str, requests: int) -> dict:
    """ms of CPU per request, by role, that ``target``'s own processes spent during its pass."""
    d = {k: (after[k] - before.get(k, 0.0)) * 1e3 / requests for k in after}
    if target == "engine (direct)":
        roles = {"client": d["client"], "api": 0.0, "core": d["engine (direct) core"]}
    else:
        roles = {"client": d["client"], "api": d[f"{target} api"], "core": d[f"{target} core"]}
    roles["total"] = sum(roles.values())
    # CPU the other targets' idle processes burned meanwhile (the noise floor every target pays)
    roles["idle_others"] = sum(v for k, v in d.items() if k != "client" and not k.startswith(target))
    return {k: round(v, 3) for k, v in roles.items()}


class Servers:
    """swarmgate and `vllm serve` on the same checkpoint and engine configuration, in subprocesses on free ports."""

    def __init__(self, model: str, *, max_model_len: int = 256, lora: bool = False):
        self.model = model
        self.engine_args: dict = {
            "max_model_len": max_model_len,
            "dtype": "float32",
            "enforce_eager": True,
            "enable_lora": lora,
        }
        if lora:
            self.engine_args |= {"max_lora_rank": 16, "max_loras": 8}
        self.lora_flags = ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "8"] if lora else []
        self.max_model_len = max_model_len
        self.procs: list[subprocess.Popen] = []
        self.gateway_url = self.vllm_url = ""

    async def start(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="sg-bench-"))
        spec = work / "spec.yaml"
        spec.write_text(
            f"experts:\n  toy-base: {{engine: vllm, model: {self.model}, engine_args: {json.dumps(self.engine_args)}}}\n"
        )
        gw_port, vl_port = free_port(), free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        gw = subprocess.Popen(
            [sys.executable, "-m", "swarmgate.cli", "serve", "--spec", str(spec), "--host", "127.0.0.1",
             "--port", str(gw_port), "--log-level", "warning"],
            cwd=REPO, env=env,
        )  # fmt: skip
        vl = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--served-model-name",
             "toy-base", "--host", "127.0.0.1", "--port", str(vl_port), "--max-model-len", str(self.max_model_len),
             "--dtype", "float32", "--enforce-eager", "--disable-log-stats", "--uvicorn-log-level", "warning",
             "--disable-uvicorn-access-log", "--gpu-memory-utilization", "0.3", *self.lora_flags],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs = [gw, vl]
        self.gateway_url, self.vllm_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{vl_port}"
        await asyncio.gather(wait_ready(self.gateway_url, gw), wait_ready(self.vllm_url, vl))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def toy_prompts(n: int, toy_dir: Path | None) -> tuple[str, list[str]]:
    """(toy base checkpoint, ``n`` toy prompts over every task, seeded)."""
    import random

    from toyworld.build import ToyWorld, build_toy_world
    from toyworld.tasks import TASKS

    tw = ToyWorld.load(toy_dir) if toy_dir else build_toy_world(progress=False)
    rng = random.Random(0)
    names = sorted(TASKS)
    return str(tw.base_dir), [f"Q: {TASKS[names[i % len(names)]].sample(rng).question}\nA: " for i in range(n)]


def load_args(
    ap: argparse.ArgumentParser,
    *,
    requests: int,
    rounds: int,
    warmup_passes: int,
    max_tokens: int,
    quick: int,
    out: str,
) -> argparse.Namespace:
    """The options every serving benchmark takes (``--quick``: ``quick`` requests, 2 rounds, 1 warm-up pass,
    c = 1 8), parsed."""
    ap.add_argument("--requests", type=int, default=requests, help="requests per measured pass")
    ap.add_argument("--rounds", type=int, default=rounds, help="measured passes per (target, concurrency)")
    ap.add_argument(
        "--warmup-passes", type=int, default=warmup_passes, help="unmeasured passes per (target, concurrency)"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=max_tokens)
    ap.add_argument(
        "--toy-dir", type=Path, default=None, help="an existing toy world build (default: build/reuse the cached one)"
    )
    ap.add_argument("--model", type=Path, default=None, help="a local HF checkpoint (default: the toy base)")
    ap.add_argument("--quick", action="store_true", help=f"a tiny budget: {quick} requests, 2 rounds, c = 1 8")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / out)
    args = ap.parse_args()
    if args.quick:
        args.requests, args.rounds, args.warmup_passes, args.concurrency = quick, 2, 1, [1, 8]
    return args


def client_limits() -> httpx.Limits:
    # Idle connections are dropped after 1 s, before the servers' 5 s keep-alive timeout closes them under a request
    # (a request sent on a connection the server is closing fails with ReadError).
    return httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=1.0)


async def measure_level(
    targets: dict[str, Callable[[], Awaitable[dict]]],
    concurrency: int,
    meter: CpuMeter,
    *,
    rounds: int,
    warmup_passes: int,
    requests: int,
) -> list[dict]:
    """One concurrency level: warm every target, then ``rounds`` measured passes interleaved, in alternating order
    (to spread drift over the targets); each pass's result with the CPU its target's processes spent per request.

    vLLM's CPU backend speeds up over its first few hundred requests at a new batch size: every target is warmed at
    this concurrency before it is measured."""
    for run in targets.values():
        for _ in range(warmup_passes):
            await run()
    results = []
    for rnd in range(rounds):
        order = list(targets.items()) if rnd % 2 == 0 else list(reversed(targets.items()))
        for name, run in order:
            before = meter.read()
            r = await run()
            cpu = cpu_per_request(before, meter.read(), name, requests)
            results.append({"target": name, "concurrency": concurrency, "round": rnd, **r, "cpu_ms_per_request": cpu})
    return results


TARGETS = ("engine (direct)", "vllm serve", "swarmgate")


async def measure(args: argparse.Namespace, servers: Servers, direct, prompts: list[str]) -> tuple[list[dict], dict]:
    """Every pass of every target at every concurrency; and per concurrency, the gateway's overhead headers."""
    from gateway.engines.base import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, final_only=True)

    async def call_direct(prompt: str) -> int:
        return (await direct.complete(prompt, params)).completion_tokens

    results: list[dict] = []
    overhead: dict[int, list[float]] = {}
    meter = CpuMeter({"vllm serve": servers.procs[1].pid, "swarmgate": servers.procs[0].pid})
    async with httpx.AsyncClient(timeout=120, limits=client_limits()) as client:
        for c in args.concurrency:
            overhead[c] = []
            calls = {
                "engine (direct)": call_direct,
                "vllm serve": http_caller(client, f"{servers.vllm_url}/v1", "toy-base", args.max_tokens),
                "swarmgate": http_caller(client, f"{servers.gateway_url}/v1", "toy-base", args.max_tokens, overhead[c]),
            }
            targets = {name: functools.partial(drive, call, prompts, c) for name, call in calls.items()}
            results += await measure_level(
                targets, c, meter, rounds=args.rounds, warmup_passes=args.warmup_passes, requests=len(prompts)
            )
    return results, overhead


def summarise(results: list[dict], c: int, rounds: int, overhead: list[float]) -> dict:
    """One concurrency level: each target's means (CPU: medians), and the gateway against `vllm serve`."""
    row: dict = {"concurrency": c}
    for name in TARGETS:
        rs = [r for r in results if r["target"] == name and r["concurrency"] == c]
        row[name] = {
            "rps": statistics.mean(r["rps"] for r in rs),
            "p50_ms": statistics.mean(r["p50_ms"] for r in rs),
            "p95_ms": statistics.mean(r["p95_ms"] for r in rs),
            "cpu_ms_per_request": {
                k: statistics.median(r["cpu_ms_per_request"][k] for r in rs) for k in rs[0]["cpu_ms_per_request"]
            },
        }
    g, v = row["swarmgate"], row["vllm serve"]
    row["rps_ratio_vs_vllm_serve"] = g["rps"] / v["rps"]
    row["added_p50_ms_vs_vllm_serve"] = g["p50_ms"] - v["p50_ms"]
    paired = [
        next(r["rps"] for r in results if r["target"] == "swarmgate" and r["concurrency"] == c and r["round"] == k)
        / next(r["rps"] for r in results if r["target"] == "vllm serve" and r["concurrency"] == c and r["round"] == k)
        for k in range(rounds)
    ]
    row["rps_ratio_per_round"] = paired
    row["rps_ratio_median"] = statistics.median(paired)
    row["api_cpu_ratio_vs_vllm_serve"] = (
        g["cpu_ms_per_request"]["api"] / v["cpu_ms_per_request"]["api"] if v["cpu_ms_per_request"]["api"] else None
    )
    row["gateway_overhead_header_ms"] = {
        "mean": statistics.mean(overhead) if overhead else None,
        "p50": percentile(overhead, 0.5) if overhead else None,
    }
    return row


def print_table(summary: list[dict]) -> None:
    head = (
        f"{'conc':>4} | {'target':<16} | {'req/s':>8} | {'p50 ms':>8} | {'p95 ms':>8} | "
        f"{'CPU ms/req: client':>18} | {'api':>6} | {'core':>6} | {'total':>6}"
    )
    print(head + "\n" + "-" * len(head))
    for row in summary:
        for name in TARGETS:
            m = row[name]
            cpu = m["cpu_ms_per_request"]
            print(
                f"{row['concurrency']:>4} | {name:<16} | {m['rps']:>8.1f} | {m['p50_ms']:>8.2f} | {m['p95_ms']:>8.2f} | "
                f"{cpu['client']:>18.2f} | {cpu['api']:>6.2f} | {cpu['core']:>6.2f} | {cpu['total']:>6.2f}"
            )
        print(
            f"{'':>4} | {'gateway/vllm':<16} | {row['rps_ratio_vs_vllm_serve']:>7.3f}x | "
            f"{row['added_p50_ms_vs_vllm_serve']:>+8.2f} | rounds "
            + " ".join(f"{x:.2f}x" for x in row["rps_ratio_per_round"])
            + f" (median {row['rps_ratio_median']:.3f}x)"
        )
        if row["api_cpu_ratio_vs_vllm_serve"] is not None:
            print(
                f"{'':>4} | {'API process CPU per request, gateway/vllm':<16}: {row['api_cpu_ratio_vs_vllm_serve']:.3f}x"
            )
        ovh = row["gateway_overhead_header_ms"]
        if ovh["p50"] is not None:
            print(f"{'':>4} | {'x-swarmgate-overhead-ms':<16} p50 {ovh['p50']:.3f} ms, mean {ovh['mean']:.3f} ms")


def write_json(args: argparse.Namespace, summary: list[dict], results: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": config, "summary": summary, "runs": results}, indent=2))
    print(f"\nwrote {args.out}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lora", action="store_true", help="enable multi-LoRA in all three engines (default: off in all three)"
    )
    args = load_args(ap, requests=256, rounds=4, warmup_passes=2, max_tokens=16, quick=64, out="gateway_overhead.json")

    from gateway.engines import create_engine

    toy_model, prompts = toy_prompts(args.requests, args.toy_dir)
    model = str(args.model) if args.model else toy_model
    # The same engine configuration for all three targets, so only the serving layer differs.
    servers = Servers(model, lora=args.lora)
    direct = create_engine("vllm", model, **servers.engine_args)
    try:
        await asyncio.gather(servers.start(), direct.start())
        results, overhead = await measure(args, servers, direct, prompts)
    finally:
        await direct.close()
        servers.stop()

    summary = [summarise(results, c, args.rounds, overhead.get(c) or []) for c in args.concurrency]
    lora = "LoRA on" if args.lora else "LoRA off"
    print(
        f"\nGateway overhead on {model} ({args.requests} requests/level, max_tokens={args.max_tokens}, "
        f"greedy, {lora} in all three engines)"
    )
    print_table(summary)
    write_json(args, summary, results)


if __name__ == "__main__":
    asyncio.run(main())
