"""The char-level tokenizer: round trips, special tokens, chat template (saved and reloaded via AutoTokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toyworld.format import KTP_TEMPLATE, PREDECESSOR_RESPONSE, PREDECESSOR_TEMPLATE, render
from toyworld.tokenizer import CHARS, SPECIAL_TOKENS, encode, save_tokenizer, vocab


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    d: Path = tmp_path_factory.mktemp("tok")
    save_tokenizer(d)
    assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()
    return AutoTokenizer.from_pretrained(str(d))


TEXTS = ["Q: add 47 38\nA: 85", "  two  spaces \n\nnewlines\n", "rev abcdef", "P: ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"]


def test_vocab_layout() -> None:
    v = vocab()
    assert [v[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert len(v) == len(SPECIAL_TOKENS) + len(CHARS)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text: str) -> None:
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids == encode(text)  # one id per char, no BOS/EOS added
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_special_tokens(tok) -> None:
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == tuple(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 2)
    ids = tok("A: 85</s>")["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids == encode("A: 85</s>")
    assert tok.decode(ids, skip_special_tokens=True) == "A: 85"
    assert tok("é")["input_ids"] == [tok.unk_token_id]


def test_chat_template(tok) -> None:
    msgs = [{"role": "user", "content": "add 1 2"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "Q: add 1 2\nA: "
    convo = [{"role": "system", "content": "ignored"}, *msgs, {"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(convo, tokenize=False) == "Q: add 1 2\nA: 3</s>\n"


def test_chat_template_matches_render(tok) -> None:
    def chat(content: str) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    assert chat("addrev 12 34") == render("addrev 12 34")
    assert chat(KTP_TEMPLATE.format(question="addrev 12 34", previous="46")) == render("addrev 12 34", ["46"])
    responses = "".join(PREDECESSOR_RESPONSE.format(response=r) for r in ["46", "x y"])
    assert chat(PREDECESSOR_TEMPLATE.format(question="q 1", responses=responses)) == render("q 1", ["46", "x y"])
