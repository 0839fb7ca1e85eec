"""G-Decode: valid DAGs from any real matrix, no input mutation, deterministic and top-p decoding; JFK-score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.templates import PROMPT_PRESETS
from offline_search.decode import g_decode, masked_softmax, random_adjacency, select
from offline_search.hetero_swarms import jfk_scores, to_topology


def assert_valid(g, n: int) -> None:
    """An in-tree rooted at the end node: every other joined node has exactly one outgoing edge, no cycles."""
    assert g.end in g.nodes and g.nodes[0] == g.end
    assert len(set(g.nodes)) == len(g.nodes)
    assert all(a != g.end for a, _ in g.edges)
    outs = {}
    for a, b in g.edges:
        assert a != b and a in g.nodes and b in g.nodes
        outs[a] = outs.get(a, 0) + 1
        assert g.nodes.index(b) < g.nodes.index(a)  # edges point to nodes that joined earlier: acyclic
    assert all(outs.get(i, 0) == 1 for i in g.nodes if i != g.end)
    assert len(g.edges) == len(g.nodes) - 1
    order = g.order()
    assert all(order.index(a) < order.index(b) for a, b in g.edges)


def test_deterministic_decode_of_a_known_matrix():
    # node 2 sends least (end); node 0 sends most and prefers 2; node 1 then prefers 0 over 2
    a = np.array([[0.0, 0.1, 0.9], [0.6, 0.0, 0.2], [0.1, 0.1, 0.0]])
    g = g_decode(a)
    assert g.end == 2
    assert g.nodes == (2, 0, 1)
    assert set(g.edges) == {(0, 2), (1, 0)}
    assert g.order() == [1, 0, 2]


@pytest.mark.parametrize(
    "matrix",
    [
        np.zeros((4, 4)),  # zero out-degrees: the reference divides by zero here
        -np.ones((4, 4)),  # negative out-degrees
        np.full((3, 3), 0.5),  # ties everywhere
        np.array([[0.0, -2.0, 3.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]),  # one row sums to zero
        np.zeros((1, 1)),
    ],
)
def test_any_real_matrix_decodes_to_a_valid_dag(matrix):
    for top_p in (0.0, 0.7, 1.0):
        g = g_decode(matrix, top_p=top_p, rng=np.random.default_rng(0))
        assert_valid(g, matrix.shape[0])
        assert sorted(g.nodes) == list(range(matrix.shape[0]))


def test_inputs_are_never_modified():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))  # non-zero diagonal on purpose
    before = a.copy()
    t = torch.tensor(a, dtype=torch.float32)
    t_before = t.clone()
    for top_p in (0.0, 0.9):
        g_decode(a, top_p=top_p, rng=np.random.default_rng(2))
        g_decode(t, top_p=top_p, rng=np.random.default_rng(2))
        g_decode(a.tolist(), top_p=top_p, rng=np.random.default_rng(2))
    assert np.array_equal(a, before)
    assert torch.equal(t, t_before)


def test_diagonal_is_ignored():
    a = random_adjacency(4, np.random.default_rng(3))
    b = a.copy()
    np.fill_diagonal(b, 100.0)
    assert g_decode(a) == g_decode(b)


def test_random_matrices_always_give_valid_topologies():
    rng = np.random.default_rng(4)
    names = ["toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "x5", "x6"]
    for trial in range(200):
        n = int(rng.integers(1, 7))
        a = rng.normal(scale=float(rng.uniform(0.1, 5)), size=(n, n))
        g = g_decode(a, top_p=float(rng.uniform(0, 1)), rng=rng)
        assert_valid(g, n)
        topo = to_topology(g, names[:n], names[:n], PROMPT_PRESETS["toy"])  # Topology validates itself
        assert topo.final == names[g.end], trial


def test_top_p_sampling_is_reproducible_and_explores():
    a = random_adjacency(5, np.random.default_rng(5))
    same = {g_decode(a, top_p=1.0, rng=np.random.default_rng(7)).signature() for _ in range(5)}
    assert len(same) == 1
    many = {g_decode(a, top_p=1.0, rng=np.random.default_rng(s)).signature() for s in range(60)}
    assert len(many) > 5
    # top_p -> 0 reduces to the deterministic decode whatever the rng
    det = g_decode(a).signature()
    assert {g_decode(a, top_p=1e-9, rng=np.random.default_rng(s)).signature() for s in range(10)} == {det}


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    picks = {select(p, 0.8, np.random.default_rng(s)) for s in range(200)}
    assert picks == {0, 1}
    assert select(p, 0.0, None) == 0
    assert {select(np.array([0.25, 0.25, 0.5]), 0.0, None)} == {2}
    assert select(np.array([0.5, 0.5]), 0.0, None) == 0  # ties: lowest index


def test_masked_softmax_is_stable():
    p = masked_softmax(np.array([1000.0, 999.0, -1e9]), np.array([True, True, False]))
    assert p[2] == 0 and np.isclose(p.sum(), 1) and p[0] > p[1]
    with pytest.raises(ValueError):
        masked_softmax(np.zeros(2), np.zeros(2, dtype=bool))


def test_edge_threshold_drops_weakly_linked_nodes():
    a = np.array([[0.0, 0.9, -0.5], [0.1, 0.0, -0.2], [-1.0, -1.0, 0.0]])
    g = g_decode(a, edge_threshold=0.0)
    assert g.end == 2
    # node 0 (most out-weight) joins first: its only link into the graph is 0->2 = -0.5 <= 0, so it is dropped;
    # node 1's only candidate is 2 as well (-0.2): dropped too. The graph is node 2 alone.
    assert g.nodes == (2,) and g.edges == () and g.dropped() == [0, 1]
    assert g_decode(a).nodes == (2, 0, 1)  # without a threshold every node joins


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="square"):
        g_decode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        g_decode(np.array([[0.0, np.nan], [0.0, 0.0]]))


def test_jfk_scores_average_over_filled_slots_and_handle_unsampled_models():
    assignments = [[0, 0, 1], [1, 2, 1], [0, 1, 1]]
    utilities = [0.9, 0.3, 0.6]
    s = jfk_scores(assignments, utilities, 4)
    assert s[0] == pytest.approx((0.9 * 2 + 0.6) / 3)
    assert s[1] == pytest.approx((0.9 + 0.3 * 2 + 0.6 * 2) / 5)
    assert s[2] == pytest.approx(0.3)
    assert s[3] is None  # never sampled
