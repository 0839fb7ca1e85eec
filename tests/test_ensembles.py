"""swarmgate.ensembles: the toy ensembles served out of the box (fast checks; the full build is a slow test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.spec import load_spec
from gateway.topology import Topology
from swarmgate import ensembles as ens


def test_hash_follows_the_configs_and_the_toy_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = ens.ensembles_hash(Path("/x/toy/aaaa"))
    assert a == ens.ensembles_hash(Path("/y/toy/aaaa")) != ens.ensembles_hash(Path("/x/toy/bbbb"))
    monkeypatch.setattr(ens, "ROUTER", {**ens.ROUTER, "env": {"max_steps": 3}})
    b = ens.ensembles_hash(Path("/x/toy/aaaa"))
    assert b != a
    monkeypatch.setattr(ens, "BLEND", {**ens.BLEND, "swarm_size": 4})
    assert ens.ensembles_hash(Path("/x/toy/aaaa")) not in (a, b)


def _spec(toy_world, extra: dict) -> dict:
    spec = ens._absolute_spec(toy_world)
    spec["ensembles"] = extra
    return spec


def test_a_spec_the_loader_refuses_is_an_error_not_a_smaller_toy_world(toy_world, tmp_path: Path) -> None:
    good = _spec(toy_world, {"toy-b": {"kind": "blend", "experts": ["toy-gen-a", "toy-gen-b"], "weights": [0.5, 0.5]}})
    assert ens._validated(good, tmp_path / "spec.yaml") == good
    assert "toy-b" in load_spec(tmp_path / "spec.yaml").ensembles
    bad = _spec(toy_world, {"toy-x": {"kind": "dag", "topology": str(tmp_path / "missing.json")}})
    with pytest.raises(Exception, match="toy-x"):
        ens._validated(bad, tmp_path / "spec2.yaml")


def test_dev_selects_a_hand_wired_chain_over_a_weaker_searched_dag(toy_world, tmp_path: Path) -> None:
    snippet = {"ensembles": {"toy-dag": {"kind": "dag", "topology": "/searched.json", "description": "searched"}}}
    summary = {
        "dag": {"dev": 0.33},
        "baselines": {"best_chain": {"chain": "toy-adder -> toy-reverser", "dev": 0.83, "test": 0.65}},
    }
    got = ens._dev_selected_dag(snippet, summary, tmp_path)["toy-dag"]
    assert "hand-wired chain beat the searched DAG" in got["description"]
    topo = Topology.load(got["topology"])
    assert [n.expert for n in topo.nodes] == ["toy-adder", "toy-reverser"] and topo.final == "toy-reverser"
    summary["dag"]["dev"] = 0.9
    kept = ens._dev_selected_dag(snippet, summary, tmp_path)["toy-dag"]
    assert kept["topology"] == "/searched.json"


def test_dev_selects_the_uniform_average_over_a_weaker_searched_particle() -> None:
    def snippet() -> dict:
        entry = {"kind": "expert", "model": "/base", "adapter": "/swarm/best", "description": "Model Swarms"}
        return {"ensembles": {"toy-swarm": entry}}

    summary = {
        "best": {"dev": 0.333},
        "experts": {"toy-adder": {}, "toy-sorter": {}},
        "tasks": ["count", "sort"],
        "baselines": {"uniform_average": {"dir": "/swarm/uniform_average", "dev": 0.455, "test": 0.41}},
    }
    got = ens._dev_selected_swarm(snippet(), summary)["toy-swarm"]
    assert got["adapter"] == "/swarm/uniform_average" and got["model"] == "/base"
    assert "uniform average of the weights of toy-adder, toy-sorter" in got["description"]
    assert "(0.455 vs 0.333)" in got["description"]
    assert "searched for count and sort only" in got["description"]  # a user asking it to add is not surprised
    summary["best"]["dev"] = 0.5
    kept = ens._dev_selected_swarm(snippet(), summary)["toy-swarm"]
    assert kept["adapter"] == "/swarm/best" and kept["description"] == "Model Swarms; dev 0.500"
    # a full-weight swarm (no adapter) serves the averaged checkpoint as its model
    full = {"ensembles": {"toy-swarm": {"kind": "expert", "model": "/swarm/best"}}}
    summary["best"]["dev"] = 0.1
    assert ens._dev_selected_swarm(full, summary)["toy-swarm"]["model"] == "/swarm/uniform_average"
    # random search's best draw, where it beats both on dev (its directory kept like the uniform average's)
    summary["baselines"]["random_search"] = {"dir": "/swarm/random_search", "dev": 0.656, "evaluations": 18}
    summary["best"]["dev"] = 0.333
    got = ens._dev_selected_swarm(snippet(), summary)["toy-swarm"]
    assert got["adapter"] == "/swarm/random_search" and "(0.656 vs 0.333)" in got["description"]
    assert "random search's best of 18 weight combinations of toy-adder, toy-sorter" in got["description"]
    summary["baselines"]["random_search"]["dev"] = 0.4  # above the particle, below the uniform average
    assert ens._dev_selected_swarm(snippet(), summary)["toy-swarm"]["adapter"] == "/swarm/uniform_average"


@pytest.mark.slow
def test_built_ensembles_are_served_and_answer_a_composed_question(toy_world) -> None:
    import openai

    from tests.helpers import running_gateway

    spec = ens.build_ensembles(toy_world, say=lambda _m: None)
    assert ens.build_ensembles(toy_world, say=lambda _m: None) == spec  # cached
    with running_gateway(spec) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        ids = {m.id for m in client.models.list().data}
        assert {"toy-swarm", "toy-dag", "toy-router", "toy-blend"} <= ids
        for model in ("toy-swarm", "toy-dag", "toy-router", "toy-blend"):
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "addrev 12 34"}], temperature=0, max_tokens=16
            )
            assert r.choices[0].finish_reason in ("stop", "length")
            if model in ("toy-dag", "toy-router"):  # adder (46) then reverser: what no single expert answers
                assert r.choices[0].message.content == "64", model
