"""The PSO core, behaviours the mutation run showed unchecked: ties, the iteration record, patience with unscored
iterations, restarts counted from zero, the ``best`` initial velocity, coefficients without random factors, dtypes,
and a save/load round trip that restores every field (not only what a run happens to read next)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offline_search.pso import ParticleSwarm, PSOConfig, clone, combine, interpolate_children, params_hash, zeros_like


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def only(**coefs: float) -> dict[str, float]:
    """PSO coefficients with every term off except the given ones."""
    return {"inertia": 0.0, "cognitive": 0.0, "social": 0.0, "repel": 0.0, **coefs}


# ----------------------------------------------------------------------------------------------- bests and ties
def test_a_tie_moves_no_best_and_counts_as_stale() -> None:
    """Only a strictly better utility moves a personal/global best; the worst moves only on a strictly worse one."""
    cfg = PSOConfig(initial_velocity="random", restart_patience=10, patience=10, seed=2)
    swarm = ParticleSwarm(cfg, [t(0.0, 0.0), t(1.0, 0.0), t(0.0, 1.0)])
    first = [p.x for p in swarm.particles]
    swarm.tell([0.5, 0.9, 0.1])
    assert swarm.global_best_x is first[1] and swarm.global_worst_x is first[2]
    moved = [p.x for p in swarm.particles]
    assert all(not torch.equal(a, b) for a, b in zip(first, moved, strict=True))  # everyone moved
    rec = swarm.tell([0.5, 0.9, 0.1])  # the same utilities at new positions: ties
    assert not rec.improved
    for p, x0 in zip(swarm.particles, first, strict=True):
        assert p.best_x is x0 and p.stale == 1
    assert swarm.global_best_x is first[1] and swarm.global_best_index == 1
    assert swarm.global_worst_x is first[2] and swarm.global_worst_u == 0.1


def test_stale_counts_one_per_iteration_without_a_better_personal_best() -> None:
    cfg = PSOConfig(restart_patience=10, patience=10)
    swarm = ParticleSwarm(cfg, [t(0.0), t(1.0), t(2.0)])
    swarm.tell([1.0, None, 0.0])
    assert [p.stale for p in swarm.particles] == [0, 1, 0]
    swarm.tell([0.5, None, 0.2])  # particle 0 worse, 1 unscored again, 2 better
    assert [p.stale for p in swarm.particles] == [1, 2, 0]
    swarm.tell([0.7, 3.0, 0.1])
    assert [p.stale for p in swarm.particles] == [2, 0, 1]
    assert [p.u for p in swarm.particles] == [0.7, 3.0, 0.1]
    assert swarm.particles[1].history == [None, None, 3.0]
    assert swarm.particles[0].best_u == 1.0 and swarm.particles[2].best_u == 0.2


def test_the_iteration_record_says_what_happened() -> None:
    cfg = PSOConfig(step_length=0.5, step_decay=0.5, min_step_length=0.0, patience=10)
    swarm = ParticleSwarm(cfg, [t(0.0), t(1.0), t(2.0)])
    r0 = swarm.tell([1.0, None, 3.0])
    assert (r0.iteration, r0.utilities, r0.best, r0.mean, r0.step_length, r0.improved) == (
        0,
        [1.0, None, 3.0],
        3.0,
        2.0,
        0.5,
        True,
    )
    r1 = swarm.tell([2.0, 2.5, float("nan")])
    assert (r1.iteration, r1.utilities, r1.best, r1.mean, r1.step_length) == (1, [2.0, 2.5, None], 3.0, 2.25, 0.25)
    assert r1.improved is False
    r2 = swarm.tell([None, 4.0, None])
    assert r2.improved is True and r2.best == 4.0 and r2.mean == 4.0 and r2.iteration == 2
    assert swarm.records == [r0, r1, r2]


# ----------------------------------------------------------------------------------------------- stopping
def test_max_iterations_is_the_number_of_evaluations() -> None:
    swarm = ParticleSwarm(PSOConfig(max_iterations=4, patience=10), [t(0.0), t(1.0)])
    n = 0
    while not swarm.done:
        swarm.tell([float(n), float(n)])  # improving: patience never stops it
        n += 1
    assert n == 4 and swarm.stop_reason == "max_iterations"
    with pytest.raises(RuntimeError, match="max_iterations"):
        swarm.tell([0.0, 0.0])


def run_until_done(swarm: ParticleSwarm, best_per_iteration: list[float | None]) -> int:
    """Tell particle 0 the given utilities (particle 1 always None); return how many tells the swarm took."""
    for n, u in enumerate(best_per_iteration, 1):
        swarm.tell([u, None])
        if swarm.done:
            return n
    return len(best_per_iteration) + 1  # never stopped


@pytest.mark.parametrize(
    ("patience", "utilities", "tells"),
    [
        (1, [1.0, 2.0, 3.0, 4.0, 5.0], 6),  # improves every iteration: never stalls
        (2, [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0], 6),  # flat from iteration 3: stalls after 2 more
        (2, [1.0, 2.0, 3.0, 3.5, 3.0, 3.9, 3.9, 3.9, 3.9], 8),  # a worse score is no improvement; 3.9 > 3.5 is
        (1, [None, None, 1.0, 2.0, 2.0], 5),  # unscored iterations: no best yet, so nothing to stall on
        (1, [None, 1.0, 1.0], 3),
        (3, [None, None, None, None, None, None], 7),  # never scored: only max_iterations stops it
    ],
)
def test_patience_counts_iterations_since_the_global_best_last_improved(
    patience: int, utilities: list[float | None], tells: int
) -> None:
    swarm = ParticleSwarm(PSOConfig(patience=patience, max_iterations=50), [t(0.0), t(1.0)])
    assert run_until_done(swarm, utilities) == tells


# ----------------------------------------------------------------------------------------------- restarts
def test_restarts_recur_every_restart_patience_iterations() -> None:
    cfg = PSOConfig(restart_patience=2, patience=50, max_iterations=50, **only(inertia=1.0))
    swarm = ParticleSwarm(cfg, [t(0.0), t(1.0)])
    restarted = [swarm.tell([1.0, 1.0]).restarted for _ in range(7)]
    # bests set at iteration 0; stale 1 at 1, 2 at 2 -> restart (stale 0); again 2 iterations later
    assert restarted == [[], [], [0, 1], [], [0, 1], [], [0, 1]]


# ----------------------------------------------------------------------------------------------- the update
def test_best_initial_velocity_points_at_the_best_initial_particle_once() -> None:
    """``initial_velocity="best"``: v = g - x after the first scoring, then the ordinary update (no reset later)."""
    cfg = PSOConfig(
        initial_velocity="best", random_factors=False, step_length=0.5, step_decay=1.0, patience=10, **only(inertia=1.0)
    )
    xs = [t(0.0, 0.0), t(4.0, 2.0), t(-2.0, 6.0)]
    swarm = ParticleSwarm(cfg, xs)
    swarm.tell([0.0, 1.0, -1.0])  # best: particle 1
    g = xs[1]
    for p, x in zip(swarm.particles, xs, strict=True):
        assert torch.allclose(p.v, g - x) and torch.allclose(p.x, x + 0.5 * (g - x))
    swarm.tell([-5.0, -5.0, -5.0])  # inertia only: the velocity is kept, not re-aimed
    for p, x in zip(swarm.particles, xs, strict=True):
        assert torch.allclose(p.x, x + 1.0 * (g - x))


def test_zero_initial_velocity_with_inertia_only_stays_put() -> None:
    cfg = PSOConfig(initial_velocity="zero", random_factors=False, patience=10, **only(inertia=1.0))
    xs = [t(0.0), t(3.0)]
    swarm = ParticleSwarm(cfg, xs)
    swarm.tell([0.0, 1.0])
    assert all(torch.equal(p.x, x) for p, x in zip(swarm.particles, xs, strict=True))


def test_without_random_factors_the_coefficients_are_the_normalised_weights() -> None:
    cfg = PSOConfig(
        initial_velocity="random", random_factors=False, inertia=0.2, cognitive=0.3, social=0.4, repel=0.1, seed=4
    )
    xs = [t(0.0, 1.0), t(2.0, -1.0), t(5.0, 5.0)]
    swarm = ParticleSwarm(cfg, xs)
    v0 = [p.v.clone() for p in swarm.particles]
    swarm.tell([0.0, 2.0, -3.0])
    g, w = xs[1], xs[2]
    for p, x, v in zip(swarm.particles, xs, v0, strict=True):
        expected_v = 0.2 * v + 0.3 * (x - x) + 0.4 * (g - x) + 0.1 * (x - w)
        assert torch.allclose(p.v, expected_v, atol=1e-6)
        assert torch.allclose(p.x, x + 0.5 * expected_v, atol=1e-6)


def test_random_factors_differ_per_particle_and_iteration() -> None:
    """With random factors two particles at the same spot with the same bests move differently."""
    cfg = PSOConfig(initial_velocity="zero", **only(cognitive=1.0, social=1.0))
    swarm = ParticleSwarm(cfg, [t(0.0), t(0.0), t(4.0)])
    swarm.tell([0.0, -1.0, 1.0])  # particles 0 and 1: personal best = x, pulled only towards g
    a, b = swarm.particles[0].x, swarm.particles[1].x
    # pulled only towards g (cg = r_g / (r_p + r_g) in (0, 1)), and by different random amounts
    assert 0.0 < float(a) < 2.0 and 0.0 < float(b) < 2.0 and not torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- tensors
def test_positions_are_float32_whatever_the_input_dtype() -> None:
    xs = [torch.ones(3, dtype=torch.float16), torch.zeros(3, dtype=torch.float16)]
    swarm = ParticleSwarm(PSOConfig(initial_velocity="zero"), xs)
    assert all(p.x.dtype == torch.float32 and p.v.dtype == torch.float32 for p in swarm.particles)
    assert zeros_like({"a": torch.ones(2, dtype=torch.int64)})["a"].dtype == torch.float32
    assert clone(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32


def test_params_hash_sees_values_and_shapes_not_dtype() -> None:
    x = torch.arange(4.0)
    assert params_hash(x) == params_hash(x.to(torch.float64)) == params_hash(x.clone())
    assert params_hash(x) != params_hash(x.reshape(2, 2))  # same bytes, other shape
    assert params_hash(x) != params_hash(x + 1)
    assert params_hash({"a": x}) != params_hash({"b": x})


def test_children_both_interpolate_and_extrapolate_between_two_distinct_experts() -> None:
    experts = [t(0.0), t(1.0), t(5.0)]
    children, origin = interpolate_children(experts, 80, np.random.default_rng(1))
    ws = [o["w"] for o in origin]
    assert min(ws) < 0.5 and max(ws) > 1.5  # U(0, 2): inside the segment and beyond A
    for c, o in zip(children, origin, strict=True):
        assert o["a"] != o["b"]
        assert torch.allclose(c, o["w"] * experts[o["a"]] + (1 - o["w"]) * experts[o["b"]])
    assert interpolate_children([t(0.0)], 0, np.random.default_rng(0)) == ([], [])
    with pytest.raises(ValueError, match="at least 2 experts"):
        interpolate_children([t(0.0)], 1, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------- persistence
def assert_same_state(a: ParticleSwarm, b: ParticleSwarm) -> None:
    def same(p, q) -> bool:
        if p is None or q is None:
            return p is None and q is None
        return type(p) is type(q) and params_hash(p) == params_hash(q)

    assert a.config == b.config and a.iteration == b.iteration and a.step_length == b.step_length
    assert (a.global_best_u, a.global_best_index, a.global_worst_u) == (
        b.global_best_u,
        b.global_best_index,
        b.global_worst_u,
    )
    assert same(a.global_best_x, b.global_best_x) and same(a.global_worst_x, b.global_worst_x)
    assert a.best_history == b.best_history and a.stop_reason == b.stop_reason and a.records == b.records
    assert len(a.particles) == len(b.particles)
    for p, q in zip(a.particles, b.particles, strict=True):
        assert same(p.x, q.x) and same(p.v, q.v) and same(p.best_x, q.best_x)
        assert (p.best_u, p.u, p.stale, p.history) == (q.best_u, q.u, q.stale, q.history)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


@pytest.mark.parametrize("kind", ["tensor", "dict"])
def test_load_restores_every_field(tmp_path, kind: str) -> None:
    def particle(v: float):
        x = t(v, -v, 2 * v)
        # a key with slashes, like a nested module path
        return x if kind == "tensor" else {"layers/0/lora_A": x[:2], "head": x[2:]}

    cfg = PSOConfig(restart_patience=2, patience=10, seed=9)
    swarm = ParticleSwarm(cfg, [particle(0.0), particle(1.0), particle(-2.0)])
    swarm.tell([0.3, None, -1.0])
    swarm.tell([0.1, 0.2, -2.0])
    assert [p.stale for p in swarm.particles] == [1, 0, 1]
    state_dir = tmp_path / "nested" / "state"  # parents are created
    assert ParticleSwarm.saved_iteration(state_dir) is None
    swarm.save(state_dir)
    assert ParticleSwarm.saved_iteration(state_dir) == 2
    resumed, extra = ParticleSwarm.load(state_dir)
    assert extra == {}
    assert_same_state(swarm, resumed)
    assert all(isinstance(x, torch.Tensor) == (kind == "tensor") for x in resumed.ask())
    meta = json.loads(next(state_dir.glob("iter-*/state.json")).read_text())
    assert meta["format"] == "swarmgate.pso/1"


def test_a_stopped_swarm_reloads_stopped(tmp_path) -> None:
    swarm = ParticleSwarm(PSOConfig(max_iterations=2), [t(0.0), t(1.0)])
    swarm.tell([0.0, 1.0])
    swarm.tell([0.0, 1.0])
    swarm.save(tmp_path)
    resumed, _ = ParticleSwarm.load(tmp_path)
    assert resumed.done and resumed.stop_reason == "max_iterations"
    with pytest.raises(RuntimeError, match="stopped"):
        resumed.ask()


def test_resume_after_a_non_improving_iteration_moves_like_the_uninterrupted_run(tmp_path) -> None:
    """The resumed swarm must pull towards the saved global best (not only one found after resuming)."""
    cfg = PSOConfig(max_iterations=6, patience=6, restart_patience=5, seed=3)
    xs = [t(0.0, 0.0), t(1.0, 1.0), t(-1.0, 2.0)]
    utilities = [[1.0, 2.0, 0.0], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4], [0.3, 0.3, 0.3]]
    full = ParticleSwarm(cfg, xs)
    for us in utilities:
        full.tell(us)
    part = ParticleSwarm(cfg, xs)
    part.tell(utilities[0])
    part.save(tmp_path)
    resumed, _ = ParticleSwarm.load(tmp_path)
    for us in utilities[1:]:
        resumed.tell(us)
    assert_same_state(full, resumed)


def test_shared_positions_are_stored_once(tmp_path) -> None:
    """Positions held in several roles (personal best = global best / worst) are written once each."""
    from safetensors.torch import load_file

    cfg = PSOConfig(restart_patience=1, patience=10, **only(inertia=1.0))
    swarm = ParticleSwarm(cfg, [t(0.0), t(1.0)])
    swarm.tell([1.0, 0.0])
    swarm.tell([0.0, -1.0])  # both restart: x is best_x; particle 0's best is the global best
    final = swarm.save(tmp_path)
    distinct = {id(o) for p in swarm.particles for o in (p.x, p.v, p.best_x)}
    distinct |= {id(swarm.global_best_x), id(swarm.global_worst_x)}
    assert len(load_file(str(final / "tensors.safetensors"))) == len(distinct)


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "bad",
    [
        {"max_iterations": 0},
        {"inertia": -0.1},
        {"repel": -0.1},
        only(),  # every term off
        {"step_length": 0.0},
        {"step_decay": 0.0},
        {"step_decay": 1.5},
        {"min_step_length": -0.1},
        {"patience": 0},
        {"restart_patience": 0},
    ],
)
def test_bad_configs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PSOConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "good", [{"max_iterations": 1}, only(repel=0.1), {"step_decay": 1.0}, {"min_step_length": 0.0}]
)
def test_boundary_configs_are_accepted(good: dict[str, float]) -> None:
    PSOConfig(**good)  # type: ignore[arg-type]


def test_incompatible_particles_are_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"particle 2: different tensors \(missing \['b'\], extra \['c'\]\)"):
        ParticleSwarm(PSOConfig(), [{"a": t(0.0), "b": t(0.0)}, {"a": t(1.0), "b": t(1.0)}, {"a": t(2.0), "c": t(2.0)}])
    with pytest.raises(ValueError, match="particle 1: tensor 'a' has shape"):
        ParticleSwarm(PSOConfig(), [{"a": t(0.0)}, {"a": t(0.0, 1.0)}])


def test_with_nothing_scored_and_no_inertia_the_particles_keep_drifting() -> None:
    """No utility yet (every one None) leaves no pull at all: the velocity is kept, never divided by a zero sum."""
    cfg = PSOConfig(initial_velocity="random", random_factors=False, step_length=1.0, **only(cognitive=1.0))
    swarm = ParticleSwarm(cfg, [t(0.0), t(2.0)])
    v0 = [p.v.clone() for p in swarm.particles]
    swarm.tell([None, None])
    for p, x, v in zip(swarm.particles, [t(0.0), t(2.0)], v0, strict=True):
        assert torch.equal(p.v, v) and torch.equal(p.x, x + v)


def test_random_initial_velocity_points_at_another_particle() -> None:
    xs = [t(0.0), t(10.0), t(200.0), t(3000.0)]
    seen: set[tuple[int, int]] = set()
    for seed in range(12):
        swarm = ParticleSwarm(PSOConfig(initial_velocity="random", seed=seed), xs)
        for i, p in enumerate(swarm.particles):
            target = p.x + p.v  # v_0 = x_j - x_i
            j = next(k for k, x in enumerate(xs) if torch.equal(x, target))
            assert j != i
            seen.add((i, j))
    assert len(seen) == 12  # every other particle is drawn for every particle


def test_combine_is_float32_and_takes_a_single_term() -> None:
    half = {"w": torch.tensor([1.5, -2.0], dtype=torch.float16)}
    out = combine([(2.0, half)])
    assert out["w"].dtype == torch.float32 and out["w"].tolist() == [3.0, -4.0]
    assert torch.equal(combine([(0.5, t(4.0))]), t(2.0))
