"""Publishing a trained policy: the writing side of the served format (``gateway.routing.policy`` reads it).

``write_policy_files`` writes ``policy.safetensors`` and ``policy.json`` into a directory; ``publish_policy`` adds a
new ``vNNNN/`` version under a policy root and moves its ``CURRENT`` pointer atomically, so a serving gateway sees
the old version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.routing.observation import ObservationLayout
from gateway.routing.policy import (
    ACTIVATIONS,
    FORMAT,
    FORMAT_VERSION,
    POINTER,
    POLICY_JSON,
    STOP,
    WEIGHTS_FILE,
    PolicyError,
    file_sha256,
)

_VERSION_RE = re.compile(r"^v(\d{4,})$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_policy_files(
    directory: str | Path,
    *,
    experts: Sequence[str],
    costs: Sequence[float],
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    activation: str,
    encoder: dict[str, Any],
    layout: ObservationLayout,
    ktp_template: str,
    cost_weights: Sequence[float],
    default_cost_weight: float | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``policy.safetensors`` and ``policy.json`` into ``directory`` (created)."""
    from safetensors.numpy import save_file

    if activation not in ACTIVATIONS:
        raise PolicyError(f"activation {activation!r} is not servable (use one of {sorted(ACTIVATIONS)})")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    save_file(tensors, str(d / WEIGHTS_FILE))
    default = float(
        default_cost_weight if default_cost_weight is not None else sorted(cost_weights)[len(cost_weights) // 2]
    )
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": time.time(),
        "experts": [{"name": n, "cost": float(c)} for n, c in zip(experts, costs, strict=True)],
        "actions": [*experts, STOP],
        "encoder": encoder,
        "observation": layout.describe(),
        "network": {"activation": activation, "layers": [[int(w.shape[1]), int(w.shape[0])] for w, _ in layers]},
        "ktp_template": ktp_template,
        "cost_weight": {"trained": [float(x) for x in cost_weights], "default": default},
        "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(d / WEIGHTS_FILE)},
        "training": training or {},
    }
    tmp = d / (POLICY_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, d / POLICY_JSON)
    return d


def next_version(root: str | Path) -> str:
    root = Path(root)
    nums = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_RE.match(p.name))] if root.is_dir() else []
    return f"v{(max(nums) + 1) if nums else 1:04d}"


def publish_policy(root: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a new version under ``root`` and point ``root/CURRENT`` at it, atomically.

    ``write(tmpdir)`` fills a temporary directory inside ``root``; it is renamed to the next ``vNNNN`` and only then
    is the pointer replaced (``os.replace``), so a reader sees the old version or the new one, never half of one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    write(tmp)
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    for _ in range(100):  # two publishers racing for the same number: the loser takes the next one
        target = root / next_version(root)
        try:
            os.rename(tmp, target)
            break
        except OSError:
            continue
    else:  # pragma: no cover
        raise PolicyError(f"could not claim a version directory under {root}")
    _fsync_dir(root)
    pointer_tmp = root / f".{POINTER}.{os.getpid()}.tmp"
    pointer_tmp.write_text(target.name + "\n")
    with pointer_tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, root / POINTER)
    _fsync_dir(root)
    return target
