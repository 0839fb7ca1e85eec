"""Bad configs fail before any work, with a message naming the file, the key and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from offline_search.checkpoints import CheckpointError, check_adapter_fits_base, read_adapter, write_adapter
from offline_search.config import ConfigError, default_config_path, load_graph_config, load_swarm_config, prepare


def _lora(base_dir: Path, out: Path, *, seed: int, targets=("q_proj", "v_proj"), r: int = 4) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    )
    peft_model.save_pretrained(out)
    return out


def _other_base(out: Path) -> Path:
    """A base of another architecture (narrower) with the same tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.gateway._fixtures_tiny import _char_tokenizer

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    _char_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A miniature world: a tiny real base, two real LoRA experts on it, one for another base, datasets, a spec."""
    from tests.gateway._fixtures_tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("world")
    tiny = build_tiny_llama(root / "tiny")
    base = Path(tiny.base)
    _lora(base, root / "experts" / "a", seed=1)
    _lora(base, root / "experts" / "b", seed=2)
    _lora(base, root / "experts" / "wide", seed=3, r=8)
    other = _other_base(root / "other")
    _lora(other, root / "experts" / "foreign", seed=4)
    for task in ("t1", "t2"):
        d = root / "data" / task
        d.mkdir(parents=True)
        for split in ("dev", "test"):
            (d / f"{split}.jsonl").write_text(
                "".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(4))
            )
    empty = root / "data" / "empty"
    empty.mkdir()
    (empty / "dev.jsonl").write_text("")
    (empty / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    spec = {
        "experts": {
            "x-a": {"engine": "transformers", "model": str(base), "adapter": "experts/a"},
            "x-b": {"engine": "transformers", "model": str(base), "adapter": "experts/b"},
            "x-wide": {"engine": "transformers", "model": str(base), "adapter": "experts/wide"},
            "x-foreign": {"engine": "transformers", "model": str(base), "adapter": "experts/foreign"},
            "x-remote": {"engine": "openai", "url": "http://localhost:1/v1", "model": "m"},
        }
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root


def write_config(world: Path, tmp_path: Path, **over) -> Path:
    cfg = {
        "spec": str(world / "spec.yaml"),
        "experts": ["x-a", "x-b"],
        "data": {"paths": [str(world / "data" / "t1"), str(world / "data" / "t2")]},
        "utility": {"kind": "exact_match", "multitask": True},
        "output_dir": str(tmp_path / "out"),
    }
    cfg.update(over)
    p = tmp_path / "search.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def fails(path: Path, key: str, fragment: str, *, graph: bool = False) -> ConfigError:
    load = load_graph_config if graph else load_swarm_config
    with pytest.raises(ConfigError) as err:
        prepare(load(path), path)
    assert err.value.key == key, str(err.value)
    assert fragment in err.value.problem, str(err.value)
    assert str(path) in str(err.value)
    return err.value


def test_a_good_config_resolves(world, tmp_path):
    p = prepare(load_swarm_config(write_config(world, tmp_path)), write_config(world, tmp_path))
    assert [e.name for e in p.experts] == ["x-a", "x-b"]
    assert len(p.splits.dev) == 8 and p.splits.tasks() == ["t1", "t2"]
    assert p.experts[0].adapter.endswith("experts/a") and p.experts[0].engine == "transformers"


def test_missing_dataset(world, tmp_path):
    fails(
        write_config(world, tmp_path, data={"paths": [str(world / "data" / "t1"), str(world / "nope")]}),
        "data.paths[1]",
        "not found",
    )


def test_empty_dev_split(world, tmp_path):
    fails(
        write_config(world, tmp_path, data={"paths": [str(world / "data" / "empty")]}),
        "data.paths[0]",
        "dev split is empty",
    )


def test_unknown_expert(world, tmp_path):
    err = fails(write_config(world, tmp_path, experts=["x-a", "x-nope"]), "experts[1]", "unknown expert 'x-nope'")
    assert "x-b" in err.problem  # lists the known ones


def test_adapter_made_for_another_base(world, tmp_path):
    err = fails(write_config(world, tmp_path, experts=["x-a", "x-foreign"]), "experts[1]", "architecture differs")
    assert "hidden_size" in err.problem
    # with the provenance removed, the shapes still give it away
    bare = tmp_path / "bare"
    shutil.copytree(world / "experts" / "foreign", bare)
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit base weight"):
        check_adapter_fits_base(read_adapter(bare), world / "tiny" / "base")


def test_experts_with_other_lora_settings_cant_swarm(world, tmp_path):
    fails(write_config(world, tmp_path, experts=["x-a", "x-wide"]), "experts", "different LoRA settings")


def test_remote_experts_cant_be_searched(world, tmp_path):
    fails(write_config(world, tmp_path, experts=["x-a", "x-remote"]), "experts[1]", "remote")


def test_schema_errors_name_the_key(world, tmp_path):
    fails(write_config(world, tmp_path, pso={"max_iterations": 0}), "pso.max_iterations", "greater than or equal")
    fails(write_config(world, tmp_path, swarm_sise=3), "swarm_sise", "Extra inputs")
    fails(write_config(world, tmp_path, utility={"kind": "llm_judge"}), "utility", "needs 'url'")
    fails(write_config(world, tmp_path, swarm_size=1), "swarm_size", "greater than or equal")
    fails(write_config(world, tmp_path, experts=["x-a", "x-a"]), "experts", "listed twice")


def test_report_utility_is_checked_like_the_search_utility(world, tmp_path):
    missing = {"kind": "reward_model", "model": str(tmp_path / "no-rm")}
    fails(write_config(world, tmp_path, report_utility=missing), "report_utility.model", "checkpoint not found")
    fails(write_config(world, tmp_path, report_utility={"kind": "llm_judge"}), "report_utility", "needs 'url'")
    fails(write_config(world, tmp_path, report_utility={"kind": "similarity"}), "report_utility.kind", "Input should")
    path = write_config(world, tmp_path, utility={"kind": "edit_similarity"}, report_utility={"kind": "exact_match"})
    assert prepare(load_swarm_config(path), path).config.report_utility.kind == "exact_match"


def test_graph_config_without_weight_step_accepts_mixed_adapters(world, tmp_path):
    path = write_config(world, tmp_path, experts=["x-a", "x-wide"], utility={"kind": "exact_match"})
    p = prepare(load_graph_config(path), path)
    assert [e.name for e in p.experts] == ["x-a", "x-wide"]
    path = write_config(world, tmp_path, experts=["x-a", "x-wide"], weight_step={"iterations": 2})
    fails(path, "experts", "different LoRA settings", graph=True)


def test_written_adapters_load_in_peft_and_are_content_named(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a = read_adapter(world / "experts" / "a")
    d1, h1 = write_adapter(tmp_path / "p", a.tensors, a, world / "tiny" / "base")
    d2, h2 = write_adapter(tmp_path / "p", {k: t.clone() for k, t in a.tensors.items()}, a, world / "tiny" / "base")
    assert d1 == d2 and h1 == h2
    d3, h3 = write_adapter(tmp_path / "p", {k: 2 * t for k, t in a.tensors.items()}, a, world / "tiny" / "base")
    assert h3 != h1
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world / "tiny" / "base"), str(d3))
    assert model is not None
    check_adapter_fits_base(read_adapter(d3), world / "tiny" / "base")


def test_cli_exits_2_with_the_message(world, tmp_path):
    from offline_search.cli import app

    path = write_config(world, tmp_path, experts=["x-a", "x-nope"])
    res = CliRunner().invoke(app, ["swarm", "--config", str(path), "--quiet"])
    assert res.exit_code == 2
    assert "experts[1]" in res.output and "unknown expert 'x-nope'" in res.output
    assert not (tmp_path / "out").exists()  # no work done


def test_default_configs_parse():
    assert load_swarm_config(default_config_path("swarm")).toy_world
    assert load_graph_config(default_config_path("graph")).prompts == "toy"


def test_a_searched_model_names_the_tasks_it_was_searched_for() -> None:
    from offline_search.base import searched_for

    assert searched_for(["count", "sort"]) == "count and sort only"
    assert searched_for(["add", "rev", "sort"]) == "add, rev and sort only"
    assert searched_for(["sort"]) == "sort only"
