"""The topology file format (``topology.json``): a DAG of nodes, each an expert with a prompt template, and one
*final* node whose answer is the response.

A node's user message is its template with ``{question}`` (the client's question) and ``{responses}`` (its
predecessors' answers, each rendered with the topology's ``response_template`` and joined in node order; see
``gateway.templates``). A ``Topology`` validates itself on construction (one final node every node leads to, no
cycle, no unknown or duplicate node); every problem is a ``TopologyError`` naming the key. The offline graph search
writes topologies; ``gateway.executors.dag`` serves them.

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

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.templates import fill

TOPOLOGY_FORMAT = "swarmgate.topology/1"


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
