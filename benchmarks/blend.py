"""Token-level blending speed on the toy world: the lead alone vs 2- and 3-member blends, naive, gated, speculative.

Same engine kind, same run, same prompts, greedy, one request at a time (decode latency, as one user sees it).
Every configuration is a ``BlendExecutor`` on the same engines, so the lead alone (a one-member blend) runs the same
scoring-session machinery; the lead's own ``generate`` (the engine's batch decoder) is reported too. Rounds interleave
the configurations (each round runs every configuration once over all prompts) after a warm-up round.

Reported per configuration: completion tokens/s, the ratio to the lead alone, the speculative acceptance rate, the
fraction of positions blended, and forward passes per generated token (lead and others). ``--topk-error`` adds the
vLLM approximation's error: the total variation distance between the blend over the union of the members' top-k
(vLLM) and the exact blend of full distributions (transformers), along greedy blended continuations.

    .venv/bin/python benchmarks/blend.py [--engine transformers|vllm] [--members toy-gen-a toy-gen-b toy-gen-c]
        [--prompts 24] [--max-tokens 16] [--rounds 2] [--speculate 4] [--gate 0.5] [--topk-error]
        [--out runs/bench/blend.json]

Prints a table and writes JSON; never asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def toy_prompts(root: Path, n: int) -> list[str]:
    from toyworld.format import render

    tasks = ["add", "rev", "sort", "count"]
    rows = {t: [json.loads(x) for x in (root / "data" / t / "test.jsonl").read_text().splitlines()] for t in tasks}
    return [render(rows[tasks[i % 4]][i // 4]["question"]) for i in range(n)]


def default_members(spec: dict[str, Any]) -> list[str]:
    gens = [n for n in ("toy-gen-a", "toy-gen-b", "toy-gen-c") if n in spec["experts"]]
    return gens if len(gens) == 3 else ["toy-big", "toy-adder", "toy-reverser"]


def configurations(members: list[str], k: int, gate: float) -> dict[str, dict[str, Any]]:
    w3 = [0.5, 0.25, 0.25]
    g = {"metric": "entropy", "threshold": gate}
    out = {
        "lead alone": {"experts": members[:1], "speculate": 0},
        "2 naive": {"experts": members[:2], "weights": [0.6, 0.4], "speculate": 0},
        "3 naive": {"experts": members, "weights": w3, "speculate": 0},
        "3 gated": {"experts": members, "weights": w3, "speculate": 0, "gate": g},
        "2 speculative": {"experts": members[:2], "weights": [0.6, 0.4], "speculate": k},
        "3 speculative": {"experts": members, "weights": w3, "speculate": k},
        "3 spec+gated": {"experts": members, "weights": w3, "speculate": k, "gate": g},
    }
    return {name: {"kind": "blend", **c} for name, c in out.items()}


async def run_one(ex: Any, prompt: str, max_tokens: int) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    from gateway.engines.base import SamplingParams
    from gateway.executors.base import ExecRequest, StepInfo

    tokens, steps = 0, []
    async for ev in ex.stream(ExecRequest(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), "bench")):
        if isinstance(ev, StepInfo):
            steps.append(ev.public())
        else:
            tokens += len(ev.token_ids)
    return tokens, steps[0].get("blend", {}), steps


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from gateway.engines.base import SamplingParams
    from gateway.runtime import Runtime
    from gateway.spec import parse_spec
    from toyworld.build import build_toy_world

    world = build_toy_world(progress=False)
    spec = yaml.safe_load(Path(world.spec_path).read_text())
    members = args.members or default_members(spec)
    ens = configurations(members, args.speculate, args.gate)
    if args.top_k:
        for c in ens.values():
            c["top_k"] = args.top_k
    spec["ensembles"] = {name.replace(" ", "_").replace("+", "-"): c for name, c in ens.items()}
    rt = await Runtime.build(parse_spec(spec, path=world.spec_path), force_engine=args.engine)
    prompts = toy_prompts(Path(world.root), args.prompts)
    rows: dict[str, dict[str, Any]] = {
        n: {"tokens": 0, "seconds": 0.0, "drafted": 0, "accepted": 0, "positions": 0, "blended": 0, "lead_fw": 0}
        for n in [*ens, "lead generate"]
    }
    rows = {n: {**r, "others_fw": 0} for n, r in rows.items()}
    lead = rt.experts[members[0]]
    try:
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for name in rows:
                t0 = time.perf_counter()
                tokens = 0
                facts: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
                for p in prompts:
                    if name == "lead generate":
                        done = await lead.complete(p, SamplingParams(max_tokens=args.max_tokens, temperature=0.0))
                        tokens += done.completion_tokens
                    else:
                        n, blend, steps = await run_one(
                            rt.executors[name.replace(" ", "_").replace("+", "-")], p, args.max_tokens
                        )
                        tokens += n
                        facts.append((blend, steps))
                dt = time.perf_counter() - t0
                if rnd == 0:
                    continue
                r = rows[name]
                r["tokens"] += tokens
                r["seconds"] += dt
                for blend, steps in facts:
                    r["drafted"] += blend.get("drafted", 0)
                    r["accepted"] += blend.get("accepted", 0)
                    r["positions"] += blend.get("positions", 0)
                    r["blended"] += round(blend.get("fraction_blended", 0) * blend.get("positions", 0))
                    r["lead_fw"] += steps[0]["forward_passes"]
                    groups = {s["group"]: s["forward_passes"] for s in steps if s["group"] != steps[0]["group"]}
                    r["others_fw"] += sum(groups.values())
        topk = await topk_error(args, world, spec, members, prompts, rt) if args.topk_error else None
    finally:
        await rt.close()
    table = speed_table(rows)
    return {
        "engine": args.engine,
        "members": members,
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "speculate": args.speculate,
        "gate_entropy_threshold": args.gate,
        "top_k": args.top_k,
        "table": table,
        "topk_error": topk,
    }


def speed_table(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tokens/s of every configuration (and against the lead alone), acceptance, blended fraction and forward passes
    per token, from the measured rounds' totals."""
    base = rows["lead alone"]["tokens"] / rows["lead alone"]["seconds"]
    table = []
    for name, r in rows.items():
        tps = r["tokens"] / r["seconds"] if r["seconds"] else 0.0
        table.append(
            {
                "config": name,
                "tokens_per_s": round(tps, 2),
                "vs_lead_alone": round(tps / base, 3),
                "acceptance_rate": round(r["accepted"] / r["drafted"], 3) if r["drafted"] else None,
                "fraction_blended": round(r["blended"] / r["positions"], 3) if r["positions"] else None,
                "lead_forwards_per_token": round(r["lead_fw"] / r["tokens"], 3)
                if r["tokens"] and r["lead_fw"]
                else None,
                "other_forwards_per_token": round(r["others_fw"] / r["tokens"], 3) if r["tokens"] else None,
                "tokens": r["tokens"],
                "seconds": round(r["seconds"], 6),
            }
        )
    return table


async def topk_error(
    args: argparse.Namespace, world: Any, spec: dict[str, Any], members: list[str], prompts: list[str], rt: Any
) -> list[dict[str, Any]]:
    """TV(blend over the union of vLLM top-k, exact blend of transformers' full distributions) along greedy paths."""
    import torch

    from gateway import blending as B
    from gateway.runtime import Runtime
    from gateway.spec import parse_spec

    weights = [0.5, 0.25, 0.25][: len(members)]
    exps = {n: spec["experts"][n] for n in members}
    tf = await Runtime.build(parse_spec({"experts": exps}, path=world.spec_path), force_engine="transformers")
    own_vl = args.engine != "vllm"
    vl = await Runtime.build(parse_spec({"experts": exps}, path=world.spec_path), force_engine="vllm") if own_vl else rt
    out = []
    try:
        ks = [int(k) for k in args.topk_values]
        tv: dict[int, list[float]] = {k: [] for k in [*ks, 0]}
        for p in prompts:
            h0 = tf.experts[members[0]]
            ids = h0.engine.encode_for_blend(p)
            for _ in range(args.max_tokens):
                full = [
                    await tf.experts[n].engine.next_token_logprobs(ids, adapter=tf.experts[n].adapter) for n in members
                ]
                exact = B.combine(full, weights)
                sessions = []
                for n in members:
                    h = vl.experts[n]
                    sessions.append(await h.engine._score_last(ids, h.engine._lora_request(h.adapter), None))
                tv[0].append(B.total_variation(exact, B.combine(sessions, weights)))  # vLLM full vs transformers full
                for k in ks:
                    raw = []
                    for n in members:
                        h = vl.experts[n]
                        raw.append(await h.engine._score_last(ids, h.engine._lora_request(h.adapter), k))
                    tv[k].append(B.total_variation(exact, B.blend_topk(raw, weights)))
                tok = int(torch.argmax(exact))
                if tok in h0.engine.blend_eos_ids():
                    break
                ids = [*ids, tok]
        for k, vals in tv.items():
            t = torch.tensor(vals)
            out.append(
                {
                    "top_k": k or "full (vLLM vs transformers)",
                    "positions": len(vals),
                    "mean_tv": round(float(t.mean()), 6),
                    "p95_tv": round(float(t.quantile(0.95)), 6),
                    "max_tv": round(float(t.max()), 6),
                }
            )
    finally:
        await tf.close()
        if own_vl:
            await vl.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument(
        "--members", nargs="+", default=None, help="lead first (default: toy-gen-a/b/c, else big/adder/rev)"
    )
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--speculate", type=int, default=4)
    ap.add_argument("--gate", type=float, default=0.5, help="entropy threshold (nats) of the gated configurations")
    ap.add_argument("--top-k", type=int, default=None, help="vLLM: blend over the union of the members' top-k")
    ap.add_argument("--topk-error", action="store_true", help="also measure the top-k approximation error (vLLM)")
    ap.add_argument("--topk-values", nargs="+", default=["5", "10", "20"])
    ap.add_argument("--out", default="runs/bench/blend.json")
    args = ap.parse_args()
    result = asyncio.run(bench(args))
    print(
        f"engine={result['engine']} members={result['members']} prompts={result['prompts']} "
        f"max_tokens={result['max_tokens']} rounds={result['rounds']} k={result['speculate']}"
    )
    cols = [
        "config",
        "tokens_per_s",
        "vs_lead_alone",
        "acceptance_rate",
        "fraction_blended",
        "lead_forwards_per_token",
        "other_forwards_per_token",
    ]
    print(" | ".join(f"{c:>16}" for c in cols))
    for row in result["table"]:
        print(" | ".join(f"{'-' if row[c] is None else row[c]!s:>16}" for c in cols))
    if result["topk_error"]:
        print("top-k union vs exact blend (total variation):")
        for row in result["topk_error"]:
            print(
                f"  top_k={row['top_k']!s:>28}  mean {row['mean_tv']:.5f}  p95 {row['p95_tv']:.5f}  max {row['max_tv']:.5f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
