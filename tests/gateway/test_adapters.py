"""Adapter/base compatibility is checked from safetensors headers, before any engine loads the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from gateway.engines.adapters import adapter_mismatch
from gateway.runtime import Runtime
from gateway.spec import SpecError, parse_spec


def tiny(root: Path, hidden: int, layers: int = 1) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "base")
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(root / "lora")
    return root


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return tiny(tmp_path_factory.mktemp("small"), 64), tiny(tmp_path_factory.mktemp("big"), 128, layers=2)


def test_fitting_adapter(pair) -> None:
    small, big = pair
    assert adapter_mismatch(small / "lora", small / "base") is None
    assert adapter_mismatch(big / "lora", big / "base") is None


def test_adapter_for_another_base(pair) -> None:
    small, big = pair
    assert "another base" in adapter_mismatch(big / "lora", small / "base")
    # same width would pass the feature check, but the big adapter targets a layer the small base lacks
    assert adapter_mismatch(small / "lora", big / "base") is not None


def test_not_an_adapter(tmp_path: Path, pair) -> None:
    small, _ = pair
    assert "no adapter_config.json" in adapter_mismatch(tmp_path, small / "base")
    (tmp_path / "adapter_config.json").write_text("{broken")
    assert "not valid JSON" in adapter_mismatch(tmp_path, small / "base")


async def test_runtime_refuses_mismatched_adapter(pair) -> None:
    small, big = pair
    spec = parse_spec(
        {"experts": {"x": {"engine": "transformers", "model": str(small / "base"), "adapter": str(big / "lora")}}}
    )
    with pytest.raises(SpecError, match=r"experts\.x\.adapter: .*another base"):
        await Runtime.build(spec)
