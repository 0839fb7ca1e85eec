"""The routing state as the policy sees it: ``ObservationLayout`` turns (question, answer, step, spent, lambda, route)
into one float32 vector. The training env and the gateway build it with this same code, so a served policy sees
what PPO saw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.routing.encoders import Encoder


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
