"""The routing MDP: gymnasium and stable-baselines3 env checks, and the reward, term by term."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from gateway.routing.encoders import HashedNgramEncoder
from router.config import EnvConfig, RewardConfig
from router.env import ChainRoutingEnv
from scoring.reference import ExactMatch, TokenF1
from tests.router.fakeworld import COSTS, EXPERTS, answer_fn, make_examples

ADDER, REVERSER, BIG = EXPERTS.index("adder"), EXPERTS.index("reverser"), EXPERTS.index("big")


def make_env(config: EnvConfig | None = None, examples=None, scorer=None, dim: int = 32) -> ChainRoutingEnv:
    return ChainRoutingEnv(
        examples or make_examples(2, seed=0),
        EXPERTS,
        COSTS,
        answer_fn,
        scorer or ExactMatch(),
        HashedNgramEncoder(dim=dim),
        config or EnvConfig(max_steps=5, cost_weights=(0.1,)),
    )


@pytest.mark.parametrize("quality_reward", ["terminal", "per_step"])
@pytest.mark.parametrize("scorer", [ExactMatch(), TokenF1()], ids=["exact", "f1"])
def test_passes_gymnasium_and_sb3_checks(quality_reward: str, scorer) -> None:
    cfg = EnvConfig(max_steps=3, cost_weights=(0.0, 0.5), reward=RewardConfig(quality_reward=quality_reward))
    gym_check_env(make_env(cfg, scorer=scorer), skip_render_check=True)
    sb3_check_env(make_env(cfg, scorer=scorer), warn=True)


def addrev_env(**reward: object) -> ChainRoutingEnv:
    ex = [e for e in make_examples(1, seed=1) if e.task == "addrev"]
    return make_env(EnvConfig(max_steps=3, cost_weights=(0.1,), reward=RewardConfig(**reward)), examples=ex)  # type: ignore[arg-type]


def test_reward_terms_on_a_solved_two_step_route() -> None:
    env = addrev_env()
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["answer"] == "" and info["calls"] == 0
    _, r1, term, trunc, info = env.step(ADDER)  # intermediate sum: wrong for addrev
    assert info["quality"] == 0.0 and not term and not trunc
    assert r1 == pytest.approx(-0.1 * 1.0)
    _, r2, term, _, info = env.step(REVERSER)  # reversed sum: right
    assert info["quality"] == 1.0 and not term
    assert r2 == pytest.approx(-0.1 * 1.0 + 5.0 * (1.0 - 0.0))
    _, r3, term, _, info = env.step(env.stop_action)  # terminal: q_T + bonus
    assert term and info["route"] == ["adder", "reverser", "stop"] and info["cost"] == 2.0
    assert r3 == pytest.approx(1.0 + 2.0)


def test_step_limit_below_threshold_is_penalised() -> None:
    env = addrev_env()
    env.reset(seed=0)
    rewards, term = [], False
    for _ in range(3):
        _, r, term, _, info = env.step(BIG)  # big only does the first half of addrev
        rewards.append(r)
    assert term and info["calls"] == 3 and info["quality"] == 0.0
    assert rewards[:2] == [pytest.approx(-0.4)] * 2
    assert rewards[2] == pytest.approx(-0.4 - 2.0)


def test_stop_before_any_call_is_treated_as_a_failed_episode() -> None:
    env = addrev_env()
    env.reset(seed=0)
    _, r, term, _, info = env.step(env.stop_action)
    assert term and info["calls"] == 0 and r == pytest.approx(-2.0)


def test_per_step_quality_and_der_termination() -> None:
    env = addrev_env(quality_reward="per_step", terminate_at_threshold=True)
    env.reset(seed=0)
    env.step(ADDER)
    _, r, term, _, _ = env.step(REVERSER)
    # DER's literal reward: q_t - lambda*c + beta*(q_t - q_{t-1}), and the episode ends at the threshold with +2
    assert term and r == pytest.approx(1.0 - 0.1 + 5.0 + 2.0)


def test_a_worsening_step_is_punished_by_the_improvement_term() -> None:
    env = addrev_env()
    env.reset(seed=0)
    env.step(ADDER)
    env.step(REVERSER)
    _, r, term, _, info = env.step(REVERSER)  # reverses the right answer back, on the last allowed step
    assert term and info["quality"] == 0.0 and r == pytest.approx(-0.1 - 5.0 - 2.0)


def test_observation_carries_step_cost_and_cost_weight() -> None:
    env = make_env(EnvConfig(max_steps=4, cost_weights=(0.2, 0.8), route_in_state=False), dim=16)
    obs, _ = env.reset(seed=0, options={"index": 0, "cost_weight": 0.2})
    assert obs.shape == (2 * 16 + 3,) and obs.dtype == np.float32
    assert obs[-3:].tolist() == pytest.approx([0.0, 0.0, 0.25])
    assert not obs[16:32].any()  # no answer yet
    obs, *_ = env.step(BIG)
    assert obs[-3:].tolist() == pytest.approx([0.25, 4.0 / 16.0, 0.25])
    assert obs[16:32].any()


def test_observation_carries_the_route_so_far() -> None:
    """With route_in_state (the default) the state says which experts were called: reversing twice is told apart
    from reversing once although both answers can read alike."""
    env = make_env(EnvConfig(max_steps=4, cost_weights=(0.2,)), dim=16)
    obs, _ = env.reset(seed=0, options={"index": 0})
    n = len(EXPERTS)
    assert obs.shape == (2 * 16 + 3 + n,)
    assert not obs[-n:].any()
    env.step(REVERSER)
    obs, *_ = env.step(REVERSER)
    calls = [0.0] * n
    calls[REVERSER] = 2 / 4
    assert obs[-n:].tolist() == pytest.approx(calls)
    assert obs[2 * 16 : 2 * 16 + 3].tolist() == pytest.approx([0.5, 2.0 / 16.0, 1.0])


def test_seeded_resets_are_reproducible() -> None:
    a, b = make_env(), make_env()
    seq_a = [a.reset(seed=s)[1]["question"] for s in range(5)]
    seq_b = [b.reset(seed=s)[1]["question"] for s in range(5)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 1


def test_reset_options_pick_example_and_lambda() -> None:
    env = make_env(dataclasses.replace(EnvConfig(), cost_weights=(0.1, 0.3)))
    _, info = env.reset(options={"index": 3, "cost_weight": 0.3})
    assert info["question"] == env.examples[3].question and info["cost_weight"] == 0.3


def test_bad_action_is_refused() -> None:
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.step(len(EXPERTS) + 1)
