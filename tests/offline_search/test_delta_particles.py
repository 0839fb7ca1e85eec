"""Model Swarms with ``particles: delta``: particles are the experts' weight deltas (``scale * B @ A``), written back as
exact LoRA adapters of the summed rank.

The toy world's real adapters: a combination of the adder's and the reverser's deltas is written, read back and
merged by PEFT into the base; the merged weights must be the base plus exactly that combination. Then a tiny search
runs end to end on the transformers engine and its best adapter loads in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gateway.engines.vllm import max_lora_rank_for
from offline_search.checkpoints import (
    CheckpointError,
    check_adapter_fits_base,
    delta_rank,
    lora_deltas,
    lora_scale,
    read_adapter,
    write_delta_adapter,
)
from offline_search.cli import print_swarm_report
from offline_search.config import load_swarm_config, prepare
from offline_search.model_swarms import run_swarm_search


def test_lora_scale_follows_peft() -> None:
    assert lora_scale({"r": 16, "lora_alpha": 32}, "model.layers.0.self_attn.q_proj") == 2.0
    assert lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}, "x.q_proj") == 8.0
    cfg = {"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"v_proj": 4}}
    assert lora_scale(cfg, "model.layers.0.self_attn.q_proj") == 4.0  # 16 / 4
    assert lora_scale(cfg, "model.layers.0.self_attn.v_proj") == 0.5  # 4 / 8
    assert lora_scale(cfg, "model.layers.0.self_attn.k_proj") == 2.0


def test_a_combination_of_deltas_is_written_exactly_and_peft_merges_it(toy_world, tmp_path: Path) -> None:
    adder = read_adapter(toy_world.expert_dirs["adder"])
    reverser = read_adapter(toy_world.expert_dirs["reverser"])
    da, dr = lora_deltas(adder), lora_deltas(reverser)
    assert da.keys() == dr.keys() and all(t.dtype == torch.float32 for t in da.values())
    rank = delta_rank([da, dr], [adder, reverser])
    assert rank == int(adder.config["r"]) + int(reverser.config["r"])
    combo = {k: 0.7 * da[k] + 1.3 * dr[k] for k in da}  # extrapolates past the reverser: w = 1.3
    out, digest = write_delta_adapter(tmp_path / "p", combo, adder, toy_world.base_dir, rank)
    again, digest2 = write_delta_adapter(tmp_path / "p", combo, adder, toy_world.base_dir, rank)
    assert (out, digest) == (again, digest2)  # same weights, same directory

    written = read_adapter(out)
    check_adapter_fits_base(written, toy_world.base_dir)
    assert written.config["r"] == rank and written.config["lora_alpha"] == rank
    back = lora_deltas(written)
    for k, t in combo.items():
        assert torch.allclose(back[k], t, rtol=1e-4, atol=1e-6 * float(t.abs().max())), k

    # PEFT reads the config the same way: merging gives base + combination
    from peft import PeftModel

    base_w = load_file(str(Path(toy_world.base_dir) / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(toy_world.base_dir))
    merged = PeftModel.from_pretrained(model, str(out)).merge_and_unload().state_dict()
    for k, t in combo.items():
        torch.testing.assert_close(merged[k].float(), base_w[k].float() + t, rtol=1e-4, atol=1e-5)


def test_max_lora_rank_is_the_smallest_slot_vllm_accepts() -> None:
    assert [max_lora_rank_for(r) for r in (1, 8, 9, 16, 24, 64, 65, 512)] == [1, 8, 16, 16, 32, 64, 128, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        max_lora_rank_for(513)


def test_dora_adapters_are_refused_as_deltas(toy_world) -> None:
    adder = read_adapter(toy_world.expert_dirs["adder"])
    adder.config["use_dora"] = True
    with pytest.raises(CheckpointError, match="DoRA"):
        lora_deltas(adder)


async def test_delta_swarm_search_end_to_end(toy_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "swarm"
    cfg = {
        "name": "delta-swarm",
        "spec": str(toy_world.spec_path),
        "experts": ["toy-adder", "toy-reverser"],
        "particles": "delta",
        "swarm_size": 3,
        "pso": {"max_iterations": 2},
        "data": {"paths": [str(toy_world.data_dir / "add"), str(toy_world.data_dir / "rev")], "dev_limit": 4},
        "utility": {"kind": "exact_match"},  # the mean: the harmonic mean is 0 for every particle on 4 questions a task
        "generation": {"max_tokens": 16},
        "engine": "transformers",
        "output_dir": str(out),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = await run_swarm_search(
        prepare(load_swarm_config(tmp_path / "c.yaml"), tmp_path / "c.yaml"), progress=False
    )
    best = read_adapter(result.best_dir)
    check_adapter_fits_base(best, toy_world.base_dir)
    assert best.config["r"] == 32  # two rank-16 specialists
    assert getattr(AutoModelForCausalLM.from_pretrained(result.best_dir), "_hf_peft_config_loaded", False)
    s = result.summary
    assert s["utility_evaluations"] == 6 and {"best_initial_particle", "uniform_average"} <= set(s["baselines"])
    rand = s["baselines"]["random_search"]  # as many draws as the search scored, starting with its iteration 0
    first = next(e for e in map(json.loads, (out / "log.jsonl").open()) if e["event"] == "iteration")
    assert rand["evaluations"] == len(rand["dev_all"]) == 6 and rand["dev_all"][:3] == first["utilities"]
    assert rand["dev"] == max(rand["dev_all"]) >= s["baselines"]["best_initial_particle"]["dev"]
    assert set(rand["test_per_task"]) == {"add", "rev"} and "test_relative_gain_vs_random_search" in s
    print_swarm_report(s)
    assert f"| random search (6 particles) | {rand['dev']:.4f} |" in capsys.readouterr().out
    entry = yaml.safe_load(result.spec_snippet.read_text())["ensembles"]["delta-swarm"]
    assert entry["adapter"] == str(result.best_dir.resolve()) and "engine_args" not in entry  # transformers: no slots
