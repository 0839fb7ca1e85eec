"""The engine pool: experts on one base share an engine, adapters are named by path and content, reloads share."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gateway.engines.base import SamplingParams
from gateway.engines.pool import EnginePool
from gateway.runtime import RuntimeHolder
from gateway.spec import ExpertSpec


def local(model: Path, adapter: Path | None = None, **engine_args) -> ExpertSpec:
    return ExpertSpec(engine="transformers", model=str(model), adapter=str(adapter) if adapter else None,
                      engine_args=engine_args)  # fmt: skip


def remote(url: str, **more) -> ExpertSpec:
    # max_model_len given: starting the engine asks the server nothing
    return ExpertSpec(engine="openai", model="big", url=url, engine_args={"max_model_len": 64}, **more)


def fake_adapter(d: Path, weights: bytes = b"w1") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "adapter_model.safetensors").write_bytes(weights)
    return d


def test_experts_on_one_base_share_an_engine(tmp_path: Path) -> None:
    base, link = tmp_path / "base", tmp_path / "link"
    base.mkdir()
    link.symlink_to(base)  # a model counts by where it really is
    pool = EnginePool()
    a = pool.expert("a", local(base, fake_adapter(tmp_path / "a")))
    b = pool.expert("b", local(link, fake_adapter(tmp_path / "b")))
    other_args = pool.expert("c", local(base, max_adapters=4))
    assert a.engine is b.engine and other_args.engine is not a.engine
    assert a.adapter is not None and a.adapter.name.startswith("a@") and a.adapter.path == str(tmp_path / "a")
    # the openai engine's url and timeout pick the server: another url or timeout is another engine
    r1, r2, r3 = (pool.expert("r", remote(u, timeout_s=t)) for u, t in [("http://a/v1", 5), ("http://b/v1", 5),
                                                                            ("http://a/v1", 9)])  # fmt: skip
    assert len({id(r.engine) for r in (r1, r2, r3)}) == 3
    assert pool.expert("r", remote("http://a/v1", timeout_s=5)).engine is r1.engine
    assert len(pool.engines) == 5


def test_adapter_names_follow_content_and_place_not_mtime(tmp_path: Path) -> None:
    pool = EnginePool()
    d = fake_adapter(tmp_path / "x")
    first = pool.adapter("x", d).name
    assert first == pool.adapter("x", d).name and first.startswith("x@")
    os.utime(d / "adapter_model.safetensors", ns=(1, 1))  # touched, unchanged: same name
    assert pool.adapter("x", d).name == first
    fake_adapter(d, b"w2")  # rewritten (a hot reload must serve the new weights): a new name
    assert pool.adapter("x", d).name != first
    fake_adapter(d, b"w1")  # the old weights again: the old name
    assert pool.adapter("x", d).name == first
    # the same bytes elsewhere: another name (vLLM refuses one adapter name at two paths)
    copy = fake_adapter(tmp_path / "copy")
    assert pool.adapter("x", copy).name != first
    assert EnginePool().adapter("x", d).name == first  # a fresh pool (a resumed search) names it the same


async def test_a_replacing_pool_shares_engines_and_closes_only_its_own() -> None:
    old = EnginePool()
    kept, gone = old.expert("a", remote("http://a/v1")), old.expert("b", remote("http://b/v1"))
    await old.start()
    new = EnginePool(reuse=old)
    assert new.expert("a", remote("http://a/v1")).engine is kept.engine
    fresh = new.expert("c", remote("http://c/v1")).engine
    await new.start()
    await new.close(keep=old)  # a build that failed closes what it created, not what it took over
    assert fresh._client is None and kept.engine._client is not None
    await old.close()
    assert kept.engine._client is None and gone.engine._client is None


async def test_a_reload_serves_a_rewritten_adapter_on_the_same_engine(toy_world, tmp_path: Path) -> None:
    """Engines cache adapters by name: a reload names the rewritten adapter anew, so its new weights answer."""
    adapter = tmp_path / "adapter"
    shutil.copytree(toy_world.expert_dirs["adder"], adapter, copy_function=shutil.copyfile)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"experts:\n  toy-x: {{engine: transformers, model: {toy_world.base_dir}, adapter: {adapter}}}\n")
    greedy, prompt = SamplingParams(max_tokens=16, temperature=0.0), "Q: rev abcdef\nA: "
    holder = RuntimeHolder(spec)
    try:
        first = (await holder.load()).experts["toy-x"]
        before = (await first.complete(prompt, greedy)).text
        shutil.copytree(toy_world.expert_dirs["reverser"], adapter, dirs_exist_ok=True, copy_function=shutil.copyfile)
        spec.write_text(spec.read_text() + "\n")
        assert await holder.reload_if_changed() == "ok"
        assert holder.runtime is not None
        second = holder.runtime.experts["toy-x"]
        assert second.engine is first.engine and second.adapter != first.adapter
        assert (await second.complete(prompt, greedy)).text == "fedcba" != before
    finally:
        await holder.close()
