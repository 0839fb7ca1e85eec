"""Baselines the PPO router must beat: a keyword/rule router and a supervised route classifier on the same encoder.

- ``KeywordRouter``: reads the question's words and calls a fixed route per rule (the toy default maps task words to
  their specialists: ``addrev`` -> adder then reverser). No learning; what a person would write in an afternoon.
- ``RouteClassifier``: softmax regression on the router's own question encoding, trained on the training split to
  predict the oracle's best route (the cheapest route reaching the best quality within the step limit). It sees
  exactly what the router sees before its first call, so it is the supervised route RL must beat to earn its keep.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.config import BaselineConfig

_WORD = re.compile(r"[a-z0-9]+")


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
        """Full-batch Adam on cross-entropy (a convex problem: the result barely depends on the seed)."""
        import torch

        routes = sorted({tuple(r) for r in labels})
        index = {r: i for i, r in enumerate(routes)}
        y = torch.tensor([index[tuple(r)] for r in labels])
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        g = torch.Generator().manual_seed(seed)
        w = (torch.randn(len(routes), x.shape[1], generator=g) * 0.01).requires_grad_()
        b = torch.zeros(len(routes), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05, weight_decay=l2)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, y)
            loss.backward()
            opt.step()
        return cls(routes, w.detach().numpy(), b.detach().numpy())

    def route(self, feature: np.ndarray) -> list[str]:
        return list(self.routes[int(np.argmax(self.weight @ feature + self.bias))])
