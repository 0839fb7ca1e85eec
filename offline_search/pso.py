"""The PSO core shared by every search: the Model Swarms update over tensors (or dicts of tensors).

Each particle has a position ``x``, a velocity ``v`` and its personal best ``p``; the swarm tracks the global best ``g``
and the global worst ``w`` (over every position ever evaluated). One iteration, after the positions are scored::

    r_v, r_p, r_g, r_w ~ U(0, 1)                      (per particle, per iteration)
    c = (r_v φ_v, r_p φ_p, r_g φ_g, r_w φ_w) / Σ      (normalised to sum to 1)
    v <- c_v v + c_p (p - x) + c_g (g - x) + c_w (x - w)
    x <- x + λ v
    λ <- max(λ · decay, λ_min)

A particle whose personal best has not improved for ``restart_patience`` iterations restarts at its personal best
with zero velocity; the search stops when the global best has not improved for ``patience`` iterations, or after
``max_iterations`` evaluations of the swarm.

The swarm is a plain state machine (``ask`` the positions, ``tell`` their utilities) so callers own evaluation; its
whole state (tensors in safetensors, the rest and the RNG in JSON) is saved atomically with ``save`` and restored with
``ParticleSwarm.load``: a run resumed from any saved iteration continues exactly as the uninterrupted run does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

Params = torch.Tensor | dict[str, torch.Tensor]
"""A particle position or velocity: one tensor or a flat dict of named tensors (e.g. a LoRA state dict)."""

_SINGLE = "__tensor__"  # safetensors key of a plain-tensor particle


# ------------------------------------------------------------------------------------------------- tensor trees
def _as_dict(p: Params) -> dict[str, torch.Tensor]:
    return {_SINGLE: p} if isinstance(p, torch.Tensor) else p


def _like(template: Params, d: dict[str, torch.Tensor]) -> Params:
    return d[_SINGLE] if isinstance(template, torch.Tensor) else d


def combine(terms: Sequence[tuple[float, Params]]) -> Params:
    """The linear combination ``Σ a_i p_i`` (float32, new tensors; inputs are never modified)."""
    if not terms:
        raise ValueError("combine needs at least one term")
    first = _as_dict(terms[0][1])
    out: dict[str, torch.Tensor] = {}
    for key, t0 in first.items():
        acc = torch.zeros_like(t0, dtype=torch.float32)
        for a, p in terms:
            t = _as_dict(p)[key]
            if t.shape != t0.shape:
                raise ValueError(f"tensor {key!r}: shape {tuple(t.shape)} != {tuple(t0.shape)}")
            if a != 0.0:
                acc.add_(t.to(torch.float32), alpha=float(a))
        out[key] = acc
    return _like(terms[0][1], out)


def zeros_like(p: Params) -> Params:
    return _like(p, {k: torch.zeros_like(t, dtype=torch.float32) for k, t in _as_dict(p).items()})


def clone(p: Params) -> Params:
    return _like(p, {k: t.detach().to(torch.float32).clone() for k, t in _as_dict(p).items()})


def check_compatible(a: Params, b: Params, *, what: str = "particle") -> None:
    """Raise ValueError when two particles don't have the same keys and shapes."""
    da, db = _as_dict(a), _as_dict(b)
    if set(da) != set(db):
        missing, extra = sorted(set(da) - set(db))[:3], sorted(set(db) - set(da))[:3]
        raise ValueError(f"{what}: different tensors (missing {missing}, extra {extra})")
    for k in da:
        if da[k].shape != db[k].shape:
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(db[k].shape)}, expected {tuple(da[k].shape)}")


def params_hash(p: Params) -> str:
    """Content hash of a particle (keys, shapes and float32 bytes): equal positions hash equal."""
    h = hashlib.sha256()
    for key in sorted(_as_dict(p)):
        t = _as_dict(p)[key].detach().to(torch.float32).contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- config/state
@dataclass(frozen=True)
class PSOConfig:
    """Hyperparameters of the Model Swarms update (defaults from the Model Swarms paper's code)."""

    max_iterations: int = 10
    """Most evaluations of the swarm (iteration 0 scores the initial swarm)."""
    inertia: float = 0.2
    """φ_v: weight of the previous velocity."""
    cognitive: float = 0.3
    """φ_p: pull towards the particle's personal best."""
    social: float = 0.4
    """φ_g: pull towards the global best."""
    repel: float = 0.05
    """φ_w: push away from the global worst (0 disables the repel term)."""
    random_factors: bool = True
    """Draw r ~ U(0, 1) per particle per iteration for each term (False: all r = 1)."""
    step_length: float = 0.5
    """λ at the first move."""
    step_decay: float = 0.95
    """λ is multiplied by this after every move..."""
    min_step_length: float = 0.1
    """...down to this floor."""
    patience: int = 5
    """Stop when the global best has not improved for this many iterations."""
    restart_patience: int = 3
    """Restart a particle at its personal best (zero velocity) when that has not improved for this many iterations."""
    initial_velocity: Literal["random", "zero", "best"] = "random"
    """v_0 = x_j - x_i for a random other particle j, zero, or towards the best initial particle (after scoring)."""
    seed: int = 0
    """Seeds every random draw of the swarm."""

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")
        for name in ("inertia", "cognitive", "social", "repel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.inertia + self.cognitive + self.social + self.repel <= 0:
            raise ValueError("at least one of inertia, cognitive, social, repel must be > 0")
        if not 0 < self.step_decay <= 1 or self.step_length <= 0 or self.min_step_length < 0:
            raise ValueError("need step_length > 0, 0 < step_decay <= 1 and min_step_length >= 0")
        if self.patience < 1 or self.restart_patience < 1:
            raise ValueError("patience and restart_patience must be >= 1")


@dataclass
class Particle:
    x: Params
    """Current position."""
    v: Params
    """Current velocity."""
    best_x: Params
    """Personal best position (the initial position until it is scored)."""
    best_u: float | None = None
    """Utility of ``best_x`` (None before the first score)."""
    u: float | None = None
    """Utility of the current position (None: not scored / no information this iteration)."""
    stale: int = 0
    """Iterations since the personal best last improved."""
    history: list[float | None] = field(default_factory=list)
    """Utility at every iteration."""


@dataclass
class IterationRecord:
    """What happened in one iteration (one line of the JSONL log)."""

    iteration: int
    utilities: list[float | None]
    best: float | None
    """Global best utility after this iteration."""
    mean: float | None
    """Mean utility of the scored particles this iteration."""
    step_length: float
    """λ used for the move after this iteration."""
    restarted: list[int]
    improved: bool
    """Whether the global best improved this iteration."""


class ParticleSwarm:
    """The swarm state machine: ``ask()`` -> score -> ``tell(utilities)`` until ``done``."""

    def __init__(self, config: PSOConfig, initial: Sequence[Params]):
        if len(initial) < 2:
            raise ValueError("a swarm needs at least 2 particles")
        for i, p in enumerate(initial[1:], 1):
            check_compatible(initial[0], p, what=f"particle {i}")
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.iteration = 0
        """Iterations told so far (= index of the iteration whose positions ``ask`` returns)."""
        self.step_length = config.step_length
        self.global_best_x: Params | None = None
        self.global_best_u: float | None = None
        self.global_best_index: int | None = None
        """Particle that found the global best (for provenance)."""
        self.global_worst_x: Params | None = None
        self.global_worst_u: float | None = None
        self.best_history: list[float | None] = []
        self.records: list[IterationRecord] = []
        self.stop_reason: str | None = None
        xs = [clone(p) for p in initial]
        self.particles = [Particle(x=x, v=zeros_like(x), best_x=x) for x in xs]
        if config.initial_velocity == "random":
            n = len(xs)
            for i, part in enumerate(self.particles):
                j = int(self.rng.integers(n - 1))
                j = j + 1 if j >= i else j  # a random other particle
                part.v = combine([(1.0, xs[j]), (-1.0, xs[i])])

    # ----------------------------------------------------------------------------------------------- protocol
    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def ask(self) -> list[Params]:
        """The positions to score this iteration."""
        if self.done:
            raise RuntimeError(f"the swarm has stopped ({self.stop_reason})")
        return [p.x for p in self.particles]

    def tell(self, utilities: Sequence[float | None]) -> IterationRecord:
        """Record this iteration's utilities (None: no information for that particle), then move the swarm."""
        cfg = self.config
        if self.done:
            raise RuntimeError(f"the swarm has stopped ({self.stop_reason})")
        if len(utilities) != len(self.particles):
            raise ValueError(f"expected {len(self.particles)} utilities, got {len(utilities)}")
        us = [None if u is None or (isinstance(u, float) and math.isnan(u)) else float(u) for u in utilities]
        improved = False
        for i, (part, u) in enumerate(zip(self.particles, us, strict=True)):
            part.u = u
            part.history.append(u)
            if u is None:
                part.stale += 1
                continue
            if part.best_u is None or u > part.best_u:
                part.best_u, part.best_x, part.stale = u, part.x, 0
            else:
                part.stale += 1
            if self.global_best_u is None or u > self.global_best_u:
                self.global_best_u, self.global_best_x, self.global_best_index = u, part.x, i
                improved = True
            if self.global_worst_u is None or u < self.global_worst_u:
                self.global_worst_u, self.global_worst_x = u, part.x
        self.best_history.append(self.global_best_u)
        scored = [u for u in us if u is not None]
        record = IterationRecord(
            iteration=self.iteration,
            utilities=us,
            best=self.global_best_u,
            mean=float(np.mean(scored)) if scored else None,
            step_length=self.step_length,
            restarted=[],
            improved=improved,
        )
        self.iteration += 1
        if self.iteration >= cfg.max_iterations:
            self.stop_reason = "max_iterations"
        elif self._stalled():
            self.stop_reason = f"patience: no improvement in {cfg.patience} iterations"
        if self.done:
            self.records.append(record)
            return record

        if self.iteration == 1 and cfg.initial_velocity == "best" and self.global_best_x is not None:
            for part in self.particles:
                part.v = combine([(1.0, self.global_best_x), (-1.0, part.x)])
        for i, part in enumerate(self.particles):
            if part.stale >= cfg.restart_patience and part.best_u is not None:
                part.x, part.v, part.stale = part.best_x, zeros_like(part.x), 0
                record.restarted.append(i)
            self._move(part)
        self.step_length = max(self.step_length * cfg.step_decay, cfg.min_step_length)
        self.records.append(record)
        return record

    def _stalled(self) -> bool:
        h, k = self.best_history, self.config.patience
        if len(h) <= k or h[-1] is None:
            return False
        before = h[-1 - k]
        return before is not None and h[-1] <= before

    def _move(self, part: Particle) -> None:
        cfg = self.config
        r = self.rng.uniform(0.0, 1.0, size=4) if cfg.random_factors else np.ones(4)
        w = np.array([cfg.inertia, cfg.cognitive, cfg.social, cfg.repel]) * r
        g, worst = self.global_best_x, self.global_worst_x
        if g is None:  # nothing scored yet (every utility None): keep drifting
            w[1:] = 0.0
        if worst is None:
            w[3] = 0.0
        total = float(w.sum())
        if total <= 0.0:  # only possible with all-zero random draws: keep the velocity
            w, total = np.array([1.0, 0.0, 0.0, 0.0]), 1.0
        cv, cp, cg, cw = (float(c) / total for c in w)
        # v' = cv v + cp (p - x) + cg (g - x) + cw (x - worst)
        terms: list[tuple[float, Params]] = [(cv, part.v), (cp, part.best_x), (-cp - cg + cw, part.x)]
        if g is not None:
            terms.append((cg, g))
        if worst is not None:
            terms.append((-cw, worst))
        part.v = combine(terms)
        part.x = combine([(1.0, part.x), (self.step_length, part.v)])

    # ----------------------------------------------------------------------------------------------- persistence
    def save(self, state_dir: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
        """Write the whole state to ``state_dir/iter-<k>`` atomically and point ``state_dir/latest.json`` at it."""
        from safetensors.torch import save_file

        root = Path(state_dir)
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"iter-{self.iteration:04d}"
        tmp = root / f".iter-{self.iteration:04d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors: dict[str, torch.Tensor] = {}
        objects: dict[int, int] = {}  # id(position) -> index: shared positions (x is p after a restart) stored once
        seen_ptrs: set[int] = set()

        def put(p: Params | None) -> int | None:
            if p is None:
                return None
            if id(p) not in objects:
                k = objects[id(p)] = len(objects)
                for name, t in _as_dict(p).items():
                    t = t.detach().to(torch.float32).contiguous().cpu()
                    if t.data_ptr() in seen_ptrs:
                        t = t.clone()
                    seen_ptrs.add(t.data_ptr())
                    tensors[f"{k}/{name}"] = t
            return objects[id(p)]

        roles = {
            "particles": [{"x": put(p.x), "v": put(p.v), "best": put(p.best_x)} for p in self.particles],
            "global_best": put(self.global_best_x),
            "global_worst": put(self.global_worst_x),
        }
        save_file(tensors, str(tmp / "tensors.safetensors"))
        meta = {
            "format": "swarmgate.pso/1",
            "config": asdict(self.config),
            "tensor_kind": "tensor" if isinstance(self.particles[0].x, torch.Tensor) else "dict",
            "iteration": self.iteration,
            "step_length": self.step_length,
            "global_best_u": self.global_best_u,
            "global_best_index": self.global_best_index,
            "global_worst_u": self.global_worst_u,
            "best_history": self.best_history,
            "stop_reason": self.stop_reason,
            "records": [asdict(r) for r in self.records],
            "particles": [
                {"best_u": p.best_u, "u": p.u, "stale": p.stale, "history": p.history} for p in self.particles
            ],
            "rng": self.rng.bit_generator.state,
            "roles": roles,
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / "latest.json"
        pointer_tmp = root / ".latest.json.tmp"
        pointer_tmp.write_text(json.dumps({"dir": final.name, "iteration": self.iteration}))
        os.replace(pointer_tmp, pointer)
        for old in root.glob("iter-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def saved_iteration(state_dir: str | os.PathLike[str]) -> int | None:
        """The iteration of the latest saved state, or None when there is none."""
        pointer = Path(state_dir) / "latest.json"
        if not pointer.is_file():
            return None
        return int(json.loads(pointer.read_text())["iteration"])

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> tuple[ParticleSwarm, dict[str, Any]]:
        """Restore a swarm saved by ``save`` (and the ``extra`` dict saved with it)."""
        from safetensors.torch import load_file

        root = Path(state_dir)
        pointer = root / "latest.json"
        if not pointer.is_file():
            raise FileNotFoundError(f"no saved search state in {root}")
        d = root / json.loads(pointer.read_text())["dir"]
        meta = json.loads((d / "state.json").read_text())
        tensors = load_file(str(d / "tensors.safetensors"))
        single = meta["tensor_kind"] == "tensor"

        cache: dict[int, Params] = {}

        def get(k: int | None) -> Params | None:
            if k is None:
                return None
            if k not in cache:
                part = {name.split("/", 1)[1]: t for name, t in tensors.items() if name.split("/", 1)[0] == str(k)}
                cache[k] = part[_SINGLE] if single else part
            return cache[k]

        roles = meta["roles"]
        self = cls.__new__(cls)
        self.config = PSOConfig(**meta["config"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = meta["rng"]
        self.iteration = meta["iteration"]
        self.step_length = meta["step_length"]
        self.global_best_u = meta["global_best_u"]
        self.global_best_index = meta["global_best_index"]
        self.global_worst_u = meta["global_worst_u"]
        self.global_best_x = get(roles["global_best"])
        self.global_worst_x = get(roles["global_worst"])
        self.best_history = meta["best_history"]
        self.stop_reason = meta["stop_reason"]
        self.records = [IterationRecord(**r) for r in meta["records"]]
        self.particles = []
        for i, pm in enumerate(meta["particles"]):
            r = roles["particles"][i]
            x, v, best = get(r["x"]), get(r["v"]), get(r["best"])
            assert x is not None and v is not None and best is not None
            self.particles.append(
                Particle(
                    x=x, v=v, best_x=best, best_u=pm["best_u"], u=pm["u"], stale=pm["stale"], history=pm["history"]
                )
            )
        return self, meta.get("extra", {})


def interpolate_children(
    experts: Sequence[Params], n_children: int, rng: np.random.Generator, *, low: float = 0.0, high: float = 2.0
) -> tuple[list[Params], list[dict[str, Any]]]:
    """Model Swarms' initial children: ``w A + (1 - w) B`` for random distinct experts A, B and w ~ U(low, high).

    Returns the children and, for each, ``{"a": i, "b": j, "w": w}`` (provenance for the log).
    """
    if len(experts) < 2 and n_children > 0:
        raise ValueError("children need at least 2 experts")
    children, origin = [], []
    for _ in range(n_children):
        a, b = (int(i) for i in rng.choice(len(experts), size=2, replace=False))
        w = float(rng.uniform(low, high))
        children.append(combine([(w, experts[a]), (1.0 - w, experts[b])]))
        origin.append({"a": a, "b": b, "w": w})
    return children, origin
