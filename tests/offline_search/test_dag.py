"""The DAG executor: topology validation, message passing, concurrency, streaming, spec errors, batch runs."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.engines.base import Adapter, Chunk, SamplingParams
from gateway.executors.base import ExecRequest, ExpertHandle, StepInfo
from gateway.executors.dag import DagExecutor
from gateway.spec import DagEnsemble, SpecError
from gateway.templates import PROMPT_PRESETS, fill
from gateway.topology import Topology, TopologyError, TopologyNode
from tests.offline_search.fakes import RuleEngine

PARAMS = SamplingParams(max_tokens=16, temperature=0.0)
TOY = "{question}{responses}"


def experts(engine: RuleEngine) -> dict[str, ExpertHandle]:
    return {
        name: ExpertHandle(name=name, engine=engine, adapter=Adapter(name=f"{name}@0", path="/nonexistent"), cost=c)
        for name, c in (("toy-add", 1.0), ("toy-rev", 2.0), ("toy-echo", 0.5))
    }


def chain() -> Topology:
    return Topology(
        (TopologyNode("a", "toy-add", TOY), TopologyNode("r", "toy-rev", TOY)), (("a", "r"),), "r", "\nP: {response}"
    )


async def collect(executor: DagExecutor, question: str):
    req = ExecRequest(prompt=[{"role": "user", "content": question}], params=PARAMS, request_id="req-1")
    return [e async for e in executor.stream(req)]


async def test_chain_passes_messages_and_streams_the_final_node():
    eng = RuleEngine()
    ex = DagExecutor("toy-dag", chain(), experts(eng))
    events = await collect(ex, "addrev 12 34")
    steps = [e for e in events if isinstance(e, StepInfo)]
    text = "".join(e.text for e in events if isinstance(e, Chunk))
    assert text == "64"  # 12 + 34 = 46, reversed
    assert [s.node for s in steps] == ["a", "r"]
    assert steps[0].output == "46" and steps[0].expert == "toy-add" and steps[0].cost == 1.0
    assert steps[1].extra["predecessors"] == ["a"] and steps[1].cost == 2.0
    assert events[0] is steps[0]  # upstream progress is reported before the final answer streams
    assert eng.prompts == ["addrev 12 34", "addrev 12 34\nP: 46"]
    assert isinstance(events[-1], StepInfo) and isinstance(events[-2], Chunk) and events[-2].finish_reason == "stop"


async def test_independent_nodes_run_concurrently():
    eng = RuleEngine(delay_s=0.2)
    topo = Topology(
        (TopologyNode("x", "toy-add", TOY), TopologyNode("y", "toy-echo", TOY), TopologyNode("z", "toy-rev", TOY)),
        (("x", "z"), ("y", "z")),
        "z",
    )
    events = await collect(DagExecutor("d", topo, experts(eng)), "add 1 2")
    assert eng.max_in_flight == 2  # x and y together
    assert {e.node for e in events if isinstance(e, StepInfo)} == {"x", "y", "z"}
    # predecessors' responses appear in node order
    assert eng.prompts[-1] == "add 1 2\nP: 3\nP: add 1 2"


async def test_a_failing_node_fails_the_request_and_cancels_the_rest():
    eng = RuleEngine(delay_s=0.05)
    handles = experts(eng)

    class Boom(RuleEngine):
        async def stream(self, *a, **k):
            raise RuntimeError("node failed")
            yield  # pragma: no cover

    handles["toy-echo"] = ExpertHandle("toy-echo", Boom(), None)
    topo = Topology(
        (TopologyNode("x", "toy-add", TOY), TopologyNode("y", "toy-echo", TOY), TopologyNode("z", "toy-rev", TOY)),
        (("x", "z"), ("y", "z")),
        "z",
    )
    with pytest.raises(RuntimeError, match="node failed"):
        await collect(DagExecutor("d", topo, handles), "add 1 2")
    await asyncio.sleep(0.1)
    assert eng.in_flight == 0


async def test_run_batch_equals_serving():
    eng = RuleEngine()
    ex = DagExecutor("toy-dag", chain(), experts(eng))
    qs = ["addrev 12 34", "addrev 50 45", "addrev 99 99"]
    run = await ex.run_batch(qs, PARAMS)
    served = ["".join(e.text for e in await collect(ex, q) if isinstance(e, Chunk)) for q in qs]
    assert run.outputs == served == ["64", "59", "891"]
    assert run.node_outputs["a"] == ["46", "95", "198"]
    assert eng.batches[:2] == [3, 3]  # one batched call per node


def test_validation_errors_name_the_problem():
    n = (TopologyNode("a", "e", TOY), TopologyNode("b", "e", TOY))
    with pytest.raises(TopologyError, match="cycle"):
        Topology((*n, TopologyNode("c", "e", TOY)), (("a", "b"), ("b", "a"), ("b", "c")), "c")
    with pytest.raises(TopologyError, match="unknown node"):
        Topology(n, (("a", "zz"),), "b")
    with pytest.raises(TopologyError, match="do not lead to the final"):
        Topology(n, (), "b")
    with pytest.raises(TopologyError, match="outgoing"):
        Topology(n, (("b", "a"),), "b")
    with pytest.raises(TopologyError, match="self-loop"):
        Topology(n, (("a", "a"), ("a", "b")), "b")
    with pytest.raises(TopologyError, match="duplicate"):
        Topology((n[0], n[0]), (), "a")
    with pytest.raises(TopologyError, match="question"):
        Topology((TopologyNode("a", "e", "no placeholder"),), (), "a")


def test_json_roundtrip_and_defaults(tmp_path):
    t = chain()
    path = t.save(tmp_path / "topology.json")
    assert Topology.load(path) == t
    data = json.loads(path.read_text())
    del data["final"]  # a single sink is the final node
    assert Topology.from_json(data).final == "r"


def test_fill_is_single_pass():
    assert fill("{question}|{responses}", {"question": "{responses}", "responses": "R"}) == "{responses}|R"
    assert fill("{other} {question}", {"question": "q"}) == "{other} q"


def test_toy_prompt_preset_matches_the_toy_format():
    fmt = pytest.importorskip("toyworld.format")
    toy = PROMPT_PRESETS["toy"]
    assert toy.inner == toy.final == fmt.PREDECESSOR_TEMPLATE
    assert toy.response == fmt.PREDECESSOR_RESPONSE
    t = Topology(
        (TopologyNode("a", "e", toy.source), TopologyNode("b", "e", toy.source), TopologyNode("c", "e", toy.final)),
        (("a", "c"), ("b", "c")),
        "c",
        toy.response,
    )
    assert t.render("c", "addrev 1 2", ["3", "x"]) == fmt.user_content("addrev 1 2", ["3", "x"])
    assert t.render("a", "addrev 1 2", []) == fmt.user_content("addrev 1 2")


@pytest.mark.parametrize(
    ("content", "key", "problem"),
    [
        ("{not json", "", "invalid JSON"),
        (json.dumps({"nodes": "x"}), "nodes", "must be a list"),
        (json.dumps({"nodes": [{"id": "a", "expert": "toy-nope"}], "edges": []}), "nodes[0].expert", "unknown expert"),
        (
            json.dumps(
                {
                    "nodes": [{"id": "a", "expert": "toy-add"}, {"id": "b", "expert": "toy-rev"}],
                    "edges": [["a", "b"], ["b", "a"]],
                    "final": "b",
                }
            ),
            "final",
            "outgoing",
        ),
        (
            json.dumps(
                {
                    "nodes": [{"id": i, "expert": "toy-add"} for i in "abc"],
                    "edges": [["a", "b"], ["b", "a"], ["b", "c"]],
                    "final": "c",
                }
            ),
            "edges",
            "cycle",
        ),
        (json.dumps({"format": "v0", "nodes": []}), "format", "unsupported"),
    ],
)
def test_from_spec_raises_spec_errors(tmp_path, content, key, problem):
    f = tmp_path / "topology.json"
    f.write_text(content)
    with pytest.raises(SpecError) as err:
        DagExecutor.from_spec("toy-dag", DagEnsemble(kind="dag", topology=str(f)), experts(RuleEngine()))
    assert err.value.key == key and problem in err.value.problem and err.value.path == str(f)


def test_from_spec_missing_file(tmp_path):
    with pytest.raises(SpecError, match="can't read"):
        DagExecutor.from_spec("d", DagEnsemble(kind="dag", topology=str(tmp_path / "nope.json")), {})
