"""The four offline jobs behind ``swarmgate router collect|train|eval|retrain`` (the CLI only parses arguments)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.cache import Key, TableAnswers, TrajectoryCache
from router.config import RouterConfig
from router.data import Example, load_examples, reference_index

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass(frozen=True)
class ExpertSet:
    """The router's actions: expert names in order and what each call costs."""

    names: list[str]
    costs: list[float]


def resolve_experts(cfg: RouterConfig) -> ExpertSet:
    """Expert names from the config (or every expert of the spec) and costs from the spec (or ``cfg.costs``)."""
    spec_costs: dict[str, float] = {}
    names = list(cfg.experts)
    if cfg.spec:
        from gateway.spec import load_spec

        spec = load_spec(cfg.spec, check_paths=False)
        spec_costs = {n: e.cost for n, e in spec.experts.items()}
        names = names or list(spec.experts)
        unknown = [n for n in names if n not in spec_costs and n not in cfg.costs]
        if unknown:
            raise ValueError(f"experts {unknown} are not in the spec {cfg.spec}")
    if not names:
        raise ValueError("no experts: set `experts` (and `costs`) or `spec` in the router config")
    costs = []
    for n in names:
        if n in cfg.costs:
            costs.append(float(cfg.costs[n]))
        elif n in spec_costs:
            costs.append(float(spec_costs[n]))
        else:
            raise ValueError(f"no cost for expert {n!r}: set costs.{n} or give a spec")
    return ExpertSet(names, costs)


def load_split(cfg: RouterConfig, split: str, limit: int | None = None) -> list[Example]:
    if not cfg.data.dir:
        raise ValueError("set data.dir in the router config (a folder of <task>/<split>.jsonl files)")
    default = cfg.data.eval_limit_per_task if split == cfg.data.eval_split else cfg.data.limit_per_task
    lim = limit if limit is not None else default
    return load_examples(cfg.data.dir, split, cfg.data.tasks, lim)


def covered(table: dict[Key, str], question: str, experts: Sequence[str], depth: int) -> bool:
    """Whether every transition of every route of up to ``depth`` calls from ``question`` is in ``table``."""
    seen: set[str] = set()
    frontier = {""}
    for _ in range(depth):
        nxt: set[str] = set()
        for prev in frontier:
            seen.add(prev)
            for e in experts:
                a = table.get((e, question, prev))
                if a is None:
                    return False
                a = a.strip()
                if a not in seen:
                    nxt.add(a)
        frontier = nxt
    return True


def split_covered(
    table: dict[Key, str], examples: Sequence[Example], experts: Sequence[str], depth: int
) -> tuple[list[Example], list[Example]]:
    ok: list[Example] = []
    missing: list[Example] = []
    for ex in examples:
        (ok if covered(table, ex.question, experts, depth) else missing).append(ex)
    return ok, missing


# --- collect ------------------------------------------------------------------------------------------------------


def _sampling(cfg: RouterConfig) -> Any:
    from gateway.engines.base import SamplingParams

    return SamplingParams(max_tokens=cfg.collect.max_tokens, temperature=0.0, stop=tuple(cfg.collect.stop))


def with_experts(
    cfg: RouterConfig, job: Callable[[dict[str, Any], TrajectoryCache], Any], *, rebuild: bool = False
) -> Any:
    """Open the cache (checking each expert's fingerprint) and the experts' engines; run ``await job(handles, cache)``."""
    from gateway.spec import load_spec
    from router.experts import fingerprint, open_experts, spec_experts

    if not cfg.spec:
        raise ValueError("collecting needs `spec` in the router config (the experts' engines)")
    experts = resolve_experts(cfg)
    spec = load_spec(cfg.spec)
    with TrajectoryCache(cfg.cache) as cache:
        for name, e in spec_experts(spec, experts.names).items():
            fp = fingerprint(
                e, ktp_template=cfg.ktp_template, max_tokens=cfg.collect.max_tokens, stop=list(cfg.collect.stop)
            )
            cache.check_fingerprint(name, fp, rebuild=rebuild)

        async def go() -> Any:
            async with open_experts(cfg.spec or "", experts.names, force_engine=cfg.collect.engine) as handles:
                return await job(handles, cache)

        return asyncio.run(go())


def collect_questions(
    cfg: RouterConfig, questions: Sequence[str], *, rebuild: bool = False, progress: bool = True, say: Say = print
) -> Any:
    """Collect every answer episodes on ``questions`` can need (plus the all-experts route) into the cache."""
    from router.collect import collect

    experts = resolve_experts(cfg)

    async def job(handles: dict[str, Any], cache: TrajectoryCache) -> Any:
        stats = await collect(
            handles,
            questions,
            cache,
            template=cfg.ktp_template,
            params=_sampling(cfg),
            depth=cfg.env.max_steps,
            routes=[experts.names],
            batch_size=cfg.collect.batch_size,
            max_states_per_question=cfg.collect.max_states_per_question,
            progress=progress,
        )
        say(
            f"collected {stats.requested} new answers ({stats.cached} cached) over {stats.states} states of "
            f"{len(questions)} questions; cache {cache.path} holds {len(cache)}"
        )
        if stats.capped_questions:
            say(f"warning: {len(stats.capped_questions)} questions hit max_states_per_question")
        return stats

    return with_experts(cfg, job, rebuild=rebuild)


def collect_splits(
    cfg: RouterConfig, splits: Sequence[str], *, rebuild: bool = False, progress: bool = True, say: Say = print
) -> Any:
    questions: list[str] = []
    for split in splits:
        questions.extend(ex.question for ex in load_split(cfg, split))
    return collect_questions(cfg, questions, rebuild=rebuild, progress=progress, say=say)


# --- train --------------------------------------------------------------------------------------------------------


def _tables(cfg: RouterConfig, examples: Sequence[Example]) -> dict[Key, str]:
    with TrajectoryCache(cfg.cache) as cache:
        return cache.table(ex.question for ex in examples)


def train_on(
    cfg: RouterConfig,
    examples: Sequence[Example],
    *,
    total_timesteps: int | None = None,
    progress: bool | None = None,
    policy_root: str | Path | None = None,
    extra_meta: dict[str, Any] | None = None,
    say: Say = print,
) -> Path:
    from router.encoders import encoder_from_config
    from router.scoring import build_scorer
    from router.train import train_and_publish

    experts = resolve_experts(cfg)
    table = _tables(cfg, examples)
    ok, missing = split_covered(table, examples, experts.names, cfg.env.max_steps)
    if missing:
        say(
            f"warning: {len(missing)} of {len(examples)} questions lack cached answers; training on the other {len(ok)}"
        )
    if not ok:
        raise ValueError(f"no question in {cfg.cache} has its answers cached: run `swarmgate router collect` first")
    encoder = encoder_from_config(cfg.encoder)
    scorer = build_scorer(cfg.scorer)
    path = train_and_publish(
        cfg,
        ok,
        experts.names,
        experts.costs,
        table,
        scorer,
        encoder,
        policy_root=policy_root,
        total_timesteps=total_timesteps,
        progress_bar=progress,
        extra_meta=extra_meta,
    )
    say(f"policy written to {path} (pointer {Path(policy_root or cfg.policy_dir) / 'CURRENT'})")
    return path


# --- eval ---------------------------------------------------------------------------------------------------------


def evaluate_policy(
    cfg: RouterConfig,
    *,
    policy_path: str | None = None,
    cost_weights: Sequence[float] | None = None,
    split: str | None = None,
    out_dir: str | None = None,
    oracle_depth: int | None = None,
    collect_missing: bool = False,
    say: Say = print,
) -> dict[str, Any]:
    from router.evaluate import evaluate, markdown_table, write_report
    from router.policy import load_policy
    from router.scoring import build_scorer

    policy = load_policy(policy_path or cfg.policy_dir)
    examples = load_split(cfg, split or cfg.data.eval_split)
    weights = list(cost_weights or policy.cost_weights)
    depth = oracle_depth or policy.max_steps
    if collect_missing:
        collect_for_eval(cfg, policy, examples, weights, depth, say=say)
    table = _tables(cfg, examples)
    _, missing = split_covered(table, examples, policy.experts, depth)
    if missing:
        raise ValueError(
            f"{len(missing)} {split or cfg.data.eval_split} questions lack cached answers: run "
            f"`swarmgate router collect --split {split or cfg.data.eval_split}` first (or eval with --collect)"
        )
    report = evaluate(
        policy,
        examples,
        TableAnswers(table),
        build_scorer(cfg.scorer),
        weights,
        oracle_depth=depth,
        seed=cfg.train.seed,
    )
    report["split"] = split or cfg.data.eval_split
    paths = write_report(report, out_dir or cfg.eval_dir)
    say(markdown_table(report))
    best = report["best_single"]
    say(
        f"best single expert: {best['method']} quality {best['quality']:.3f}; all-experts cost "
        f"{report['all_experts_cost']:.2f}; claim met at lambda={[c['cost_weight'] for c in report['claim_met_at']]}"
    )
    say(f"wrote {', '.join(str(p) for p in paths.values())}")
    return report


def collect_for_eval(
    cfg: RouterConfig,
    policy: Any,
    examples: Sequence[Example],
    cost_weights: Sequence[float],
    oracle_depth: int,
    *,
    progress: bool = True,
    say: Say = print,
) -> None:
    """Collect only what ``evaluate`` reads: the oracle's tree to ``oracle_depth``, the all-experts chain, the
    random routes and the policy's own routes (far less than the whole tree to the step limit)."""
    from router.collect import collect, walk_policy, walk_routes
    from router.evaluate import random_routes

    questions = [ex.question for ex in examples]

    async def job(handles: dict[str, Any], cache: TrajectoryCache) -> None:
        kw = {
            "template": cfg.ktp_template,
            "params": _sampling(cfg),
            "batch_size": cfg.collect.batch_size,
            "progress": progress,
        }
        stats = await collect(handles, questions, cache, depth=oracle_depth, routes=[policy.experts], **kw)
        table = cache.table(questions)
        rand = random_routes(len(questions), policy.experts, policy.max_steps, seed=cfg.train.seed)
        n = await walk_routes(
            handles,
            [(q, r) for per_q in rand for q, r in zip(questions, per_q, strict=True)],
            cache,
            table,
            desc="random",
            **kw,
        )
        n += await walk_policy(
            handles, policy, questions, cache, table, cost_weights=cost_weights, max_steps=policy.max_steps, **kw
        )
        say(f"eval collection: {stats.requested + n} new answers for {len(questions)} questions")

    with_experts(cfg, job)


# --- retrain ------------------------------------------------------------------------------------------------------


def retrain_from_logs(
    cfg: RouterConfig,
    logs: Sequence[str],
    *,
    references: str | None = None,
    collect_missing: bool = True,
    include_train: bool = True,
    total_timesteps: int | None = None,
    progress: bool | None = None,
    say: Say = print,
) -> Path:
    """Logs -> cache entries -> (collect what the logs lack) -> PPO -> a new policy version behind the pointer."""
    from router.retrain import digest_log
    from router.scoring import build_scorer

    experts = resolve_experts(cfg)
    digest = digest_log(logs, experts.names)
    say(
        f"{digest.lines} log lines: {len(digest.answers)} transitions, {len(digest.questions)} questions; skipped {digest.skipped}"
    )
    with TrajectoryCache(cfg.cache) as cache:
        written = cache.put_many(digest.answers)
    say(f"{written} new transitions added to {cfg.cache}")

    scorer = build_scorer(cfg.scorer)
    ref_dir = references or cfg.data.dir
    index = reference_index(ref_dir) if ref_dir else {}
    logged: list[Example] = []
    for q in digest.questions:
        ex = index.get(q)
        if ex is not None:
            logged.append(ex)
        elif not scorer.needs_reference:
            logged.append(Example(q, None, "log"))
    dropped = len(digest.questions) - len(logged)
    if dropped:
        say(f"{dropped} logged questions have no reference answer for the {cfg.scorer.name} scorer; left out")
    if collect_missing and logged:
        collect_questions(cfg, [ex.question for ex in logged], progress=bool(progress), say=say)
    examples = list(logged)
    if include_train and cfg.data.dir:
        seen = {ex.question for ex in examples}
        examples += [ex for ex in load_split(cfg, cfg.data.train_split) if ex.question not in seen]
    if not examples:
        raise ValueError("nothing to train on: the logs hold no usable question and include_train is off")
    return train_on(
        cfg,
        examples,
        total_timesteps=total_timesteps,
        progress=progress,
        extra_meta={"retrained_from": [str(p) for p in logs], "logged_questions": len(logged)},
        say=say,
    )
