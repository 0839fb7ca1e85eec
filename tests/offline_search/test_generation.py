"""BatchGenerator: output cache (in memory and on disk), cross-caller coalescing, no caching of random samples."""

from __future__ import annotations

import asyncio

from gateway.engines.base import Adapter, SamplingParams
from gateway.executors.base import ExpertHandle
from offline_search.generation import BatchGenerator, OutputCache
from tests.offline_search.fakes import RuleEngine

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def handle(engine: RuleEngine, skill: str, version: str = "0") -> ExpertHandle:
    return ExpertHandle(name=skill, engine=engine, adapter=Adapter(name=f"toy-{skill}@{version}", path="/x"))


async def test_cache_answers_repeats_and_persists(tmp_path):
    eng = RuleEngine()
    gen = BatchGenerator(OutputCache(tmp_path / "cache.jsonl"))
    qs = [[{"role": "user", "content": f"add {i} {i}"}] for i in range(5)]
    assert await gen.generate(handle(eng, "add"), qs, GREEDY) == [str(2 * i) for i in range(5)]
    assert await gen.generate(handle(eng, "add"), qs, GREEDY) == [str(2 * i) for i in range(5)]
    assert eng.calls == 5 and gen.stats.cache_hits == 5 and gen.stats.generated == 5
    # another adapter content (name) is another model: not a hit
    await gen.generate(handle(eng, "add", version="1"), qs[:2], GREEDY)
    assert eng.calls == 7
    # a new generator over the same file (a resumed search) starts warm
    gen2 = BatchGenerator(OutputCache(tmp_path / "cache.jsonl"))
    assert await gen2.generate(handle(eng, "add"), qs, GREEDY) == [str(2 * i) for i in range(5)]
    assert eng.calls == 7 and gen2.stats.generated == 0


async def test_cut_cache_lines_are_ignored(tmp_path):
    f = tmp_path / "cache.jsonl"
    f.write_text('{"k": "a", "t": "1"}\n{"k": "b", "t"')
    assert len(OutputCache(f)) == 1


async def test_concurrent_callers_share_one_batch_and_identical_requests_run_once():
    eng = RuleEngine()
    gen = BatchGenerator(OutputCache())
    q = [[{"role": "user", "content": "rev abc"}]]
    results = await asyncio.gather(
        gen.generate(handle(eng, "add"), [[{"role": "user", "content": "add 1 2"}]] * 3, GREEDY),
        gen.generate(handle(eng, "rev"), q, GREEDY),
        gen.generate(handle(eng, "rev"), q, GREEDY),
    )
    assert results == [["3", "3", "3"], ["cba"], ["cba"]]
    assert eng.batches == [2]  # one complete_batch: "add 1 2" once, "rev abc" once
    assert gen.stats.requested == 5 and gen.stats.generated == 2 and gen.stats.cache_hits == 3


async def test_without_cache_everything_is_generated():
    eng = RuleEngine()
    gen = BatchGenerator(None)
    q = [[{"role": "user", "content": "add 1 2"}]] * 4
    await gen.generate(handle(eng, "add"), q, GREEDY)
    await gen.generate(handle(eng, "add"), q, GREEDY)
    assert eng.calls == 8 and gen.stats.cache_hits == 0


async def test_unseeded_sampling_is_never_cached():
    eng = RuleEngine()
    gen = BatchGenerator(OutputCache())
    q = [[{"role": "user", "content": "add 1 2"}]]
    hot = SamplingParams(max_tokens=8, temperature=0.8)
    await gen.generate(handle(eng, "add"), q, hot)
    await gen.generate(handle(eng, "add"), q, hot)
    assert eng.calls == 2
    seeded = SamplingParams(max_tokens=8, temperature=0.8, seed=1)
    await gen.generate(handle(eng, "add"), q, seeded)
    await gen.generate(handle(eng, "add"), q, seeded)
    assert eng.calls == 3


async def test_engine_errors_reach_every_waiter_and_are_not_cached():
    class Broken(RuleEngine):
        async def complete_batch(self, prompts, params, *, adapters=None):
            raise RuntimeError("engine down")

    eng = Broken()
    gen = BatchGenerator(OutputCache())
    q = [[{"role": "user", "content": "add 1 2"}]]
    out = await asyncio.gather(
        gen.generate(handle(eng, "add"), q, GREEDY), gen.generate(handle(eng, "add"), q, GREEDY), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in out)
    assert len(gen.cache) == 0 and not gen._inflight
