"""Serving a trained router: a spec that adds a ``kind: chain`` ensemble over an existing spec's experts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def chain_spec(
    base_spec: str | Path,
    policy: str | Path,
    *,
    name: str = "toy-router",
    experts: Sequence[str] = (),
    max_steps: int | None = None,
    cost_weight: float | None = None,
    description: str = "DER-style routed chain (PPO policy)",
) -> dict[str, Any]:
    """``base_spec`` (paths made absolute) plus ensemble ``name`` routing over ``experts`` with ``policy``."""
    base = Path(base_spec).resolve()
    data = yaml.safe_load(base.read_text()) or {}
    for expert in (data.get("experts") or {}).values():
        for key in ("model", "adapter"):
            value = expert.get(key)
            if value and not Path(os.path.expanduser(value)).is_absolute() and (base.parent / value).exists():
                expert[key] = str((base.parent / value).resolve())
    for ens in (data.get("ensembles") or {}).values():
        for key in ("model", "adapter", "topology", "policy"):
            value = ens.get(key)
            if value and not Path(os.path.expanduser(value)).is_absolute() and (base.parent / value).exists():
                ens[key] = str((base.parent / value).resolve())
    entry: dict[str, Any] = {
        "kind": "chain",
        "policy": str(Path(policy).resolve()),
        "experts": list(experts) or list(data.get("experts") or {}),
        "description": description,
    }
    if max_steps is not None:
        entry["max_steps"] = max_steps
    if cost_weight is not None:
        entry["cost_weight"] = cost_weight
    data.setdefault("ensembles", {})[name] = entry
    return data


def write_chain_spec(out: str | Path, base_spec: str | Path, policy: str | Path, **kwargs: Any) -> Path:
    """Write ``chain_spec(...)`` to ``out`` (atomically) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(chain_spec(base_spec, policy, **kwargs), sort_keys=False))
    os.replace(tmp, out)
    return out
