"""The served router policy: a pickle-free file format (safetensors + JSON), its loading, and the decision step.

The trainer writes a policy (``router.publish``); the gateway reads it here, with numpy and safetensors only, never
stable-baselines3 or gymnasium. On disk, a policy root holds versions and a pointer, so a serving gateway can follow
new versions atomically (``gateway.routing.holder``)::

    policy/
      CURRENT              # one line: "v0002"
      v0001/policy.json  v0001/policy.safetensors
      v0002/policy.json  v0002/policy.safetensors

A plain directory with ``policy.json`` (no pointer) is a policy too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.routing.encoders import Encoder, build_encoder
from gateway.routing.observation import ObservationLayout

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


class PolicyError(ValueError):
    """A policy that can't be served: missing, corrupted, of another version, or not matching its experts."""


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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the weights checksum in ``policy.json``)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _need(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in meta:
        raise PolicyError(f"{where}: missing '{key}'")
    value = meta[key]
    if not isinstance(value, kind):
        raise PolicyError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _read_json(meta_path: Path) -> dict[str, Any]:
    """``policy.json`` as a dict, refused unless it is this format at this version."""
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
    return meta


@dataclass(frozen=True)
class _Header:
    """What ``policy.json`` says about a policy, parsed and checked for consistency (weights not read yet)."""

    experts: list[str]
    costs: list[float]
    layout: ObservationLayout
    activation: str
    shapes: list[tuple[int, ...]]
    """[inputs, outputs] of each linear layer."""
    encoder: dict[str, Any]
    ktp_template: str
    cost_weights: list[float]
    default_cost_weight: float
    weights_file: str
    weights_sha256: str | None


def _parse_header(meta: dict[str, Any], meta_path: Path) -> _Header:
    """The fields of ``policy.json``; PolicyError for a missing or malformed one or an inconsistent whole."""
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
        header = _Header(
            experts=experts,
            costs=costs,
            layout=ObservationLayout(
                max_steps=int(obs["max_steps"]),
                cost_scale=float(obs["cost_scale"]),
                cost_weight_scale=float(obs["cost_weight_scale"]),
                n_experts=int(obs.get("route_experts", 0)),
            ),
            cost_weights=[float(x) for x in cw["trained"]],
            default_cost_weight=float(cw["default"]),
            activation=str(net["activation"]),
            shapes=[tuple(int(v) for v in s) for s in net["layers"]],
            encoder=enc_desc,
            ktp_template=ktp,
            weights_file=str(weights.get("file", WEIGHTS_FILE)),
            weights_sha256=weights.get("sha256"),
        )
    except PolicyError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{meta_path}: malformed field ({exc.__class__.__name__}: {exc})") from None
    if not experts or len(set(experts)) != len(experts):
        raise PolicyError(f"{meta_path}: 'experts' must be a non-empty list of distinct names")
    if actions != [*experts, STOP]:
        raise PolicyError(f"{meta_path}: 'actions' must be the experts then 'stop', got {actions}")
    if header.activation not in ACTIVATIONS:
        raise PolicyError(f"{meta_path}: unknown activation {header.activation!r}")
    if header.layout.n_experts not in (0, len(experts)):
        raise PolicyError(f"{meta_path}: observation.route_experts must be 0 or the number of experts")
    if header.layout.max_steps < 1 or not header.cost_weights:
        raise PolicyError(f"{meta_path}: bad observation.max_steps or cost_weight.trained")
    return header


def _read_layers(wfile: Path, header: _Header) -> list[tuple[np.ndarray, np.ndarray]]:
    """The network's (weight, bias) pairs from the safetensors file, checked against the header's checksum and
    shapes; the last layer gives one logit per action."""
    if not wfile.is_file():
        raise PolicyError(f"{wfile}: weights file not found")
    if header.weights_sha256 and file_sha256(wfile) != header.weights_sha256:
        raise PolicyError(f"{wfile}: checksum does not match policy.json (corrupted or replaced)")
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(wfile))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise PolicyError(f"{wfile}: not a readable safetensors file ({exc})") from None
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (n_in, n_out) in enumerate(header.shapes):
        w, b = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
        if w is None or b is None:
            raise PolicyError(f"{wfile}: missing tensors for layer {i}")
        if w.shape != (n_out, n_in) or b.shape != (n_out,):
            raise PolicyError(f"{wfile}: layer {i} has shape {w.shape}/{b.shape}, policy.json says [{n_in}, {n_out}]")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise PolicyError(f"{wfile}: layer {i} holds non-finite values")
        layers.append((w.astype(np.float32), b.astype(np.float32)))
    n_actions = len(header.experts) + 1
    if not layers or layers[-1][0].shape[0] != n_actions:
        raise PolicyError(f"{wfile}: the last layer must give {n_actions} logits (experts + stop)")
    return layers


def _build_encoder(desc: dict[str, Any], meta_path: Path, cache: dict[str, Encoder] | None) -> Encoder:
    """The encoder ``desc`` describes, taken from ``cache`` (by description) when it holds one, else built and kept."""
    key = json.dumps(desc, sort_keys=True)
    encoder = cache.get(key) if cache is not None else None
    if encoder is None:
        try:
            encoder = build_encoder(desc)
        except Exception as exc:
            raise PolicyError(f"{meta_path}: can't build encoder {desc}: {exc}") from None
        if cache is not None:
            cache[key] = encoder
    return encoder


def load_policy(path: str | Path, *, encoders: dict[str, Encoder] | None = None) -> RouterPolicy:
    """Load and validate a policy (directory, policy root with a pointer, or pointer file).

    Raises PolicyError naming the file and the problem for anything missing, malformed or inconsistent.
    ``encoders`` is a cache of built encoders by description, shared across reloads.
    """
    d = resolve_policy_dir(path)
    meta_path = d / POLICY_JSON
    meta = _read_json(meta_path)
    header = _parse_header(meta, meta_path)
    wfile = d / header.weights_file
    layers = _read_layers(wfile, header)
    encoder = _build_encoder(header.encoder, meta_path, encoders)
    if layers[0][0].shape[1] != header.layout.size(encoder.dim):
        raise PolicyError(
            f"{wfile}: the network takes {layers[0][0].shape[1]} inputs but the {header.encoder.get('kind')} encoder "
            f"gives {header.layout.size(encoder.dim)}"
        )
    return RouterPolicy(
        experts=header.experts,
        costs=header.costs,
        layers=layers,
        activation=header.activation,
        encoder=encoder,
        layout=header.layout,
        ktp_template=header.ktp_template,
        cost_weights=header.cost_weights,
        default_cost_weight=header.default_cost_weight,
        meta=meta,
        version=d.name,
        path=str(d),
    )
