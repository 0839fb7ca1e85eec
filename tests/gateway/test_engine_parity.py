"""The transformers and vLLM engines give the same greedy output on the same toy prompts (base and LoRA experts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.engines import create_engine
from gateway.engines.base import Adapter, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # slow: CI runs it; test_vllm_gateway checks parity by default

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


def toy_prompts(toy_world, per_task: int = 4) -> list[tuple[str, str, str]]:
    """(task, question, answer) from each task's test split."""
    out = []
    for task_dir in sorted(Path(toy_world.data_dir).iterdir()):
        for line in (task_dir / "test.jsonl").read_text().splitlines()[:per_task]:
            ex = json.loads(line)
            out.append((task_dir.name, ex["question"], ex["answer"]))
    return out


@pytest.fixture(scope="module")
async def engines(toy_world):
    tf = create_engine("transformers", str(toy_world.base_dir))
    vl = create_engine("vllm", str(toy_world.base_dir), max_model_len=256)
    await tf.start()
    await vl.start()
    yield tf, vl
    await vl.close()
    await tf.close()


@pytest.mark.parametrize("expert", [None, "adder", "reverser", "sorter", "counter"])
async def test_same_greedy_output(engines, toy_world, expert: str | None) -> None:
    tf, vl = engines
    adapter = Adapter(name=f"parity-{expert}", path=str(toy_world.expert_dirs[expert])) if expert else None
    items = toy_prompts(toy_world)
    prompts = [[{"role": "user", "content": q}] for _, q, _ in items]
    adapters = [adapter] * len(prompts)
    a = await tf.complete_batch(prompts, GREEDY, adapters=adapters)
    b = await vl.complete_batch(prompts, GREEDY, adapters=adapters)
    mismatches = [(q, x.text, y.text) for (_, q, _), x, y in zip(items, a, b, strict=True) if x.text != y.text]
    assert not mismatches, f"{len(mismatches)}/{len(items)} differ, e.g. {mismatches[:3]}"
    assert [x.prompt_tokens for x in a] == [y.prompt_tokens for y in b]
    assert [x.completion_tokens for x in a] == [y.completion_tokens for y in b]
