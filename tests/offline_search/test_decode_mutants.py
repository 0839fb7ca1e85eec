"""G-Decode against an independent reference: the deterministic decode step by step, the sampling distributions of
top-p, the masked softmax's values, the edge threshold's boundary, and the random initial particle."""

from __future__ import annotations

import numpy as np
import pytest

from offline_search.decode import g_decode, masked_softmax, random_adjacency, select


def reference_decode(a: np.ndarray, edge_threshold: float | None = None) -> tuple[int, list[int], set[tuple[int, int]]]:
    """The deterministic G-Decode written out plainly: sink = least out-weight, then the node sending most joins via
    its heaviest edge into the graph (lowest index on ties everywhere)."""
    a = a.astype(float).copy()
    np.fill_diagonal(a, 0.0)
    n = len(a)
    out = a.sum(axis=1)
    end = min(range(n), key=lambda i: (out[i], i))
    joined, edges, remaining = [end], set(), [i for i in range(n) if i != end]
    while remaining:
        i = max(remaining, key=lambda k: (out[k], -k))
        remaining.remove(i)
        j = max(joined, key=lambda k: (a[i, k], -k))
        if edge_threshold is not None and a[i, j] <= edge_threshold:
            continue
        edges.add((i, j))
        joined.append(i)
    return end, joined, edges


def test_deterministic_decode_matches_the_reference_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 7))
        a = rng.normal(size=(n, n))
        thr = None if rng.uniform() < 0.5 else float(rng.normal(scale=0.5))
        g = g_decode(a, edge_threshold=thr)
        end, joined, edges = reference_decode(a, thr)
        assert (g.end, list(g.nodes), set(g.edges)) == (end, joined, edges)
        assert g.n == n and g.dropped() == [i for i in range(n) if i not in joined]


def test_an_edge_exactly_at_the_threshold_is_dropped() -> None:
    a = np.array([[0.0, 0.5], [0.0, 0.0]])  # node 1 is the sink; node 0's only edge weighs 0.5
    assert g_decode(a, edge_threshold=0.5).nodes == (1,)
    assert g_decode(a, edge_threshold=0.49).edges == ((0, 1),)


def test_masked_softmax_values() -> None:
    s = np.array([1.0, 2.0, 3.0, 4.0])
    m = np.array([True, False, True, True])
    e = np.exp(np.array([1.0, 3.0, 4.0]))
    expected = np.zeros(4)
    expected[[0, 2, 3]] = e / e.sum()
    assert np.allclose(masked_softmax(s, m), expected)
    assert np.allclose(masked_softmax(np.array([-5.0, 7.0]), np.array([True, True])).sum(), 1.0)


def frequencies(draw, n: int, trials: int) -> np.ndarray:
    counts = np.zeros(n)
    for s in range(trials):
        counts[draw(np.random.default_rng(s))] += 1
    return counts / trials


def test_top_p_one_samples_the_full_distribution() -> None:
    p = np.array([0.1, 0.6, 0.3])
    f = frequencies(lambda r: select(p, 1.0, r), 3, 3000)
    assert np.allclose(f, p, atol=0.03)


def test_top_p_renormalises_over_the_nucleus_and_never_picks_zero_mass() -> None:
    p = np.array([0.05, 0.5, 0.0, 0.3, 0.15])
    f = frequencies(lambda r: select(p, 0.75, r), 5, 3000)  # nucleus {1, 3}: 0.8 >= 0.75
    assert np.allclose(f, [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8, 0.0], atol=0.03)
    one_hot = np.array([0.0, 0.0, 1.0, 0.0])
    assert {select(one_hot, 1.0, np.random.default_rng(s)) for s in range(50)} == {2}
    # a nucleus reaching exactly top_p stops there (0.5 + 0.3 = 0.8)
    assert {select(p, 0.8, np.random.default_rng(s)) for s in range(200)} == {1, 3}
    # top_p above the total mass: every option with mass can come up
    assert {select(p, 2.0, np.random.default_rng(s)) for s in range(400)} == {0, 1, 3, 4}


def test_sampled_end_node_and_first_joiner_follow_their_softmaxes() -> None:
    """End node ~ softmax(-out-degree); given the end, the first node to join ~ softmax(out-degree) over the rest."""
    a = np.array([[0.0, 1.0, 0.5], [0.2, 0.0, 0.1], [0.4, 0.4, 0.0]])
    out = a.sum(axis=1)
    ends, joins = np.zeros(3), np.zeros(3)
    trials = 2000
    for s in range(trials):
        g = g_decode(a, top_p=1.0, rng=np.random.default_rng(s))
        ends[g.end] += 1
        if g.end == 1:
            joins[g.nodes[1]] += 1
    assert np.allclose(ends / trials, np.exp(-out) / np.exp(-out).sum(), atol=0.03)
    rest = out[[0, 2]]
    assert np.allclose(joins[[0, 2]] / ends[1], np.exp(rest) / np.exp(rest).sum(), atol=0.05)


def test_no_rng_means_deterministic_even_with_top_p() -> None:
    a = random_adjacency(5, np.random.default_rng(3))
    assert g_decode(a, top_p=0.9, rng=None) == g_decode(a)


def test_random_adjacency_is_uniform_on_the_unit_interval_with_zero_diagonal() -> None:
    a = random_adjacency(30, np.random.default_rng(0))
    off = a[~np.eye(30, dtype=bool)]
    assert a.shape == (30, 30) and np.all(np.diag(a) == 0.0)
    assert off.min() >= 0.0 and off.max() < 1.0
    assert abs(off.mean() - 0.5) < 0.03 and off.std() > 0.25  # U(0, 1): mean 1/2, sd 0.289


@pytest.mark.parametrize("n", [1, 2, 5])
def test_every_node_joins_without_a_threshold(n: int) -> None:
    rng = np.random.default_rng(n)
    for top_p in (0.0, 0.5, 1.0):
        g = g_decode(rng.normal(size=(n, n)), top_p=top_p, rng=rng)
        assert sorted(g.nodes) == list(range(n)) and len(g.edges) == n - 1 and g.dropped() == []


def test_sampled_successor_follows_softmax_of_the_nodes_edge_weights() -> None:
    """Given the end node and the first joiner, the last node links to a node in the graph ~ softmax(A[i, graph])."""
    a = np.array([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0], [1.2, 0.2, 0.0]])  # end: 1 (sends least); 2 joins first, then 0
    links = np.zeros(3)
    for s in range(1500):
        g = g_decode(a, top_p=1.0, rng=np.random.default_rng(s))
        if g.end == 1 and g.nodes[1:] == (2, 0):
            links[dict(g.edges)[0]] += 1
    want = np.exp([0.0, 0.3]) / np.exp([0.0, 0.3]).sum()  # node 0 -> 1 (weight 0.3) or -> 2 (weight 0.0)
    assert links.sum() > 200
    assert np.allclose([links[1], links[2]] / links.sum(), [want[1], want[0]], atol=0.05)
