"""JFK-scores (a model's mean utility over the slots it filled) and a decoded graph's executable topology."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.templates import PromptTemplates
from offline_search.decode import DecodedGraph
from offline_search.hetero_swarms import jfk_scores, to_topology


def test_jfk_is_the_mean_over_filled_slots_against_a_brute_force_count() -> None:
    rng = np.random.default_rng(0)
    n_models, n_slots = 4, 3
    assignments = [[int(m) for m in rng.integers(n_models - 1, size=n_slots)] for _ in range(25)]  # model 3 unused
    utilities = [float(u) for u in rng.uniform(size=25)]
    scores = jfk_scores(assignments, utilities, n_models)
    for m in range(n_models - 1):
        filled = [u for a, u in zip(assignments, utilities, strict=True) for slot in a if slot == m]
        assert scores[m] == pytest.approx(sum(filled) / len(filled))
    assert scores[n_models - 1] is None


def test_jfk_weights_a_model_by_how_many_slots_it_filled() -> None:
    # model 0 fills 2 slots of the 1.0 system and 1 slot of the 0.0 system: 2/3, not the per-system mean 1/2
    assert jfk_scores([[0, 0, 1], [0, 1, 1]], [1.0, 0.0], 2) == pytest.approx([2 / 3, 1 / 3])


def test_jfk_refuses_mismatched_assignments_and_utilities() -> None:
    with pytest.raises(ValueError):
        jfk_scores([[0], [1]], [0.5], 2)


T = PromptTemplates(source="S {question}", inner="I {question}{responses}", final="F {question}{responses}")


def test_topology_prompts_follow_each_nodes_place_in_the_graph() -> None:
    # 0 -> 1 -> 2 (end), 3 -> 2: nodes 0 and 3 are sources, 1 is inner, 2 is the final node
    g = DecodedGraph(n=4, end=2, nodes=(2, 1, 3, 0), edges=((1, 2), (3, 2), (0, 1)))
    names, experts = ["a", "b", "c", "d"], ["e0", "e1", "e2", "e3"]
    topo = to_topology(g, names, experts, T)
    prompts = {n.id: n.prompt for n in topo.nodes}
    assert prompts == {"a": T.source, "d": T.source, "b": T.inner, "c": T.final}
    assert {n.id: n.expert for n in topo.nodes} == dict(zip(names, experts, strict=True))
    assert [n.id for n in topo.nodes] == ["a", "d", "b", "c"]  # the reverse of the joining order: sources first
    assert set(topo.edges) == {("b", "c"), ("d", "c"), ("a", "b")} and topo.final == "c"
    assert topo.response_template == T.response and topo.search == {}


def test_a_lone_end_node_is_prompted_as_a_source_and_provenance_is_kept() -> None:
    g = DecodedGraph(n=2, end=1, nodes=(1,), edges=())
    topo = to_topology(g, ["x", "y"], ["ex", "ey"], T, search={"particle": 3})
    assert [(n.id, n.prompt) for n in topo.nodes] == [("y", T.source)]
    assert topo.search == {"particle": 3} and topo.final == "y"
