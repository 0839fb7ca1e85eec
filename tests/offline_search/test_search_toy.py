"""Both searches end to end on the toy world (tiny budgets), and the gateway serving their outputs by name.

Real checkpoints, the real transformers engine, real adapters written and loaded; the results are served by a real
uvicorn gateway and called with the openai SDK.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml
from transformers import AutoModelForCausalLM

from gateway.engines import create_engine
from gateway.engines.base import Adapter, SamplingParams
from gateway.topology import Topology
from offline_search.checkpoints import check_adapter_fits_base, read_adapter
from offline_search.config import load_graph_config, load_swarm_config, prepare
from offline_search.hetero_swarms import run_graph_search
from offline_search.model_swarms import run_swarm_search

GREEDY8 = SamplingParams(max_tokens=8, temperature=0.0)


def swarm_config(tw, out: Path, **over) -> Path:
    cfg = {
        "name": "test-swarm",
        "spec": str(tw.spec_path),
        "experts": ["toy-adder", "toy-reverser"],
        "swarm_size": 3,
        "pso": {"max_iterations": 2},
        "data": {"paths": [str(tw.data_dir / "add"), str(tw.data_dir / "rev")], "dev_limit": 6, "test_limit": 8},
        # climbs similarity, reports exact match (test_served_names_score_as_reported counts the served answers)
        "utility": {"kind": "edit_similarity", "multitask": True},
        "report_utility": {"kind": "exact_match", "multitask": True},
        "generation": {"max_tokens": 8},
        "engine": "transformers",
        "output_dir": str(out),
    }
    cfg.update(over)
    p = out.parent / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def graph_config(tw, out: Path, **over) -> Path:
    cfg = {
        "name": "test-dag",
        "spec": str(tw.spec_path),
        "experts": ["toy-adder", "toy-reverser", "toy-sorter"],
        "prompts": "toy",
        "swarm_size": 3,
        "pso": {"max_iterations": 2},
        "weight_step": {"iterations": 1, "assignments": 2, "accept": "always"},  # serve updated experts too
        "data": {"paths": [str(tw.data_dir / "addrev")], "dev_limit": 8, "test_limit": 8},
        # searched on a graded utility, reported on the exact one (test_served_names_score_as_reported checks it)
        "utility": {"kind": "edit_similarity"},
        "report_utility": {"kind": "exact_match"},
        "generation": {"max_tokens": 8},
        "engine": "transformers",
        "output_dir": str(out),
    }
    cfg.update(over)
    p = out.parent / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
async def swarm_run(toy_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "swarm"
    path = swarm_config(toy_world, out)
    return await run_swarm_search(prepare(load_swarm_config(path), path), progress=False)


@pytest.fixture(scope="module")
async def graph_run(toy_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "graph"
    path = graph_config(toy_world, out)
    return await run_graph_search(prepare(load_graph_config(path), path), progress=False)


def events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


async def test_swarm_search_writes_a_loadable_best_adapter_and_its_reports(swarm_run, toy_world):
    out, s = swarm_run.output_dir, swarm_run.summary
    best = read_adapter(swarm_run.best_dir)
    check_adapter_fits_base(best, toy_world.base_dir)
    assert best.config["base_model_name_or_path"] == str(Path(toy_world.base_dir).resolve())
    model = AutoModelForCausalLM.from_pretrained(swarm_run.best_dir)  # transformers loads base + adapter directly
    assert getattr(model, "_hf_peft_config_loaded", False)
    # (the best's test score is checked against the right answers, served, in test_served_names_score_as_reported)
    assert set(s["experts"]) == {"toy-adder", "toy-reverser"} and s["utility_evaluations"] == 6
    assert s["utility"] == "multitask_hm(edit_similarity)" and s["report_utility"] == "multitask_hm(exact_match)"
    assert 0.0 <= s["best"]["test"] <= 1.0 and set(s["best"]["test_per_task"]) == {"add", "rev"}
    kinds = [e["event"] for e in events(out)]
    assert kinds[0] == "start" and kinds.count("iteration") == 2 and kinds[-1] == "done"
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "state" / "latest.json").is_file() and (out / "cache.jsonl").stat().st_size > 0
    assert not (out / "particles").exists()  # only the best is kept
    snippet = yaml.safe_load(swarm_run.spec_snippet.read_text())
    entry = snippet["ensembles"]["test-swarm"]
    assert entry["kind"] == "expert" and entry["adapter"] == str(swarm_run.best_dir.resolve())


async def test_graph_search_writes_an_executable_topology(graph_run, toy_world):
    out, s = graph_run.output_dir, graph_run.summary
    topo = Topology.load(graph_run.topology_path)
    # the weight-step (accept: always) replaced every expert of the graph with its updated weights
    assert (
        {n.expert for n in topo.nodes}
        == set(s["updated_experts"])
        == {"toy-adder-hs1", "toy-reverser-hs1", "toy-sorter-hs1"}
    )
    for name in s["updated_experts"]:
        check_adapter_fits_base(read_adapter(out / "experts" / name), toy_world.base_dir)
    assert topo.search["dev"] == s["dag"]["dev"] and topo.search["utility"] == "edit_similarity"
    assert s["utility"] == "edit_similarity" and s["report_utility"] == "exact_match"
    # every test number is an exact-match rate over the 8 test questions; dev numbers are similarities
    tests = [s["dag"]["test"], s["baselines"]["best_chain"]["test"], s["baselines"]["random_search"]["test"]]
    tests += [e["test"] for e in s["experts"].values()]
    assert all((8 * t) == round(8 * t) for t in tests)
    assert len(topo.search["adjacency"]) == 3
    assert all(n.prompt == "{question}{responses}" for n in topo.nodes)
    done = next(e for e in events(out) if e["event"] == "role_step_done")
    weight = next(e for e in events(out) if e["event"] == "weight_step_done")
    assert done["best"]["dev"] == weight["dev_before"]  # the weight-step starts from the role-step's best graph
    assert s["dag"]["dev"] == (weight["dev_with_updated"] if weight["accepted"] else done["best"]["dev"])
    phases = {e.get("phase") for e in events(out) if e["event"] == "iteration"}
    assert phases == {"role-0", "weight-0"}
    assert (out / "convergence.png").is_file()
    snippet = yaml.safe_load(graph_run.spec_snippet.read_text())
    assert set(snippet["experts"]) == set(s["updated_experts"])
    assert snippet["experts"]["toy-adder-hs1"]["adapter"] == str((out / "experts" / "toy-adder-hs1").resolve())
    assert snippet["ensembles"]["test-dag"] == {
        "kind": "dag",
        "topology": str(graph_run.topology_path.resolve()),
        "description": snippet["ensembles"]["test-dag"]["description"],
    }


def first_test_rows(tw, task: str, n: int = 8) -> list[dict]:
    """The test examples a search with ``test_limit: n`` reports on (the first n of the task's test split)."""
    return [json.loads(x) for x in (Path(tw.data_dir) / task / "test.jsonl").read_text().splitlines()[:n]]


async def test_served_names_score_as_reported(swarm_run, graph_run, toy_world, tmp_path):
    """`swarmgate serve` with the produced snippets serves the swarmed expert and the DAG by name to the openai SDK,
    and their answers, checked against the right answers, score exactly what the searches reported on test."""
    from tests.helpers import running_gateway

    spec = yaml.safe_load(Path(toy_world.spec_path).read_text())
    for entry in spec["experts"].values():  # the toy spec's paths are relative to its own directory
        for key in ("model", "adapter"):
            if key in entry:
                entry[key] = str(Path(toy_world.root) / entry[key])
    for snip in (swarm_run.spec_snippet, graph_run.spec_snippet):
        part = yaml.safe_load(snip.read_text())
        spec.setdefault("experts", {}).update(part.get("experts", {}))
        spec.setdefault("ensembles", {}).update(part["ensembles"])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    topo = Topology.load(graph_run.topology_path)

    with running_gateway(spec_path) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)

        def right(model: str, row: dict) -> bool:
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": row["question"]}], temperature=0, max_tokens=8
            )
            c = r.choices[0]  # exact match, and an answer cut at max_tokens counts wrong (as the search scores it)
            return c.finish_reason == "stop" and " ".join(c.message.content.split()) == row["answer"]

        names = {m.id for m in client.models.list().data}
        assert {"test-swarm", "test-dag", "toy-adder"} <= names
        per_task = {
            t: sum(right("test-swarm", row) for row in first_test_rows(toy_world, t)) / 8 for t in ("add", "rev")
        }
        assert per_task == swarm_run.summary["best"]["test_per_task"]
        hmean = 0.0 if 0.0 in per_task.values() else 2 / sum(1 / v for v in per_task.values())
        assert hmean == pytest.approx(swarm_run.summary["best"]["test"])
        dag_rows = first_test_rows(toy_world, "addrev")
        assert sum(right("test-dag", row) for row in dag_rows) / 8 == graph_run.summary["dag"]["test"]

        q_dag = dag_rows[0]["question"]
        r = client.chat.completions.create(
            model="test-dag", messages=[{"role": "user", "content": q_dag}], temperature=0, max_tokens=8
        )
        route = r.model_extra["swarmgate"]["choices"][0]["route"]
        assert [step["node"] for step in route][-1] == topo.final
        assert {step["node"] for step in route} == {n.id for n in topo.nodes}
        assert all(step["latency_ms"] > 0 and step["completion_tokens"] >= 0 for step in route)
        assert r.usage.completion_tokens == sum(step["completion_tokens"] for step in route)
        stream = client.chat.completions.create(
            model="test-dag", messages=[{"role": "user", "content": q_dag}], temperature=0, max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == r.choices[0].message.content


@pytest.mark.vllm
@pytest.mark.slow
async def test_vllm_serves_the_best_adapter_like_transformers(swarm_run, toy_world):
    """The best adapter loads in vLLM (multi-LoRA) and answers exactly as on the transformers engine."""
    prompts = [[{"role": "user", "content": q}] for q in ("add 47 38", "rev abcdef", "sort dbca", "count a in abaca")]
    best = Adapter(name="best", path=str(swarm_run.best_dir))
    outs = {}
    for kind in ("transformers", "vllm"):
        engine = create_engine(kind, str(toy_world.base_dir))
        await engine.start()
        try:
            outs[kind] = [c.text for c in await engine.complete_batch(prompts, GREEDY8, adapters=[best] * len(prompts))]
        finally:
            await engine.close()
    assert outs["vllm"] == outs["transformers"]
