"""The toy world's char-level tokenizer: one token per character, built with ``tokenizers`` and saved as a standard
``PreTrainedTokenizerFast`` (``tokenizer.json`` + ``tokenizer_config.json`` + chat template) that
``AutoTokenizer.from_pretrained`` and vLLM load as is.

The tokenizer adds no BOS/EOS on encode: prompts are exactly the characters of the text, in training and serving.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
"""Special tokens, ids 0..3 in this order."""
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
"""Every ordinary token: newline and printable ASCII (ids 4..)."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'Q: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'A: ' + message['content'] + '</s>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}"
)
"""user -> ``Q: {content}\\n``; assistant -> ``A: {content}</s>\\n``; system ignored; generation prompt ``A: ``."""


def vocab() -> dict[str, int]:
    """Token -> id: the special tokens, then one id per character."""
    return {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *CHARS])}


def encode(text: str) -> list[int]:
    """Fast pure-Python encoding, identical to the saved tokenizer's (special tokens only as whole ``</s>`` etc.)."""
    v = vocab()
    unk = v[UNK]
    ids: list[int] = []
    i = 0
    while i < len(text):
        for special in SPECIAL_TOKENS:
            if text.startswith(special, i):
                ids.append(v[special])
                i += len(special)
                break
        else:
            ids.append(v.get(text[i], unk))
            i += 1
    return ids


def build_tokenizer() -> Tokenizer:
    """The raw ``tokenizers`` object: WordLevel over single characters, per-char split, Fuse decoder."""
    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def build_hf_tokenizer():  # -> PreTrainedTokenizerFast (import kept local: transformers is slow to import)
    """The tokenizer as ``transformers`` sees it, with special tokens and the chat template set."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
        padding_side="left",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(directory: str | Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` into ``directory``.

    ``tokenizer_config.json`` names the portable ``PreTrainedTokenizerFast`` class and repeats the chat template,
    so older ``transformers`` (and tools reading the config directly) see the same tokenizer.
    """
    import json

    build_hf_tokenizer().save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
