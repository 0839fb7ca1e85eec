"""Blending members with different tokenizers and architectures: the aligned blend equals a blend computed by hand.

The second member is built here: a tiny random GPT-2 (another architecture than the toy Llamas) with a BPE tokenizer
whose vocabulary has multi-character tokens ("ab", "12", "A:", ...) on top of the toy world's characters, biased
towards them, so the blend sometimes picks text that is one token for it and several for the toy model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.engines.base import SamplingParams
from gateway.executors.base import ExecRequest, StepInfo
from gateway.runtime import Runtime
from gateway.spec import parse_spec
from toyworld.format import render

pytestmark = pytest.mark.timeout(600)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
MERGES = [("a", "b"), ("1", "2"), ("A", ":"), ("c", "d"), ("3", "4"), ("b", "c")]


def build_alt(root: Path) -> Path:
    """A tiny GPT-2 with a merges-BPE tokenizer over the toy characters (deterministic; reused if present)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from toyworld.tokenizer import CHARS, CHAT_TEMPLATE

    out = root / "alt"
    if (out / "done").exists():
        return out
    vocab = {t: i for i, t in enumerate([*SPECIALS, *CHARS, *(a + b for a, b in MERGES)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.4)
        merged = [vocab[a + b] for a, b in MERGES]
        model.lm_head.weight[merged] *= 3.0
    model.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out)
    (out / "done").write_text("1")
    return out


async def _hand_blend(rt: Runtime, names: list[str], weights: list[float], prompt: str, steps: int) -> tuple[str, int]:
    """Greedy linear blend by hand: each member's full distribution on its own tokenization (recomputed from scratch),
    summed per surface string; a member appends the chosen text as one token when it has one, else re-encodes."""
    members = [rt.experts[n] for n in names]
    toks = [m.engine.blend_tokenizer() for m in members]
    eos = [m.engine.blend_eos_ids() for m in members]
    ids = [m.engine.encode_for_blend(prompt) for m in members]
    base = [len(x) for x in ids]
    text = ""
    reencoded = 0
    for _ in range(steps):
        mix: dict[str, float] = {}
        for m, tok, e, x, w in zip(members, toks, eos, ids, weights, strict=True):
            lp = await m.engine.next_token_logprobs(x, adapter=m.adapter)
            special = set(tok.all_special_ids)
            for i, p in enumerate(lp.exp().tolist()):
                if i >= len(tok):
                    continue
                key = "<EOS>" if i in e else (None if i in special else tok.decode([i]))
                if key:
                    mix[key] = mix.get(key, 0.0) + w * p
        piece = max(mix, key=lambda k: mix[k])
        if piece == "<EOS>":
            break
        for j, tok in enumerate(toks):
            single = [i for i in range(len(tok)) if i not in tok.all_special_ids and tok.decode([i]) == piece]
            if single:
                ids[j] = [*ids[j], single[0]]
            else:
                ids[j] = ids[j][: base[j]] + tok.encode(text + piece, add_special_tokens=False)
                reencoded += 1
        text += piece
    return text, reencoded


async def test_cross_tokenizer_blend_equals_the_hand_blend(tmp_path_factory: Any, toy_world: Any) -> None:
    alt = build_alt(tmp_path_factory.mktemp("alt"))
    spec = {
        "experts": {
            "big": {"engine": "transformers", "model": f"{toy_world.root}/big"},
            "alt": {"engine": "transformers", "model": str(alt)},
        },
        "ensembles": {
            "mix": {"kind": "blend", "experts": ["big", "alt"], "weights": [0.5, 0.5], "speculate": 4},
            "alt_only": {"kind": "blend", "experts": ["alt", "big"], "weights": [1.0, 0.0]},
        },
    }
    rt = await Runtime.build(parse_spec(spec))
    try:
        ex = rt.executors["mix"]
        assert ex.mode() == "aligned"  # different vocabularies: speculation falls back to aligned steps
        rows = [json.loads(x) for x in (toy_world.root / "data" / "add" / "dev.jsonl").read_text().splitlines()]
        prompts = [render(r["question"]) for r in rows[:4]] + [render("rev abcd"), render("sort cdab")]
        params = SamplingParams(max_tokens=8, temperature=0.0)
        total_reencoded = 0
        for p in prompts:
            want, reencoded = await _hand_blend(rt, ["big", "alt"], [0.5, 0.5], p, 8)
            total_reencoded += reencoded
            got, steps = "", []
            async for ev in ex.stream(ExecRequest(p, params, "t")):
                if isinstance(ev, StepInfo):
                    steps.append(ev.public())
                else:
                    got += ev.text
            assert got == want, p
            assert steps[0]["blend"]["mode"] == "aligned"
        assert total_reencoded > 0  # the test exercised re-encoding (chosen text that is not one toy token)
        # a blend that puts all weight on the alt member decodes what the alt member decodes alone
        alone = await rt.experts["alt"].complete(prompts[0], params)
        got = ""
        async for ev in rt.executors["alt_only"].stream(ExecRequest(prompts[0], params, "t")):
            if not isinstance(ev, StepInfo):
                got += ev.text
        assert got == alone.text
    finally:
        await rt.close()
