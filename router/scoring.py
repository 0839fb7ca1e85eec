"""Answer quality in [0, 1]: the routing MDP's pluggable scorer, built from ``ScorerConfig``.

The scorers themselves live in ``scoring`` (a ``scoring.base.Scorer`` is any ``Callable[[prediction, reference,
question], float]`` with ``needs_reference``); this picks one by name.
"""

from __future__ import annotations

from typing import Any

from scoring.base import Scorer
from scoring.reference import EmbeddingSimilarity, ExactMatch, TokenF1
from scoring.reward import RewardModelScorer


def build_scorer(cfg: Any) -> Scorer:
    """A scorer from ``ScorerConfig``."""
    if cfg.name == "exact":
        return ExactMatch()
    if cfg.name == "f1":
        return TokenF1()
    if cfg.name == "similarity":
        from gateway.routing.encoders import SentenceEncoder

        return EmbeddingSimilarity(SentenceEncoder(cfg.model_path))
    if cfg.name == "reward_model":
        if not cfg.model_path:
            raise ValueError("scorer 'reward_model' needs scorer.model_path (a local sequence-classification model)")
        return RewardModelScorer(cfg.model_path)
    raise ValueError(f"unknown scorer {cfg.name!r} (expected exact, f1, similarity or reward_model)")
