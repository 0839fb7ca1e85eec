"""Expert handles for offline work (trajectory collection), built from the serving spec through the engine layer.

Experts on one base model share one engine (adapters ride on it), as in the gateway.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.engines import Engine, create_engine, resolve_engine_kind
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
    from gateway.runtime import adapter_for, engine_key

    spec = load_spec(spec_path)
    chosen = spec_experts(spec, names)
    engines: dict[str, Engine] = {}
    handles: dict[str, ExpertHandle] = {}
    try:
        for name, e in chosen.items():
            kind = resolve_engine_kind(e.engine, force=force_engine)
            key = engine_key(kind, e)
            if key not in engines:
                args = dict(e.engine_args)
                if kind == "openai":
                    args.update(url=e.url, api_key_env=e.api_key_env, timeout_s=e.timeout_s)
                engines[key] = create_engine(kind, e.model, **args)
                await engines[key].start()
            adapter = adapter_for(name, e.adapter) if e.adapter else None
            handles[name] = ExpertHandle(
                name=name, engine=engines[key], adapter=adapter, cost=e.cost, description=e.description
            )
        yield handles
    finally:
        for engine in engines.values():
            await engine.close()
