"""The router's honest baselines: keyword router, supervised route classifier, full-depth oracle, truncation, and
dev-selects/test-reports discipline of ``evaluate_policy``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gateway.routing.encoders import HashedNgramEncoder
from gateway.routing.policy import load_policy
from router.baselines import KeywordRouter, RouteClassifier
from router.cache import TableAnswers, Truncated
from router.config import BaselineConfig, KeywordRule, RouterConfig
from router.evaluate import evaluate, run_oracle
from router.workflow import evaluate_policy
from scoring.reference import ExactMatch
from tests.router.conftest import scripted_policy
from tests.router.fakeworld import COSTS, EXPERTS, answer_fn, make_examples
from tests.router.test_workflow import fill_cache, write_dataset

RULES = BaselineConfig(
    keyword_rules=(
        KeywordRule(when=("addrev",), route=("adder", "reverser")),
        KeywordRule(when=("add|plus", "rev*|backward*"), route=("adder", "reverser")),
        KeywordRule(when=("add|plus",), route=("adder",)),
        KeywordRule(when=("rev",), route=("reverser",)),
    ),
    keyword_default=("big",),
)


def test_keyword_router_first_matching_rule_wins() -> None:
    kw = KeywordRouter.from_config(RULES, EXPERTS, COSTS)
    assert kw is not None
    assert kw.route("addrev 12 34") == ["adder", "reverser"]
    assert kw.route("What is 12 plus 34, written backwards?") == ["adder", "reverser"]  # prefix "backward*"
    assert kw.route("add 12 34") == ["adder"]
    assert kw.route("rev abc") == ["reverser"]
    assert kw.route("reverse abc") == ["big"]  # "rev" (no star) matches the whole word only
    assert kw.route("sort dcba") == ["big"]
    plus = kw.upgraded({"adder": "big"}, EXPERTS)  # keyword+: the same rules, a dearer expert swapped in
    assert plus.route("addrev 12 34") == ["big", "reverser"] and plus.route("rev abc") == ["reverser"]
    assert plus.route("sort dcba") == ["big"] and kw.route("add 1 2") == ["adder"]
    with pytest.raises(ValueError, match="unknown experts \\['nobody'\\]"):
        kw.upgraded({"adder": "nobody"}, EXPERTS)
    assert KeywordRouter.from_config(BaselineConfig(), EXPERTS, COSTS) is None
    bad = BaselineConfig(keyword_rules=(KeywordRule(when=("x",), route=("nobody",)),))
    with pytest.raises(ValueError, match="unknown: \\['nobody'\\]"):
        KeywordRouter.from_config(bad, EXPERTS, COSTS)


def test_route_classifier_learns_routes_from_the_encoding() -> None:
    enc = HashedNgramEncoder(dim=64)
    train = make_examples(6, seed=0)
    labels = [
        run_oracle(ex, EXPERTS, dict(zip(EXPERTS, COSTS, strict=True)), answer_fn, ExactMatch(), 3).route
        for ex in train
    ]
    assert ["adder", "reverser"] in labels and ["counter"] in labels  # the oracle's cheapest best routes
    clf = RouteClassifier.fit(enc.encode([e.question for e in train]), labels, epochs=200)
    test = make_examples(4, seed=7)
    right = sum(
        clf.route(v)
        == run_oracle(ex, EXPERTS, dict(zip(EXPERTS, COSTS, strict=True)), answer_fn, ExactMatch(), 3).route
        for ex, v in zip(test, enc.encode([e.question for e in test]), strict=True)
    )
    assert right >= 0.6 * len(test)  # one route per task: a constant guess gets 1/6


class CutFirstAdder(dict):
    """The fake world's answers, computed on demand; the adder's first answers come back cut at max_tokens."""

    def __missing__(self, key: tuple[str, str, str]) -> str:
        expert, question, previous = key
        a = answer_fn(expert, question, previous)
        self[key] = Truncated(a) if expert == "adder" and not previous else a
        return self[key]


def test_oracle_must_be_full_depth_and_truncated_answers_score_zero(tmp_path: Path) -> None:
    policy = load_policy(scripted_policy(tmp_path / "p", "adder", "reverser"))
    ex = make_examples(1, seed=3)
    table = CutFirstAdder()
    with pytest.raises(ValueError, match="no upper bound"):
        evaluate(policy, ex, TableAnswers(table), ExactMatch(), [0.0], oracle_depth=2)
    report = evaluate(
        policy, ex, TableAnswers(table), ExactMatch(), [0.0], keyword=KeywordRouter.from_config(RULES, EXPERTS, COSTS)
    )
    rows = {r["method"]: r for r in report["rows"] if r["cost_weight"] is None}
    assert rows["single:adder"]["by_task"]["add"] == 0.0  # right text, cut: wrong
    assert rows["oracle"]["by_task"]["add"] == 1.0  # another route reaches the answer whole (e.g. big)
    assert rows["oracle"]["by_task"]["addrev"] == 1.0  # adder's cut answer still passes on; reverser ends whole
    assert report["oracle_depth"] == 3 and "beats_keyword_at" in report["targets"]


@pytest.fixture
async def world(tmp_path: Path) -> RouterConfig:
    from tests.router.conftest import small_config

    train, dev, test = make_examples(3, seed=0), make_examples(2, seed=1), make_examples(2, seed=2)
    write_dataset(tmp_path, {"train": train, "dev": dev, "test": test})
    cfg = small_config(tmp_path, baselines=dataclasses.replace(RULES, keyword_upgrades={"adder": "big"}))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(tmp_path / "data")))
    await fill_cache(cfg, train + dev + test)
    return cfg


def test_eval_selects_on_dev_and_reports_test_only_with_final(world: RouterConfig, tmp_path: Path) -> None:
    scripted_policy(Path(world.policy_dir), "adder", "reverser", experts=EXPERTS)
    with pytest.raises(ValueError, match="held-out test split"):
        evaluate_policy(world, split="test", say=lambda _m: None)
    msgs: list[str] = []
    final = evaluate_policy(world, final=True, say=msgs.append)  # no dev report yet: says so, selects nothing
    assert final["split"] == "test" and final["selected_cost_weight"] is None
    assert any("no dev report" in m for m in msgs)
    dev = evaluate_policy(world, say=lambda _m: None)
    assert dev["split"] == "dev" and dev["selected_cost_weight"] in (0.0, 1.0)
    methods = {r["method"] for r in dev["rows"]}
    assert {"keyword", "keyword+", "classifier", "oracle", "random", "all-experts"} <= methods
    assert "beats_keyword_plus_at" in dev["targets"]
    final = evaluate_policy(world, final=True, say=msgs.append)
    assert final["selected_cost_weight"] == dev["selected_cost_weight"] and final["selected_on"] == "dev"
    assert any("already holds a test report" in m for m in msgs)
    saved = json.loads((Path(world.eval_dir) / "test" / "report.json").read_text())
    assert saved["final"] is True and (Path(world.eval_dir) / "dev" / "frontier.png").is_file()
    kw = next(r for r in dev["rows"] if r["method"] == "keyword")
    assert kw["quality"] == pytest.approx(5 / 6)  # big answers sort/count; sortrev has no rule and big can't compose
