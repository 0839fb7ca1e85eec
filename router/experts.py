"""Expert handles for offline work (trajectory collection), built from the serving spec through the engine layer.

Experts on one base model share one engine (adapters ride on it): the gateway's engine pool builds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.engines.pool import EnginePool
from gateway.executors.base import ExpertHandle
from gateway.spec import ExpertSpec, Spec, load_spec


def spec_experts(spec: Spec, names: Sequence[str] = ()) -> dict[str, ExpertSpec]:
    """The named experts of a spec (all of them when ``names`` is empty), in ``names`` order."""
    names = list(names) or list(spec.experts)
    missing = [n for n in names if n not in spec.experts]
    if missing:
        raise ValueError(f"experts not in the spec: {missing} (known: {sorted(spec.experts)})")
    return {n: spec.experts[n] for n in names}


def fingerprint(spec: ExpertSpec, **extra: Any) -> dict[str, Any]:
    """What determines an expert's answers (the trajectory cache refuses answers from a changed expert)."""
    return {"engine_model": spec.model, "adapter": spec.adapter, "url": spec.url, **extra}


@contextlib.asynccontextmanager
async def open_experts(
    spec_path: str, names: Sequence[str] = (), *, force_engine: str | None = None
) -> AsyncIterator[dict[str, ExpertHandle]]:
    """Start engines for the named experts (as the gateway's runtime builds them) and yield their handles."""
    chosen = spec_experts(load_spec(spec_path), names)
    pool = EnginePool(force_engine=force_engine)
    try:
        handles = {name: pool.expert(name, e) for name, e in chosen.items()}
        await pool.start()
        yield handles
    finally:
        await pool.close()
