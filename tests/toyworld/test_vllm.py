"""vLLM (CPU build in CI) loads the toy checkpoints as saved: base + LoRA adapters and the big model, and its greedy
answers match transformers'. Slow (engine start-up): ``pytest -m slow tests/toyworld/test_vllm.py``."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

from toyworld.build import ToyWorld
from toyworld.format import render
from toyworld.tasks import SKILLS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

EXPERT_OF = {"add": "adder", "rev": "reverser", "sort": "sorter", "count": "counter"}


def _hf_greedy(model_dir: str, adapter: str | None, prompts: list[str]) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        with torch.no_grad():
            gen = model.eval().generate(**ids, max_new_tokens=10, do_sample=False)
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("dtype", ["float32"])
def test_vllm_matches_transformers(toy_world: ToyWorld, dtype: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    greedy = SamplingParams(temperature=0.0, max_tokens=10)
    prompts = {s: [render(e.question) for e in toy_world.examples(s, "dev")[:4]] for s in SKILLS}
    llm = LLM(
        model=str(toy_world.base_dir),
        enable_lora=True,
        max_lora_rank=16,
        max_loras=4,
        max_model_len=256,
        dtype=dtype,
        enforce_eager=True,
        max_num_seqs=16,
    )
    for i, (skill, name) in enumerate(EXPERT_OF.items(), start=1):
        adapter = str(toy_world.expert_dirs[name])
        got = [
            o.outputs[0].text for o in llm.generate(prompts[skill], greedy, lora_request=LoRARequest(name, i, adapter))
        ]
        assert got == _hf_greedy(str(toy_world.base_dir), adapter, prompts[skill]), name
    chat = llm.chat(
        [{"role": "user", "content": "add 23 45"}],
        greedy,
        lora_request=LoRARequest("adder", 1, str(toy_world.expert_dirs["adder"])),
    )
    assert (
        chat[0].outputs[0].text
        == _hf_greedy(str(toy_world.base_dir), str(toy_world.expert_dirs["adder"]), [render("add 23 45")])[0]
    )
    del llm
    big = LLM(model=str(toy_world.big_dir), max_model_len=256, dtype=dtype, enforce_eager=True, max_num_seqs=16)
    flat = [p for ps in prompts.values() for p in ps]
    assert [o.outputs[0].text for o in big.generate(flat, greedy)] == _hf_greedy(str(toy_world.big_dir), None, flat)
