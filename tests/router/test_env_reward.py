"""The routing MDP's reward and bookkeeping in a scripted world where each expert's answer has a known quality.

Reward of a call: ``q_t - λ·cost + β·(q_t - q_{t-1})`` (q_t paid per step or once at the end); at the end a bonus at
or above the threshold, else the limit penalty (step limit, or a stop before any call) or the stop penalty. Checked on
hand-worked episodes and on random episodes and reward settings against that formula written out.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.routing.encoders import HashedNgramEncoder
from router.cache import Truncated
from router.config import EnvConfig, RewardConfig
from router.env import ChainRoutingEnv
from scoring.examples import Example

# expert "0.3" answers "0.3" (quality 0.3); "cut" answers a truncated "1.0"; "blank" answers whitespace
QUALITIES = ["0.0", "0.3", "0.6", "1.0"]
EXPERTS = [*QUALITIES, "cut", "blank"]
COSTS = [0.5, 1.0, 2.0, 4.0, 1.0, 0.25]
EXAMPLES = [Example("q-a", "ref-a", task="ta"), Example("q-b", "ref-b", task="tb")]


def scripted_answer(expert: str, question: str, previous: str) -> str:
    if expert == "cut":
        return Truncated("1.0")
    if expert == "blank":
        return "  "
    return f" {expert} "  # stripped by the env before scoring


class QualityScorer:
    """Quality = the number the answer spells (so any scorer value can be scripted); records every call."""

    needs_reference = True

    def __init__(self, empty_score: float = 0.0) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.empty_score = empty_score

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        self.calls.append((prediction, reference, question))
        return float(prediction) if prediction.strip() else self.empty_score


class CountingEncoder(HashedNgramEncoder):
    def __init__(self, dim: int = 8, scale: float = 1.0) -> None:
        super().__init__(dim=dim)
        self.texts: list[str] = []
        self.scale = scale

    def encode(self, texts):
        self.texts.extend(texts)
        return super().encode(texts) * self.scale


def make_env(reward: RewardConfig | None = None, **env: object) -> ChainRoutingEnv:
    cfg = EnvConfig(**{"max_steps": 3, "cost_weights": (0.1,), "reward": reward or RewardConfig(), **env})  # type: ignore[arg-type]
    return ChainRoutingEnv(EXAMPLES, EXPERTS, COSTS, scripted_answer, QualityScorer(), CountingEncoder(), cfg)


def act(env: ChainRoutingEnv, name: str):
    return env.step(env.stop_action if name == "stop" else EXPERTS.index(name))


R = RewardConfig(beta=2.0, success_threshold=0.9, success_bonus=3.0, limit_penalty=1.5, stop_penalty=0.7)


# ----------------------------------------------------------------------------------------------- hand-worked episodes
def test_stop_below_threshold_after_a_call_pays_the_stop_penalty_not_the_limit_penalty() -> None:
    env = make_env(R)
    env.reset(options={"index": 0, "cost_weight": 0.5})
    _, r1, *_ = act(env, "0.6")
    assert r1 == pytest.approx(-0.5 * 2.0 + 2.0 * 0.6)
    _, r2, term, trunc, info = act(env, "stop")
    assert term and trunc is False and r2 == pytest.approx(0.6 - 0.7)  # terminal q_T minus the stop penalty
    assert info["route"] == ["0.6", "stop"] and info["calls"] == 1 and info["cost"] == 2.0


def test_stop_before_any_call_pays_the_limit_penalty() -> None:
    env = make_env(R)
    env.reset(options={"index": 1, "cost_weight": 0.5})
    _, r, term, trunc, info = act(env, "stop")
    assert term and not trunc and r == pytest.approx(-1.5) and info["calls"] == 0


def test_reaching_the_threshold_then_stopping_earns_the_bonus_and_a_worse_step_costs_beta() -> None:
    env = make_env(R)
    env.reset(options={"index": 0, "cost_weight": 0.25})
    _, r1, *_ = act(env, "1.0")
    _, r2, term, _, _ = act(env, "0.3")  # worse: -β·0.7
    assert not term and r1 == pytest.approx(-0.25 * 4.0 + 2.0 * 1.0)
    assert r2 == pytest.approx(-0.25 * 1.0 + 2.0 * (0.3 - 1.0))
    _, r3, term, _, info = act(env, "1.0")  # the step limit (3) ends it, at the threshold: bonus, no penalty
    assert term and info["quality"] == 1.0 and r3 == pytest.approx(-1.0 + 2.0 * 0.7 + 1.0 + 3.0)


def test_der_mode_pays_quality_each_step_and_ends_at_the_threshold_with_the_bonus() -> None:
    rc = RewardConfig(beta=2.0, success_threshold=0.9, success_bonus=3.0, quality_reward="per_step")
    env = make_env(RewardConfig(**{**rc.__dict__, "terminate_at_threshold": True}))
    env.reset(options={"index": 0, "cost_weight": 0.1})
    _, r1, term, _, _ = act(env, "0.3")
    assert not term and r1 == pytest.approx(0.3 - 0.1 + 2.0 * 0.3)
    _, r2, term, _, _ = act(env, "1.0")
    assert term and r2 == pytest.approx(1.0 - 0.4 + 2.0 * 0.7 + 3.0)  # no second q_T at the end in per_step mode


def test_a_truncated_answer_scores_zero_even_when_its_text_is_right() -> None:
    env = make_env(R)
    env.reset(options={"index": 0, "cost_weight": 0.0})
    act(env, "0.6")
    _, r, _, _, info = act(env, "cut")
    assert info["quality"] == 0.0 and info["answer"] == "1.0"
    assert r == pytest.approx(2.0 * (0.0 - 0.6))


def test_an_empty_answer_scores_zero_without_asking_the_scorer() -> None:
    scorer = QualityScorer(empty_score=0.8)  # a scorer that would reward an empty answer
    env = ChainRoutingEnv(EXAMPLES, EXPERTS, COSTS, scripted_answer, scorer, CountingEncoder(), EnvConfig(max_steps=3))
    env.reset(options={"index": 0, "cost_weight": 0.0})
    _, _, _, _, info = act(env, "blank")
    assert info["quality"] == 0.0 and info["answer"] == "" and scorer.calls == []
    assert env.quality("") == 0.0


def test_the_scorer_sees_answer_reference_and_question_once_per_distinct_answer() -> None:
    env = make_env(R)
    env.reset(options={"index": 1, "cost_weight": 0.0})
    act(env, "0.3")
    act(env, "0.6")
    act(env, "0.3")
    scorer = env.scorer
    assert isinstance(scorer, QualityScorer)
    assert scorer.calls == [("0.3", "ref-b", "q-b"), ("0.6", "ref-b", "q-b")]  # the repeat is memoised


# ----------------------------------------------------------------------------------------------- against the formula
def expected_return(rc: RewardConfig, lam: float, max_steps: int, actions: list[str]) -> tuple[list[float], int]:
    """The rewards of an episode (and how many actions it took) from the formula in the module docstring."""

    def terminal(q: float, limit: bool) -> float:
        r = q if rc.quality_reward == "terminal" else 0.0
        if q >= rc.success_threshold:
            return r + rc.success_bonus
        return r - (rc.limit_penalty if limit else rc.stop_penalty)

    q, rewards = 0.0, []
    for name in actions:
        if name == "stop":
            rewards.append(terminal(q, limit=not rewards))
            return rewards, len(rewards)
        new_q = 0.0 if name in ("cut", "blank") else float(name)
        steps = len(rewards) + 1  # expert calls so far, this one included
        r = (
            -lam * COSTS[EXPERTS.index(name)]
            + rc.beta * (new_q - q)
            + (new_q if rc.quality_reward == "per_step" else 0)
        )
        q = new_q
        if rc.terminate_at_threshold and q >= rc.success_threshold:
            rewards.append(r + terminal(q, limit=False))
            return rewards, len(rewards)
        if steps >= max_steps:
            rewards.append(r + terminal(q, limit=True))
            return rewards, len(rewards)
        rewards.append(r)
    raise AssertionError("episode did not end")


def test_random_episodes_match_the_reward_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        rc = RewardConfig(
            beta=float(rng.uniform(0, 6)),
            success_threshold=float(rng.choice([0.5, 0.9, 1.0])),
            success_bonus=float(rng.uniform(0, 3)),
            limit_penalty=float(rng.uniform(0, 3)),
            stop_penalty=float(rng.uniform(0, 3)),
            quality_reward=str(rng.choice(["terminal", "per_step"])),  # type: ignore[arg-type]
            terminate_at_threshold=bool(rng.integers(2)),
        )
        max_steps = int(rng.integers(1, 5))
        lam = float(rng.uniform(0, 1))
        actions = [str(rng.choice([*EXPERTS, "stop"])) for _ in range(max_steps)] + ["stop"]
        want, n = expected_return(rc, lam, max_steps, actions)
        env = make_env(rc, max_steps=max_steps)
        env.reset(options={"index": int(rng.integers(2)), "cost_weight": lam})
        got, done = [], False
        for name in actions[:n]:
            assert not done
            _, r, done, trunc, _ = act(env, name)
            assert trunc is False
            got.append(r)
        assert done and got == pytest.approx(want), (rc, lam, max_steps, actions)


# ----------------------------------------------------------------------------------------------- bookkeeping
def test_info_and_spaces() -> None:
    env = make_env(R)
    assert env.action_space.n == len(EXPERTS) + 1 and env.stop_action == len(EXPERTS)
    box = env.observation_space
    assert box.dtype == np.float32 and float(box.low.min()) == -1.0 and float(box.high.max()) == 1.0
    _, info = env.reset(options={"index": 1, "cost_weight": 0.1})
    assert info["task"] == "tb" and info["question"] == "q-b" and info["cost_weight"] == 0.1


def test_costs_below_one_are_scaled_by_the_largest_cost() -> None:
    costs = [0.25, 0.5, 0.1, 0.2, 0.1, 0.1]
    env = ChainRoutingEnv(EXAMPLES, EXPERTS, costs, scripted_answer, QualityScorer(), CountingEncoder(), EnvConfig(4))
    env.reset(options={"index": 0, "cost_weight": 0.1})
    obs, *_ = act(env, "0.0")
    assert obs[-2 - len(EXPERTS)] == pytest.approx(0.25 / (4 * 0.5))  # spent / (max_steps · max cost)


def test_observations_stay_in_the_box_whatever_the_encoder_and_cost_weight() -> None:
    env = ChainRoutingEnv(
        EXAMPLES, EXPERTS, COSTS, scripted_answer, QualityScorer(), CountingEncoder(scale=50.0), EnvConfig()
    )
    obs, _ = env.reset(options={"index": 0, "cost_weight": -3.0})
    assert (
        obs.min() == -1.0 and obs.max() == 1.0 and obs[-1 - len(EXPERTS)] == -1.0
    )  # lambda, before the route features
    obs, *_ = act(env, "0.3")
    assert env.observation_space.contains(obs)


def test_the_question_is_encoded_once() -> None:
    env = make_env(R)
    encoder = env.encoder
    assert isinstance(encoder, CountingEncoder)
    for _ in range(2):
        env.reset(options={"index": 0, "cost_weight": 0.1})
        act(env, "0.3")
        act(env, "0.6")
    assert encoder.texts.count("q-a") == 1


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="one cost per expert"):
        ChainRoutingEnv(EXAMPLES, EXPERTS, COSTS[:-1], scripted_answer, QualityScorer(), CountingEncoder())
    with pytest.raises(ValueError, match="at least one example"):
        ChainRoutingEnv([], EXPERTS, COSTS, scripted_answer, QualityScorer(), CountingEncoder())


def test_render_ansi() -> None:
    env = ChainRoutingEnv(
        EXAMPLES, EXPERTS, COSTS, scripted_answer, QualityScorer(), CountingEncoder(), render_mode="ansi"
    )
    env.reset(options={"index": 0, "cost_weight": 0.1})
    act(env, "0.6")
    text = env.render()
    assert text is not None and "q-a" in text and "q=0.60" in text and "['0.6']" in text
    assert make_env().render() is None
