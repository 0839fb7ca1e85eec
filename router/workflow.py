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
from router.data import load_examples, reference_index
from scoring.examples import Example

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
    held_out = (cfg.data.eval_split, cfg.data.test_split)
    default = cfg.data.eval_limit_per_task if split in held_out else cfg.data.limit_per_task
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
    """Collected answers (greedy, through the engines) for ``examples``; never the gateway's logged answers."""
    with TrajectoryCache(cfg.cache) as cache:
        return cache.table((ex.question for ex in examples), sources=("collect",))


def train_on(
    cfg: RouterConfig,
    examples: Sequence[Example],
    *,
    total_timesteps: int | None = None,
    progress: bool | None = None,
    policy_root: str | Path | None = None,
    extra_meta: dict[str, Any] | None = None,
    scorer: Any = None,
    extra_table_path: str | Path | None = None,
    say: Say = print,
) -> Path:
    """PPO on the cached answers of ``examples`` (``scorer`` overrides the configured one; ``extra_table_path``, a
    cache of logged answers, fills transitions the collected cache lacks) and publish under ``policy_root``."""
    from router.scoring import build_scorer
    from router.train import encoder_from_config, train_and_publish

    experts = resolve_experts(cfg)
    table = _tables(cfg, examples)
    if extra_table_path is not None and Path(extra_table_path).is_file():
        with TrajectoryCache(extra_table_path) as extra:
            for k, v in extra.table(ex.question for ex in examples).items():
                table.setdefault(k, v)
    ok, missing = split_covered(table, examples, experts.names, cfg.env.max_steps)
    if missing:
        say(
            f"warning: {len(missing)} of {len(examples)} questions lack cached answers; training on the other {len(ok)}"
        )
    if not ok:
        raise ValueError(f"no question in {cfg.cache} has its answers cached: run `swarmgate router collect` first")
    encoder = encoder_from_config(cfg.encoder, [ex.question for ex in ok])
    vocab = encoder.describe().get("vocab")
    if vocab is not None:
        n = cfg.encoder.vocab_min_questions
        shown = " ".join(vocab[:20]) + (" ..." if len(vocab) > 20 else "")
        say(
            f"encoder: {len(vocab)} words in >= {n} training questions keep their spelling ({shown}); other words are"
            " read by their shape"
            if vocab
            else f"warning: no word is in {n} training questions, so every word is read by its shape: lower"
            " encoder.vocab_min_questions or train on more questions"
        )
    scorer = scorer if scorer is not None else build_scorer(cfg.scorer)
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


def route_classifier(cfg: RouterConfig, policy: Any, *, say: Say = print) -> Any:
    """The supervised baseline: softmax regression on the policy's encoder, trained on the training split's
    oracle routes (full depth, collected answers only). None when no training question is fully cached."""
    from router.baselines import RouteClassifier
    from router.evaluate import run_oracle
    from router.scoring import build_scorer

    train = load_split(cfg, cfg.data.train_split)
    table = _tables(cfg, train)
    ok, _ = split_covered(table, train, policy.experts, policy.max_steps)
    if not ok:
        say("no training question is fully cached: the supervised classifier baseline is left out")
        return None
    scorer, costs = build_scorer(cfg.scorer), dict(zip(policy.experts, policy.costs, strict=True))
    answers = TableAnswers(table)
    labels = [run_oracle(ex, policy.experts, costs, answers, scorer, policy.max_steps).route for ex in ok]
    features = policy.encoder.encode([ex.question for ex in ok])
    b = cfg.baselines
    return RouteClassifier.fit(features, labels, epochs=b.classifier_epochs, l2=b.classifier_l2, seed=cfg.train.seed)


def evaluate_policy(
    cfg: RouterConfig,
    *,
    policy_path: str | None = None,
    cost_weights: Sequence[float] | None = None,
    split: str | None = None,
    out_dir: str | None = None,
    oracle_depth: int | None = None,
    collect_missing: bool = False,
    final: bool = False,
    say: Say = print,
) -> dict[str, Any]:
    """The quality/cost table of the router and every baseline on ``split`` (default: the dev split).

    Dev selects (the report names the lambda it selects); the test split is reported only with ``final``, at every
    trained lambda, marking the one dev selected. Only collected answers are read: the gateway's logged answers
    (any sampling settings) never enter an evaluation.
    """
    from gateway.routing.policy import load_policy
    from router.baselines import KeywordRouter
    from router.evaluate import evaluate, markdown_table, select_cost_weight, write_report
    from router.scoring import build_scorer

    split = _eval_split(cfg, split, final, say)
    policy = load_policy(policy_path or cfg.policy_dir)
    examples = load_split(cfg, split)
    weights = list(cost_weights or policy.cost_weights)
    depth = oracle_depth or policy.max_steps
    if depth < policy.max_steps:
        raise ValueError(f"--oracle-depth {depth} is below the router's step limit {policy.max_steps}: no upper bound")
    if collect_missing:
        collect_for_eval(cfg, policy, examples, weights, depth, say=say)
    table = _tables(cfg, examples)
    _, missing = split_covered(table, examples, policy.experts, depth)
    if missing:
        raise ValueError(
            f"{len(missing)} {split} questions lack cached answers: run "
            f"`swarmgate router collect --split {split}` first (or eval with --collect)"
        )
    keyword = KeywordRouter.from_config(cfg.baselines, policy.experts, policy.costs)
    upgrades = cfg.baselines.keyword_upgrades
    keyword_plus = keyword.upgraded(upgrades, policy.experts) if keyword is not None and upgrades else None
    classifier = route_classifier(cfg, policy, say=say)
    report = evaluate(
        policy,
        examples,
        TableAnswers(table),
        build_scorer(cfg.scorer),
        weights,
        oracle_depth=depth,
        random_seeds=cfg.baselines.random_seeds,
        seed=cfg.train.seed,
        keyword=keyword,
        keyword_plus=keyword_plus,
        classifier=classifier,
    )
    report["split"] = split
    report["final"] = final
    root = Path(out_dir or cfg.eval_dir)
    out = root if out_dir else root / split
    if final:
        report["selected_cost_weight"] = _selected_on_dev(cfg, policy, say)
        report["selected_on"] = cfg.data.eval_split
        if (out / "report.json").is_file():
            say(f"warning: {out} already holds a test report; a second look at test is no longer held out")
    else:
        report["selected_cost_weight"] = select_cost_weight(report)
        report["selected_on"] = split
    paths = write_report(report, out)
    say(markdown_table(report))
    best = report["best_single"]
    say(
        f"best single expert: {best['method']} quality {best['quality']:.3f}; all-experts cost "
        f"{report['all_experts_cost']:.2f}; lambda selected on {report['selected_on']}: "
        f"{report['selected_cost_weight']}; targets: {report['targets']}"
    )
    say(f"wrote {', '.join(str(p) for p in paths.values())}")
    return report


def _eval_split(cfg: RouterConfig, split: str | None, final: bool, say: Say) -> str:
    """The split to evaluate on (default: dev; test only with ``final``, and then only test)."""
    split = split or (cfg.data.test_split if final else cfg.data.eval_split)
    if split == cfg.data.test_split and not final:
        raise ValueError(
            f"`{split}` is the held-out test split: choose lambda, checkpoints and settings on "
            f"`{cfg.data.eval_split}`, then report test once with --final"
        )
    if final and split != cfg.data.test_split:
        raise ValueError(f"--final reports the test split ({cfg.data.test_split}), not {split}")
    if split == cfg.data.train_split:
        say(f"warning: evaluating on the training split `{split}`: numbers are optimistic")
    return split


def _selected_on_dev(cfg: RouterConfig, policy: Any, say: Say) -> float | None:
    """The lambda the dev report of this very policy selected (None, with a warning, when there is none)."""
    import json

    dev_report = Path(cfg.eval_dir) / cfg.data.eval_split / "report.json"
    chosen = None
    if dev_report.is_file():
        dev = json.loads(dev_report.read_text())
        if dev.get("policy", {}).get("version") == policy.version:
            chosen = dev.get("selected_cost_weight")
    if chosen is None:
        say(f"warning: no dev report of policy {policy.version} under {dev_report.parent}: no lambda selected")
    return chosen


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


@dataclass(frozen=True)
class RetrainResult:
    """What ``retrain`` did."""

    candidate: Path
    """The newly trained policy (under ``<policy_dir>/.candidates`` unless published)."""
    published: Path | None
    """The published version directory, or None when the candidate did not beat the serving policy."""
    candidate_dev: float
    """The candidate's dev utility (mean of quality - lambda * cost over the trained lambdas)."""
    serving_dev: float | None
    """The serving policy's dev utility (None: nothing was serving)."""
    used: dict[str, int]
    """Logged questions used, by signal (reference, correction, score, judge)."""
    dropped: dict[str, int]
    """Logged questions left out, by reason."""


def traffic_cache_path(cfg: RouterConfig) -> Path:
    """Where logged answers go: a cache of their own, never read by ``eval`` (any sampling settings)."""
    p = Path(cfg.cache)
    return p.with_name(p.stem + ".traffic" + (p.suffix or ".sqlite"))


def held_out_questions(cfg: RouterConfig) -> set[str]:
    """Every question of the dev (eval) and test splits, in full: never trained on."""
    if not cfg.data.dir:
        return set()
    out: set[str] = set()
    for split in {cfg.data.eval_split, cfg.data.test_split}:
        try:
            out.update(ex.question for ex in load_examples(cfg.data.dir, split, cfg.data.tasks, None))
        except FileNotFoundError:
            continue
    return out


def dev_utility(
    policy: Any, examples: Sequence[Example], table: dict[Key, str], scorer: Any, weights: Sequence[float]
) -> float:
    """Mean over ``weights`` of the mean (quality - lambda * cost) of the policy's greedy routes."""
    from router.evaluate import run_policy

    answers = TableAnswers(table)
    total = 0.0
    for lam in weights:
        eps = [run_policy(policy, ex, answers, scorer, lam) for ex in examples]
        total += sum(e.quality - lam * e.cost for e in eps) / len(eps)
    return total / len(weights)


def _gate_table(
    cfg: RouterConfig, policies: Sequence[Any], dev: Sequence[Example], weights: Sequence[float], collect_missing: bool
) -> dict[Key, str]:
    """Collected answers along every given policy's dev routes (collecting what is missing when allowed)."""
    if collect_missing:
        from router.collect import walk_policy

        async def job(handles: dict[str, Any], cache: TrajectoryCache) -> None:
            table = cache.table([ex.question for ex in dev], sources=("collect",))
            for pol in policies:
                await walk_policy(
                    handles,
                    pol,
                    [ex.question for ex in dev],
                    cache,
                    table,
                    cost_weights=weights,
                    max_steps=pol.max_steps,
                    template=cfg.ktp_template,
                    params=_sampling(cfg),
                    batch_size=cfg.collect.batch_size,
                    progress=False,
                )

        with_experts(cfg, job)
    return _tables(cfg, dev)


def retrain_from_logs(
    cfg: RouterConfig,
    logs: Sequence[str],
    *,
    references: str | None = None,
    collect_missing: bool = True,
    include_train: bool = True,
    total_timesteps: int | None = None,
    progress: bool | None = None,
    judge: Any = None,
    force_publish: bool = False,
    say: Say = print,
) -> RetrainResult:
    """Logs + feedback -> (collect what the logs lack) -> PPO -> a candidate policy, published as the next version
    only when it beats the serving policy on the dev split (``force_publish`` skips the gate)."""
    from router.judges import TrafficScorer

    experts = resolve_experts(cfg)
    digest, feedback = _store_logs(cfg, logs, experts.names, say)
    held = held_out_questions(cfg)
    questions = [q for q in digest.questions if q not in held]
    dropped: dict[str, int] = {}
    if len(questions) < len(digest.questions):
        dropped["dev/test question"] = len(digest.questions) - len(questions)
        say(
            f"{dropped['dev/test question']} logged questions are {cfg.data.eval_split}/{cfg.data.test_split} "
            "questions; left out of training"
        )
    judge = judge if judge is not None else _configured_judge(cfg)
    ref_dir = references or cfg.data.dir
    scorer = TrafficScorer(judge=judge, threshold=cfg.retrain.judge_threshold)
    logged, used, unlabelled = _label_logged(
        questions, reference_index(ref_dir) if ref_dir else {}, _feedback_by_question(digest, feedback), scorer
    )
    if unlabelled:
        dropped["no reference, feedback or judge"] = unlabelled
        say(f"{unlabelled} logged questions have no reference, no feedback and no judge (set retrain.judge); left out")
    say(f"logged questions used: {used}")
    if collect_missing and logged:
        collect_questions(cfg, [ex.question for ex in logged], progress=bool(progress), say=say)
    examples = list(logged)
    if include_train and cfg.data.dir:
        seen = {ex.question for ex in examples}
        examples += [ex for ex in load_split(cfg, cfg.data.train_split) if ex.question not in seen]
    if not examples:
        raise ValueError("nothing to train on: the logs hold no usable question and include_train is off")
    candidate = train_on(
        cfg,
        examples,
        total_timesteps=total_timesteps,
        progress=progress,
        policy_root=Path(cfg.policy_dir) / ".candidates",
        scorer=scorer,
        extra_table_path=traffic_cache_path(cfg),
        extra_meta={"retrained_from": [str(p) for p in logs], "logged_questions": len(logged), "signals": used},
        say=lambda m: None,
    )
    published, cand_u, serv_u = _gate(cfg, candidate, collect_missing, force_publish, say)
    return RetrainResult(candidate, published, cand_u, serv_u, used, dropped)


def _store_logs(cfg: RouterConfig, logs: Sequence[str], experts: Sequence[str], say: Say) -> tuple[Any, Any]:
    """The logs' digest (their routes as transitions) and feedback; the transitions go to the traffic cache."""
    from router.retrain import digest_log, read_feedback

    digest = digest_log(logs, experts)
    feedback = read_feedback(logs)
    say(
        f"{digest.lines} log lines: {len(digest.answers)} transitions, {len(digest.questions)} questions, "
        f"{len(feedback)} requests with feedback; skipped {digest.skipped}"
    )
    with TrajectoryCache(traffic_cache_path(cfg)) as traffic:
        written = traffic.put_many(digest.answers)
    say(f"{written} logged transitions stored in {traffic_cache_path(cfg)} (never read by eval)")
    return digest, feedback


def _configured_judge(cfg: RouterConfig) -> Any:
    """The judge ``retrain.judge`` names (None: none); ``toy-big`` is the spec's model of that name."""
    from router.judges import build_judge

    toy_big = None
    if cfg.spec:
        from gateway.spec import load_spec

        spec = load_spec(cfg.spec, check_paths=False)
        big = spec.experts.get("toy-big")
        toy_big = (lambda: big.model) if big is not None else None
    return build_judge(cfg.retrain, toy_big)


def _feedback_by_question(digest: Any, feedback: dict[str, Any]) -> dict[str, list[tuple[Any, str]]]:
    """Each logged question's (feedback, the final answer it rates), from the requests that got feedback."""
    by_question: dict[str, list[Any]] = {}
    for rid, fb in feedback.items():
        if rid in digest.finals:
            by_question.setdefault(digest.finals[rid][0], []).append((fb, digest.finals[rid][1]))
    return by_question


def _label_logged(
    questions: Sequence[str],
    index: dict[str, Example],
    by_question: dict[str, list[tuple[Any, str]]],
    scorer: Any,
) -> tuple[list[Example], dict[str, int], int]:
    """Logged questions as training examples, each with the best signal it has: the reference data's answer, a
    correction, a final answer scored at or above the judge threshold, or else the judge (answers scored below the
    threshold are marked wrong in ``scorer``). Returns the examples, the count per signal and the count of questions
    with no signal at all."""
    thr = scorer.threshold
    logged: list[Example] = []
    used = {"reference": 0, "correction": 0, "score": 0, "judge": 0}
    unlabelled = 0
    for q in questions:
        ex = index.get(q)
        if ex is not None:
            logged.append(ex)
            used["reference"] += 1
            continue
        ref = None
        kind = ""
        for fb, final in by_question.get(q, []):
            if fb.answer is not None:
                ref, kind = fb.answer.strip(), "correction"
                break
            if fb.score is not None and fb.score >= thr:
                ref, kind = final, "score"
            elif fb.score is not None:
                scorer.wrong.add((q, final))
        if ref is not None:
            logged.append(Example(q, ref, "traffic"))
            used[kind] += 1
        elif scorer.judge is not None:
            logged.append(Example(q, None, "traffic"))
            used["judge"] += 1
        else:
            unlabelled += 1
    return logged, used, unlabelled


def _gate(
    cfg: RouterConfig, candidate: Path, collect_missing: bool, force_publish: bool, say: Say
) -> tuple[Path | None, float, float | None]:
    """The gate: the candidate is published when it beats the serving policy on the held-out dev split (collected
    answers, the configured reference scorer). Returns the published version (or None) and both dev utilities."""
    import shutil

    from gateway.routing.policy import PolicyError, load_policy
    from router.publish import publish_policy
    from router.scoring import build_scorer

    dev = load_split(cfg, cfg.data.eval_split)
    cand = load_policy(candidate)
    try:
        serving = load_policy(cfg.policy_dir)
    except PolicyError:
        serving = None
    weights = [cfg.retrain.gate_cost_weight] if cfg.retrain.gate_cost_weight is not None else list(cfg.env.cost_weights)
    pols = [cand] + ([serving] if serving is not None else [])
    table = _gate_table(cfg, pols, dev, weights, collect_missing)
    exact = build_scorer(cfg.scorer)
    cand_u = dev_utility(cand, dev, table, exact, weights)
    serv_u = dev_utility(serving, dev, table, exact, weights) if serving is not None else None
    published: Path | None = None
    if force_publish or serv_u is None or cand_u > serv_u + cfg.retrain.min_gain:
        published = publish_policy(cfg.policy_dir, lambda d: shutil.copytree(candidate, d, dirs_exist_ok=True))
        say(
            f"published {published}: dev utility {cand_u:.4f} vs serving "
            f"{'none' if serv_u is None else f'{serv_u:.4f}'} ({cfg.data.eval_split}, {len(dev)} questions); "
            "a serving gateway hot-reloads it"
        )
    else:
        say(
            f"NOT published: the candidate's dev utility {cand_u:.4f} does not beat the serving policy's "
            f"{serv_u:.4f} by more than {cfg.retrain.min_gain} ({cfg.data.eval_split}, {len(dev)} questions); "
            f"the serving policy stays; candidate kept at {candidate}"
        )
    return published, cand_u, serv_u
