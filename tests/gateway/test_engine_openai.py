"""The openai engine against real servers: a small FastAPI server that misbehaves on demand (always), and vLLM's own
OpenAI server on a tiny random Llama (``vllm`` marker).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.engines.base import Adapter, Chunk, EngineError, EngineTimeout, PromptTooLong, SamplingParams
from gateway.engines.openai import DEFAULT_MAX_MODEL_LEN, RETRY_BACKOFF_S, OpenAIEngine
from tests.gateway._fixtures_openai_server import MAX_MODEL_LEN, REPLY, FakeOpenAIServer, free_port
from tests.gateway._fixtures_tiny import build_tiny_llama

pytestmark = pytest.mark.timeout(120)

CHAT = [{"role": "user", "content": "hi"}]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def engine(fake: FakeOpenAIServer) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine("fake", url=fake.url, api_key="sk-test", timeout_s=2, max_retries=2)
    await eng.start()
    yield eng
    await eng.close()


def _closable(stream: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    """Engines' streams are async generators (``aclose()`` aborts); ``Engine.stream`` is typed as an iterator."""
    assert isinstance(stream, AsyncGenerator)
    return stream


def _engine(fake: FakeOpenAIServer, model: str, **kw: object) -> OpenAIEngine:
    return OpenAIEngine(model, url=fake.url, **{"timeout_s": 2.0, "max_model_len": 100, **kw})  # type: ignore[arg-type]


# ---- the happy path --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", [CHAT, "Say hello"], ids=["chat", "text"])
async def test_stream_parses_text_finish_and_usage(engine: OpenAIEngine, fake: FakeOpenAIServer, prompt: object):
    chunks = [c async for c in engine.stream(prompt, GREEDY, request_id="req-42")]  # type: ignore[arg-type]
    assert "".join(c.text for c in chunks) == REPLY
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 7, len(REPLY))
    body, headers = fake.bodies[-1], fake.headers[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert ("messages" if isinstance(prompt, list) else "prompt") in body
    assert body["model"] == "fake" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["x-request-id"] == "req-42"


async def test_sampling_params_are_sent(engine: OpenAIEngine, fake: FakeOpenAIServer):
    params = SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, stop=("!", "\n"), seed=11)
    done = await engine.complete("x", params)
    assert (done.text, done.finish_reason) == (REPLY[:5], "length")
    body = fake.bodies[-1]
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.7, 0.9, ["!", "\n"], 11)
    await engine.complete("x", params.greedy())
    assert "seed" not in fake.bodies[-1] and fake.bodies[-1]["top_p"] == 1.0


@pytest.mark.parametrize("prompt", [CHAT, "Say hello"], ids=["chat", "text"])
@pytest.mark.parametrize("k", [0, 3])
async def test_logprobs_both_shapes(engine: OpenAIEngine, fake: FakeOpenAIServer, prompt: object, k: int):
    done = await engine.complete(prompt, SamplingParams(max_tokens=4, logprobs=k))  # type: ignore[arg-type]
    assert done.logprobs is not None and len(done.logprobs) == 4
    for tok, lp in zip(REPLY[:4], done.logprobs, strict=True):
        assert (lp.token, lp.logprob) == (tok, pytest.approx(-0.1))
        assert len(lp.top) == k
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        if k:
            assert lp.top[0] == (tok, pytest.approx(-0.1))
    body = fake.bodies[-1]
    if isinstance(prompt, list):
        assert (body["logprobs"], body["top_logprobs"]) == (True, k)
    else:
        assert body["logprobs"] == k


async def test_missing_usage_counts_zero(fake: FakeOpenAIServer):
    eng = _engine(fake, "no-usage")
    await eng.start()
    done = await eng.complete("x", GREEDY)
    await eng.close()
    assert (done.text, done.prompt_tokens, done.completion_tokens) == (REPLY, 0, 0)


async def test_adapter_is_sent_as_model_name(engine: OpenAIEngine, fake: FakeOpenAIServer):
    await engine.complete("x", GREEDY, adapter=Adapter("fake-lora", "/not/read/here"))
    assert fake.bodies[-1]["model"] == "fake-lora"


async def test_load_adapters_asks_the_server_once_per_name(fake: FakeOpenAIServer):
    eng = _engine(fake, "fake", load_adapters=True)
    await eng.start()
    fake.loaded_adapters.add("preloaded")  # e.g. another gateway replica loaded it first
    before = fake.hits["load_lora_adapter"]
    particles = [Adapter(f"particle-{i}", f"/adapters/p{i}") for i in range(3)] + [Adapter("preloaded", "/adapters/x")]
    done = await eng.complete_batch(["x"] * 8, GREEDY, adapters=particles * 2)
    assert [c.text for c in done] == [REPLY] * 8
    assert fake.hits["load_lora_adapter"] - before == 4
    assert {"particle-0", "particle-1", "particle-2"} <= fake.loaded_adapters
    assert [b["model"] for b in fake.bodies[-8:]].count("particle-0") == 2
    with pytest.raises(EngineError, match=r"load_lora_adapter returned HTTP 404 .*No adapter found"):
        await eng.complete("x", GREEDY, adapter=Adapter("ghost", "/elsewhere/ghost"))
    await eng.close()


# ---- max_model_len ---------------------------------------------------------------------------------------------------
async def test_max_model_len_from_models_endpoint(engine: OpenAIEngine):
    assert engine.max_model_len == MAX_MODEL_LEN


async def test_max_model_len_argument_wins_and_default(fake: FakeOpenAIServer):
    eng = OpenAIEngine("fake", url=fake.url, max_model_len=77)
    await eng.start()
    assert eng.max_model_len == 77
    await eng.close()
    eng = OpenAIEngine("not-listed", url=fake.url)
    await eng.start()
    assert eng.max_model_len == DEFAULT_MAX_MODEL_LEN
    await eng.close()


async def test_max_model_len_asked_again_when_server_was_down(fake: FakeOpenAIServer):
    eng = OpenAIEngine("fake", url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    await eng.start()  # nothing listens: start still succeeds, the length stays unknown
    assert eng.max_model_len == DEFAULT_MAX_MODEL_LEN
    eng.url = fake.url  # the server "comes up"
    await eng.complete("x", GREEDY)
    for _ in range(100):  # asked in the background
        if eng.max_model_len == MAX_MODEL_LEN:
            break
        await asyncio.sleep(0.02)
    assert eng.max_model_len == MAX_MODEL_LEN
    await eng.close()


# ---- errors ----------------------------------------------------------------------------------------------------------
async def test_http_error_carries_status_and_message_and_is_not_retried(fake: FakeOpenAIServer):
    eng = _engine(fake, "http-500", max_retries=3)
    await eng.start()
    before = fake.hits["http-500"]
    with pytest.raises(EngineError, match=r"HTTP 500: the GPU caught fire"):
        await eng.complete(CHAT, GREEDY)
    assert fake.hits["http-500"] == before + 1
    await eng.close()


async def test_remote_context_too_long_is_prompt_too_long(fake: FakeOpenAIServer):
    eng = _engine(fake, "too-long")
    await eng.start()
    with pytest.raises(PromptTooLong, match="maximum context length is 321") as info:
        await eng.complete("x" * 400, GREEDY)
    assert (info.value.prompt_tokens, info.value.max_model_len, info.value.max_tokens) == (400, 321, 16)
    await eng.close()


async def test_slow_response_times_out(fake: FakeOpenAIServer):
    eng = _engine(fake, "slow", timeout_s=0.5)
    await eng.start()
    t0 = time.perf_counter()
    with pytest.raises(EngineTimeout, match=r"no response in 0\.5s"):
        await eng.complete("x", GREEDY)
    assert time.perf_counter() - t0 < 3
    await eng.close()


async def test_stalled_stream_times_out_without_retry(fake: FakeOpenAIServer):
    eng = _engine(fake, "stall", timeout_s=0.5)
    await eng.start()
    before = fake.hits["stall"]
    got: list[str] = []
    with pytest.raises(EngineTimeout, match="stalled"):
        async for chunk in eng.stream("x", GREEDY):
            got.append(chunk.text)
    assert got == [REPLY[0]] and fake.hits["stall"] == before + 1
    await eng.close()


@pytest.mark.parametrize(("model", "message"), [("drop", "broke"), ("error-frame", "engine core died")])
async def test_mid_stream_failures_are_engine_errors_not_retried(fake: FakeOpenAIServer, model: str, message: str):
    eng = _engine(fake, model, max_retries=3)
    await eng.start()
    before = fake.hits[model]
    with pytest.raises(EngineError, match=message):
        await eng.complete("x", GREEDY)
    assert fake.hits[model] == before + 1
    await eng.close()


async def test_connection_refused_retries_with_backoff_then_fails():
    eng = OpenAIEngine("m", url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2, max_model_len=100)
    await eng.start()
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=r"can't connect .*\(3 attempts\)"):
        await eng.complete("x", GREEDY)
    assert time.perf_counter() - t0 >= RETRY_BACKOFF_S * (1 + 2) * 0.9
    await eng.close()


async def test_connection_retry_succeeds_when_server_comes_up():
    port = free_port()
    eng = OpenAIEngine("fake", url=f"http://127.0.0.1:{port}/v1", max_retries=4, max_model_len=100)
    await eng.start()
    task = asyncio.create_task(eng.complete("x", GREEDY))
    await asyncio.sleep(0.1)  # the first attempt(s) are refused
    assert not task.done()
    with FakeOpenAIServer(port=port) as late:
        done = await asyncio.wait_for(task, 10)
        assert done.text == REPLY and late.hits["fake"] == 1
    await eng.close()


async def test_missing_api_key_env_fails_at_start(monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAIServer):
    monkeypatch.delenv("SG_TEST_OPENAI_KEY", raising=False)
    with pytest.raises(EngineError, match="SG_TEST_OPENAI_KEY"):
        await OpenAIEngine("fake", url=fake.url, api_key_env="SG_TEST_OPENAI_KEY").start()
    monkeypatch.setenv("SG_TEST_OPENAI_KEY", "sk-env")
    eng = OpenAIEngine("fake", url=fake.url, api_key_env="SG_TEST_OPENAI_KEY")
    await eng.start()
    await eng.complete("x", GREEDY)
    assert fake.headers[-1]["authorization"] == "Bearer sk-env"
    await eng.close()


async def test_not_started_is_a_clear_error(fake: FakeOpenAIServer):
    with pytest.raises(EngineError, match="not started"):
        await OpenAIEngine("fake", url=fake.url).complete("x", GREEDY)


# ---- cancellation ----------------------------------------------------------------------------------------------------
async def test_aclose_closes_the_http_stream(fake: FakeOpenAIServer):
    eng = _engine(fake, "endless")
    await eng.start()
    stream = _closable(eng.stream("x", GREEDY))
    got = [await stream.__anext__() for _ in range(3)]
    assert "".join(c.text for c in got) == "xxx"
    await stream.aclose()
    for _ in range(100):
        if "endless" in fake.closed_streams:
            break
        await asyncio.sleep(0.02)
    assert "endless" in fake.closed_streams
    await eng.close()


async def test_task_cancellation_closes_the_http_stream(fake: FakeOpenAIServer):
    eng = _engine(fake, "endless")
    await eng.start()
    n = fake.closed_streams.count("endless")
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in eng.stream("x", GREEDY):
            seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if fake.closed_streams.count("endless") > n:
            break
        await asyncio.sleep(0.02)
    assert fake.closed_streams.count("endless") == n + 1
    await eng.close()


# ---- against vLLM's own OpenAI server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """``python -m vllm.entrypoints.openai.api_server`` on the tiny model with its LoRA served as ``tiny-lora``."""
    pytest.importorskip("vllm")
    tiny = build_tiny_llama(tmp_path_factory.mktemp("tiny-openai"))
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log_path = Path(tiny.base).parent / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", tiny.base, "--served-model-name", "tiny", "--port", str(port), "--host", "127.0.0.1",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "32",
        "--enable-lora", "--max-lora-rank", "16", "--lora-modules", f"tiny-lora={tiny.lora}",
        "--disable-log-stats",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"{url}/v1", tiny.base, tiny.lora
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
async def remote(vllm_server: tuple[str, str, str]) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine("tiny", url=vllm_server[0], timeout_s=60)
    await eng.start()
    yield eng
    await eng.close()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_vllm_server_discovers_max_model_len(remote: OpenAIEngine):
    assert remote.max_model_len == 512


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("prompt", [CHAT, "ab c\nZ!"], ids=["chat", "text"])
async def test_vllm_server_greedy_stream_and_usage(remote: OpenAIEngine, prompt: object):
    params = SamplingParams(max_tokens=20, temperature=0.0)
    chunks = [c async for c in remote.stream(prompt, params)]  # type: ignore[arg-type]
    done = await remote.complete(prompt, params)  # type: ignore[arg-type]
    assert "".join(c.text for c in chunks) == done.text and len(done.text) > 0
    assert chunks[-1].finish_reason == done.finish_reason == "length"
    assert chunks[-1].completion_tokens == done.completion_tokens == 20
    assert done.prompt_tokens > 0


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("prompt", [CHAT, "ab c\nZ!"], ids=["chat", "text"])
async def test_vllm_server_logprobs(remote: OpenAIEngine, prompt: object):
    done = await remote.complete(prompt, SamplingParams(max_tokens=6, temperature=0.0, logprobs=3))  # type: ignore[arg-type]
    assert done.logprobs is not None and len(done.logprobs) == 6
    assert "".join(lp.token for lp in done.logprobs) == done.text
    for lp in done.logprobs:
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token  # greedy: the chosen token is the best one
        assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-4) and lp.logprob <= 0


@pytest.mark.vllm
@pytest.mark.slow
async def test_vllm_server_lora_by_name(remote: OpenAIEngine, vllm_server: tuple[str, str, str]):
    params = SamplingParams(max_tokens=20, temperature=0.0)
    base = await remote.complete(CHAT, params)
    lora = Adapter("tiny-lora", vllm_server[2])
    tuned = [await remote.complete(CHAT, params, adapter=lora) for _ in range(2)]
    assert tuned[0].text == tuned[1].text != base.text


@pytest.mark.vllm
@pytest.mark.slow
async def test_vllm_server_prompt_too_long(remote: OpenAIEngine):
    with pytest.raises(PromptTooLong, match="maximum context length is 512") as info:
        await remote.complete("a" * 600, SamplingParams(max_tokens=4))
    assert info.value.max_model_len == 512 and info.value.prompt_tokens >= 512
    assert (await remote.complete("ab", SamplingParams(max_tokens=2))).completion_tokens == 2


@pytest.mark.vllm
@pytest.mark.slow
async def test_vllm_server_seeded_sampling_and_cancel(remote: OpenAIEngine):
    params = SamplingParams(max_tokens=20, temperature=1.5, seed=7)
    a, b = await remote.complete("ab", params), await remote.complete("ab", params)
    assert a.text == b.text
    stream = _closable(remote.stream("ab", SamplingParams(max_tokens=400, temperature=0.0)))
    await stream.__anext__()
    await stream.aclose()
    assert (await remote.complete("ab", SamplingParams(max_tokens=3))).completion_tokens == 3
