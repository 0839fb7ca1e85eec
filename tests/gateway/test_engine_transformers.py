"""The transformers engine on the toy world's real checkpoints: exactness against HF, batching, adapters, control."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.engines import create_engine
from gateway.engines.base import Adapter, EngineError, PromptTooLong, SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
PROMPTS = ["Q: add 12 34\nA: ", "Q: rev abcdef\nA: ", "Q: sort dbca\nA: ", "Q: count a in abaca\nA: "]


@pytest.fixture(scope="module")
async def engine(toy_world):
    eng = create_engine("transformers", str(toy_world.base_dir))
    await eng.start()
    yield eng
    await eng.close()


def adapter(toy_world, name: str) -> Adapter:
    return Adapter(name=name, path=str(toy_world.expert_dirs[name]))


def hf_greedy(model_dir: str, prompt: str, max_new: int, adapter_dir: str | None = None) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


async def test_greedy_matches_hf_generate(engine, toy_world) -> None:
    for prompt in PROMPTS[:2]:
        got = await engine.complete(prompt, GREEDY)
        assert got.text == hf_greedy(str(toy_world.base_dir), prompt, 16)
    ad = adapter(toy_world, "adder")
    got = await engine.complete(PROMPTS[0], GREEDY, adapter=ad)
    assert got.text == hf_greedy(str(toy_world.base_dir), PROMPTS[0], 16, ad.path)


async def test_mixed_adapter_batch_equals_single_calls(engine, toy_world) -> None:
    adapters = [adapter(toy_world, "adder"), adapter(toy_world, "reverser"), None, adapter(toy_world, "counter")]
    batch = await engine.complete_batch(PROMPTS, GREEDY, adapters=adapters)
    singles = [await engine.complete(p, GREEDY, adapter=a) for p, a in zip(PROMPTS, adapters, strict=True)]
    assert [b.text for b in batch] == [s.text for s in singles]
    assert all(b.finish_reason in {"stop", "length"} for b in batch)


async def test_adapters_change_outputs(engine, toy_world) -> None:
    """The reverser adapter answers reversals the base gets wrong: the adapter, not the base, produced them."""
    exs = toy_world.examples("rev", "dev")[:6]
    prompts = [f"Q: {e.question}\nA: " for e in exs]
    base = await engine.complete_batch(prompts, GREEDY)
    rev = await engine.complete_batch(prompts, GREEDY, adapters=[adapter(toy_world, "reverser")] * len(prompts))
    assert sum(r.text == e.answer for r, e in zip(rev, exs, strict=True)) >= 5
    assert sum(b.text != r.text for b, r in zip(base, rev, strict=True)) >= 2, [b.text for b in base]
    assert (await engine.complete(PROMPTS[1], GREEDY, adapter=adapter(toy_world, "reverser"))).text == "fedcba"


async def test_stream_equals_complete_and_reports_usage(engine) -> None:
    chunks = [c async for c in engine.stream(PROMPTS[1], GREEDY)]
    whole = await engine.complete(PROMPTS[1], GREEDY)
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason
    assert chunks[-1].prompt_tokens == len(PROMPTS[1]) and chunks[-1].completion_tokens == whole.completion_tokens


async def test_seeded_sampling_is_deterministic(engine) -> None:
    p = SamplingParams(max_tokens=12, temperature=1.0, seed=99)
    a, b = await asyncio.gather(engine.complete(PROMPTS[2], p), engine.complete(PROMPTS[2], p))
    assert a.text == b.text
    others = {
        (await engine.complete(PROMPTS[2], SamplingParams(max_tokens=12, temperature=1.0, seed=s))).text
        for s in range(6)
    }
    assert len(others) > 1, "different seeds should give different samples at temperature 1"


async def test_max_tokens_stop_and_logprobs(engine) -> None:
    short = await engine.complete(PROMPTS[1], SamplingParams(max_tokens=2, temperature=0))
    assert short.finish_reason == "length" and short.completion_tokens == 2
    full = await engine.complete(PROMPTS[1], GREEDY)
    assert len(full.text) > 2, full.text
    cut = await engine.complete(PROMPTS[1], SamplingParams(max_tokens=16, temperature=0, stop=(full.text[1:3],)))
    assert cut.text == full.text[:1] and cut.finish_reason == "stop"
    lp = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=4, temperature=0, logprobs=3))
    assert lp.logprobs and all(len(t.top) == 3 and t.top[0][1] >= t.logprob - 1e-6 for t in lp.logprobs)


async def test_prompt_too_long(engine) -> None:
    with pytest.raises(PromptTooLong):
        await engine.complete("Q: " + "a" * engine.max_model_len + "\nA: ", GREEDY)
    with pytest.raises(PromptTooLong):
        await engine.complete(PROMPTS[0], SamplingParams(max_tokens=engine.max_model_len))


async def test_cancelled_stream_leaves_engine_serving(engine) -> None:
    stream = engine.stream(PROMPTS[1], SamplingParams(max_tokens=100, temperature=1.0, stop=("never",)))
    await stream.__anext__()
    await stream.aclose()
    again = await engine.complete(PROMPTS[1], GREEDY)
    assert again.finish_reason in {"stop", "length"}


async def test_bad_adapter_is_an_engine_error(engine, toy_world, tmp_path) -> None:
    with pytest.raises(EngineError, match="no PEFT adapter"):
        await engine.complete(PROMPTS[0], GREEDY, adapter=Adapter("missing", str(tmp_path)))
    # an adapter trained for the bigger model does not fit this base
    big_adapter = tmp_path / "big_lora"
    from peft import LoraConfig, get_peft_model

    big = AutoModelForCausalLM.from_pretrained(str(toy_world.big_dir))
    get_peft_model(big, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(big_adapter)
    with pytest.raises(EngineError, match="does not fit"):
        await engine.complete(PROMPTS[0], GREEDY, adapter=Adapter("big-lora", str(big_adapter)))
    assert (await engine.complete(PROMPTS[0], GREEDY)).finish_reason in {"stop", "length"}


async def test_full_next_token_distribution(engine) -> None:
    lp = await engine.next_token_logprobs(PROMPTS[1])
    assert lp.ndim == 1 and abs(float(lp.exp().sum()) - 1.0) < 1e-4
