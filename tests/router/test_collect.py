"""Trajectory cache and collection through the engine layer (fake engines that implement the real protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engines.base import SamplingParams
from router.cache import Answer, CacheMismatch, MissingAnswer, TableAnswers, TrajectoryCache
from router.collect import collect
from router.workflow import covered
from tests.router.fakeworld import EXPERTS, TOY_KTP, answer_fn, make_examples, make_handles

PARAMS = SamplingParams(max_tokens=16, temperature=0.0)


async def test_collect_fills_every_transition_in_batches_and_resumes(tmp_path: Path) -> None:
    handles, small, big = make_handles()
    questions = [e.question for e in make_examples(2, seed=0)]
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        stats = await collect(
            handles,
            questions,
            cache,
            template=TOY_KTP,
            params=PARAMS,
            depth=3,
            routes=[EXPERTS],
            batch_size=7,
            progress=False,
        )
        table = cache.table()
        assert stats.requested == len(table) == len(cache)  # nothing asked twice
        assert all(covered(table, q, EXPERTS, 3) for q in questions)
        for (e, q, prev), a in table.items():  # every cached answer is what that expert says
            assert a == answer_fn(e, q, prev)
        # the all-experts route (6 calls, longer than the step limit) is walked too
        prev = ""
        for e in EXPERTS:
            prev = table[(e, questions[0], prev)]
        # specialists share one engine, big has its own: each got only its own calls
        assert {s for s, _ in big.calls} == {"big"} and "big" not in {s for s, _ in small.calls}
        assert any("\nP: " in content for _, content in small.calls)  # KTP prompts after the first step
        n_calls = len(small.calls) + len(big.calls)
        again = await collect(handles, questions, cache, template=TOY_KTP, params=PARAMS, depth=3, progress=False)
        assert again.requested == 0 and len(small.calls) + len(big.calls) == n_calls


async def test_states_are_expanded_once(tmp_path: Path) -> None:
    handles, small, big = make_handles()
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        await collect(handles, ["count a in aab"], cache, template=TOY_KTP, params=PARAMS, depth=4, progress=False)
    prompts = [c for _, c in small.calls + big.calls]
    per_expert = {}
    for skill, content in small.calls + big.calls:
        per_expert.setdefault(skill, []).append(content)
    assert all(len(v) == len(set(v)) for v in per_expert.values())  # no (expert, prompt) asked twice
    assert len(prompts) < len(EXPERTS) ** 4


async def test_state_cap_bounds_the_graph(tmp_path: Path) -> None:
    handles, *_ = make_handles()
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        stats = await collect(
            handles,
            ["addrev 12 34"],
            cache,
            template=TOY_KTP,
            params=PARAMS,
            depth=4,
            max_states_per_question=3,
            progress=False,
        )
    assert stats.capped_questions == ["addrev 12 34"] and stats.states <= 3


def test_fingerprint_mismatch_is_refused_until_rebuild(tmp_path: Path) -> None:
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        cache.check_fingerprint("adder", {"model": "a"})
        cache.put_many([Answer("adder", "q", "", "1"), Answer("reverser", "q", "", "2")])
        cache.check_fingerprint("adder", {"model": "a"})
        with pytest.raises(CacheMismatch, match="--rebuild"):
            cache.check_fingerprint("adder", {"model": "b"})
        cache.check_fingerprint("adder", {"model": "b"}, rebuild=True)
        assert cache.keys() == {("reverser", "q", "")}


def test_cache_keeps_first_answers_and_reports_sources(tmp_path: Path) -> None:
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        assert cache.put_many([Answer("a", "q", "", "x")]) == 1
        assert cache.put_many([Answer("a", "q", "", "y", source="log")]) == 0
        assert cache.get("a", "q", "").answer == "x"  # type: ignore[union-attr]
        cache.put_many([Answer("a", "q", "x", "z", source="log")])
        assert cache.stats() == {"collect": 1, "log": 1}
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:  # persisted
        assert len(cache) == 2


def test_table_answers_names_the_missing_transition() -> None:
    fn = TableAnswers({("a", "q", ""): "x"})
    assert fn("a", "q", "") == "x"
    with pytest.raises(MissingAnswer, match="swarmgate router collect"):
        fn("b", "q", "")


async def test_eval_collection_gathers_exactly_what_evaluate_reads(tmp_path: Path) -> None:
    from gateway.routing.policy import load_policy
    from router.collect import walk_policy, walk_routes
    from router.evaluate import evaluate, random_routes
    from scoring.reference import ExactMatch
    from tests.router.conftest import scripted_policy

    policy = load_policy(scripted_policy(tmp_path / "p", "adder", "reverser"))
    examples = make_examples(2, seed=3)
    questions = [e.question for e in examples]
    handles, *_ = make_handles()
    kw = {"template": TOY_KTP, "params": PARAMS, "progress": False}
    with TrajectoryCache(tmp_path / "c.sqlite") as cache:
        await collect(handles, questions, cache, depth=2, routes=[EXPERTS], **kw)
        table = cache.table()
        rand = random_routes(len(questions), EXPERTS, 2, seed=0)
        await walk_routes(
            handles, [(q, r) for per_q in rand for q, r in zip(questions, per_q, strict=True)], cache, table, **kw
        )
        await walk_policy(handles, policy, questions, cache, table, cost_weights=[0.0, 1.0], max_steps=3, **kw)
        table = cache.table()
    report = evaluate(
        policy, examples, TableAnswers(table), ExactMatch(), [0.0, 1.0], max_steps=2, oracle_depth=2, seed=0
    )
    assert report["oracle_depth"] == 2 and report["max_steps"] == 2
    rows = {(r["method"], r["cost_weight"]): r for r in report["rows"]}
    assert rows[("router", 0.0)]["by_task"]["addrev"] == 1.0 and rows[("router", 0.0)]["calls"] == 2.0
    assert rows[("router", 1.0)]["calls"] == 1.0  # at lambda 1 the scripted policy stops after the first call
    assert not all(covered(table, q, EXPERTS, 3) for q in questions)  # far less than the full depth-3 tree
