"""Baselines the PPO router must beat: a keyword/rule router and a supervised route classifier on the same encoder.

- ``KeywordRouter``: reads the question's words and calls a fixed route per rule (the toy default maps task words to
  their specialists: ``addrev`` -> adder then reverser). No learning; what a person would write in an afternoon.
- ``RouteClassifier``: softmax regression on the router's own question encoding, trained on the training split to
  predict the oracle's best route (the cheapest route reaching the best quality within the step limit). It sees
  exactly what the router sees before its first call, so it is the supervised route RL must beat to earn its keep.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from router.config import BaselineConfig

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
"""Words are runs of letters/digits; every other non-space character (``+``, ``=``) is a word of its own."""


def _matches(alternative: str, word: str) -> bool:
    if alternative.endswith("*"):
        return word.startswith(alternative[:-1])
    return word == alternative


@dataclass(frozen=True)
class KeywordRouter:
    """First rule whose every word group matches a word of the question gives the route; else ``default``."""

    rules: tuple[tuple[tuple[tuple[str, ...], ...], tuple[str, ...]], ...]
    """(word groups, route) per rule; a group is a tuple of alternatives."""
    default: tuple[str, ...]
    """Route when no rule matches."""

    @classmethod
    def from_config(cls, cfg: BaselineConfig, experts: Sequence[str], costs: Sequence[float]) -> KeywordRouter | None:
        """The configured keyword router (None when no rules are configured). Unknown experts are refused."""
        if not cfg.keyword_rules:
            return None
        known = set(experts)
        rules = []
        for i, rule in enumerate(cfg.keyword_rules):
            bad = [e for e in rule.route if e not in known]
            if bad or not rule.route or not rule.when:
                raise ValueError(
                    f"baselines.keyword_rules[{i}]: give `when` and a `route` of known experts (unknown: {bad})"
                )
            groups = tuple(tuple(a.strip().lower() for a in g.split("|") if a.strip()) for g in rule.when)
            rules.append((groups, tuple(rule.route)))
        default = tuple(cfg.keyword_default) or (experts[int(np.argmin(costs))],)
        bad = [e for e in default if e not in known]
        if bad:
            raise ValueError(f"baselines.keyword_default: unknown experts {bad}")
        return cls(tuple(rules), default)

    def upgraded(self, swaps: Mapping[str, str], experts: Sequence[str]) -> KeywordRouter:
        """The same rules with every expert in ``swaps`` replaced by its value (``baselines.keyword_upgrades``)."""
        if not isinstance(swaps, Mapping):
            raise ValueError("baselines.keyword_upgrades: expected a mapping {expert: dearer expert}")
        bad = sorted(e for pair in swaps.items() for e in pair if e not in set(experts))
        if bad:
            raise ValueError(f"baselines.keyword_upgrades: unknown experts {bad}")

        def swap(route: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(swaps.get(e, e) for e in route)

        return KeywordRouter(tuple((groups, swap(route)) for groups, route in self.rules), swap(self.default))

    def route(self, question: str) -> list[str]:
        words = _WORD.findall(question.lower())
        for groups, route in self.rules:
            if all(any(_matches(a, w) for a in group for w in words) for group in groups):
                return list(route)
        return list(self.default)


@dataclass
class RouteClassifier:
    """Softmax regression from the encoded question to one of the routes seen as oracle labels in training."""

    routes: list[tuple[str, ...]]
    """Class index -> route."""
    weight: np.ndarray
    """(classes, features)."""
    bias: np.ndarray
    """(classes,)."""

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: Sequence[Sequence[str]],
        *,
        epochs: int = 300,
        l2: float = 1e-3,
        seed: int = 0,
    ) -> RouteClassifier:
        """Full-batch Adam on L2-regularised cross-entropy, in numpy (a convex problem: the result barely depends
        on the seed; no torch threads to fight over on a busy machine)."""
        routes = sorted({tuple(r) for r in labels})
        index = {r: i for i, r in enumerate(routes)}
        y = np.array([index[tuple(r)] for r in labels])
        x = np.asarray(features, dtype=np.float64)
        n, k = len(y), len(routes)
        onehot = np.zeros((n, k))
        onehot[np.arange(n), y] = 1.0
        rng = np.random.default_rng(seed)
        params = [rng.normal(0, 0.01, (k, x.shape[1])), np.zeros(k)]
        m = [np.zeros_like(q) for q in params]
        v = [np.zeros_like(q) for q in params]
        lr, b1, b2 = 0.05, 0.9, 0.999
        for t in range(1, epochs + 1):
            w, b = params
            z = x @ w.T + b
            z -= z.max(axis=1, keepdims=True)
            prob = np.exp(z)
            prob /= prob.sum(axis=1, keepdims=True)
            d = (prob - onehot) / n
            grads = [d.T @ x + l2 * w, d.sum(axis=0)]
            for i, g in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                params[i] = params[i] - lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + 1e-8)
        return cls(routes, params[0].astype(np.float32), params[1].astype(np.float32))

    def route(self, feature: np.ndarray) -> list[str]:
        return list(self.routes[int(np.argmax(self.weight @ feature + self.bias))])
