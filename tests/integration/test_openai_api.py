"""The real ``openai`` SDK against a real gateway serving the toy world (transformers engine)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway._fixtures_openai_server import REPLY
from tests.helpers import refused_port, running_gateway, serving, wait_until

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def base_url(toy_world) -> str:
    with running_gateway(toy_world.spec_path, api_keys=[KEY], max_concurrency=4, max_queue=8) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


def dev_examples(toy_world, task: str, k: int = 8) -> list[dict]:
    lines = (Path(toy_world.data_dir) / task / "dev.jsonl").read_text().splitlines()[:k]
    return [json.loads(x) for x in lines]


def test_models_lists_every_expert(client: openai.OpenAI, toy_world) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"} <= ids
    card = client.models.retrieve("toy-big")
    assert card.id == "toy-big" and card.model_extra["cost"] == 4.0
    assert card.model_extra["max_model_len"] > 0


def test_chat_applies_template_and_answers(client: openai.OpenAI, toy_world) -> None:
    examples = dev_examples(toy_world, "add")
    right = 0
    for ex in examples:
        r = client.chat.completions.create(
            model="toy-adder", messages=[{"role": "user", "content": ex["question"]}], temperature=0, max_tokens=16
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        assert r.usage.prompt_tokens == len(f"Q: {ex['question']}\nA: ")  # char-level tokenizer, template applied
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        right += choice.message.content.strip() == ex["answer"]
    assert right >= len(examples) // 2, f"toy-adder got {right}/{len(examples)} through the API"


def test_completions_raw_prompt_equals_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="toy-reverser", messages=[{"role": "user", "content": "rev abcdef"}], temperature=0, max_tokens=16
    )
    text = client.completions.create(model="toy-reverser", prompt="Q: rev abcdef\nA: ", temperature=0, max_tokens=16)
    assert text.object == "text_completion"
    assert text.choices[0].text == chat.choices[0].message.content


def test_completions_batch_of_prompts(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="toy-big", prompt=["Q: rev abc\nA: ", "Q: sort cba\nA: "], temperature=0, max_tokens=8, n=2
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices of one prompt agree


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="toy-sorter",
        messages=[{"role": "user", "content": "sort dbca"}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in {"stop", "length"}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])
    full = client.chat.completions.create(
        model="toy-sorter", messages=[{"role": "user", "content": "sort dbca"}], temperature=0, max_tokens=16
    )
    assert text == full.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens


def test_raw_sse_frames_match_openai(base_url: str) -> None:
    body = {"model": "toy-base", "prompt": "Q: rev ab\nA: ", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{base_url}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(x.removeprefix("data: ")) for x in lines[:-1] if x.startswith("data: ")]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_n_choices_and_seed_determinism(client: openai.OpenAI) -> None:
    kwargs = dict(model="toy-base", messages=[{"role": "user", "content": "rev hgfedcba"}], max_tokens=12, n=3)
    a = client.chat.completions.create(temperature=1.0, seed=1234, **kwargs)
    b = client.chat.completions.create(temperature=1.0, seed=1234, **kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    samples = {
        client.chat.completions.create(temperature=1.0, seed=s, **{**kwargs, "n": 1}).choices[0].message.content
        for s in range(6)
    }
    assert len(samples) > 1, "different seeds should give different samples at temperature 1"


def test_stop_sequences(client: openai.OpenAI) -> None:
    full = client.completions.create(model="toy-reverser", prompt="Q: rev abcdef\nA: ", temperature=0, max_tokens=16)
    text = full.choices[0].text
    assert len(text) >= 3
    stop = text[2]
    cut = client.completions.create(
        model="toy-reverser", prompt="Q: rev abcdef\nA: ", temperature=0, max_tokens=16, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_max_tokens_and_length_finish(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="toy-big", messages=[{"role": "user", "content": "rev abcdefgh"}], temperature=0, max_completion_tokens=2
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="toy-adder",
        messages=[{"role": "user", "content": "add 1 2"}],
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)
    c = client.completions.create(model="toy-adder", prompt="Q: add 1 2\nA: ", temperature=0, max_tokens=3, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)


def test_route_field_and_headers(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/chat/completions",
        json={"model": "toy-big", "messages": [{"role": "user", "content": "sort ba"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 200
    assert r.headers["x-swarmgate-route"] == "toy-big" and r.headers["x-swarmgate-cost"] == "4"
    route = r.json()["swarmgate"]["choices"][0]["route"]
    assert route[0]["expert"] == "toy-big" and route[0]["latency_ms"] > 0


def test_openai_engine_relays_a_real_upstream_gateway(
    client: openai.OpenAI, base_url: str, toy_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``engine: openai`` expert pointed at a second real swarmgate (this module's, over loopback, with its key)
    answers exactly as the upstream does: chat, raw completions and streaming, usage included."""
    monkeypatch.setenv("SG_TEST_UPSTREAM_KEY", KEY)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "experts:\n"
        f"  relay-adder: {{engine: openai, url: '{base_url}', model: toy-adder, api_key_env: SG_TEST_UPSTREAM_KEY,"
        " cost: 2.5}\n"
    )
    with running_gateway(spec) as url:
        relay = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert [m.id for m in relay.models.list().data] == ["relay-adder"]
        for ex in dev_examples(toy_world, "add", k=4):
            msgs = [{"role": "user", "content": ex["question"]}]
            want = client.chat.completions.create(model="toy-adder", messages=msgs, temperature=0, max_tokens=16)
            got = relay.chat.completions.create(model="relay-adder", messages=msgs, temperature=0, max_tokens=16)
            assert got.choices[0].message.content == want.choices[0].message.content
            assert got.choices[0].finish_reason == want.choices[0].finish_reason == "stop"
            assert got.usage.prompt_tokens == want.usage.prompt_tokens  # usage comes from the upstream's usage frame
            assert got.usage.completion_tokens == want.usage.completion_tokens
            route = got.model_extra["swarmgate"]["choices"][0]["route"]
            assert [s["expert"] for s in route] == ["relay-adder"] and got.model_extra["swarmgate"]["cost"] == 2.5
        prompt = "Q: add 23 45\nA: "
        want_text = client.completions.create(model="toy-adder", prompt=prompt, temperature=0, max_tokens=8)
        got_text = relay.completions.create(model="relay-adder", prompt=prompt, temperature=0, max_tokens=8)
        assert got_text.choices[0].text == want_text.choices[0].text == "68"
        stream = relay.chat.completions.create(
            model="relay-adder",
            messages=[{"role": "user", "content": "add 23 45"}],
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "68"
        assert chunks[-1].usage.completion_tokens == want_text.usage.completion_tokens


# ---------------------------------------------------------------------------------------------- errors
def test_error_classes_map_to_sdk_exceptions(client: openai.OpenAI, base_url: str) -> None:
    msgs = [{"role": "user", "content": "add 1 2"}]
    with pytest.raises(openai.NotFoundError) as e404:
        client.chat.completions.create(model="no-such-model", messages=msgs)
    assert e404.value.body["code"] == "model_not_found" and e404.value.body["param"] == "model"

    with pytest.raises(openai.BadRequestError) as e400:
        client.chat.completions.create(model="toy-base", messages=msgs, max_tokens=0)
    assert e400.value.body["param"] == "max_tokens" and e400.value.body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as long_:
        client.chat.completions.create(model="toy-base", messages=[{"role": "user", "content": "a" * 5000}])
    assert long_.value.body["code"] == "context_length_exceeded" and long_.value.body["param"] == "messages"

    wrong = openai.OpenAI(base_url=base_url, api_key="sk-wrong-000000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e401:
        wrong.chat.completions.create(model="toy-base", messages=msgs)
    assert e401.value.status_code == 401 and e401.value.body["type"] == "authentication_error"
    missing = httpx.post(f"{base_url}/chat/completions", json={"model": "toy-base", "messages": msgs})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base_url}/models").status_code == 401
    assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200  # probes need no key


@pytest.fixture(scope="module")
def endless_upstream() -> str:
    """A test-owned OpenAI-compatible server (real uvicorn, loopback) whose ``endless`` model streams until the
    client leaves: a request to it cannot finish early, so it holds its concurrency slot as long as the test wants."""
    from tests.gateway._fixtures_openai_server import FakeOpenAIServer

    with serving(FakeOpenAIServer().app()) as url:
        yield url


def hold_spec(tmp_path: Path, upstream: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "experts:\n"
        f"  hold: {{engine: openai, url: '{upstream}', model: endless}}\n"
        f"  quick: {{engine: openai, url: '{upstream}', model: fake}}\n"
    )
    return spec


def test_rate_limit_when_queue_full(endless_upstream: str, tmp_path: Path) -> None:
    """Deterministic: the only slot is held by a stream that never ends on its own (max_concurrency=1, no queue)."""
    with running_gateway(
        hold_spec(tmp_path, endless_upstream), max_concurrency=1, max_queue=0, graceful_shutdown_s=5
    ) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        msgs = [{"role": "user", "content": "x"}]
        ok = c.chat.completions.create(model="quick", messages=msgs, max_tokens=2)  # the slot is free: served
        assert ok.choices[0].message.content == REPLY[:2] and ok.choices[0].finish_reason == "length"
        held = c.chat.completions.create(model="hold", messages=msgs, max_tokens=300, stream=True)
        try:
            chunks = iter(held)
            assert next(chunks).choices[0].delta.role == "assistant"
            assert next(chunks).choices[0].delta.content == "x"  # it is running and holds the only slot
            for model in ("quick", "hold"):
                with pytest.raises(openai.RateLimitError) as e429:
                    c.chat.completions.create(model=model, messages=msgs, max_tokens=2)
                assert e429.value.status_code == 429 and e429.value.body["code"] == "rate_limit_exceeded"
                assert e429.value.body["type"] == "rate_limit_error"
        finally:
            held.close()


def test_every_disconnect_frees_the_slot(endless_upstream: str, tmp_path: Path) -> None:
    """A client that leaves mid-stream always frees its slot (checked over many disconnects: the race is rare)."""
    with running_gateway(
        hold_spec(tmp_path, endless_upstream), max_concurrency=1, max_queue=0, graceful_shutdown_s=2
    ) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        msgs = [{"role": "user", "content": "x"}]

        def served() -> object:
            try:
                return c.chat.completions.create(model="quick", messages=msgs, max_tokens=2)
            except openai.RateLimitError:
                return None

        for i in range(200):
            held = c.chat.completions.create(model="hold", messages=msgs, max_tokens=300, stream=True)
            chunks = iter(held)
            next(chunks), next(chunks)
            held.close()
            wait_until(served, timeout_s=10, what=f"the slot to be freed after disconnect {i}")


def test_engine_timeout_is_504(toy_world) -> None:
    with running_gateway(toy_world.spec_path, request_timeout_s=0.001) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="toy-big", messages=[{"role": "user", "content": "rev abc"}], max_tokens=64)
        assert e.value.status_code == 504 and e.value.body["type"] == "timeout_error"


def test_failing_remote_engine_is_502(tmp_path: Path, toy_world) -> None:
    with refused_port() as port:  # bound, not listening: every connection is refused
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"experts:\n  toy-base: {{model: {toy_world.base_dir}}}\n"
            f"  remote: {{engine: openai, url: 'http://127.0.0.1:{port}/v1', model: m, timeout_s: 2}}\n"
        )
        with running_gateway(spec) as url:
            c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(model="remote", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            assert e.value.status_code == 502 and e.value.body["code"] == "engine_error"
            ok = c.chat.completions.create(model="toy-base", messages=[{"role": "user", "content": "x"}], max_tokens=2)
            assert ok.choices[0].finish_reason in {"stop", "length"} and ok.usage.completion_tokens >= 1
