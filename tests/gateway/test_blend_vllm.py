"""The blend executor on vLLM (CPU build here): speculative == naive on 100 toy prompts, full and top-k distributions,
and the top-k union approximation's error against the transformers engine's full distributions."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gateway import blending as B
from gateway.engines.base import SamplingParams
from gateway.runtime import Runtime
from gateway.spec import parse_spec
from tests.gateway.test_blend import MEMBERS, WEIGHTS, run, toy_prompts, toy_spec

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]  # slow: CI runs it after the default run

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
async def vrt(toy_world: Any):
    common = {"kind": "blend", "experts": MEMBERS, "weights": WEIGHTS}
    ens = {
        "naive": {**common, "speculate": 0},
        "spec": {**common, "speculate": 4},
        "naive_k": {**common, "speculate": 0, "top_k": 10},
        "spec_k": {**common, "speculate": 4, "top_k": 10},
    }
    spec = toy_spec(toy_world.root, ens, engine="vllm")
    for e in spec["experts"].values():
        e["engine_args"] = {"max_model_len": 256, "max_num_seqs": 32}
    runtime = await Runtime.build(parse_spec(spec))
    yield runtime
    await runtime.close()


async def test_greedy_speculative_equals_naive_on_100_prompts_vllm(vrt: Runtime, toy_world: Any) -> None:
    differ = []
    for p in toy_prompts(toy_world.root, 100):
        a = await run(vrt.executors["naive"], p, GREEDY)
        b = await run(vrt.executors["spec"], p, GREEDY)
        if a[1] != b[1]:
            differ.append(p)
        assert b[2][0]["blend"]["mode"] == "speculative"
    assert not differ, f"{len(differ)} prompts differ, e.g. {differ[:3]}"


async def test_topk_union_speculative_equals_its_naive_and_approximates_the_full_blend(
    vrt: Runtime, toy_world: Any
) -> None:
    same_as_full = 0
    prompts = toy_prompts(toy_world.root, 24)
    for p in prompts:
        a = await run(vrt.executors["naive_k"], p, GREEDY)
        b = await run(vrt.executors["spec_k"], p, GREEDY)
        assert a[1] == b[1], p
        same_as_full += a[1] == (await run(vrt.executors["naive"], p, GREEDY))[1]
    assert same_as_full >= 0.9 * len(prompts)


async def test_vllm_distributions_match_transformers_and_topk_error_is_small(vrt: Runtime, toy_world: Any) -> None:
    tf = await Runtime.build(parse_spec(toy_spec(toy_world.root, {})))
    try:
        tv_full, tv_k = [], []
        for p in toy_prompts(toy_world.root, 12):
            ids = tf.experts["big"].engine.encode_for_blend(p)
            for _ in range(6):
                full = [
                    await tf.experts[n].engine.next_token_logprobs(ids, adapter=tf.experts[n].adapter) for n in MEMBERS
                ]
                exact = B.combine(full, WEIGHTS)
                vl_full, vl_k = [], []
                for n in MEMBERS:
                    h = vrt.experts[n]
                    sess = await h.engine.open_scoring([h.adapter], top_k=None)
                    vl_full.append((await sess.feed(ids))[0, -1])
                    sess_k = await h.engine.open_scoring([h.adapter], top_k=10)
                    vl_k.append((await sess_k.feed(ids))[0, -1])
                tv_full.append(B.total_variation(exact, B.combine(vl_full, WEIGHTS)))
                tv_k.append(B.total_variation(exact, B.blend_topk(vl_k, WEIGHTS)))
                ids = [*ids, int(torch.argmax(exact))]
        assert max(tv_full) < 1e-3  # same model, two engines: numerically the same distributions
        assert sum(tv_k) / len(tv_k) < 0.05  # the top-10 union approximation's mean error on the toy world
    finally:
        await tf.close()
