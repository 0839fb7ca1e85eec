"""Quality versus cost of the router against baselines, over several cost weights, on cached answers.

The router is run through the *exported* policy (``RouterPolicy.decide``, the code the gateway runs), not the SB3
model, so the table measures what is served. Baselines: each single expert, random routing, the always-all-experts
chain (every expert once, in order) and the oracle best route (per question, the best quality reachable within the
step limit, at the lowest cost).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.cache import MissingAnswer
from router.data import Example
from router.env import AnswerFn
from router.policy import STOP, RouterPolicy
from router.scoring import Scorer


@dataclass
class Episode:
    """One question routed to the end."""

    quality: float
    cost: float
    route: list[str]
    task: str = ""


@dataclass
class Row:
    """One line of the table."""

    method: str
    cost_weight: float | None
    quality: float
    cost: float
    calls: float
    n: int
    by_task: dict[str, float] = field(default_factory=dict)

    def public(self, all_cost: float) -> dict[str, Any]:
        out = asdict(self)
        out["cost_vs_all"] = self.cost / all_cost if all_cost > 0 else None
        return out


def _walk(
    example: Example, route: Sequence[str], costs: dict[str, float], answer_fn: AnswerFn, scorer: Scorer
) -> Episode:
    answer, cost = "", 0.0
    for e in route:
        answer = answer_fn(e, example.question, answer).strip()
        cost += costs[e]
    q = float(scorer(answer, example.reference, example.question)) if answer else 0.0
    return Episode(q, cost, list(route), example.task)


def run_policy(
    policy: RouterPolicy,
    example: Example,
    answer_fn: AnswerFn,
    scorer: Scorer,
    cost_weight: float | None = None,
    max_steps: int | None = None,
) -> Episode:
    """Route one question exactly as the gateway does (greedy decisions, stop only after a call)."""
    limit = max_steps or policy.max_steps
    costs = dict(zip(policy.experts, policy.costs, strict=True))
    q_vec = policy.encoder.encode([example.question])[0]
    answer, spent, route = "", 0.0, []
    for step in range(limit):
        d = policy.decide(q_vec, answer, step, spent, cost_weight)
        if d.name == STOP:
            break
        answer = answer_fn(d.name, example.question, answer).strip()
        spent += costs[d.name]
        route.append(d.name)
    q = float(scorer(answer, example.reference, example.question)) if answer else 0.0
    return Episode(q, spent, route, example.task)


def random_routes(
    n_questions: int, experts: Sequence[str], max_steps: int, *, seeds: int = 5, seed: int = 0
) -> list[list[list[str]]]:
    """Uniform random routes (stop allowed after the first call), ``[seed][question] -> route``; routes do not
    depend on answers, so they are drawn up front (and collected up front)."""
    rng = random.Random(seed)
    out: list[list[list[str]]] = []
    for _ in range(seeds):
        per_q = []
        for _ in range(n_questions):
            route: list[str] = []
            for step in range(max_steps):
                choice = rng.randrange(len(experts) + (1 if step > 0 else 0))
                if choice == len(experts):
                    break
                route.append(experts[choice])
            per_q.append(route)
        out.append(per_q)
    return out


def run_oracle(
    example: Example,
    experts: Sequence[str],
    costs: dict[str, float],
    answer_fn: AnswerFn,
    scorer: Scorer,
    max_steps: int,
) -> Episode:
    """The best quality any route of at most ``max_steps`` calls reaches, at the lowest cost (cached transitions)."""
    best: dict[str, tuple[float, list[str]]] = {}
    frontier: dict[str, tuple[float, list[str]]] = {"": (0.0, [])}
    for _ in range(max_steps):
        nxt: dict[str, tuple[float, list[str]]] = {}
        for answer, (cost, route) in frontier.items():
            for e in experts:
                try:
                    a2 = answer_fn(e, example.question, answer).strip()
                except MissingAnswer:
                    continue
                c2 = cost + costs[e]
                if a2 not in best or c2 < best[a2][0]:
                    best[a2] = (c2, [*route, e])
                    nxt[a2] = best[a2]
        frontier = nxt
    scored = [
        (float(scorer(a, example.reference, example.question)) if a else 0.0, -c, r) for a, (c, r) in best.items()
    ]
    q, neg_cost, route = max(scored, key=lambda t: (t[0], t[1]))
    return Episode(q, -neg_cost, route, example.task)


def _row(method: str, cost_weight: float | None, episodes: Sequence[Episode]) -> Row:
    n = len(episodes)
    tasks: dict[str, list[float]] = {}
    for ep in episodes:
        tasks.setdefault(ep.task, []).append(ep.quality)
    return Row(
        method=method,
        cost_weight=cost_weight,
        quality=sum(e.quality for e in episodes) / n,
        cost=sum(e.cost for e in episodes) / n,
        calls=sum(len(e.route) for e in episodes) / n,
        n=n,
        by_task={t: sum(v) / len(v) for t, v in sorted(tasks.items())},
    )


def evaluate(
    policy: RouterPolicy,
    examples: Sequence[Example],
    answer_fn: AnswerFn,
    scorer: Scorer,
    cost_weights: Sequence[float],
    *,
    max_steps: int | None = None,
    oracle_depth: int | None = None,
    random_seeds: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The quality/cost table of the router at each cost weight and of every baseline."""
    experts, limit = policy.experts, max_steps or policy.max_steps
    costs = dict(zip(experts, policy.costs, strict=True))
    rows: list[Row] = []
    say = progress or (lambda _msg: None)
    for e in experts:
        rows.append(_row(f"single:{e}", None, [_walk(x, [e], costs, answer_fn, scorer) for x in examples]))
    say("single experts done")
    routes_by_seed = random_routes(len(examples), experts, limit, seeds=random_seeds, seed=seed)
    rand = [
        _walk(x, r, costs, answer_fn, scorer) for per_q in routes_by_seed for x, r in zip(examples, per_q, strict=True)
    ]
    rows.append(_row("random", None, rand))
    rows.append(_row("all-experts", None, [_walk(x, experts, costs, answer_fn, scorer) for x in examples]))
    depth = oracle_depth or limit
    rows.append(_row("oracle", None, [run_oracle(x, experts, costs, answer_fn, scorer, depth) for x in examples]))
    say("baselines done")
    routes: dict[str, dict[str, int]] = {}
    for lam in cost_weights:
        eps = [run_policy(policy, x, answer_fn, scorer, lam, limit) for x in examples]
        rows.append(_row("router", float(lam), eps))
        counts: dict[str, int] = {}
        for ep in eps:
            key = f"{ep.task}: {' > '.join(ep.route)}"
            counts[key] = counts.get(key, 0) + 1
        routes[str(lam)] = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:20])
        say(f"router lambda={lam} done")
    all_cost = next(r.cost for r in rows if r.method == "all-experts")
    best_single = max((r for r in rows if r.method.startswith("single:")), key=lambda r: r.quality)
    claim = [
        {"cost_weight": r.cost_weight, "quality": r.quality, "cost": r.cost}
        for r in rows
        if r.method == "router" and r.quality >= best_single.quality - 1e-9 and r.cost <= all_cost / 2
    ]
    return {
        "rows": [r.public(all_cost) for r in rows],
        "all_experts_cost": all_cost,
        "best_single": {"method": best_single.method, "quality": best_single.quality, "cost": best_single.cost},
        "claim_met_at": claim,
        "claim": "router quality >= best single expert's, at <= half the always-all-experts chain's cost",
        "routes": routes,
        "oracle_depth": depth,
        "max_steps": limit,
        "policy": {"path": policy.path, "version": policy.version},
        "examples": len(examples),
    }


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "| method | lambda | quality | cost | calls | cost / all-experts |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lam = "" if r["cost_weight"] is None else f"{r['cost_weight']:g}"
        rel = "" if r["cost_vs_all"] is None else f"{r['cost_vs_all']:.2f}"
        lines.append(f"| {r['method']} | {lam} | {r['quality']:.3f} | {r['cost']:.2f} | {r['calls']:.2f} | {rel} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``table.md``, ``table.csv``, ``report.json`` and ``frontier.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "report.json", "png": out / "frontier.png"}
    paths["md"].write_text(markdown_table(report))
    with paths["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "cost_weight", "quality", "cost", "calls", "cost_vs_all", "n"])
        for r in report["rows"]:
            w.writerow([r["method"], r["cost_weight"], r["quality"], r["cost"], r["calls"], r["cost_vs_all"], r["n"]])
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    plot_frontier(report, paths["png"])
    return paths


def plot_frontier(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    router = sorted((r for r in rows if r["method"] == "router"), key=lambda r: r["cost"])
    lams = sorted(r["cost_weight"] for r in router)
    label = f"router (PPO), λ={lams[0]:g}…{lams[-1]:g}" if len(lams) > 1 else f"router (PPO), λ={lams[0]:g}"
    ax.plot([r["cost"] for r in router], [r["quality"] for r in router], "o-", color="tab:blue", label=label)
    markers = {"random": ("x", "tab:gray"), "all-experts": ("s", "tab:red"), "oracle": ("*", "tab:green")}
    singles = [r for r in rows if r["method"].startswith("single:")]
    for r in singles:
        ax.plot(r["cost"], r["quality"], "^", color="tab:orange")
    if singles:  # label the best single expert; the others sit at their own cost
        best = max(singles, key=lambda r: r["quality"])
        ax.annotate(
            best["method"].removeprefix("single:"),
            (best["cost"], best["quality"]),
            textcoords="offset points",
            xytext=(5, 3),
            fontsize=8,
        )
    for r in rows:
        if r["method"] in markers:
            m, c = markers[r["method"]]
            ax.plot(r["cost"], r["quality"], m, color=c, markersize=10, label=r["method"])
    ax.plot([], [], "^", color="tab:orange", label="single expert")
    ax.axvline(report["all_experts_cost"] / 2, color="tab:red", linestyle=":", linewidth=1, label="½ all-experts cost")
    ax.set_xlabel("mean cost per question")
    ax.set_ylabel("test quality")
    ax.set_title("Router quality vs cost (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
