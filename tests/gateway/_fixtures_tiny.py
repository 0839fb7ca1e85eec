"""A tiny real model for engine tests, built in a few seconds with no hub access.

``build_tiny_llama(root)`` writes, deterministically for a seed:
- ``root/base``: a random-weight ``LlamaForCausalLM`` (hidden 128, 2 heads -> head_dim 64, which vLLM's CPU attention
  needs; 2 layers) with a char-level ``tokenizers`` tokenizer, a simple chat template, BOS/EOS;
- ``root/lora``: a random PEFT LoRA adapter on it (B is random, not zero, so the adapter changes outputs).

The same directories load in transformers, in vLLM (``AsyncLLM`` and ``vllm.entrypoints.openai.api_server``) and in
PEFT. The toy world (``toyworld``) supersedes this once it exists; this stays as the engines' self-contained fixture.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModel:
    base: str
    """Directory of the base checkpoint and its tokenizer."""
    lora: str
    """Directory of a random LoRA adapter on ``base``."""
    lora_rank: int
    max_position_embeddings: int


def _char_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # letters, digits, punctuation, " ", "\n"
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    root: str | Path, *, seed: int = 0, max_position_embeddings: int = 512, lora_rank: int = 8
) -> TinyModel:
    """Write the tiny base model and a random LoRA adapter under ``root`` (reused if already there)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = Path(root)
    base, lora = root / "base", root / "lora"
    done = root / "done.json"
    if done.exists():
        return TinyModel(str(base), str(lora), lora_rank, max_position_embeddings)

    tokenizer = _char_tokenizer()
    tokenizer.save_pretrained(base)
    vocab_size = 128  # >= len(tokenizer), rounded up
    assert len(tokenizer) <= vocab_size
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Sharper logits than the 0.02-std init, so greedy decoding has clear winners (no near-ties that flip
        # between fp32 kernels) and sampling is visibly seed-dependent.
        model.lm_head.weight.normal_(0.0, 0.5)
        # Special tokens (pad, bos, eos, unk) and the unused padding ids get zero logits: generations are printable
        # text and run to max_tokens or a stop string instead of ending early, which the tests rely on.
        model.lm_head.weight[: len(SPECIALS)] = 0.0
        model.lm_head.weight[len(tokenizer) :] = 0.0
    model.save_pretrained(base, safe_serialization=True)

    torch.manual_seed(seed + 1)
    peft_config = LoraConfig(
        r=lora_rank,
        lora_alpha=2 * lora_rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, peft_config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    peft_model.save_pretrained(str(lora))
    done.write_text(json.dumps({"seed": seed}))
    return TinyModel(str(base), str(lora), lora_rank, max_position_embeddings)


if __name__ == "__main__":
    import sys
    import time

    t0 = time.perf_counter()
    print(build_tiny_llama(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_llama"), f"{time.perf_counter() - t0:.1f}s")
