"""DAG executor: serves a searched topology (Heterogeneous Swarms output) by topological message passing.

A topology (``topology.json``) is a DAG of nodes, each an expert with a prompt template, and one *final* node whose
answer is the response. A node's user message is its template with ``{question}`` (the client's question) and
``{responses}`` (its predecessors' answers, each rendered with the topology's ``response_template`` and joined in node
order). Nodes run as soon as their predecessors finish, so independent nodes run concurrently; every upstream node
reports a ``StepInfo`` as it ends (its output included), and the final node streams live. On a raw completion prompt
the source nodes get it as sent and later nodes their text in the prompt's own format (``gateway.executors.raw``);
``response_format`` and ``tools`` go to the final node only.

The same executor runs a topology over a whole batch of questions (``run_batch``): the offline graph search scores
candidate DAGs with it, through a caching, batching ``generate`` hook, so what is searched is exactly what is served.

```json
{
  "format": "swarmgate.topology/1",
  "nodes": [
    {"id": "adder", "expert": "toy-adder", "prompt": "{question}{responses}"},
    {"id": "reverser", "expert": "toy-reverser", "prompt": "{question}{responses}"}
  ],
  "edges": [["adder", "reverser"]],
  "final": "reverser",
  "response_template": "\\nP: {response}",
  "search": {"...": "provenance (utility, adjacency matrix, config); ignored when serving"}
}
```
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.engines.base import Prompt, SamplingParams
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle, StepInfo, question_of
from gateway.executors.raw import inner_params, refuse_for_ensemble, refuse_token_prompt, refuse_unsupported, split_raw

if TYPE_CHECKING:
    from gateway.spec import DagEnsemble

TOPOLOGY_FORMAT = "swarmgate.topology/1"


# ------------------------------------------------------------------------------------------------ prompt templates
@dataclass(frozen=True)
class PromptTemplates:
    """How a node's user message is built from the question and its predecessors' responses."""

    source: str = "{question}"
    """Template of a node without predecessors."""
    inner: str = "{question}{responses}"
    """Template of a node with predecessors that is not the final node."""
    final: str = "{question}{responses}"
    """Template of the final node (when it has predecessors)."""
    response: str = "\nP: {response}"
    """Each predecessor's response inside ``{responses}``; may use ``{response}``, ``{node}`` (1-based), ``{expert}``."""

    def for_node(self, *, has_predecessors: bool, is_final: bool) -> str:
        if not has_predecessors:
            return self.source
        return self.final if is_final else self.inner


PROMPT_PRESETS: dict[str, PromptTemplates] = {
    # The toy models' format (toyworld.format.PREDECESSOR_TEMPLATE / PREDECESSOR_RESPONSE): the chat template wraps
    # the user message as "Q: {content}\nA: ", so a node sees "Q: question\nP: response\n...A: ".
    "toy": PromptTemplates(
        source="{question}{responses}",
        inner="{question}{responses}",
        final="{question}{responses}",
        response="\nP: {response}",
    ),
    # For real instruction-tuned models (the Heterogeneous Swarms paper's instructions).
    "natural": PromptTemplates(
        source="Please answer the following question.\n{question}",
        inner=(
            "Please answer the following question with the help of previous responses, feel free to ignore wrong or "
            "unhelpful responses.\n{responses}{question}"
        ),
        final=(
            "Please answer the following question with the help of previous responses, feel free to ignore wrong or "
            "unhelpful responses. Make sure to provide a final answer.\n{responses}{question}"
        ),
        response="Previous response from node {node}: {response}\n\n",
    ),
}

_FIELD = re.compile(r"\{(question|responses|response|node|expert)\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``{name}`` fields in one pass (text inside values is never re-substituted; other braces stay)."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# ------------------------------------------------------------------------------------------------ topology
class TopologyError(ValueError):
    """A topology that can't be executed; ``key`` locates the problem inside the file."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


@dataclass(frozen=True)
class TopologyNode:
    id: str
    expert: str
    """Expert name (a key of the spec's ``experts``)."""
    prompt: str
    """User-message template with ``{question}`` and ``{responses}``."""


@dataclass(frozen=True)
class Topology:
    nodes: tuple[TopologyNode, ...]
    edges: tuple[tuple[str, str], ...]
    final: str
    response_template: str = "\nP: {response}"
    search: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Search provenance, carried along and ignored by execution."""

    def __post_init__(self) -> None:
        self._validate()

    # -- structure
    def _validate(self) -> None:
        ids = [n.id for n in self.nodes]
        if not ids:
            raise TopologyError("nodes", "a topology needs at least one node")
        for i, n in enumerate(self.nodes):
            if not n.id or not isinstance(n.id, str):
                raise TopologyError(f"nodes[{i}].id", "must be a non-empty string")
            if not n.expert:
                raise TopologyError(f"nodes[{i}].expert", "must name an expert")
            if "{question}" not in n.prompt:
                raise TopologyError(f"nodes[{i}].prompt", "must contain {question}")
        dup = sorted({x for x in ids if ids.count(x) > 1})
        if dup:
            raise TopologyError("nodes", f"duplicate node ids {dup}")
        known = set(ids)
        for j, (a, b) in enumerate(self.edges):
            for end in (a, b):
                if end not in known:
                    raise TopologyError(f"edges[{j}]", f"unknown node {end!r}")
            if a == b:
                raise TopologyError(f"edges[{j}]", f"self-loop on {a!r}")
        if len(set(self.edges)) != len(self.edges):
            raise TopologyError("edges", "an edge is listed twice")
        if self.final not in known:
            raise TopologyError("final", f"unknown node {self.final!r}")
        if any(a == self.final for a, _ in self.edges):
            raise TopologyError("final", f"the final node {self.final!r} must not have outgoing edges")
        self.order()  # raises on a cycle
        reach = {self.final}
        changed = True
        while changed:
            changed = False
            for a, b in self.edges:
                if b in reach and a not in reach:
                    reach.add(a)
                    changed = True
        dead = [n for n in ids if n not in reach]
        if dead:
            raise TopologyError("nodes", f"nodes {dead} do not lead to the final node {self.final!r}")

    def node(self, node_id: str) -> TopologyNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def predecessors(self, node_id: str) -> list[str]:
        """Predecessors in node order (the order their responses appear in)."""
        preds = {a for a, b in self.edges if b == node_id}
        return [n.id for n in self.nodes if n.id in preds]

    def order(self) -> list[str]:
        """A topological order (Kahn's algorithm, ties broken by node order). Raises TopologyError on a cycle."""
        indeg = {n.id: 0 for n in self.nodes}
        for _, b in self.edges:
            indeg[b] += 1
        out: list[str] = []
        ready = [n.id for n in self.nodes if indeg[n.id] == 0]
        while ready:
            cur = ready.pop(0)
            out.append(cur)
            for a, b in self.edges:
                if a == cur:
                    indeg[b] -= 1
                    if indeg[b] == 0:
                        ready.append(b)
            ready.sort(key=[n.id for n in self.nodes].index)
        if len(out) != len(self.nodes):
            cyc = sorted(k for k, v in indeg.items() if v > 0)
            raise TopologyError("edges", f"the graph has a cycle through {cyc}")
        return out

    def experts(self) -> list[str]:
        return list(dict.fromkeys(n.expert for n in self.nodes))

    def render(self, node_id: str, question: str, responses: Sequence[str]) -> str:
        """The user message of ``node_id`` given its predecessors' responses (in ``predecessors`` order)."""
        preds = self.predecessors(node_id)
        if len(preds) != len(responses):
            raise ValueError(f"node {node_id!r} has {len(preds)} predecessors, got {len(responses)} responses")
        index = {n.id: i + 1 for i, n in enumerate(self.nodes)}
        joined = "".join(
            fill(self.response_template, {"response": r, "node": str(index[p]), "expert": self.node(p).expert})
            for p, r in zip(preds, responses, strict=True)
        )
        return fill(self.node(node_id).prompt, {"question": question, "responses": joined})

    def signature(self) -> str:
        """Canonical text of what execution depends on (equal signatures give equal outputs)."""
        return json.dumps(
            [[(n.id, n.expert, n.prompt) for n in self.nodes], sorted(self.edges), self.final, self.response_template]
        )

    # -- files
    def to_json(self) -> dict[str, Any]:
        return {
            "format": TOPOLOGY_FORMAT,
            "nodes": [{"id": n.id, "expert": n.expert, "prompt": n.prompt} for n in self.nodes],
            "edges": [list(e) for e in self.edges],
            "final": self.final,
            "response_template": self.response_template,
            "search": self.search,
        }

    @classmethod
    def from_json(cls, data: Any) -> Topology:
        if not isinstance(data, dict):
            raise TopologyError("", f"expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format", TOPOLOGY_FORMAT)
        if fmt != TOPOLOGY_FORMAT:
            raise TopologyError("format", f"unsupported format {fmt!r} (expected {TOPOLOGY_FORMAT!r})")
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, list):
            raise TopologyError("nodes", "must be a list of {id, expert, prompt}")
        nodes = []
        for i, n in enumerate(raw_nodes):
            if not isinstance(n, dict):
                raise TopologyError(f"nodes[{i}]", "must be an object with id, expert, prompt")
            for k in ("id", "expert"):
                if not isinstance(n.get(k), str):
                    raise TopologyError(f"nodes[{i}].{k}", "missing or not a string")
            prompt = n.get("prompt", "{question}{responses}")
            if not isinstance(prompt, str):
                raise TopologyError(f"nodes[{i}].prompt", "must be a string")
            nodes.append(TopologyNode(n["id"], n["expert"], prompt))
        raw_edges = data.get("edges", [])
        if not isinstance(raw_edges, list):
            raise TopologyError("edges", "must be a list of [from, to] pairs")
        edges = []
        for j, e in enumerate(raw_edges):
            if not (isinstance(e, list | tuple) and len(e) == 2 and all(isinstance(x, str) for x in e)):
                raise TopologyError(f"edges[{j}]", "must be a [from, to] pair of node ids")
            edges.append((e[0], e[1]))
        final = data.get("final")
        if final is None:
            sinks = [n.id for n in nodes if not any(a == n.id for a, _ in edges)]
            if len(sinks) != 1:
                raise TopologyError("final", f"not given and the graph has {len(sinks)} sinks {sinks}")
            final = sinks[0]
        if not isinstance(final, str):
            raise TopologyError("final", "must be a node id")
        response = data.get("response_template", "\nP: {response}")
        if not isinstance(response, str):
            raise TopologyError("response_template", "must be a string")
        search = data.get("search") or {}
        return cls(tuple(nodes), tuple(edges), final, response, search if isinstance(search, dict) else {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Topology:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise TopologyError("", f"can't read {p}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise TopologyError("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, p)
        return p


# ------------------------------------------------------------------------------------------------ execution
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
