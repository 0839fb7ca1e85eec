"""The PSO core: the Model Swarms update, step decay, patience, restarts, None utilities, save/load = uninterrupted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_search.pso import ParticleSwarm, PSOConfig, combine, interpolate_children, params_hash


def quadratic(target: torch.Tensor):
    def f(x: torch.Tensor | dict[str, torch.Tensor]) -> float:
        t = x if isinstance(x, torch.Tensor) else torch.cat([v.flatten() for _, v in sorted(x.items())])
        return -float(((t - target) ** 2).sum())

    return f


def test_update_matches_the_formula_with_normalised_random_factors():
    cfg = PSOConfig(initial_velocity="zero", seed=3, step_length=0.5, max_iterations=5)
    xs = [torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 4.0])]
    swarm = ParticleSwarm(cfg, xs)
    swarm.tell([0.1, 0.9, -0.5])  # best = particle 1, worst = particle 2
    rng = np.random.default_rng(3)  # the swarm drew nothing before its first move (zero initial velocity)
    g, w = xs[1], xs[2]
    for i, x in enumerate(xs):
        r = rng.uniform(0, 1, size=4)
        c = np.array([0.2, 0.3, 0.4, 0.05]) * r
        c = c / c.sum()
        assert pytest.approx(c.sum()) == 1.0
        v = c[1] * (x - x) + c[2] * (g - x) + c[3] * (x - w)  # v0 = 0, personal best = x
        assert torch.allclose(swarm.particles[i].v, v.float(), atol=1e-6)
        assert torch.allclose(swarm.particles[i].x, (x + 0.5 * v).float(), atol=1e-6)


def test_no_random_factors_uses_the_coefficients_normalised():
    cfg = PSOConfig(
        initial_velocity="zero",
        random_factors=False,
        inertia=0.0,
        cognitive=0.0,
        social=1.0,
        repel=0.0,
        step_length=1.0,
    )
    swarm = ParticleSwarm(cfg, [torch.tensor([0.0]), torch.tensor([10.0])])
    swarm.tell([0.0, 1.0])
    # social only, step 1: every particle jumps onto the global best
    assert all(torch.allclose(p.x, torch.tensor([10.0])) for p in swarm.particles)


def test_step_length_decays_to_a_floor():
    cfg = PSOConfig(step_length=0.5, step_decay=0.5, min_step_length=0.1, max_iterations=10, patience=20)
    swarm = ParticleSwarm(cfg, [torch.zeros(2), torch.ones(2)])
    lengths = []
    for k in range(5):
        lengths.append(swarm.step_length)
        swarm.tell([float(k), float(k) + 0.5])
    assert lengths == pytest.approx([0.5, 0.25, 0.125, 0.1, 0.1])


def test_patience_stops_when_the_best_does_not_improve():
    swarm = ParticleSwarm(PSOConfig(patience=2, max_iterations=50), [torch.zeros(1), torch.ones(1)])
    n = 0
    while not swarm.done:
        swarm.tell([1.0, 0.5])
        n += 1
    assert n == 3  # improved at 0, then 2 iterations without improvement
    assert swarm.stop_reason is not None and swarm.stop_reason.startswith("patience")
    with pytest.raises(RuntimeError):
        swarm.ask()


def test_stale_particles_restart_at_their_personal_best():
    cfg = PSOConfig(
        initial_velocity="random", inertia=1.0, cognitive=0.0, social=0.0, repel=0.0, restart_patience=2, patience=10
    )
    swarm = ParticleSwarm(cfg, [torch.zeros(2), torch.ones(2), 2 * torch.ones(2)])
    start = [p.x.clone() for p in swarm.particles]
    r0 = swarm.tell([1.0, 1.0, 1.0])
    assert r0.restarted == []
    r1 = swarm.tell([0.0, 0.0, 0.0])
    assert r1.restarted == []
    r2 = swarm.tell([0.0, 0.0, 0.0])  # two iterations without a better personal best
    assert r2.restarted == [0, 1, 2]
    for p, x0 in zip(swarm.particles, start, strict=True):
        # inertia only and zero velocity after the restart: the particle stays at its personal best
        assert torch.equal(p.x, x0) and torch.equal(p.best_x, x0)
        assert float(p.v.abs().sum()) == 0.0


def test_none_utilities_leave_bests_alone():
    swarm = ParticleSwarm(PSOConfig(), [torch.zeros(1), torch.ones(1)])
    swarm.tell([None, 0.3])
    assert swarm.particles[0].best_u is None and swarm.global_best_u == 0.3
    swarm.tell([float("nan"), None])
    assert swarm.global_best_u == 0.3
    assert swarm.records[-1].mean is None


def test_it_optimises_a_quadratic():
    target = torch.tensor([3.0, -2.0, 1.0])
    f = quadratic(target)
    rng = np.random.default_rng(0)
    xs = [torch.tensor(rng.normal(size=3), dtype=torch.float32) for _ in range(8)]
    swarm = ParticleSwarm(PSOConfig(max_iterations=40, patience=40, seed=1), xs)
    start = max(f(x) for x in xs)
    while not swarm.done:
        swarm.tell([f(x) for x in swarm.ask()])
    assert swarm.global_best_u is not None and swarm.global_best_u > start
    assert swarm.best_history == sorted(swarm.best_history)  # best-so-far never decreases


@pytest.mark.parametrize("as_dict", [False, True])
def test_save_and_resume_ends_where_the_uninterrupted_run_ends(tmp_path, as_dict):
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    f = quadratic(target)

    def init():
        rng = np.random.default_rng(5)
        xs = [torch.tensor(rng.normal(size=4), dtype=torch.float32) for _ in range(5)]
        return [{"a": x[:2], "b": x[2:]} for x in xs] if as_dict else xs

    cfg = PSOConfig(max_iterations=8, patience=8, restart_patience=2, seed=11)
    full = ParticleSwarm(cfg, init())
    while not full.done:
        full.tell([f(x) for x in full.ask()])

    part = ParticleSwarm(cfg, init())
    for _ in range(3):
        part.tell([f(x) for x in part.ask()])
        part.save(tmp_path / "state", extra={"note": "hi"})
    resumed, extra = ParticleSwarm.load(tmp_path / "state")
    assert extra == {"note": "hi"} and resumed.iteration == 3
    while not resumed.done:
        resumed.tell([f(x) for x in resumed.ask()])

    assert resumed.best_history == full.best_history
    assert params_hash(resumed.global_best_x) == params_hash(full.global_best_x)
    assert [r.utilities for r in resumed.records] == [r.utilities for r in full.records]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["iter-0003", "latest.json"]


def test_children_interpolate_and_extrapolate():
    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    children, origin = interpolate_children([a, b], 50, np.random.default_rng(0))
    ws = [o["w"] for o in origin]
    assert min(ws) >= 0 and max(ws) <= 2 and max(ws) > 1  # some extrapolate beyond A
    for c, o in zip(children, origin, strict=True):
        first = a if o["a"] == 0 else b
        second = b if o["a"] == 0 else a
        assert torch.allclose(c["w"], o["w"] * first["w"] + (1 - o["w"]) * second["w"])


def test_combine_never_modifies_inputs_and_checks_shapes():
    x = {"k": torch.ones(2)}
    y = combine([(2.0, x), (-1.0, x)])
    assert torch.equal(x["k"], torch.ones(2)) and torch.equal(y["k"], torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        combine([(1.0, {"k": torch.ones(2)}), (1.0, {"k": torch.ones(3)})])
    with pytest.raises(ValueError):
        ParticleSwarm(PSOConfig(), [{"k": torch.ones(2)}, {"j": torch.ones(2)}])
