"""Ensembles on ``/v1/completions``: a raw prompt in the model's own format is treated as an expert would treat it.

A real gateway serves the toy world plus two DAGs and two routed chains (scripted policies: the first expert, then
the reverser) for the composed tasks; the real ``openai`` SDK sends held-out test questions in the raw format an
evaluation harness uses (lm-eval's ``local-completions``: the toy prompt ``"Q: {question}\\nA: "``). The raw path
must give exactly the chat path's answers (same bytes reach every node), and each ensemble must score at least its
best member on the same raw prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from router.deploy import chain_spec
from tests.helpers import running_gateway
from tests.router.conftest import scripted_policy
from toyworld.format import render

EXPERTS = ["toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"]
COSTS = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]
ENSEMBLES = {"addrev": ("toy-dag-addrev", "toy-router-addrev"), "sortrev": ("toy-dag-sortrev", "toy-router-sortrev")}
FIRST = {"addrev": "toy-adder", "sortrev": "toy-sorter"}
QUESTIONS = 12  # held-out test questions per task (the fast test)


def topology(first: str) -> dict[str, Any]:
    return {
        "format": "swarmgate.topology/1",
        "nodes": [
            {"id": "first", "expert": first, "prompt": "{question}{responses}"},
            {"id": "reverser", "expert": "toy-reverser", "prompt": "{question}{responses}"},
        ],
        "edges": [["first", "reverser"]],
        "final": "reverser",
        "response_template": "\nP: {response}",
    }


def ensemble_spec(toy_world: Any, tmp: Path) -> Path:
    """The toy spec plus, per composed task, a DAG and a routed chain: first expert, then the reverser."""
    data: dict[str, Any] = {}
    for task, (dag, router) in ENSEMBLES.items():
        policy = scripted_policy(tmp / f"policy-{task}", FIRST[task], "toy-reverser", experts=EXPERTS, costs=COSTS)
        data = chain_spec(
            tmp / "spec.yaml" if data else toy_world.spec_path, policy, name=router, experts=EXPERTS, max_steps=2
        )
        topo = tmp / f"{dag}.json"
        topo.write_text(json.dumps(topology(FIRST[task])))
        data["ensembles"][dag] = {"kind": "dag", "topology": str(topo)}
        (tmp / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp / "spec.yaml"


def test_questions(toy_world: Any, task: str, k: int) -> list[dict[str, str]]:
    lines = (Path(toy_world.data_dir) / task / "test.jsonl").read_text().splitlines()[:k]
    return [json.loads(x) for x in lines]


test_questions.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def client(toy_world: Any, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    spec = ensemble_spec(toy_world, tmp_path_factory.mktemp("raw"))
    with running_gateway(spec) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def raw_answer(client: openai.OpenAI, model: str, question: str) -> str:
    r = client.completions.create(model=model, prompt=render(question), temperature=0, max_tokens=12)
    return r.choices[0].text.strip()


def chat_answer(client: openai.OpenAI, model: str, question: str) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=12
    )
    return (r.choices[0].message.content or "").strip()


@pytest.mark.parametrize("task", sorted(ENSEMBLES))
def test_raw_prompt_answers_equal_chat_and_beat_members(client: openai.OpenAI, toy_world: Any, task: str) -> None:
    examples = test_questions(toy_world, task, QUESTIONS)
    members = [FIRST[task], "toy-reverser", "toy-big"]
    member_acc = {
        m: sum(raw_answer(client, m, ex["question"]) == ex["answer"] for ex in examples) / len(examples)
        for m in members
    }
    for model in ENSEMBLES[task]:
        raw = [raw_answer(client, model, ex["question"]) for ex in examples]
        chat = [chat_answer(client, model, ex["question"]) for ex in examples]
        assert raw == chat, f"{model}: the raw path must reach every node with the chat path's bytes"
        acc = sum(a == ex["answer"] for a, ex in zip(raw, examples, strict=True)) / len(examples)
        assert acc >= max(member_acc.values()), (model, acc, member_acc)
        assert acc >= 0.5, (model, acc)  # the composed task is solved, not merely tied at zero


def test_route_shows_raw_message_passing(client: openai.OpenAI) -> None:
    """The reverser (a later node) sees the adder's answer in the toy format: its prompt is one token per char of
    ``"Q: addrev 12 34\\nP: 46\\nA: "`` (char-level tokenizer), not a re-templated ``"Q: Q: ..."``."""
    for model in ENSEMBLES["addrev"]:
        r = client.completions.create(model=model, prompt=render("addrev 12 34"), temperature=0, max_tokens=12)
        route = r.model_extra["swarmgate"]["choices"][0]["route"]
        first, second = route[0], route[-1]
        assert first["prompt_tokens"] == len(render("addrev 12 34"))
        assert second["prompt_tokens"] == len(render("addrev 12 34", [first["output"].strip()])), route
        assert r.choices[0].text.strip() == "64"


def test_token_id_prompts_are_for_single_experts(client: openai.OpenAI) -> None:
    ids = [ord(c) % 50 + 5 for c in "abc"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="toy-dag-addrev", prompt=ids, max_tokens=2)
    assert err.value.body["param"] == "prompt"
