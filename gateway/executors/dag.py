"""DAG executor: serves a searched topology (Heterogeneous Swarms output) by topological message passing.

A topology (``gateway.topology``: ``topology.json``) is a DAG of nodes, each an expert with a prompt template, and one
*final* node whose answer is the response. Nodes run as soon as their predecessors finish, so independent nodes run
concurrently; every upstream node reports a ``StepInfo`` as it ends (its output included), and the final node streams
live. On a raw completion prompt the source nodes get it as sent and later nodes their text in the prompt's own format
(``gateway.executors.raw``); ``response_format`` and ``tools`` go to the final node only.

The same executor runs a topology over a whole batch of questions (``run_batch``): the offline graph search scores
candidate DAGs with it, through a caching, batching ``generate`` hook, so what is searched is exactly what is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.engines.base import Prompt, SamplingParams
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle, StepInfo, question_of
from gateway.executors.fields import inner_params, refuse_for_ensemble, refuse_token_prompt, refuse_unsupported
from gateway.executors.raw import split_raw
from gateway.topology import Topology, TopologyError

if TYPE_CHECKING:
    from gateway.spec import DagEnsemble

Generate = Callable[[ExpertHandle, list[Prompt], SamplingParams], Awaitable[list[str]]]
"""Batch generation hook: (expert, prompts, params) -> texts."""


async def _engine_generate(expert: ExpertHandle, prompts: list[Prompt], params: SamplingParams) -> list[str]:
    done = await expert.engine.complete_batch(prompts, params, adapters=[expert.adapter] * len(prompts))
    return [c.text for c in done]


@dataclass
class BatchRun:
    """A topology run over many questions."""

    outputs: list[str]
    """The final node's answer per question."""
    node_outputs: dict[str, list[str]]
    """Every node's answer per question."""


def _system_messages(prompt: Prompt) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return []
    return [dict(m) for m in prompt if m.get("role") in ("system", "developer")]


class DagExecutor(Executor):
    """Serves a topology (``stream``) and scores it over many questions (``run_batch``, used by the graph search).

    Every node gets one user message (its rendered template) after the client's system messages, if any; nodes get
    the request's sampling settings (intermediate nodes without logprobs).
    """

    kind = "dag"

    def __init__(self, name: str, topology: Topology, experts: dict[str, ExpertHandle]):
        super().__init__(name)
        missing = [(i, n.expert) for i, n in enumerate(topology.nodes) if n.expert not in experts]
        if missing:
            i, e = missing[0]
            raise TopologyError(f"nodes[{i}].expert", f"unknown expert {e!r} (known: {sorted(experts)})")
        self.topology = topology
        self.handles = {n.id: experts[n.expert] for n in topology.nodes}

    @classmethod
    def from_spec(cls, name: str, spec: DagEnsemble, experts: dict[str, ExpertHandle]) -> DagExecutor:
        """Build from a spec entry; every problem is a ``SpecError`` naming the topology file and the key."""
        from gateway.spec import SpecError

        try:
            return cls(name, Topology.load(spec.topology), experts)
        except TopologyError as exc:
            raise SpecError(spec.topology, exc.key, exc.problem) from None

    def experts(self) -> list[ExpertHandle]:
        return list({id(h): h for h in self.handles.values()}.values())

    def max_model_len(self) -> int | None:
        lens = []
        for node_id in self.topology.order():
            try:
                lens.append(self.handles[node_id].engine.max_model_len)
            except Exception:  # engine not started yet
                continue
        return min(lens) if lens else None

    def _messages(self, system: list[dict[str, Any]], content: str) -> list[dict[str, Any]]:
        return [*system, {"role": "user", "content": content}]

    def check(self, params: SamplingParams) -> None:
        """Refuse (400 naming the field) what a node can't honour: the final node gets ``response_format`` and
        ``tools``, every node the sampling settings."""
        refuse_for_ensemble(self.name, self.kind, params, final_known=True)
        inner = inner_params(params)
        for node_id, handle in self.handles.items():
            refuse_unsupported(self.name, handle, params if node_id == self.topology.final else inner)

    def _node_prompt(self, node_id: str, request: ExecRequest, responses: list[str]) -> Prompt:
        """A node's prompt: chat messages on the chat path; on a raw prompt, the raw-format rules of
        ``gateway.executors.raw`` (sources get the prompt as sent, later nodes their text in the same format)."""
        topo = self.topology
        if isinstance(request.prompt, str):
            if not topo.predecessors(node_id):
                return request.prompt
            raw = split_raw(request.prompt, self.handles[node_id])
            return raw.with_content(topo.render(node_id, raw.question, responses))
        content = topo.render(node_id, question_of(request.prompt), responses)
        return self._messages(_system_messages(request.prompt), content)

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        topo = self.topology
        refuse_token_prompt(self.name, request.prompt)
        self.check(request.params)
        inner = inner_params(request.params)
        tasks: dict[str, asyncio.Task[tuple[str, StepInfo]]] = {}

        async def run_node(node_id: str) -> tuple[str, StepInfo]:
            preds = topo.predecessors(node_id)
            responses = [(await tasks[p])[0] for p in preds]
            done, info = await self.handles[node_id].run_step(
                node_id,
                self._node_prompt(node_id, request, responses),
                inner,
                request_id=f"{request.request_id}-{node_id}",
            )
            info.extra.setdefault("predecessors", preds)
            return done.text, info

        upstream = [n for n in topo.order() if n != topo.final]
        try:
            for node_id in upstream:  # topological order: a task's predecessors exist before it runs
                tasks[node_id] = asyncio.create_task(run_node(node_id))
            rank = {t: upstream.index(n) for n, t in tasks.items()}
            pending: set[asyncio.Task[tuple[str, StepInfo]]] = set(tasks.values())
            while pending:  # report each upstream node as it ends
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in sorted(finished, key=rank.__getitem__):
                    yield t.result()[1]  # raises the node's error, if any
            preds = topo.predecessors(topo.final)
            final_prompt = self._node_prompt(topo.final, request, [tasks[p].result()[0] for p in preds])
            async for event in self.handles[topo.final].stream_step(
                topo.final,
                final_prompt,
                request.params,
                request_id=f"{request.request_id}-{topo.final}",
            ):
                if isinstance(event, StepInfo):
                    event.extra.setdefault("predecessors", preds)
                yield event
        finally:
            for t in tasks.values():
                if not t.done():
                    t.cancel()
            if tasks:
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def run_batch(
        self, questions: Sequence[str], params: SamplingParams, *, generate: Generate | None = None
    ) -> BatchRun:
        """Run the topology over ``questions``: each node is one batched call over all questions."""
        topo = self.topology
        gen = generate or _engine_generate
        results: dict[str, asyncio.Future[list[str]]] = {}
        loop = asyncio.get_running_loop()

        async def run_node(node_id: str) -> list[str]:
            preds = topo.predecessors(node_id)
            pred_outputs = [await results[p] for p in preds]
            prompts: list[Prompt] = [
                self._messages([], topo.render(node_id, q, [po[i] for po in pred_outputs]))
                for i, q in enumerate(questions)
            ]
            return await gen(self.handles[node_id], prompts, params)

        tasks = []
        for node_id in topo.order():
            fut = loop.create_task(run_node(node_id))
            results[node_id] = fut
            tasks.append(fut)
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
        node_outputs = {k: v.result() for k, v in results.items()}
        return BatchRun(outputs=node_outputs[topo.final], node_outputs=node_outputs)
