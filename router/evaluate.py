"""Quality versus cost of the router against baselines, over several cost weights, on cached answers.

The router is run through the *exported* policy (``RouterPolicy.decide``, the code the gateway runs), not the SB3
model, so the table measures what is served. Baselines, reported every time: each single expert, random routing,
the always-all-experts chain (every expert once, in order), the keyword/rule router and the supervised route
classifier on the router's own encoder (``router.baselines``), and the oracle best route (per question, the best
quality any route within the router's full step limit reaches, at the lowest cost): an upper bound.

An answer the engine cut at ``max_tokens`` (``router.cache.Truncated``) scores 0 everywhere here.

Besides the table, every method's per-question outcome (route, quality, cost) is kept for error analysis and for
breakdowns the table does not make (``episodes.jsonl``; e.g. ``benchmarks/phrasings.py --router-eval`` splits the
router and its baselines by the toy world's phrasings).
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.routing.policy import STOP, RouterPolicy
from router.baselines import KeywordRouter, RouteClassifier
from router.cache import MissingAnswer
from router.env import AnswerFn
from scoring.base import Scorer, is_truncated
from scoring.examples import Example


@dataclass
class Episode:
    """One question routed to the end."""

    quality: float
    cost: float
    route: list[str]
    task: str = ""
    question: str = ""


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
    episodes: list[Episode] = field(default_factory=list, repr=False)
    """The per-question outcomes behind the row (not part of the table)."""

    def public(self, all_cost: float) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "episodes"}
        out["cost_vs_all"] = self.cost / all_cost if all_cost > 0 else None
        return out


def quality_of(raw: str, example: Example, scorer: Scorer) -> float:
    """The scorer's quality of an expert's raw answer: 0 when empty or cut at ``max_tokens``."""
    answer = raw.strip()
    if not answer or is_truncated(raw):
        return 0.0
    return float(scorer(answer, example.answer, example.question))


def _walk(
    example: Example, route: Sequence[str], costs: dict[str, float], answer_fn: AnswerFn, scorer: Scorer
) -> Episode:
    raw, answer, cost = "", "", 0.0
    for e in route:
        raw = answer_fn(e, example.question, answer)
        answer = raw.strip()
        cost += costs[e]
    return Episode(quality_of(raw, example, scorer), cost, list(route), example.task, example.question)


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
    raw, answer, spent, route = "", "", 0.0, []
    for step in range(limit):
        d = policy.decide(q_vec, answer, step, spent, cost_weight, route=route)
        if d.name == STOP:
            break
        raw = answer_fn(d.name, example.question, answer)
        answer = raw.strip()
        spent += costs[d.name]
        route.append(d.name)
    return Episode(quality_of(raw, example, scorer), spent, route, example.task, example.question)


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
    # state = the answer text (what the next expert sees); a cut answer is a state of its own, worth 0
    best: dict[tuple[str, bool], tuple[float, list[str]]] = {}
    frontier: dict[str, tuple[float, list[str]]] = {"": (0.0, [])}
    for _ in range(max_steps):
        nxt: dict[str, tuple[float, list[str]]] = {}
        for answer, (cost, route) in frontier.items():
            for e in experts:
                try:
                    raw = answer_fn(e, example.question, answer)
                except MissingAnswer:
                    continue
                a2, cut = raw.strip(), is_truncated(raw)
                c2 = cost + costs[e]
                if (a2, cut) not in best or c2 < best[(a2, cut)][0]:
                    best[(a2, cut)] = (c2, [*route, e])
                    if a2 not in nxt or c2 < nxt[a2][0]:
                        nxt[a2] = best[(a2, cut)]
        frontier = nxt
    scored = [
        (0.0 if (cut or not a) else float(scorer(a, example.answer, example.question)), -c, r)
        for (a, cut), (c, r) in best.items()
    ]
    q, neg_cost, route = max(scored, key=lambda t: (t[0], t[1]))
    return Episode(q, -neg_cost, route, example.task, example.question)


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
        episodes=list(episodes),
    )


def route_counts(episodes: Sequence[Episode], top: int = 20) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ep in episodes:
        key = f"{ep.task}: {' > '.join(ep.route)}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


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
    keyword: KeywordRouter | None = None,
    keyword_plus: KeywordRouter | None = None,
    classifier: RouteClassifier | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The quality/cost table of the router at each cost weight and of every baseline, with the claims checked.

    ``oracle_depth`` defaults to (and may not be below) the router's step limit: a shallower oracle is no bound.
    """
    experts, limit = policy.experts, max_steps or policy.max_steps
    costs = dict(zip(experts, policy.costs, strict=True))
    depth = oracle_depth or limit
    if depth < limit:
        raise ValueError(f"oracle depth {depth} < the router's step limit {limit}: the oracle would be no upper bound")
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
    routes: dict[str, dict[str, int]] = {}
    for name, rule_router in (("keyword", keyword), ("keyword+", keyword_plus)):
        if rule_router is not None:
            eps = [_walk(x, rule_router.route(x.question), costs, answer_fn, scorer) for x in examples]
            rows.append(_row(name, None, eps))
            routes[name] = route_counts(eps)
    if classifier is not None:
        vecs = policy.encoder.encode([x.question for x in examples])
        eps = [_walk(x, classifier.route(v), costs, answer_fn, scorer) for x, v in zip(examples, vecs, strict=True)]
        rows.append(_row("classifier", None, eps))
        routes["classifier"] = route_counts(eps)
    oracle = [run_oracle(x, experts, costs, answer_fn, scorer, depth) for x in examples]
    rows.append(_row("oracle", None, oracle))
    say("baselines done")
    for lam in cost_weights:
        eps = [run_policy(policy, x, answer_fn, scorer, lam, limit) for x in examples]
        rows.append(_row("router", float(lam), eps))
        routes[str(lam)] = route_counts(eps)
        say(f"router lambda={lam} done")
    return _report(rows, routes, policy, len(examples), depth, limit)


def _report(
    rows: list[Row], routes: dict[str, dict[str, int]], policy: RouterPolicy, n_examples: int, depth: int, limit: int
) -> dict[str, Any]:
    """The table's rows as a report: every row relative to the all-experts chain's cost, the claim and the targets
    checked, the routes taken and every question's outcome."""
    all_cost = next(r.cost for r in rows if r.method == "all-experts")
    best_single = max((r for r in rows if r.method.startswith("single:")), key=lambda r: r.quality)
    router_rows = [r for r in rows if r.method == "router"]
    claim = [
        {"cost_weight": r.cost_weight, "quality": r.quality, "cost": r.cost}
        for r in router_rows
        if r.quality >= best_single.quality - 1e-9 and r.cost <= all_cost / 2
    ]
    return {
        "rows": [r.public(all_cost) for r in rows],
        "all_experts_cost": all_cost,
        "best_single": {"method": best_single.method, "quality": best_single.quality, "cost": best_single.cost},
        "claim_met_at": claim,
        "claim": "router quality >= best single expert's, at <= half the always-all-experts chain's cost",
        "targets": targets(rows),
        "routes": routes,
        "oracle_depth": depth,
        "max_steps": limit,
        "policy": {"path": policy.path, "version": policy.version},
        "examples": n_examples,
        # per question, every method but random (whose routes are drawn, five seeds per question)
        "episodes": [
            {"method": r.method, "cost_weight": r.cost_weight, **asdict(ep)}
            for r in rows
            if r.method != "random"
            for ep in r.episodes
        ],
    }


def targets(rows: Sequence[Row]) -> dict[str, Any]:
    """The issue's bars, checked per lambda: beat the keyword router (quality >= at cost <=); within 5 points of
    the full-depth oracle at <= 1.2x its cost; cost falls (weakly) as lambda rises."""
    by = {r.method: r for r in rows}
    router = sorted((r for r in rows if r.method == "router"), key=lambda r: r.cost_weight or 0.0)
    out: dict[str, Any] = {}
    oracle = by.get("oracle")
    for name, key in (
        ("keyword", "beats_keyword_at"),
        ("keyword+", "beats_keyword_plus_at"),
        ("classifier", "beats_classifier_at"),
    ):
        base = by.get(name)
        if base is not None:
            out[key] = [
                r.cost_weight for r in router if r.quality >= base.quality - 1e-9 and r.cost <= base.cost + 1e-9
            ]
    if oracle is not None:
        out["near_oracle_at"] = [
            r.cost_weight for r in router if r.quality >= oracle.quality - 0.05 and r.cost <= 1.2 * oracle.cost + 1e-9
        ]
    costs = [r.cost for r in router]
    out["cost_falls_with_lambda"] = all(b <= a + 1e-9 for a, b in itertools.pairwise(costs)) and (
        len(costs) < 2 or costs[-1] < costs[0]
    )
    return out


def select_cost_weight(report: dict[str, Any]) -> float | None:
    """The lambda a dev report selects: the router's best quality, ties broken by lower cost."""
    router = [r for r in report["rows"] if r["method"] == "router"]
    if not router:
        return None
    best = max(router, key=lambda r: (round(r["quality"], 9), -r["cost"]))
    return float(best["cost_weight"])


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "| method | lambda | quality | cost | calls | cost / all-experts |",
        "|---|---|---|---|---|---|",
    ]
    chosen = report.get("selected_cost_weight")
    for r in report["rows"]:
        lam = "" if r["cost_weight"] is None else f"{r['cost_weight']:g}"
        if r["method"] == "router" and chosen is not None and r["cost_weight"] == chosen:
            lam += " (selected on dev)"
        rel = "" if r["cost_vs_all"] is None else f"{r['cost_vs_all']:.2f}"
        lines.append(f"| {r['method']} | {lam} | {r['quality']:.3f} | {r['cost']:.2f} | {r['calls']:.2f} | {rel} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``table.md``, ``table.csv``, ``report.json``, ``frontier.png`` and ``episodes.jsonl`` (one line per question
    and method: method, cost_weight, question, task, route, quality, cost) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out / "table.md",
        "csv": out / "table.csv",
        "json": out / "report.json",
        "png": out / "frontier.png",
        "episodes": out / "episodes.jsonl",
    }
    with paths["episodes"].open("w") as fh:
        for ep in report.get("episodes", []):
            fh.write(json.dumps(ep) + "\n")
    report = {k: v for k, v in report.items() if k != "episodes"}
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
    markers = {
        "random": ("x", "tab:gray"),
        "all-experts": ("s", "tab:red"),
        "oracle": ("*", "tab:green"),
        "keyword": ("D", "tab:purple"),
        "keyword+": ("d", "tab:pink"),
        "classifier": ("P", "tab:brown"),
    }
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
    for r in router:
        ax.annotate(
            f"λ={r['cost_weight']:g}",
            (r["cost"], r["quality"]),
            textcoords="offset points",
            xytext=(4, -9),
            fontsize=7,
            color="tab:blue",
        )
    split = report.get("split", "eval")
    ax.set_ylabel(f"{split} quality")
    ax.set_title(f"Router quality vs cost ({split} split, oracle at depth {report.get('oracle_depth')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
