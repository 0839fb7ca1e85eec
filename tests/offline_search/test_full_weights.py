"""Model Swarms over full checkpoints of one architecture: particles are whole models, each on its own engine.

The two particles are real and differ in skill: the toy base (weak at addition) and the toy base with the adder
LoRA merged into its weights (strong at addition). The utilities therefore differ, and the checkpoint the search saves
as its best is re-scored independently (HF ``generate``, not the search's engine) to show it is the one that scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from offline_search.config import load_swarm_config, prepare
from offline_search.model_swarms import run_swarm_search


def merged_adder(toy_world, out: Path) -> Path:
    """The toy base with the adder LoRA merged in: a plain full checkpoint of the base's architecture."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(toy_world.base_dir))
    PeftModel.from_pretrained(base, str(toy_world.expert_dirs["adder"])).merge_and_unload().save_pretrained(out)
    for f in Path(toy_world.base_dir).iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, out / f.name)
    return out


def greedy_answers(model_dir: str | Path, questions: list[str], max_new: int = 8) -> list[str]:
    """Greedy chat answers from HF ``generate`` (the served path: chat template, then the model)."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out = []
    for q in questions:
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return out


async def test_full_weight_particles(tmp_path: Path, toy_world) -> None:
    adder = merged_adder(toy_world, tmp_path / "adder-full")
    dev = toy_world.examples("add", "dev")[:4]
    test = toy_world.examples("add", "test")[:4]
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"question": e.question, "answer": e.answer, "split": s}
        for s, exs in (("dev", dev), ("test", test))
        for e in exs
    ]
    (data / "add.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "full-swarm",
        "experts": [{"name": "adder", "model": str(adder)}, {"name": "base", "model": str(toy_world.base_dir)}],
        "particles": "full",
        "swarm_size": 3,
        "pso": {"max_iterations": 2},
        "data": {"paths": [str(data / "add.jsonl")]},
        "generation": {"max_tokens": 8},
        "engine": "transformers",
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = await run_swarm_search(prepare(load_swarm_config(path), path), progress=False)

    best = result.best_dir
    model = AutoModelForCausalLM.from_pretrained(best)  # a plain checkpoint: config, tokenizer, weights
    base_cfg = json.loads((Path(toy_world.base_dir) / "config.json").read_text())
    assert model.config.hidden_size == base_cfg["hidden_size"] and (best / "tokenizer.json").is_file()
    w = load_file(str(best / "model.safetensors"))
    wbase = load_file(str(Path(toy_world.base_dir) / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert w[key].shape == wbase[key].shape and w[key].dtype == torch.float32
    assert set(w) == set(wbase)
    assert result.summary["utility_evaluations"] == 6
    logged = [json.loads(x) for x in (result.output_dir / "log.jsonl").read_text().splitlines()]
    scores = [u for r in logged if r["event"] == "iteration" for u in r["utilities"]]
    experts = result.summary["experts"]
    assert experts["adder"]["dev"] >= 0.75 > experts["base"]["dev"], experts  # the particles really differ
    assert result.summary["best"]["dev"] == max(scores) >= experts["adder"]["dev"] and min(scores) < max(scores)
    # the saved checkpoint is the one that scored best: re-scored on dev with HF generate, independently
    again = greedy_answers(best, [e.question for e in dev])
    assert sum(a == e.answer for a, e in zip(again, dev, strict=True)) / len(dev) == result.summary["best"]["dev"]
    assert not torch.equal(w[key], wbase[key])  # not the (weaker) base's weights
    snippet = yaml.safe_load(result.spec_snippet.read_text())["ensembles"]["full-swarm"]
    assert snippet == {**snippet, "kind": "expert", "model": str(best.resolve())} and "adapter" not in snippet
