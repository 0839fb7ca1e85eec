"""The DER routing MDP as a gymnasium environment.

State: a question, the current answer (empty before the first call), the step index and the cost spent; plus the
episode's cost weight lambda, so one policy serves a range of lambdas, and (``EnvConfig.route_in_state``) how many
times each expert was called so far. Actions: one per expert, then stop. Calling
expert e gives a new answer: ``answer_fn(e, question, previous)``, an expert answering through a Knowledge Transfer
Prompt that carries the previous answer (in training, a lookup in the trajectory cache; in tests, any function).

Reward of a call: ``q_t - lambda * cost(e) + beta * (q_t - q_{t-1})`` (``RewardConfig`` says where q_t is paid);
when the episode ends, a bonus if quality reached the threshold, a penalty if the step limit ended it below.
The observation is built by ``gateway.routing.observation.ObservationLayout``, the same code the gateway runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gateway.routing.encoders import Encoder
from gateway.routing.observation import ObservationLayout
from gateway.routing.policy import STOP
from router.config import EnvConfig
from scoring.base import Scorer, is_truncated
from scoring.examples import Example

AnswerFn = Callable[[str, str, str], str]
"""(expert, question, previous answer) -> the expert's answer."""


def make_layout(cfg: EnvConfig, costs: Sequence[float]) -> ObservationLayout:
    return ObservationLayout(
        max_steps=cfg.max_steps,
        cost_scale=float(cfg.max_steps * max(max(costs), 1e-9)),
        cost_weight_scale=float(max(max(cfg.cost_weights), 1e-9)),
        n_experts=len(costs) if cfg.route_in_state else 0,
    )


class ChainRoutingEnv(gym.Env[np.ndarray, np.int64]):
    """Route a question through experts until the policy stops or the step limit ends the episode."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}  # type: ignore[misc]  # gymnasium declares it per instance

    def __init__(
        self,
        examples: Sequence[Example],
        experts: Sequence[str],
        costs: Sequence[float],
        answer_fn: AnswerFn,
        scorer: Scorer,
        encoder: Encoder,
        config: EnvConfig | None = None,
        render_mode: str | None = None,
    ):
        if not examples:
            raise ValueError("ChainRoutingEnv needs at least one example")
        if len(experts) != len(costs) or not experts:
            raise ValueError("give one cost per expert (and at least one expert)")
        self.examples = list(examples)
        self.experts = list(experts)
        self.costs = [float(c) for c in costs]
        self.answer_fn = answer_fn
        self.scorer = scorer
        self.encoder = encoder
        self.config = config or EnvConfig()
        self.render_mode = render_mode
        self.layout = make_layout(self.config, self.costs)
        self.action_space = spaces.Discrete(len(self.experts) + 1)
        size = self.layout.size(encoder.dim)
        self.observation_space = spaces.Box(low=-1.0, high=1.0, shape=(size,), dtype=np.float32)
        self._q_vec: dict[str, np.ndarray] = {}
        self._quality_memo: dict[tuple[str, str], float] = {}
        # episode state
        self._example = self.examples[0]
        self._answer = ""
        self._quality = 0.0
        self._step = 0
        self._spent = 0.0
        self._lambda = float(self.config.cost_weights[0])
        self._route: list[str] = []

    # --- helpers ------------------------------------------------------------------------------------------------
    @property
    def stop_action(self) -> int:
        return len(self.experts)

    def quality(self, answer: str, example: Example | None = None) -> float:
        ex = example or self._example
        key = (ex.question, answer)
        q = self._quality_memo.get(key)
        if q is None:
            q = float(self.scorer(answer, ex.answer, ex.question)) if answer else 0.0
            self._quality_memo[key] = q
        return q

    def _obs(self) -> np.ndarray:
        q = self._q_vec.get(self._example.question)
        if q is None:
            q = self.encoder.encode([self._example.question])[0]
            self._q_vec[self._example.question] = q
        calls = [self._route.count(e) for e in self.experts] if self.layout.n_experts else []
        obs = self.layout.build(self.encoder, q, self._answer, self._step, self._spent, self._lambda, calls)
        return np.clip(obs, -1.0, 1.0)

    def _info(self) -> dict[str, Any]:
        return {
            "question": self._example.question,
            "answer": self._answer,
            "quality": self._quality,
            "cost": self._spent,
            "calls": self._step,
            "route": list(self._route),
            "cost_weight": self._lambda,
            "task": self._example.task,
        }

    # --- gymnasium API ------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``options``: ``index`` (which example), ``cost_weight`` (lambda); random otherwise."""
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            self._example = self.examples[int(options["index"]) % len(self.examples)]
        else:
            self._example = self.examples[int(self.np_random.integers(len(self.examples)))]
        if "cost_weight" in options:
            self._lambda = float(options["cost_weight"])
        else:
            weights = self.config.cost_weights
            self._lambda = float(weights[int(self.np_random.integers(len(weights)))])
        self._answer, self._quality, self._step, self._spent, self._route = "", 0.0, 0, 0.0, []
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a <= self.stop_action:
            raise ValueError(f"action {a} out of range [0, {self.stop_action}]")
        rc = self.config.reward
        reward = 0.0
        if a == self.stop_action:
            self._route.append(STOP)
            reward += self._terminal_reward(limit=self._step == 0)
            return self._obs(), float(reward), True, False, self._info()

        expert = self.experts[a]
        previous_q = self._quality
        raw = self.answer_fn(expert, self._example.question, self._answer)
        self._answer = raw.strip()
        self._quality = 0.0 if is_truncated(raw) else self.quality(self._answer)  # a cut answer is wrong
        self._step += 1
        self._spent += self.costs[a]
        self._route.append(expert)
        reward += -self._lambda * self.costs[a] + rc.beta * (self._quality - previous_q)
        if rc.quality_reward == "per_step":
            reward += self._quality
        terminated = False
        if rc.terminate_at_threshold and self._quality >= rc.success_threshold:
            terminated = True
            reward += self._terminal_reward(limit=False)
        elif self._step >= self.config.max_steps:
            terminated = True
            reward += self._terminal_reward(limit=True)
        return self._obs(), float(reward), terminated, False, self._info()

    def _terminal_reward(self, *, limit: bool) -> float:
        rc = self.config.reward
        r = self._quality if rc.quality_reward == "terminal" else 0.0
        if self._quality >= rc.success_threshold:
            r += rc.success_bonus
        elif limit:
            r -= rc.limit_penalty
        else:
            r -= rc.stop_penalty
        return r

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return (
            f"[{self._step}] {self._example.question!r} -> {self._answer!r} q={self._quality:.2f} route={self._route}"
        )
