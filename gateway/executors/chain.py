"""A DER-style routed chain: a trained policy picks the next expert (or stop) from the question and current answer.

Per request: the policy decides before every call; the first expert gets the client's prompt, every later one a
Knowledge Transfer Prompt carrying the previous answer (the template is stored in the policy). On a raw completion
prompt the first expert gets it as sent and later ones the KTP in the prompt's own format (``gateway.executors.raw``);
``response_format`` and ``tools`` are refused, since no single step is known in advance to write the answer. Intermediate steps run
whole and are reported as route steps with their output; the final answer is streamed live when the executor knows
the call is the last one (the step limit), and sent at once when the policy stops after a call that already ran.
``cost_weight`` and ``max_steps`` extra body fields override the spec per request. Every StepInfo carries the
decision that chose it (``action``, ``decision_ms``); the last one also the stop decision.

The policy follows its root's ``CURRENT`` pointer: a new version is picked up between requests, a broken one is
refused (logged) while the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

from gateway.engines.base import Chunk, Prompt, SamplingParams
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle, StepInfo, question_of
from gateway.executors.fields import refuse_for_ensemble, refuse_token_prompt, refuse_unsupported
from gateway.executors.raw import split_raw
from gateway.routing.holder import PolicyHolder
from gateway.routing.policy import PolicyError, RouterPolicy
from gateway.routing.prompts import chain_prompt, ktp_content
from gateway.spec import ChainEnsemble, SpecError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


class ChainExecutor(Executor):
    kind = "chain"

    def __init__(
        self,
        name: str,
        holder: PolicyHolder,
        experts: list[ExpertHandle],
        *,
        max_steps: int,
        cost_weight: float | None = None,
    ):
        super().__init__(name)
        self.holder = holder
        self._experts = experts
        self._by_name = {e.name: e for e in experts}
        self.max_steps = max_steps
        self.cost_weight = cost_weight

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_spec(
        cls, name: str, spec: ChainEnsemble, experts: dict[str, ExpertHandle], *, reload_interval_s: float = 1.0
    ) -> ChainExecutor:
        """Load and check the policy; SpecError (naming the policy and the problem) when it can't be served."""
        key = f"ensembles.{name}.policy"
        missing = [n for n in spec.experts if n not in experts]
        if missing:
            raise SpecError(spec.policy, f"ensembles.{name}.experts", f"experts not loaded: {missing}")
        handles = [experts[n] for n in spec.experts]

        def validate(policy: RouterPolicy) -> None:
            policy.check_experts([h.name for h in handles], [h.cost for h in handles])
            if spec.max_steps > policy.max_steps:
                log.warning(
                    "%s: max_steps %d exceeds the %d steps policy %s was trained for; using %d",
                    name,
                    spec.max_steps,
                    policy.max_steps,
                    policy.path,
                    policy.max_steps,
                )
            if spec.cost_weight is not None:
                policy.check_cost_weight(spec.cost_weight)

        try:
            holder = PolicyHolder(spec.policy, validate=validate, interval_s=reload_interval_s)
        except PolicyError as exc:
            raise SpecError(spec.policy, key, str(exc)) from None
        return cls(name, holder, handles, max_steps=spec.max_steps, cost_weight=spec.cost_weight)

    # --- Executor API -------------------------------------------------------------------------------------------
    def experts(self) -> list[ExpertHandle]:
        return list(self._experts)

    def max_model_len(self) -> int | None:
        lens = [e.engine.max_model_len for e in self._experts]
        return min(lens) if lens else None

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        counts = [e.engine.count_prompt_tokens(prompt) for e in self._experts]
        known = [c for c in counts if c is not None]
        return max(known) if known else None

    @property
    def policy(self) -> RouterPolicy:
        return self.holder.current()

    async def _refresh(self) -> None:
        if self.holder.due():
            await asyncio.to_thread(self.holder.maybe_reload)

    def _overrides(self, request: ExecRequest, policy: RouterPolicy) -> tuple[float, int]:
        cost_weight = request.extra.get("cost_weight")
        if cost_weight is None:
            cost_weight = self.cost_weight if self.cost_weight is not None else policy.default_cost_weight
        else:
            lo, hi = policy.cost_weight_range
            if not isinstance(cost_weight, int | float) or not (lo <= float(cost_weight) <= hi):
                raise InvalidRequestError(
                    f"cost_weight must be a number in [{lo}, {hi}] for model {self.name!r} (the range its router was "
                    f"trained on); got {cost_weight!r}",
                    param="cost_weight",
                )
        max_steps = request.extra.get("max_steps")
        if max_steps is None:
            max_steps = min(self.max_steps, policy.max_steps)
        elif not isinstance(max_steps, int) or isinstance(max_steps, bool) or not 1 <= max_steps <= policy.max_steps:
            raise InvalidRequestError(
                f"max_steps must be an integer in [1, {policy.max_steps}] for model {self.name!r}; got {max_steps!r}",
                param="max_steps",
            )
        return float(cost_weight), int(max_steps)

    def check(self, params: SamplingParams) -> None:
        """Refuse (400 naming the field) what no step can own (the last step is chosen at run time) and what an
        expert's engine can't honour."""
        refuse_for_ensemble(self.name, self.kind, params, final_known=False)
        for expert in self._experts:
            refuse_unsupported(self.name, expert, params)

    def _step_prompt(
        self, template: str, request: ExecRequest, question: str, answer: str, expert: ExpertHandle
    ) -> Prompt:
        """The first step gets the client's prompt as sent; later ones the knowledge-transfer prompt, as chat messages
        on the chat path and in the raw prompt's own format on a raw one (``gateway.executors.raw``)."""
        if answer and isinstance(request.prompt, str):
            raw = split_raw(request.prompt, expert)
            return raw.with_content(ktp_content(template, raw.question, answer))
        return chain_prompt(template, request.prompt, question, answer or None)

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        refuse_token_prompt(self.name, request.prompt)
        self.check(request.params)
        await self._refresh()
        policy = self.holder.current()  # this request's snapshot, even if a reload lands meanwhile
        cost_weight, max_steps = self._overrides(request, policy)
        if isinstance(request.prompt, str):  # a raw prompt: the question is its last user turn (as in chat)
            question = split_raw(request.prompt, self._experts[0]).question
        else:
            question = question_of(request.prompt)
        # a model encoder takes milliseconds: keep it off the event loop (the hashed one takes microseconds)
        run = asyncio.to_thread if policy.encoder.slow else _inline
        q_vec = (await run(policy.encoder.encode, [question]))[0]
        answer, spent, route = "", 0.0, []
        decision = await run(policy.decide, q_vec, answer, 0, spent, cost_weight)  # never "stop" before a call
        for step in range(max_steps):
            extra = {"action": decision.name, "decision_ms": round(decision.ms, 4), "policy_version": policy.version}
            expert = self._by_name[decision.name]
            prompt = self._step_prompt(policy.ktp_template, request, question, answer, expert)
            node = str(step)
            if step == max_steps - 1:  # known to be the last call: stream it live
                async for event in expert.stream_step(node, prompt, request.params, request_id=request.request_id):
                    if isinstance(event, StepInfo):
                        event.extra.update(extra)
                    yield event
                return
            done, info = await expert.run_step(node, prompt, request.params, request_id=request.request_id)
            answer, spent = done.text.strip(), spent + expert.cost
            route.append(decision.name)
            decision = await run(
                partial(policy.decide, route=tuple(route)), q_vec, answer, step + 1, spent, cost_weight
            )
            if decision.name == "stop":  # the answer that just came back is final: send it
                info.output = None  # the final answer is the response itself, not a route output
                info.extra.update(extra, stop_decision_ms=round(decision.ms, 4))
                yield Chunk(
                    text=done.text,
                    token_ids=list(done.token_ids),
                    logprobs=done.logprobs,
                    finish_reason=done.finish_reason,
                    prompt_tokens=done.prompt_tokens,
                    completion_tokens=done.completion_tokens,
                )
                yield info
                return
            info.extra.update(extra)
            yield info
