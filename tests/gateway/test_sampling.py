"""Sampling fields on the engines that sample themselves (transformers: ``gateway.engines.sampling``), their
translation to vLLM's ``SamplingParams``, and the raw-prompt frame split ensembles use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import torch

from gateway.engines.base import Engine, InvalidEngineRequest, SamplingParams, StructuredOutput, ToolRequest
from gateway.engines.sampling import apply_penalties, process, sample
from gateway.executors.base import ExpertHandle
from gateway.executors.raw import split_raw

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


# ------------------------------------------------------------------------------------------------ logits processing
def test_penalties_follow_vllm_semantics() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(logits.clone(), p, prompt_ids=[0], output_ids=[1, 2, 2])
    # repetition: prompt+output tokens {0,1,2}: positive / 2, negative * 2; then output counts {1: 1, 2: 2}
    expected = torch.tensor([1.0, -4.0 - 0.5 - 0.25, 0.5 - 1.0 - 0.25, 0.5])
    assert torch.allclose(out, expected)


def test_logit_bias_and_min_tokens() -> None:
    logits = torch.tensor([5.0, 0.0, 0.0, 0.0])
    p = SamplingParams(temperature=0.0, logit_bias=((3, 100.0),))
    assert sample(process(logits, p, prompt_ids=[], output_ids=[], eos_ids={0}), p, None) == 3
    p = SamplingParams(temperature=0.0, min_tokens=2)
    x = process(logits, p, prompt_ids=[], output_ids=[1], eos_ids={0})
    assert x[0] == float("-inf") and logits[0] == 5.0  # EOS masked before min_tokens; the input is untouched
    assert process(logits, p, prompt_ids=[], output_ids=[1, 1], eos_ids={0})[0] == 5.0


@pytest.mark.parametrize("seed", range(5))
def test_top_k_one_and_min_p_one_are_greedy(seed: int) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    assert sample(logits, SamplingParams(temperature=1.5, top_k=1), g) == int(torch.argmax(logits))
    assert sample(logits, SamplingParams(temperature=1.5, min_p=1.0), g) == int(torch.argmax(logits))


def test_used_fields_name_the_request_fields() -> None:
    p = SamplingParams(
        top_k=5,
        logit_bias=((1, 1.0),),
        structured=StructuredOutput("json_object"),
        tools=ToolRequest(tools="[]"),
        prompt_logprobs=0,
    )
    assert set(p.used_fields()) == {"top_k", "logit_bias", "response_format", "tools", "prompt_logprobs"}
    assert SamplingParams().used_fields() == []


# ------------------------------------------------------------------------------------------------ transformers engine
@pytest.fixture(scope="module")
def engine(toy_world: Any):
    import asyncio

    from gateway.engines.transformers import TransformersEngine

    loop = asyncio.new_event_loop()
    eng = TransformersEngine(str(toy_world.root / "big"))
    loop.run_until_complete(eng.start())
    yield eng, loop
    loop.run_until_complete(eng.close())
    loop.close()


PROMPT = "Q: add 12 34\nA: "


def run(engine: Any, prompt: Any, params: SamplingParams) -> Any:
    eng, loop = engine
    return loop.run_until_complete(eng.complete(prompt, params))


SCHEMA = {
    "type": "object",
    # every field bounded, so a sampled object always closes within max_tokens (an unbounded integer let the toy
    # model write 50 digits at temperature 1)
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "word": {"type": "string", "maxLength": 4},
    },
    "required": ["answer", "word"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(3))
def test_json_schema_output_validates(engine: Any, seed: int) -> None:
    structured = StructuredOutput("json_schema", json.dumps(SCHEMA))
    done = run(engine, PROMPT, SamplingParams(max_tokens=60, temperature=1.0, seed=seed, structured=structured))
    assert done.finish_reason == "stop", done
    jsonschema.validate(json.loads(done.text), SCHEMA)


def test_json_object_mask_beats_logit_bias(engine: Any) -> None:
    """A bias towards '[' would win without the grammar; ``json_object`` only allows an object, so '{' comes first,
    then the biased '}' closes it and the grammar ends the sequence."""
    eng, _ = engine
    bias = ((eng.tokenizer.convert_tokens_to_ids("["), 100.0), (eng.tokenizer.convert_tokens_to_ids("}"), 50.0))
    assert run(engine, PROMPT, SamplingParams(max_tokens=6, temperature=0.0, logit_bias=bias)).text.startswith("[")
    structured = StructuredOutput("json_object")
    done = run(engine, PROMPT, SamplingParams(max_tokens=6, temperature=0.0, logit_bias=bias, structured=structured))
    assert (done.text, done.finish_reason) == ("{}", "stop")


def test_engine_fields_change_the_output(engine: Any) -> None:
    eng, _ = engine
    # big's own answer, whatever it is: big gets 15-20% of sums right, and a build on another machine can answer 44
    # where the last answered 46. What each field changes is checked against it.
    plain = run(engine, PROMPT, GREEDY)
    assert plain.text.isdigit() and plain.finish_reason == "stop"
    seven = eng.tokenizer.convert_tokens_to_ids("7")
    assert run(engine, PROMPT, SamplingParams(max_tokens=4, temperature=0.0, logit_bias=((seven, 100.0),))).text == (
        "7777"
    )
    long = run(engine, PROMPT, SamplingParams(max_tokens=6, temperature=0.0, min_tokens=6))
    assert long.completion_tokens == 6 and long.text.startswith(plain.text)
    past = run(engine, PROMPT, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert past.completion_tokens == 6 and past.finish_reason == "length"


def test_token_id_prompt_equals_text_prompt(engine: Any) -> None:
    from gateway.api.protocol import TokenIds

    eng, _ = engine
    assert run(engine, TokenIds(eng.tokenize(PROMPT)), GREEDY).text == run(engine, PROMPT, GREEDY).text
    with pytest.raises(InvalidEngineRequest) as err:
        run(engine, TokenIds([10**6]), GREEDY)
    assert err.value.param == "prompt"


def test_prompt_logprobs_shape(engine: Any) -> None:
    done = run(engine, PROMPT, SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=2))
    lps = done.prompt_logprobs
    assert lps is not None and len(lps) == done.prompt_tokens and lps[0] is None
    for entry in lps[1:]:
        assert 2 <= len(entry) <= 3  # the top 2 plus the prompt's own token when it is not among them
        assert all(v["logprob"] <= 0 and v["rank"] >= 1 for v in entry.values())


def test_final_only_sends_one_chunk(engine: Any) -> None:
    eng, loop = engine

    async def chunks(final_only: bool) -> list[Any]:
        params = SamplingParams(max_tokens=8, temperature=0.0, final_only=final_only)
        return [c async for c in eng.stream(PROMPT, params)]

    many, one = loop.run_until_complete(chunks(False)), loop.run_until_complete(chunks(True))
    assert len(one) == 1 and len(many) > 1
    assert one[0].text == "".join(c.text for c in many) and one[0].finish_reason == many[-1].finish_reason


def test_tools_are_refused_with_their_name(engine: Any) -> None:
    with pytest.raises(InvalidEngineRequest) as err:
        run(engine, [{"role": "user", "content": "hi"}], SamplingParams(tools=ToolRequest(tools="[]")))
    assert err.value.param == "tools"


# ------------------------------------------------------------------------------------------------ vLLM translation
@pytest.mark.vllm
def test_vllm_sampling_params_translation() -> None:
    from vllm.sampling_params import RequestOutputKind

    from gateway.engines.vllm import VLLMEngine

    eng = VLLMEngine("/nonexistent")  # translation only: never started
    p = SamplingParams(
        temperature=0.7,
        top_k=5,
        min_p=0.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.2,
        min_tokens=2,
        logit_bias=((3, -5.0),),
        ignore_eos=True,
        prompt_logprobs=1,
        structured=StructuredOutput("json_schema", json.dumps(SCHEMA)),
        final_only=True,
    )
    v = eng._sampling_params(p)
    assert (v.top_k, v.min_p, v.presence_penalty, v.frequency_penalty) == (5, 0.1, 0.5, 0.25)
    assert (v.repetition_penalty, v.min_tokens, v.ignore_eos, v.prompt_logprobs) == (1.2, 2, True, 1)
    assert v.logit_bias == {3: -5.0} and json.loads(v.structured_outputs.json) == SCHEMA
    assert v.output_kind == RequestOutputKind.FINAL_ONLY
    assert eng._sampling_params(SamplingParams()).output_kind == RequestOutputKind.DELTA
    assert eng.unsupported(SamplingParams(tools=ToolRequest(tools="[]"))) == ["tools"]  # no tool_call_parser


# ------------------------------------------------------------------------------------------------ raw prompt frames
@dataclass
class FramedEngine:
    """Just enough of an engine for ``split_raw``: a chat frame."""

    frame: tuple[str, str] | None

    def chat_frame(self) -> tuple[str, str] | None:
        return self.frame


def handle(frame: tuple[str, str] | None) -> ExpertHandle:
    return ExpertHandle(name="x", engine=FramedEngine(frame))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "frame", "head", "question", "tail"),
    [
        ("Q: addrev 12 34\nA: ", ("Q: ", "\nA: "), "Q: ", "addrev 12 34", "\nA: "),
        ("Q: addrev 12 34\nA:", ("Q: ", "\nA: "), "Q: ", "addrev 12 34", "\nA:"),  # harness stripped the space
        ("Q: add 1 2\nA: 3\n\nQ: rev ab\nA: ", ("Q: ", "\nA: "), "Q: add 1 2\nA: 3\n\nQ: ", "rev ab", "\nA: "),
        ("<s>[INST] hi [/INST]", ("<s>[INST] ", " [/INST]"), "<s>[INST] ", "hi", " [/INST]"),
        ("addrev 12 34", ("Q: ", "\nA: "), "", "addrev 12 34", ""),  # not in the model's format
        ("Q: x\nA: ", None, "", "Q: x\nA: ", ""),  # no chat template
    ],
)
def test_split_raw(prompt: str, frame: Any, head: str, question: str, tail: str) -> None:
    raw = split_raw(prompt, handle(frame))
    assert (raw.head, raw.question, raw.tail) == (head, question, tail)
    assert raw.with_content(raw.question) == prompt


def test_chat_frame_of_the_toy_template(engine: Any) -> None:
    eng, _ = engine
    assert eng.chat_frame() == ("Q: ", "\nA: ")
    assert Engine.chat_frame(eng) == ("Q: ", "\nA: ")


@pytest.mark.vllm
def test_vllm_tool_parser_reads_calls(toy_world: Any) -> None:
    from vllm.tokenizers import get_tokenizer

    from gateway.engines.tools import VLLMToolCalls

    tools = ToolRequest(tools=json.dumps([{"type": "function", "function": {"name": "add", "parameters": {}}}]))
    parser = VLLMToolCalls("hermes", get_tokenizer(str(toy_world.root / "big")), "big")
    content, calls = parser.parse('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', tools)
    assert content == "" and [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("add", {"a": 1})
    ]
    assert parser.parse("46", tools) == ("46", [])
    named = ToolRequest(tools=tools.tools, tool_choice='{"type": "function", "function": {"name": "add"}}')
    assert parser.parse('{"a": 2}', named)[1][0]["function"] == {"name": "add", "arguments": '{"a": 2}'}
    assert parser.structured_schema(tools) is None
    assert parser.structured_schema(named) == {"type": "object", "properties": {}}
