"""G-Decode (Heterogeneous Swarms): a continuous adjacency matrix -> a DAG with one end node.

``A[i, j]`` is the (continuous) weight of the edge i -> j; the diagonal is ignored. With out-degrees
``o_i = Σ_j A[i, j]``:

1. the end node is chosen with probabilities ``softmax(-o)`` (the node that sends least is the likeliest sink);
2. repeatedly, a remaining node ``i`` is chosen with ``softmax(o)`` over the remaining nodes (the node that sends most
   joins next), and one successor ``j`` among the nodes already in the graph with ``softmax(A[i, ·])`` over them;
   the edge i -> j is added. Every node joins through one outgoing edge, so the result is an in-tree rooted at the
   end node: a DAG whose messages flow towards the end node.

Each choice is *deterministic* (``top_p = 0``: the most probable, lowest index on ties) or *top-p* sampled (sample
from the smallest set of most probable options whose mass reaches ``top_p``, renormalised).

Unlike the reference code this never modifies its input, and handles any real weights: probabilities come from a
max-shifted softmax over the candidates only, so zero, negative or equal out-degrees are fine (the reference
divides by the out-degree and renormalises by a sum that can be zero). With ``edge_threshold`` set, a node whose
chosen outgoing weight is ``<= edge_threshold`` is left out of the graph (an extension: lets PSO drop nodes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecodedGraph:
    n: int
    """Size of the adjacency matrix (candidate nodes)."""
    end: int
    """The sink whose answer is the output."""
    nodes: tuple[int, ...]
    """Nodes in the graph, in the order they joined (the end node first)."""
    edges: tuple[tuple[int, int], ...]
    """(from, to) pairs."""

    def order(self) -> list[int]:
        """A topological order (sources first): the reverse of the joining order."""
        return list(reversed(self.nodes))

    def dropped(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.nodes]

    def signature(self) -> str:
        return json.dumps([self.end, sorted(self.nodes), sorted(self.edges)])


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax of ``scores`` over ``mask`` (0 elsewhere); stable for any finite scores."""
    if not mask.any():
        raise ValueError("softmax over an empty set")
    s = np.where(mask, scores, -np.inf)
    s = s - s[mask].max()
    e = np.where(mask, np.exp(s), 0.0)
    return e / e.sum()


def select(probs: np.ndarray, top_p: float, rng: np.random.Generator | None) -> int:
    """Top-p choice from a probability vector (``top_p <= 0`` or no rng: the argmax, lowest index on ties)."""
    if top_p <= 0 or rng is None:
        return int(np.argmax(probs))
    order = np.argsort(-probs, kind="stable")
    sorted_p = probs[order]
    cum = np.cumsum(sorted_p)
    k = int(np.searchsorted(cum, min(top_p, cum[-1]) - 1e-12)) + 1  # smallest prefix reaching top_p
    keep = order[:k][sorted_p[:k] > 0] if (sorted_p[:k] > 0).any() else order[:1]
    p = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=p))


def g_decode(
    adjacency: np.ndarray | list[list[float]] | object,
    *,
    top_p: float = 0.0,
    rng: np.random.Generator | None = None,
    edge_threshold: float | None = None,
) -> DecodedGraph:
    """Decode a continuous adjacency matrix into a DAG (see the module docstring). The input is never modified."""
    a = np.array(adjacency.numpy() if hasattr(adjacency, "numpy") else adjacency, dtype=np.float64, copy=True)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"adjacency must be a non-empty square matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("adjacency has NaN or infinite entries")
    n = a.shape[0]
    np.fill_diagonal(a, 0.0)  # on our copy: self-loops never count
    out_degree = a.sum(axis=1)

    everyone = np.ones(n, dtype=bool)
    end = select(masked_softmax(-out_degree, everyone), top_p, rng)
    joined = [end]
    in_graph = np.zeros(n, dtype=bool)
    in_graph[end] = True
    remaining = everyone.copy()
    remaining[end] = False
    edges: list[tuple[int, int]] = []
    while remaining.any():
        i = select(masked_softmax(out_degree, remaining), top_p, rng)
        remaining[i] = False
        j = select(masked_softmax(a[i], in_graph), top_p, rng)
        if edge_threshold is not None and a[i, j] <= edge_threshold:
            continue  # left out: its best link into the graph is too weak
        edges.append((i, j))
        joined.append(i)
        in_graph[i] = True
    return DecodedGraph(n=n, end=end, nodes=tuple(joined), edges=tuple(edges))


def random_adjacency(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random initial particle: U(0, 1) weights, zero diagonal."""
    a = rng.uniform(0.0, 1.0, size=(n, n))
    np.fill_diagonal(a, 0.0)
    return a
