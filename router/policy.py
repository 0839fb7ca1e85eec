"""The serving side of the router: a pickle-free policy (safetensors + JSON), its observation, and hot reload.

This module is all the gateway imports from ``router``: numpy, safetensors and the encoders; never
stable-baselines3 or gymnasium. Training writes a policy with ``publish_policy``; the gateway reads it with
``load_policy`` / ``PolicyHolder``.

On disk, a policy root holds versions and a pointer, so a serving gateway can follow new versions atomically::

    policy/
      CURRENT              # one line: "v0002"
      v0001/policy.json  v0001/policy.safetensors
      v0002/policy.json  v0002/policy.safetensors

A plain directory with ``policy.json`` (no pointer) is a policy too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.encoders import Encoder, build_encoder

log = logging.getLogger(__name__)

FORMAT = "swarmgate.router.policy"
FORMAT_VERSION = 1
"""Bump when the JSON layout or the observation changes; loaders refuse other versions."""
POLICY_JSON = "policy.json"
WEIGHTS_FILE = "policy.safetensors"
POINTER = "CURRENT"
STOP = "stop"
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
}
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class PolicyError(ValueError):
    """A policy that can't be served: missing, corrupted, of another version, or not matching its experts."""


@dataclass(frozen=True)
class ObservationLayout:
    """How a routing state becomes the policy's input: [enc(question), enc(answer), step, spent, cost_weight] and,
    when ``n_experts`` > 0, the route so far: calls of each expert (in action order) over ``max_steps``."""

    max_steps: int
    """Step index is divided by this (the trained step limit)."""
    cost_scale: float
    """Cost spent is divided by this (max_steps * the largest expert cost)."""
    cost_weight_scale: float
    """lambda is divided by this (the largest trained lambda), so the feature lies in [0, 1]."""
    n_experts: int = 0
    """Route features, one per expert; 0 for none (DER's plain state; policies written before they existed)."""

    def extra_features(self, step: int, spent: float, cost_weight: float, calls: Sequence[int] = ()) -> np.ndarray:
        route = [min(c / self.max_steps, 1.0) for c in calls] if self.n_experts else []
        if len(route) != self.n_experts:
            raise ValueError(f"give the calls of each of the {self.n_experts} experts, got {len(route)}")
        return np.array(
            [
                min(step / self.max_steps, 1.0),
                min(spent / self.cost_scale, 1.0) if self.cost_scale > 0 else 0.0,
                min(cost_weight / self.cost_weight_scale, 1.0) if self.cost_weight_scale > 0 else 0.0,
                *route,
            ],
            dtype=np.float32,
        )

    def build(
        self,
        encoder: Encoder,
        question: str | np.ndarray,
        answer: str,
        step: int,
        spent: float,
        cost_weight: float,
        calls: Sequence[int] = (),
    ) -> np.ndarray:
        q = encoder.encode([question])[0] if isinstance(question, str) else question
        a = encoder.encode([answer])[0] if answer else np.zeros(encoder.dim, dtype=np.float32)  # no answer yet: zeros
        return np.concatenate([q, a, self.extra_features(step, spent, cost_weight, calls)]).astype(np.float32)

    def size(self, encoder_dim: int) -> int:
        return 2 * encoder_dim + 3 + self.n_experts

    def describe(self) -> dict[str, Any]:
        return {
            "layout": ["question", "answer", "step", "spent", "cost_weight"] + (["calls"] if self.n_experts else []),
            "max_steps": self.max_steps,
            "cost_scale": self.cost_scale,
            "cost_weight_scale": self.cost_weight_scale,
            "route_experts": self.n_experts,
        }


@dataclass(frozen=True)
class Decision:
    """One routing decision."""

    action: int
    """Index into ``RouterPolicy.actions`` (the last one is stop)."""
    name: str
    """Expert name, or ``"stop"``."""
    ms: float
    """Time to encode the state and run the network."""


@dataclass
class RouterPolicy:
    """A loaded policy: a small MLP over the encoded state, plus what it routes between."""

    experts: list[str]
    costs: list[float]
    layers: list[tuple[np.ndarray, np.ndarray]]
    """(weight [out, in], bias [out]) per linear layer; the last one gives one logit per action."""
    activation: str
    encoder: Encoder
    layout: ObservationLayout
    ktp_template: str
    cost_weights: list[float]
    """lambdas seen in training; serving accepts any value between the smallest and the largest."""
    default_cost_weight: float
    meta: dict[str, Any] = field(default_factory=dict)
    """The whole policy.json (training facts included)."""
    version: str = ""
    """Version directory name (``v0002``) or the directory name."""
    path: str = ""

    @property
    def actions(self) -> list[str]:
        return [*self.experts, STOP]

    @property
    def max_steps(self) -> int:
        return self.layout.max_steps

    @property
    def cost_weight_range(self) -> tuple[float, float]:
        return min(self.cost_weights), max(self.cost_weights)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        act = ACTIVATIONS[self.activation]
        x = obs.astype(np.float32)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = act(x)
        return x

    def decide(
        self,
        question: str | np.ndarray,
        answer: str,
        step: int,
        spent: float,
        cost_weight: float | None = None,
        *,
        route: Sequence[str] = (),
        allow_stop: bool | None = None,
    ) -> Decision:
        """The greedy action in a state (``route``: the experts called so far, in order). Stop is never chosen
        before the first call (there is no answer yet)."""
        t0 = time.perf_counter()
        lam = self.default_cost_weight if cost_weight is None else cost_weight
        obs = self.layout.build(self.encoder, question, answer, step, spent, lam, self.calls(route))
        logits = self.logits(obs)
        if allow_stop is None:
            allow_stop = step > 0
        if not allow_stop:
            logits = logits.copy()
            logits[-1] = -np.inf
        action = int(np.argmax(logits))
        return Decision(action=action, name=self.actions[action], ms=(time.perf_counter() - t0) * 1e3)

    def calls(self, route: Sequence[str]) -> list[int]:
        """How many times each expert was called on ``route`` (empty when the policy has no route features)."""
        if not self.layout.n_experts:
            return []
        return [sum(1 for e in route if e == name) for name in self.experts]

    def check_experts(self, experts: Sequence[str], costs: Sequence[float] | None = None) -> None:
        """Refuse (PolicyError) when the serving experts or their costs differ from the ones trained on."""
        if list(experts) != self.experts:
            raise PolicyError(
                f"policy {self.path} routes between {self.experts} but the spec lists {list(experts)}; "
                "the names and their order must match (retrain, or fix the spec's experts)"
            )
        if costs is not None:
            for name, trained, now in zip(self.experts, self.costs, costs, strict=True):
                if abs(float(trained) - float(now)) > 1e-9:
                    raise PolicyError(
                        f"policy {self.path} was trained with cost {trained} for {name!r} but the spec says {now}; "
                        "costs change the trade-off the policy learned: retrain or fix the spec"
                    )

    def check_cost_weight(self, value: float) -> None:
        lo, hi = self.cost_weight_range
        if not (lo - 1e-12 <= value <= hi + 1e-12):
            raise PolicyError(f"cost_weight {value} is outside the range this policy was trained for [{lo}, {hi}]")


# --- writing ------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(d / WEIGHTS_FILE)},
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


# --- reading ------------------------------------------------------------------------------------------------------


def resolve_policy_dir(path: str | Path) -> Path:
    """The directory holding ``policy.json``: ``path`` itself, or the version its ``CURRENT`` pointer names.

    ``path`` may also be the pointer file itself.
    """
    p = Path(path)
    pointer = p if p.is_file() and p.name == POINTER else p / POINTER
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not name or "/" in name or name.startswith("."):
            raise PolicyError(f"{pointer}: expected the name of a version directory, got {name!r}")
        target = pointer.parent / name
        if not (target / POLICY_JSON).is_file():
            raise PolicyError(f"{pointer} names {name!r}, but {target / POLICY_JSON} does not exist")
        return target
    if (p / POLICY_JSON).is_file():
        return p
    if not p.exists():
        raise PolicyError(f"{p}: policy not found (train one with `swarmgate router train`)")
    raise PolicyError(f"{p}: neither {POLICY_JSON} nor a {POINTER} pointer is here")


def pointer_signature(path: str | Path) -> tuple[Any, ...]:
    """Cheap identity of what ``path`` currently points at (stat only): changes when a new version is published."""
    p = Path(path)
    candidates = [p] if p.is_file() else [p / POINTER, p / POLICY_JSON]
    for c in candidates:
        try:
            st = c.stat()
        except FileNotFoundError:
            continue
        return (str(c), st.st_mtime_ns, st.st_size, st.st_ino)
    return (str(p), None)


def _need(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in meta:
        raise PolicyError(f"{where}: missing '{key}'")
    value = meta[key]
    if not isinstance(value, kind):
        raise PolicyError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_policy(path: str | Path, *, encoders: dict[str, Encoder] | None = None) -> RouterPolicy:
    """Load and validate a policy (directory, policy root with a pointer, or pointer file).

    Raises PolicyError naming the file and the problem for anything missing, malformed or inconsistent.
    ``encoders`` is a cache of built encoders by description, shared across reloads.
    """
    d = resolve_policy_dir(path)
    meta_path = d / POLICY_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise PolicyError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise PolicyError(f"{meta_path}: not a swarmgate router policy (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise PolicyError(
            f"{meta_path}: policy format version {meta.get('version')!r}, this gateway reads version {FORMAT_VERSION}; "
            "retrain or export it with this swarmgate"
        )
    try:
        experts_meta = _need(meta, "experts", list, meta_path)
        experts = [str(e["name"]) for e in experts_meta]
        costs = [float(e["cost"]) for e in experts_meta]
        actions = _need(meta, "actions", list, meta_path)
        obs = _need(meta, "observation", dict, meta_path)
        net = _need(meta, "network", dict, meta_path)
        enc_desc = _need(meta, "encoder", dict, meta_path)
        cw = _need(meta, "cost_weight", dict, meta_path)
        weights = _need(meta, "weights", dict, meta_path)
        ktp = _need(meta, "ktp_template", str, meta_path)
        layout = ObservationLayout(
            max_steps=int(obs["max_steps"]),
            cost_scale=float(obs["cost_scale"]),
            cost_weight_scale=float(obs["cost_weight_scale"]),
            n_experts=int(obs.get("route_experts", 0)),
        )
        trained = [float(x) for x in cw["trained"]]
        default_cw = float(cw["default"])
        activation = str(net["activation"])
        shapes = [tuple(int(v) for v in s) for s in net["layers"]]
    except PolicyError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{meta_path}: malformed field ({exc.__class__.__name__}: {exc})") from None
    if not experts or len(set(experts)) != len(experts):
        raise PolicyError(f"{meta_path}: 'experts' must be a non-empty list of distinct names")
    if actions != [*experts, STOP]:
        raise PolicyError(f"{meta_path}: 'actions' must be the experts then 'stop', got {actions}")
    if activation not in ACTIVATIONS:
        raise PolicyError(f"{meta_path}: unknown activation {activation!r}")
    if layout.n_experts not in (0, len(experts)):
        raise PolicyError(f"{meta_path}: observation.route_experts must be 0 or the number of experts")
    if layout.max_steps < 1 or not trained:
        raise PolicyError(f"{meta_path}: bad observation.max_steps or cost_weight.trained")

    wfile = d / str(weights.get("file", WEIGHTS_FILE))
    if not wfile.is_file():
        raise PolicyError(f"{wfile}: weights file not found")
    digest = weights.get("sha256")
    if digest and _sha256(wfile) != digest:
        raise PolicyError(f"{wfile}: checksum does not match policy.json (corrupted or replaced)")
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(wfile))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise PolicyError(f"{wfile}: not a readable safetensors file ({exc})") from None

    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (n_in, n_out) in enumerate(shapes):
        w, b = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
        if w is None or b is None:
            raise PolicyError(f"{wfile}: missing tensors for layer {i}")
        if w.shape != (n_out, n_in) or b.shape != (n_out,):
            raise PolicyError(f"{wfile}: layer {i} has shape {w.shape}/{b.shape}, policy.json says [{n_in}, {n_out}]")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise PolicyError(f"{wfile}: layer {i} holds non-finite values")
        layers.append((w.astype(np.float32), b.astype(np.float32)))
    if not layers or layers[-1][0].shape[0] != len(actions):
        raise PolicyError(f"{wfile}: the last layer must give {len(actions)} logits (experts + stop)")

    key = json.dumps(enc_desc, sort_keys=True)
    encoder = encoders.get(key) if encoders is not None else None
    if encoder is None:
        try:
            encoder = build_encoder(enc_desc)
        except Exception as exc:
            raise PolicyError(f"{meta_path}: can't build encoder {enc_desc}: {exc}") from None
        if encoders is not None:
            encoders[key] = encoder
    if layers[0][0].shape[1] != layout.size(encoder.dim):
        raise PolicyError(
            f"{wfile}: the network takes {layers[0][0].shape[1]} inputs but the {enc_desc.get('kind')} encoder "
            f"gives {layout.size(encoder.dim)}"
        )
    return RouterPolicy(
        experts=experts,
        costs=costs,
        layers=layers,
        activation=activation,
        encoder=encoder,
        layout=layout,
        ktp_template=ktp,
        cost_weights=trained,
        default_cost_weight=default_cw,
        meta=meta,
        version=d.name,
        path=str(d),
    )


class PolicyHolder:
    """The serving policy of one chain, following a policy root's ``CURRENT`` pointer.

    ``current()`` is what a request uses from start to end (it keeps its snapshot even if a reload lands mid-request).
    ``maybe_reload()`` stats the pointer at most every ``interval_s``; a changed pointer is loaded and validated off the
    event loop's hot path, and swapped in only when it loads; a failing version is logged and the old one keeps
    serving (it is retried only when the pointer changes again).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        validate: Callable[[RouterPolicy], None] | None = None,
        interval_s: float = 1.0,
    ):
        self.path = Path(path)
        self.validate = validate
        self.interval_s = interval_s
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()
        self._signature = pointer_signature(self.path)
        self._policy = self._load()
        self._checked = time.monotonic()
        self._failed: tuple[Any, ...] | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def _load(self) -> RouterPolicy:
        policy = load_policy(self.path, encoders=self._encoders)
        if self.validate is not None:
            self.validate(policy)
        return policy

    def current(self) -> RouterPolicy:
        return self._policy

    def due(self) -> bool:
        return time.monotonic() - self._checked >= self.interval_s

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Reload when the pointer changed. Returns True when a new policy was swapped in. Thread-safe."""
        if not force and not self.due():
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading
        try:
            self._checked = time.monotonic()
            sig = pointer_signature(self.path)
            if sig == self._signature or sig == self._failed:
                return False
            try:
                policy = self._load()
            except Exception as exc:
                self._failed = sig
                self.last_error = str(exc)
                log.error(
                    "router policy %s: new version refused, still serving %s: %s", self.path, self._policy.version, exc
                )
                return False
            old = self._policy.version
            self._policy, self._signature, self._failed, self.last_error = policy, sig, None, None
            self.reloads += 1
            log.info("router policy %s: reloaded %s -> %s", self.path, old, policy.version)
            return True
        finally:
            self._lock.release()
