"""What search reports stand on: cut outputs score 0 (and stay cut through the output cache), hand-wired chains
as a graph-search baseline, what Model Swarms' random-search baseline draws, and (slow) the baselines every search
summary reports."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gateway.engines.base import Adapter, Completion, Prompt, SamplingParams
from gateway.executors.base import ExpertHandle
from gateway.executors.dag import DagExecutor
from gateway.templates import PROMPT_PRESETS
from offline_search.generation import BatchGenerator, OutputCache
from offline_search.hetero_swarms import chain_topology
from offline_search.model_swarms import initial_swarm, random_search_draws
from offline_search.multitask import Multitask
from offline_search.pso import interpolate_children
from scoring.base import is_truncated
from scoring.examples import Example
from scoring.reference import ExactMatch
from tests.offline_search.fakes import RuleEngine, _content, apply_skill


class CuttingEngine(RuleEngine):
    """RuleEngine that says ``length`` when ``max_tokens`` cut the answer, as real engines do."""

    async def complete_batch(
        self, prompts: Sequence[Prompt], params: SamplingParams, *, adapters: Sequence[Adapter | None] | None = None
    ) -> list[Completion]:
        done = await super().complete_batch(prompts, params, adapters=adapters)
        out = []
        for p, a, c in zip(prompts, adapters or [None] * len(prompts), done, strict=True):
            skill = (a.name if a else "echo").split("@")[0].split("-")[-1]
            full = apply_skill(skill, _content(p))
            out.append(dataclasses.replace(c, finish_reason="length" if len(full) > params.max_tokens else "stop"))
        return out


def adder(engine: RuleEngine) -> ExpertHandle:
    return ExpertHandle(name="adder", engine=engine, adapter=Adapter(name="toy-add@0", path="/x"))


async def test_a_cut_answer_scores_zero_even_when_its_text_is_the_reference(tmp_path: Path) -> None:
    gen = BatchGenerator(OutputCache(tmp_path / "cache.jsonl"))
    params = SamplingParams(max_tokens=2, temperature=0.0)
    prompts = [[{"role": "user", "content": q}] for q in ("add 50 60", "add 1 2")]
    outs = await gen.generate(adder(CuttingEngine()), prompts, params)
    assert outs == ["11", "3"] and [is_truncated(o) for o in outs] == [True, False]
    examples = [Example(question="add 50 60", answer="11", task="a"), Example(question="add 1 2", answer="3", task="b")]
    r = await ExactMatch().score(examples, outs)
    assert r.per_example == [0.0, 1.0]  # "11" equals the reference, but it was cut from "110"
    assert (await Multitask(ExactMatch()).score(examples, outs)).value == 0.0
    # a resumed search reads the cut flag back from the cache file
    again = await BatchGenerator(OutputCache(tmp_path / "cache.jsonl")).generate(
        adder(CuttingEngine()), prompts, params
    )
    assert [is_truncated(o) for o in again] == [True, False]
    # room for the whole answer: nothing is cut, the right answer scores
    whole = await BatchGenerator().generate(adder(CuttingEngine()), prompts, SamplingParams(max_tokens=8))
    assert (await ExactMatch().score([dataclasses.replace(examples[0], answer="110"), examples[1]], whole)).value == 1


async def test_hand_wired_chain_runs_first_then_second() -> None:
    eng = RuleEngine()
    handles = {
        "adder": ExpertHandle(name="adder", engine=eng, adapter=Adapter(name="toy-add@0", path="/x")),
        "reverser": ExpertHandle(name="reverser", engine=eng, adapter=Adapter(name="toy-rev@0", path="/x")),
    }
    topo = chain_topology("adder", "reverser", PROMPT_PRESETS["toy"])
    assert topo.edges == (("adder", "reverser"),) and topo.final == "reverser"
    run = await DagExecutor("chain", topo, handles).run_batch(["addrev 12 34"], SamplingParams(max_tokens=8))
    assert run.outputs == ["64"]


def test_random_search_draws_the_initial_swarm_then_convex_combinations_of_the_experts() -> None:
    experts = [{"w": torch.full((2, 2), float(k))} for k in range(3)]  # expert k holds k everywhere
    names = ["a", "b", "c"]
    start = initial_swarm(experts, names, seed=3, swarm_size=5, low=0.0, high=2.0)
    draws = list(itertools.islice(random_search_draws(start, seed=3), 25))
    children, origin = interpolate_children(experts, 2, np.random.default_rng([3, 1]), low=0.0, high=2.0)
    assert [who for _, who in draws[:3]] == names
    assert all(torch.equal(x["w"], e["w"]) for (x, _), e in zip(draws, experts, strict=False))
    for (x, who), child, o in zip(draws[3:5], children, origin, strict=True):  # the search's own children
        assert torch.equal(x["w"], child["w"]) and who == {**o, "a": names[o["a"]], "b": names[o["b"]], "kind": "child"}
    for x, who in draws[5:]:
        c = who["weights"]
        assert who["kind"] == "convex" and min(c.values()) >= 0 and abs(sum(c.values()) - 1) < 1e-9
        assert torch.allclose(x["w"], torch.full((2, 2), c["b"] + 2 * c["c"]))
    assert len({who["weights"]["a"] for _, who in draws[5:]}) == 20  # a fresh draw each time


@pytest.mark.slow
async def test_search_summaries_report_their_baselines(toy_world, tmp_path: Path) -> None:
    from offline_search.config import default_config_path, load_graph_config, load_swarm_config, prepare
    from offline_search.hetero_swarms import run_graph_search
    from offline_search.model_swarms import run_swarm_search

    def config(kind: str, **over: object) -> Path:
        data = yaml.safe_load(default_config_path(kind).read_text())  # type: ignore[arg-type]
        data.update(over, output_dir=str(tmp_path / kind), engine="transformers")
        data["data"] = {**data["data"], "dev_limit": 4, "test_limit": 4}
        data["swarm_size"] = 5
        data["pso"] = {"max_iterations": 2}
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    p = config("swarm")
    s = (await run_swarm_search(prepare(load_swarm_config(p), p), progress=False)).summary
    b = s["baselines"]
    assert 0 <= b["best_initial_particle"]["index"] < 5 and "test" in b["uniform_average"]
    assert b["best_initial_particle"]["dev"] <= s["best"]["dev"]  # the search's best includes the initial swarm
    uniform = Path(b["uniform_average"]["dir"])  # servable like `best`: an adapter of the same shape
    assert uniform == (tmp_path / "swarm" / "uniform_average").resolve() and {p.name for p in uniform.iterdir()} == {
        p.name for p in Path(s["best"]["dir"]).iterdir()
    }
    assert s["best"]["found_at_iteration"] is not None
    assert b["random_search"]["evaluations"] == s["utility_evaluations"]
    assert b["random_search"]["dev"] >= b["best_initial_particle"]["dev"]  # its first draws are the initial swarm
    kept = Path(b["random_search"]["dir"])  # its best draw is servable like `best`
    assert kept == (tmp_path / "swarm" / "random_search").resolve() and {p.name for p in kept.iterdir()} == {
        p.name for p in Path(s["best"]["dir"]).iterdir()
    }
    p = config("graph", weight_step={"iterations": 0})
    g = (await run_graph_search(prepare(load_graph_config(p), p), progress=False)).summary
    b = g["baselines"]
    assert len(b["chains_dev"]) == 4 * 3 and b["best_chain"]["chain"] in b["chains_dev"]
    assert b["random_search"]["evaluations"] == g["utility_evaluations"]
