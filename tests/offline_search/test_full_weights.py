"""Model Swarms over full checkpoints of one architecture: particles are whole models, each on its own engine."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from offline_search.config import load_swarm_config, prepare
from offline_search.model_swarms import run_swarm_search
from tests.gateway._fixtures_tiny import build_tiny_llama


async def test_full_weight_particles(tmp_path):
    a = build_tiny_llama(tmp_path / "a", seed=0)
    b = build_tiny_llama(tmp_path / "b", seed=1)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"q{i}", "answer": "x", "split": s} for s in ("dev", "test") for i in range(3)]
    (data / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "full-swarm",
        "experts": [{"name": "a", "model": a.base}, {"name": "b", "model": b.base}],
        "particles": "full",
        "swarm_size": 3,
        "pso": {"max_iterations": 2},
        "data": {"paths": [str(data / "tiny.jsonl")]},
        "generation": {"max_tokens": 4},
        "engine": "transformers",
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = await run_swarm_search(prepare(load_swarm_config(path), path), progress=False)

    best = result.best_dir
    model = AutoModelForCausalLM.from_pretrained(best)  # a plain checkpoint: config, tokenizer, weights
    assert model.config.hidden_size == 128 and (best / "tokenizer.json").is_file()
    w = load_file(str(best / "model.safetensors"))
    wa, wb = (
        load_file(str(tmp_path / "a" / "base" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "base" / "model.safetensors")),
    )
    key = "model.layers.0.self_attn.q_proj.weight"
    assert w[key].shape == wa[key].shape and w[key].dtype == torch.float32
    assert set(w) == set(wa)
    assert result.summary["utility_evaluations"] == 6
    logged = [json.loads(x) for x in (result.output_dir / "log.jsonl").read_text().splitlines()]
    scores = [u for r in logged if r["event"] == "iteration" for u in r["utilities"]]
    assert result.summary["best"]["dev"] == max(scores)
    snippet = yaml.safe_load(result.spec_snippet.read_text())["ensembles"]["full-swarm"]
    assert snippet == {**snippet, "kind": "expert", "model": str(best.resolve())} and "adapter" not in snippet
    assert not torch.equal(wa[key], wb[key])
