"""Router fixtures: a small config over the fake world, a tiny trained policy, and a scripted one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.routing.encoders import HashedNgramEncoder
from gateway.routing.observation import ObservationLayout
from router.config import EnvConfig, PPOConfig, RouterConfig, TrainConfig
from router.publish import publish_policy, write_policy_files
from tests.router.fakeworld import COSTS, EXPERTS, TOY_KTP

DIM = 32


def small_config(tmp: Path, **overrides: object) -> RouterConfig:
    """A config over the fake world that trains in seconds."""
    base: dict[str, object] = {
        "experts": tuple(EXPERTS),
        "costs": dict(zip(EXPERTS, COSTS, strict=True)),
        "ktp_template": TOY_KTP,
        "cache": str(tmp / "cache.sqlite"),
        "policy_dir": str(tmp / "policy"),
        "eval_dir": str(tmp / "eval"),
        "env": EnvConfig(max_steps=3, cost_weights=(0.05, 0.5)),
        "encoder": RouterConfig().encoder.__class__(kind="hashed", dim=DIM),
        "ppo": PPOConfig(n_steps=64, batch_size=64, n_epochs=2, policy_kwargs={"net_arch": {"pi": [32], "vf": [32]}}),
        "train": TrainConfig(total_timesteps=256, n_envs=2, progress_bar=False),
    }
    base.update(overrides)
    return RouterConfig(**base)  # type: ignore[arg-type]


def write_linear_policy(
    d: Path,
    w: np.ndarray,
    b: np.ndarray,
    layout: ObservationLayout,
    *,
    experts: Sequence[str] = EXPERTS,
    costs: Sequence[float] = COSTS,
    scripted: str = "",
) -> Path:
    """Write a one-layer (hand-set) policy over the ``DIM``-bucket hashed encoder into ``d``."""
    return write_policy_files(
        d,
        experts=experts,
        costs=costs,
        layers=[(w, b)],
        activation="tanh",
        encoder=HashedNgramEncoder(dim=DIM).describe(),
        layout=layout,
        ktp_template=TOY_KTP,
        cost_weights=[0.0, 1.0],
        default_cost_weight=0.0,
        training={"scripted": scripted},
    )


def scripted_policy(
    root: Path,
    first: str,
    second: str,
    *,
    experts: Sequence[str] = EXPERTS,
    costs: Sequence[float] = COSTS,
    max_steps: int = 3,
    publish: bool = True,
) -> Path:
    """A hand-set linear policy: ``first``, then ``second``, then stop; at cost_weight 1 it stops after ``first``.

    Logits are linear in the step index k (the feature is k / max_steps) and the cost-weight feature c (lambda / 1):
    first = 2 - 3 k, second = 1, stop = -2 + 2 k + 3 c, every other action -10.
    """
    n_in = 2 * DIM + 3
    n_out = len(experts) + 1
    w = np.zeros((n_out, n_in), dtype=np.float32)
    b = np.full(n_out, -10.0, dtype=np.float32)
    i, j, stop = list(experts).index(first), list(experts).index(second), n_out - 1
    s_col, c_col = 2 * DIM, 2 * DIM + 2
    b[i], w[i, s_col] = 2.0, -3.0 * max_steps
    b[j] = 1.0
    b[stop], w[stop, s_col], w[stop, c_col] = -2.0, 2.0 * max_steps, 3.0
    layout = ObservationLayout(max_steps=max_steps, cost_scale=max_steps * max(costs), cost_weight_scale=1.0)

    def write(d: Path) -> None:
        write_linear_policy(d, w, b, layout, experts=experts, costs=costs, scripted=f"{first} > {second} > stop")

    if publish:
        return publish_policy(root, write)
    write(root)
    return root


@pytest.fixture
def config(tmp_path: Path) -> RouterConfig:
    return small_config(tmp_path)


def toy_router_config(toy_world, tmp: Path, *, limit: int, timesteps: int, max_steps: int = 2) -> tuple[dict, Path]:
    """The packaged ``router/toy.yaml`` over the real toy world, with every output under ``tmp`` and a small budget
    (``limit`` questions per task and split, ``timesteps`` PPO steps, transformers engines); returns (data, path)."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "router" / "toy.yaml").read_text())
    data.update(
        spec=str(toy_world.spec_path),
        cache=str(tmp / "cache.sqlite"),
        policy_dir=str(tmp / "policy"),
        eval_dir=str(tmp / "eval"),
    )
    data["data"].update(dir=str(toy_world.data_dir), limit_per_task=limit, eval_limit_per_task=limit)
    data["env"]["max_steps"] = max_steps
    data["train"].update(total_timesteps=timesteps, n_envs=2, progress_bar=False)
    data["collect"].update(engine="transformers")
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return data, path
