"""The vLLM engine, in-process, one engine for the module.

By default on a tiny random Llama with a random LoRA adapter (``_fixtures_tiny``, built in seconds); with
``SG_TEST_VLLM_WORLD=toy`` on the toy world's trained base and its ``adder`` expert (``=DIR``: a toy world already
built in DIR). Tests that need a model which
keeps talking (cancellation midway) skip when the model ends its answer first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from gateway.engines.base import Adapter, Chunk, EngineError, Prompt, PromptTooLong, SamplingParams
from gateway.engines.vllm import VLLMEngine, adapter_rank
from tests.gateway._fixtures_tiny import build_tiny_llama

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(180)]

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@dataclass(frozen=True)
class World:
    base: str
    adapter: str
    texts: tuple[str, ...]
    """Text prompts; the first is the default one."""
    chat: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return self.texts[0]


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    choice = os.environ.get("SG_TEST_VLLM_WORLD", "tiny")
    if choice != "tiny":
        from toyworld.build import ToyWorld

        toy = request.getfixturevalue("toy_world") if choice == "toy" else ToyWorld.load(choice)
        texts = ("Q: add 12 34\nA: ", "Q: add 23 45\nA: ", "Q: rev abcdef\nA: ", "Q: sort dbca\nA: ")
        return World(
            str(toy.base_dir), str(toy.expert_dirs["adder"]), texts, [{"role": "user", "content": "add 23 45"}]
        )
    tiny = build_tiny_llama(tmp_path_factory.mktemp("tiny-vllm"))
    return World(tiny.base, tiny.lora, ("ab c\nZ!", "Hello", "xyz 12"), [{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
async def engine(world: World) -> AsyncIterator[VLLMEngine]:
    eng = VLLMEngine(world.base, max_num_seqs=32)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def lora(world: World) -> Adapter:
    return Adapter("test-lora@1", world.adapter)


def _long(engine: VLLMEngine) -> SamplingParams:
    """Greedy, with room for a long answer (half the context)."""
    return SamplingParams(max_tokens=engine.max_model_len // 2, temperature=0.0)


def _closable(stream: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    """Engines' streams are async generators (``aclose()`` aborts); ``Engine.stream`` is typed as an iterator."""
    assert isinstance(stream, AsyncGenerator)
    return stream


def _unfinished(engine: VLLMEngine) -> int:
    return int(engine._llm.get_num_unfinished_requests())


async def _drained(engine: VLLMEngine) -> bool:
    for _ in range(100):
        if _unfinished(engine) == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def _serves(engine: VLLMEngine, world: World) -> None:
    done = await engine.complete(world.text, GREEDY)
    assert done.finish_reason in ("stop", "length") and done.completion_tokens >= 1


async def _first_chunks(stream: AsyncGenerator[Chunk, None], n: int) -> list[Chunk]:
    got: list[Chunk] = []
    async for chunk in stream:
        got.append(chunk)
        if chunk.finish_reason is not None:
            pytest.skip("the model ended its answer before the stream could be cancelled midway")
        if len(got) == n:
            break
    return got


async def test_start_is_idempotent_and_reads_max_model_len(engine: VLLMEngine, world: World):
    await engine.start()
    positions = json.loads((Path(world.base) / "config.json").read_text())["max_position_embeddings"]
    assert engine.max_model_len == min(positions, 2048)
    assert engine.start_seconds is not None


@pytest.mark.parametrize("kind", ["text", "chat"])
async def test_greedy_stream_equals_complete(engine: VLLMEngine, world: World, kind: str):
    prompt = world.text if kind == "text" else world.chat
    chunks = [c async for c in engine.stream(prompt, GREEDY)]
    done = await engine.complete(prompt, GREEDY)
    assert "".join(c.text for c in chunks) == done.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert [t for c in chunks for t in c.token_ids] == done.token_ids
    last = chunks[-1]
    assert (last.prompt_tokens, last.completion_tokens) == (done.prompt_tokens, done.completion_tokens)
    assert done.prompt_tokens == engine.count_prompt_tokens(prompt)
    assert done.completion_tokens == len(done.token_ids) >= 1


async def test_greedy_matches_transformers(engine: VLLMEngine, world: World):
    """fp32 vLLM and fp32 transformers agree token for token on greedy decoding."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    ids = engine.tokenize(world.text)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    ref = out[0][len(ids) :].tolist()
    done = await engine.complete(world.text, SamplingParams(max_tokens=12, temperature=0.0))
    n = len(done.token_ids)  # HF pads past an EOS; compare up to vLLM's length
    assert done.token_ids == ref[:n] and n >= 1


async def test_chat_is_rendered_with_the_template(engine: VLLMEngine, world: World):
    rendered = engine.render_prompt(world.chat)
    assert world.chat[0]["content"] in rendered and rendered != world.chat[0]["content"]
    assert engine.count_prompt_tokens(world.chat) == len(engine._tokenizer.encode(rendered, add_special_tokens=False))
    assert engine.count_prompt_tokens(world.text) == len(engine._tokenizer.encode(world.text))


async def test_max_tokens_ends_with_length(engine: VLLMEngine, world: World):
    done = await engine.complete(world.text, SamplingParams(max_tokens=1, temperature=0.0))
    if done.token_ids == [engine._tokenizer.eos_token_id]:
        pytest.skip("the model's first token is EOS")
    assert (done.finish_reason, done.completion_tokens) == ("length", 1)


async def test_stop_strings_cut_the_output(engine: VLLMEngine, world: World):
    full = (await engine.complete(world.text, GREEDY)).text
    # a character whose first occurrence is past the start, so the cut output is not empty
    stop = next((c for i, c in enumerate(full) if i > 0 and full.index(c) == i), None)
    if stop is None:
        pytest.skip(f"greedy output {full!r} is too short to cut")
    params = replace(GREEDY, stop=(stop, "never-seen"))
    done = await engine.complete(world.text, params)
    assert (done.text, done.finish_reason) == (full[: full.index(stop)], "stop")
    assert "".join([c.text async for c in engine.stream(world.text, params)]) == done.text


async def test_seeded_sampling_is_reproducible(engine: VLLMEngine, world: World):
    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=16, temperature=2.0, seed=seed)

    a = await engine.complete(world.text, params(1))
    b = await engine.complete(world.text, params(1))
    assert a.text == b.text
    # the same seed inside a concurrent batch gives the same sample too
    batch = await engine.complete_batch([world.text] * 4, params(1))
    assert {c.text for c in batch} == {a.text}
    others = {(await engine.complete(world.text, params(s))).text for s in range(2, 8)}
    assert len(others | {a.text}) > 1


@pytest.mark.parametrize("k", [0, 3])
async def test_logprobs_shape(engine: VLLMEngine, world: World, k: int):
    done = await engine.complete(world.text, SamplingParams(max_tokens=6, temperature=0.0, logprobs=k))
    assert done.logprobs is not None and len(done.logprobs) == done.completion_tokens >= 1
    assert "".join(lp.token for lp in done.logprobs).startswith(done.text)  # (+ a special EOS token's text)
    for lp in done.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == k
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        if k:  # greedy: the chosen token is the most likely one
            assert lp.top[0] == (lp.token, pytest.approx(lp.logprob))
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=k)
    streamed = [c async for c in engine.stream(world.text, params)]
    assert sum(len(c.logprobs or []) for c in streamed) == done.completion_tokens


async def test_no_logprobs_unless_asked(engine: VLLMEngine, world: World):
    assert (await engine.complete(world.text, GREEDY)).logprobs is None


async def test_lora_changes_outputs_and_is_stable(engine: VLLMEngine, world: World, lora: Adapter):
    prompts: list[Prompt] = [*world.texts, world.chat]
    base = [(await engine.complete(p, GREEDY)).text for p in prompts]
    tuned = [(await engine.complete(p, GREEDY, adapter=lora)).text for p in prompts]
    again = [(await engine.complete(p, GREEDY, adapter=lora)).text for p in prompts]
    assert tuned == again and tuned != base
    assert engine._lora_request(lora).lora_int_id == engine._lora_request(lora).lora_int_id


async def test_adapters_get_stable_distinct_ids(engine: VLLMEngine, world: World, lora: Adapter, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(lora.path, copy)
    other = Adapter("test-lora@copy", str(copy))
    first = engine._lora_request(lora).lora_int_id
    second = engine._lora_request(other).lora_int_id
    assert first != second and engine._lora_request(lora).lora_int_id == first
    # the same weights under another name give the same outputs
    a = await engine.complete(world.chat, GREEDY, adapter=other)
    b = await engine.complete(world.chat, GREEDY, adapter=lora)
    assert a.text == b.text
    with pytest.raises(EngineError, match="already served from"):
        engine._lora_request(Adapter(lora.name, str(copy)))


async def test_concurrent_requests_with_mixed_adapters(engine: VLLMEngine, world: World, lora: Adapter):
    prompts = [world.texts[i % len(world.texts)] + " " * (i // len(world.texts)) for i in range(12)]
    adapters = [lora if i % 3 == 0 else None for i in range(12)]
    sequential = [await engine.complete(p, GREEDY, adapter=a) for p, a in zip(prompts, adapters, strict=True)]
    batched = await engine.complete_batch(prompts, GREEDY, adapters=adapters)
    assert [c.text for c in batched] == [c.text for c in sequential]
    assert await _drained(engine)


async def test_adapter_errors_are_clear(engine: VLLMEngine, world: World, lora: Adapter, tmp_path: Path):
    big = tmp_path / "big"
    shutil.copytree(lora.path, big)
    cfg = json.loads((big / "adapter_config.json").read_text())
    cfg["r"] = 64
    (big / "adapter_config.json").write_text(json.dumps(cfg))
    assert adapter_rank(big) == 64
    with pytest.raises(EngineError, match=r"rank 64 .* max_lora_rank is 16"):
        await engine.complete(world.text, GREEDY, adapter=Adapter("big", str(big)))
    with pytest.raises(EngineError, match=r"no adapter_config\.json"):
        await engine.complete(world.text, GREEDY, adapter=Adapter("missing", str(tmp_path / "nope")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(EngineError, match="failed to load"):
        await engine.complete(world.text, GREEDY, adapter=Adapter("broken", str(broken)))
    await _serves(engine, world)


async def test_prompt_too_long(engine: VLLMEngine, world: World):
    n = engine.max_model_len
    too_long = "a" * (n + 10)
    with pytest.raises(PromptTooLong) as info:
        await engine.complete(too_long, GREEDY)
    assert info.value.prompt_tokens == engine.count_prompt_tokens(too_long)
    assert info.value.prompt_tokens > n
    assert info.value.max_model_len == n and "maximum context length" in str(info.value)
    with pytest.raises(PromptTooLong):  # fits alone, not with the completion
        await engine.complete("a" * (n - 10), SamplingParams(max_tokens=20))
    assert (await engine.complete("a" * (n - 30), SamplingParams(max_tokens=20))).completion_tokens >= 1


async def test_aclose_midway_aborts(engine: VLLMEngine, world: World):
    stream = _closable(engine.stream(world.text, _long(engine), request_id="cancel-me"))
    await _first_chunks(stream, 3)
    assert _unfinished(engine) == 1
    await stream.aclose()
    assert await _drained(engine)
    await _serves(engine, world)


async def test_task_cancellation_aborts(engine: VLLMEngine, world: World):
    seen = asyncio.Event()
    ended = False

    async def consume() -> None:
        nonlocal ended
        async for chunk in engine.stream(world.text, _long(engine)):
            seen.set()
            ended = chunk.finish_reason is not None

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if ended:
        pytest.skip("the model ended its answer before the stream could be cancelled midway")
    assert task.cancelled()
    assert await _drained(engine)
    await _serves(engine, world)


async def test_cancelling_one_call_spares_others_with_the_same_request_id(engine: VLLMEngine, world: World):
    """Executors may reuse one request id for several engine calls (DAG nodes, n > 1): abort only the one closed."""
    params = _long(engine)
    first = _closable(engine.stream(world.text, params, request_id="shared"))
    second = _closable(engine.stream(world.text, params, request_id="shared"))
    await _first_chunks(first, 1)
    head = await _first_chunks(second, 1)
    await first.aclose()
    rest = [c async for c in second]
    alone = await engine.complete(world.text, params)
    assert rest[-1].finish_reason == alone.finish_reason
    assert "".join(c.text for c in head + rest) == alone.text


async def test_bad_request_is_a_value_error(engine: VLLMEngine, world: World):
    with pytest.raises(ValueError, match="logprobs"):
        await engine.complete(world.text, SamplingParams(max_tokens=2, logprobs=1_000_000))


async def test_not_started_is_a_clear_error(world: World):
    eng = VLLMEngine(world.base)
    assert eng.count_prompt_tokens(world.text) is None
    with pytest.raises(EngineError, match="not started"):
        await eng.complete(world.text, GREEDY)


def test_engine_args_defaults_and_overrides(world: World):
    args = VLLMEngine(world.base)._resolved_engine_args()
    assert args["enable_lora"] and (args["max_loras"], args["max_lora_rank"]) == (8, 16)
    assert args["max_model_len"] == min(
        json.loads((Path(world.base) / "config.json").read_text())["max_position_embeddings"], 2048
    )
    args = VLLMEngine(world.base, max_model_len=128, max_lora_rank=64, max_loras=40)._resolved_engine_args()
    assert (args["max_model_len"], args["max_lora_rank"], args["max_cpu_loras"]) == (128, 64, 40)
    args = VLLMEngine(world.base, enable_lora=False)._resolved_engine_args()
    assert not args["enable_lora"] and "max_loras" not in args


async def test_lora_disabled_refuses_adapters(world: World, lora: Adapter):
    with pytest.raises(EngineError, match="enable_lora=False"):
        VLLMEngine(world.base, enable_lora=False)._lora_request(lora)


async def test_bad_engine_args_are_a_clear_error(world: World):
    with pytest.raises(EngineError, match="bad engine_args"):
        await VLLMEngine(world.base, not_a_vllm_arg=1).start()


async def test_next_token_logprobs_match_transformers(engine: VLLMEngine, world: World, lora: Adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    ids = engine.tokenize(world.text)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        tuned_model = PeftModel.from_pretrained(model, world.adapter).eval()
        tuned_ref = torch.log_softmax(tuned_model(torch.tensor([ids])).logits[0, -1], -1)
    dist = await engine.next_token_logprobs(world.text)
    assert dist.shape == ref.shape
    assert torch.allclose(dist, ref, atol=1e-3)
    assert torch.equal(await engine.next_token_logprobs(ids), dist)
    tuned = await engine.next_token_logprobs(ids, adapter=lora)
    assert torch.allclose(tuned, tuned_ref, atol=1e-3) and not torch.allclose(tuned, dist, atol=1e-3)


async def test_close_ends_running_streams_with_abort(world: World):
    """On an engine of its own (closing the module's engine would break whatever test runs after it)."""
    engine = VLLMEngine(world.base, max_num_seqs=4)
    await engine.start()
    try:
        stream = _closable(engine.stream(world.text, _long(engine)))
        await _first_chunks(stream, 1)
        closing = asyncio.create_task(engine.close())
        rest = [c async for c in stream]
        await closing
        assert rest and rest[-1].finish_reason == "abort"
    finally:
        await engine.close()  # closing twice is fine
    with pytest.raises(EngineError, match="not started"):
        await engine.complete(world.text, GREEDY)
