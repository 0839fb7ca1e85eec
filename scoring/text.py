"""Comparing an answer with a reference as plain strings: the one normalisation and the one exact match.

``normalise`` strips surrounding whitespace and collapses inner runs of whitespace to one space (optionally
case-folding); ``exact_match`` and ``edit_similarity`` compare after it. Token F1 keeps SQuAD's own bag-of-words rule
(lowercased, punctuation and articles dropped), since that is what "token F1" means in the literature.
"""

from __future__ import annotations

import re
import string
from collections import Counter


def normalise(text: str, *, case_sensitive: bool = True) -> str:
    """``text`` without surrounding whitespace, inner whitespace runs as one space, case-folded unless
    ``case_sensitive``."""
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def exact_match(prediction: str, reference: str | None, *, case_sensitive: bool = True) -> float:
    """1.0 when prediction and reference are equal after ``normalise``, else 0.0 (0.0 without a reference)."""
    if reference is None:
        return 0.0
    same = normalise(prediction, case_sensitive=case_sensitive) == normalise(reference, case_sensitive=case_sensitive)
    return 1.0 if same else 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(prediction: str, reference: str | None, *, case_sensitive: bool = True) -> float:
    """``1 - levenshtein / max(len)`` after ``normalise``: partial credit for a nearly right answer, 1.0 exactly when
    ``exact_match`` gives 1.0 (0.0 without a reference)."""
    if reference is None:
        return 0.0
    a, b = normalise(prediction, case_sensitive=case_sensitive), normalise(reference, case_sensitive=case_sensitive)
    return 1.0 - levenshtein(a, b) / max(len(a), len(b)) if a or b else 1.0


_PUNCTUATION = set(string.punctuation)


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str | None) -> float:
    """SQuAD-style token F1 after lowercasing and dropping punctuation and articles (0.0 without a reference)."""
    if reference is None:
        return 0.0
    pred, ref = _squad_tokens(prediction), _squad_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
