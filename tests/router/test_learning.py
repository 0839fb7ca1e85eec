"""PPO actually learns to route (slow: about a minute of training on the fake world)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.routing.encoders import HashedNgramEncoder
from gateway.routing.policy import load_policy
from router.config import EnvConfig, PPOConfig, TrainConfig
from router.evaluate import evaluate
from router.train import train_and_publish
from scoring.reference import ExactMatch
from tests.router.conftest import small_config
from tests.router.fakeworld import COSTS, EXPERTS, answer_fn, make_examples


class LazyTable(dict):
    """The fake experts' answers, computed on first use (stands in for a filled trajectory cache)."""

    def __missing__(self, key: tuple[str, str, str]) -> str:
        self[key] = answer_fn(*key)
        return self[key]


@pytest.mark.slow
def test_router_beats_the_best_single_expert_at_a_fraction_of_the_all_experts_cost(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        small_config(tmp_path),
        env=EnvConfig(max_steps=4, cost_weights=(0.05, 0.25, 1.0)),
        ppo=PPOConfig(n_steps=512, batch_size=256, policy_kwargs={"net_arch": {"pi": [128, 128], "vf": [128, 128]}}),
        train=TrainConfig(total_timesteps=100_000, n_envs=4, progress_bar=False),
    )
    encoder = HashedNgramEncoder(dim=256, words=True)
    path = train_and_publish(cfg, make_examples(200, seed=0), EXPERTS, COSTS, LazyTable(), ExactMatch(), encoder)
    report = evaluate(load_policy(path), make_examples(50, seed=1), answer_fn, ExactMatch(), [0.05, 0.5])
    assert report["best_single"]["method"] == "single:big"
    assert report["claim_met_at"], report["rows"]
    router = [r for r in report["rows"] if r["method"] == "router"]
    assert all(r["quality"] >= 0.75 and r["cost"] <= 2.0 for r in router), router
