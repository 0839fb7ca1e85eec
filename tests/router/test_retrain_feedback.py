"""Retraining from real traffic: feedback and a reference-free judge give logged questions a signal; dev/test
questions never train; a new version is published only when it beats the serving one on dev."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gateway.routing.policy import POINTER, load_policy
from router.config import RetrainConfig, RouterConfig, TrainConfig
from router.judges import TrafficScorer
from router.workflow import held_out_questions, retrain_from_logs
from tests.router.conftest import scripted_policy, small_config
from tests.router.fakeworld import gold, make_examples
from tests.router.test_workflow import fill_cache, log_line, write_dataset


def feedback_line(request_id: str, **fields: object) -> str:
    return json.dumps({"type": "feedback", "request_id": request_id, **fields}) + "\n"


def with_id(line: str, request_id: str) -> str:
    rec = json.loads(line)
    rec["request_id"] = request_id
    return json.dumps(rec) + "\n"


@pytest.fixture
async def world(tmp_path: Path) -> RouterConfig:
    train, dev, test = make_examples(2, seed=0), make_examples(2, seed=1), make_examples(1, seed=2)
    write_dataset(tmp_path, {"train": train, "dev": dev, "test": test})
    cfg = small_config(tmp_path, train=TrainConfig(total_timesteps=128, n_envs=2, progress_bar=False))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(tmp_path / "data")))
    await fill_cache(cfg, train + dev + test)
    return cfg


async def test_feedback_trains_dev_questions_are_dropped_and_the_gate_keeps_a_better_policy(
    world: RouterConfig, tmp_path: Path
) -> None:
    fresh = make_examples(1, seed=42)  # traffic: questions in no split, no reference anywhere
    dev_q = sorted(held_out_questions(world))[:2]
    await fill_cache(world, fresh)
    lines = ""
    for i, ex in enumerate(fresh):
        lines += with_id(log_line(ex.question, [("big", "")], "wrong"), f"r{i}")
        if i % 2 == 0:
            lines += feedback_line(f"r{i}", answer=gold(ex.question))  # a correction: becomes the reference
        else:
            lines += feedback_line(f"r{i}", score=0.0)  # only "wrong": needs a judge for the rest; none set
    for j, q in enumerate(dev_q):
        lines += with_id(log_line(q, [("big", "")], "x"), f"d{j}") + feedback_line(f"d{j}", answer="x")
    log = tmp_path / "requests.jsonl"
    log.write_text(lines)
    # the serving policy is the hand-set right route for composed tasks; a 128-step PPO candidate won't beat it
    scripted_policy(Path(world.policy_dir), "adder", "reverser")
    msgs: list[str] = []
    result = retrain_from_logs(world, [str(log)], collect_missing=False, say=msgs.append)
    assert result.dropped["dev/test question"] == len(dev_q)
    assert any(f"{len(dev_q)} logged questions are dev/test questions" in m for m in msgs)
    assert result.used["correction"] == (len(fresh) + 1) // 2
    assert result.dropped["no reference, feedback or judge"] == len(fresh) // 2
    meta = load_policy(result.candidate).meta["training"]
    assert meta["logged_questions"] == result.used["correction"]
    if result.published is None:
        assert any(m.startswith("NOT published") for m in msgs)
        assert (Path(world.policy_dir) / POINTER).read_text().strip() == "v0001"
        assert result.serving_dev is not None and result.candidate_dev <= result.serving_dev
    else:  # it did beat the serving policy on dev: then it is the new version
        assert result.candidate_dev > (result.serving_dev or float("-inf"))
        assert (Path(world.policy_dir) / POINTER).read_text().strip() == "v0002"


async def test_nothing_serving_publishes_and_a_judge_scores_traffic(world: RouterConfig, tmp_path: Path) -> None:
    fresh = make_examples(1, seed=43)
    await fill_cache(world, fresh)
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(with_id(log_line(e.question, [("big", "")], "?"), f"q{i}") for i, e in enumerate(fresh)))

    def judge(prediction: str, reference: str | None = None, question: str = "") -> float:
        return 1.0 if prediction.strip() == gold(question) else 0.0  # a perfect reference-free judge

    judge.needs_reference = False  # type: ignore[attr-defined]
    cfg = dataclasses.replace(world, retrain=RetrainConfig(judge_threshold=0.5))
    msgs: list[str] = []
    result = retrain_from_logs(cfg, [str(log)], collect_missing=False, judge=judge, say=msgs.append)
    assert result.used["judge"] == len(fresh) and result.published is not None
    assert result.published.name == "v0001" and any(m.startswith("published") for m in msgs)


def test_traffic_scorer_order_reference_then_feedback_then_judge() -> None:
    s = TrafficScorer(judge=lambda p, r=None, q="": 0.9, threshold=0.5)  # type: ignore[arg-type]
    s.wrong.add(("q", "bad"))
    assert s("46", "46", "q") == 1.0 and s("47", "46", "q") == 0.0  # reference: exact match
    assert s("bad", None, "q") == 0.0  # a user said this answer is wrong
    assert s("other", None, "q") == 1.0  # the judge, thresholded
    assert TrafficScorer()("other", None, "q") == 0.0  # no judge: no credit


def test_the_big_toy_model_judges_answers_without_a_reference(toy_world) -> None:
    import json

    from router.judges import LMJudge

    judge = LMJudge(str(toy_world.big_dir))
    rows = []
    for task in ("add", "sort"):
        lines = (toy_world.data_dir / task / "dev.jsonl").read_text().splitlines()[:5]
        rows += [json.loads(x) for x in lines]
    wins = 0
    for r in rows:
        right, wrong = r["answer"], r["answer"][::-1] if r["answer"][::-1] != r["answer"] else r["answer"] + "1"
        wins += judge(right, None, r["question"]) > judge(wrong, None, r["question"])
    assert wins >= 0.8 * len(rows)
