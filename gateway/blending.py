"""The pure core of token-level blending: no engines, no I/O, only tensors (so it can be unit- and mutation-tested).

Everything works on *log*-distributions (1-D float tensors over one vocabulary, ``-inf`` for impossible tokens):

- ``combine``: the blend of several members' next-token distributions, linear (``log Σ wᵢ pᵢ``) or log-linear
  (product of experts, ``softmax(Σ wᵢ log pᵢ)``);
- ``gate_open``: whether a position is blended at all (the lead alone where it is confident: entropy or top-1 margin);
- ``sampling_probs`` / ``pick``: temperature and top-p applied to a log-distribution, then greedy or a seeded draw;
- ``accept`` / ``residual``: the speculative-sampling rule (Leviathan et al., Chen et al.): a token drafted from ``q`` is
  kept with probability ``min(1, p/q)``; on rejection the replacement is drawn from ``norm(max(p - q, 0))``. The output
  then follows ``p`` exactly; with greedy decoding it accepts iff the draft is ``argmax p``;
- ``fill_topk``: what a member that reports only its top-k looks like on the full vocabulary (the vLLM approximation);
- ``VocabAlignment``: members with different tokenizers mapped onto one space of token surface strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Rule = Literal["linear", "loglinear"]
NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------ combination
def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1 (all must be >= 0 and at least one > 0)."""
    if any(w < 0 or math.isnan(w) for w in weights):
        raise ValueError(f"blend weights must be >= 0, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("at least one blend weight must be > 0")
    return [float(w) / total for w in weights]


def combine(logps: Sequence[torch.Tensor], weights: Sequence[float], rule: Rule = "linear") -> torch.Tensor:
    """The blended log-distribution of members' log-distributions ``logps`` (same vocabulary) with ``weights``.

    ``linear``: ``log Σ wᵢ pᵢ`` (a mixture: a token any weighted member likes keeps probability).
    ``loglinear``: ``log_softmax(Σ wᵢ log pᵢ)`` (product of experts: every weighted member must agree; a token one
    member gives zero probability gets zero). Members with weight 0 are ignored. Rows may be batched: ``[..., V]``.
    """
    if len(logps) != len(weights):
        raise ValueError(f"{len(logps)} distributions but {len(weights)} weights")
    ws = normalise_weights(weights)
    live = [(w, lp.float()) for w, lp in zip(ws, logps, strict=True) if w > 0]
    if rule == "linear":
        stacked = torch.stack([lp + math.log(w) for w, lp in live])
        out = torch.logsumexp(stacked, dim=0)
        return out - torch.logsumexp(out, dim=-1, keepdim=True)  # renormalise (mass dropped by alignment)
    if rule == "loglinear":
        acc = torch.zeros_like(live[0][1])
        for w, lp in live:
            acc = acc + w * lp.nan_to_num(nan=NEG_INF, neginf=NEG_INF)  # -inf * w stays -inf (w > 0)
        if torch.isinf(acc).all(dim=-1).any():
            raise ValueError("log-linear blend: the members share no token with non-zero probability")
        return torch.log_softmax(acc, dim=-1)
    raise ValueError(f"unknown blend rule {rule!r} (expected 'linear' or 'loglinear')")


# ------------------------------------------------------------------------------------------------ gate
@dataclass(frozen=True)
class Gate:
    """Blend only where the lead is unsure: ``entropy`` of its distribution above ``threshold`` (nats), or its
    ``margin`` (p₁ - p₂, top-1 minus top-2 probability) below ``threshold``."""

    metric: Literal["entropy", "margin"] = "entropy"
    """What measures the lead's confidence."""
    threshold: float = 0.5
    """Entropy above it (nats) / margin below it: blend. Otherwise the lead decodes alone."""


def entropy(logp: torch.Tensor) -> float:
    """Shannon entropy in nats of a log-distribution (``-inf`` entries contribute 0)."""
    p = logp.exp()
    terms = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return float(-terms.sum())


def margin(logp: torch.Tensor) -> float:
    """Top-1 minus top-2 probability."""
    top = torch.topk(logp.exp(), 2).values
    return float(top[0] - top[1])


def gate_open(lead_logp: torch.Tensor, gate: Gate | None) -> bool:
    """True when this position is blended: no gate, or the lead is unsure by the gate's metric."""
    if gate is None:
        return True
    if gate.metric == "entropy":
        return entropy(lead_logp) > gate.threshold
    if gate.metric == "margin":
        return margin(lead_logp) < gate.threshold
    raise ValueError(f"unknown gate metric {gate.metric!r}")


# ------------------------------------------------------------------------------------------------ sampling
def sampling_probs(logp: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a token is drawn from: temperature, then nucleus (top-p); greedy (T=0) is one-hot on argmax.

    Same rule as the transformers engine's sampler, so a one-member blend samples like the member itself.
    """
    if temperature <= 0:
        out = torch.zeros_like(logp, dtype=torch.float32)
        out[int(torch.argmax(logp))] = 1.0
        return out
    probs = torch.softmax(logp.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_p[keep]
        probs = filtered / filtered.sum()
    return probs


def pick(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """A draw from ``probs`` (argmax when it is one-hot or no generator is given)."""
    if generator is None:
        return int(torch.argmax(probs))
    return int(torch.multinomial(probs, 1, generator=generator))


def accept(p: torch.Tensor, q: torch.Tensor, token: int, u: float) -> bool:
    """Speculative rule: keep ``token`` (drafted from ``q``) iff ``u < p[token] / q[token]`` (``u ~ U[0, 1)``).

    With one-hot ``p`` and ``q`` (greedy) this is ``argmax p == token``.
    """
    pt, qt = float(p[token]), float(q[token])
    if qt <= 0.0:  # the draft could not have come from q; only p decides
        return pt > 0.0
    return u < pt / qt


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(p - q, 0))``: where a rejected draft's replacement is drawn from (falls back to ``p`` when p == q)."""
    r = (p - q).clamp(min=0.0)
    total = float(r.sum())
    if total <= 1e-12:
        return p
    return r / total


# ------------------------------------------------------------------------------------------------ top-k union
def fill_topk(logp: torch.Tensor) -> torch.Tensor:
    """A member's full log-distribution estimated from its top-k: ``logp`` holds the known entries and ``nan`` where
    the engine did not report a token. The probability mass outside the reported tokens is spread uniformly over the
    unreported ones (so the member still sums to 1); a member that reports every token is returned unchanged.

    ``union_support`` then restricts the blend to tokens some member reported: together these are the vLLM
    approximation (exact when k is the vocabulary size).
    """
    known = ~torch.isnan(logp)
    if bool(known.all()):
        return logp
    out = logp.clone()
    mass = float(logp[known].exp().sum())
    missing = int((~known).sum())
    tail = max(1.0 - mass, 0.0) / missing
    out[~known] = math.log(tail) if tail > 0 else NEG_INF
    return out


def union_support(raw: Sequence[torch.Tensor]) -> torch.Tensor:
    """Boolean mask of the tokens at least one member reported (non-nan, finite) in ``raw``."""
    mask = torch.zeros_like(raw[0], dtype=torch.bool)
    for lp in raw:
        mask |= ~torch.isnan(lp) & torch.isfinite(lp.nan_to_num(nan=NEG_INF, neginf=NEG_INF))
    return mask


def blend_topk(raw: Sequence[torch.Tensor], weights: Sequence[float], rule: Rule = "linear") -> torch.Tensor:
    """The blend over the union of the members' reported top-k (``nan`` = not reported), renormalised there."""
    support = union_support(raw)
    blended = combine([fill_topk(lp) for lp in raw], weights, rule)
    blended = torch.where(support, blended, torch.full_like(blended, NEG_INF))
    return blended - torch.logsumexp(blended, dim=-1, keepdim=True)


def total_variation(logp_a: torch.Tensor, logp_b: torch.Tensor) -> float:
    """Total variation distance ``½ Σ |p - q|`` between two log-distributions over one vocabulary."""
    return 0.5 * float((logp_a.exp() - logp_b.exp()).abs().sum())


# ------------------------------------------------------------------------------------------------ alignment
EOS_KEY = "\x00eos"
"""The common-space entry every member's end-of-sequence token maps to."""


@dataclass
class VocabAlignment:
    """Members' vocabularies mapped onto one common space of token surface strings.

    ``surfaces[m][i]`` is the text member ``m``'s token ``i`` stands for (``EOS_KEY`` for its end tokens, ``None`` for
    other special tokens, which drop out). The common space is the union of the surfaces; a member's probability of a
    common entry is the sum over its tokens with that surface. ``token_of[m]`` says which single token of member ``m``
    spells a common entry, if one does (otherwise the member is advanced by re-encoding the text).
    """

    surfaces: list[list[str | None]]
    """Per member, per token id: the surface string (or EOS_KEY / None)."""
    common: list[str] = field(default_factory=list)
    """The common space: one surface string per entry."""
    index_of: dict[str, int] = field(default_factory=dict)
    """Surface string -> common index."""
    maps: list[torch.Tensor] = field(default_factory=list)
    """Per member: a long tensor, token id -> common index (``len(common)`` for dropped tokens)."""
    token_of: list[dict[int, int]] = field(default_factory=list)
    """Per member: common index -> the member's single token with that surface (the first, when several)."""

    def __post_init__(self) -> None:
        for surf in self.surfaces:
            for s in surf:
                if s is not None and s not in self.index_of:
                    self.index_of[s] = len(self.common)
                    self.common.append(s)
        dropped = len(self.common)
        for surf in self.surfaces:
            idx = torch.tensor([self.index_of[s] if s is not None else dropped for s in surf], dtype=torch.long)
            self.maps.append(idx)
            tok: dict[int, int] = {}
            for i, s in enumerate(surf):
                if s is not None:
                    tok.setdefault(self.index_of[s], i)
            self.token_of.append(tok)

    @classmethod
    def from_tokenizers(cls, tokenizers: Sequence[Any], eos_ids: Sequence[set[int]]) -> VocabAlignment:
        """Build from Hugging Face tokenizers: each id decoded on its own is its surface string."""
        surfaces: list[list[str | None]] = []
        for tok, eos in zip(tokenizers, eos_ids, strict=True):
            special = set(getattr(tok, "all_special_ids", []) or [])
            n = len(tok)
            surf: list[str | None] = []
            for i in range(n):
                if i in eos:
                    surf.append(EOS_KEY)
                elif i in special:
                    surf.append(None)
                else:
                    text = tok.decode([i])
                    surf.append(text if text else None)
            surfaces.append(surf)
        return cls(surfaces)

    @property
    def size(self) -> int:
        return len(self.common)

    def project(self, member: int, logp: torch.Tensor) -> torch.Tensor:
        """Member ``member``'s log-distribution on the common space (its tokens' probabilities summed per surface).

        Model vocabularies may be padded past the tokenizer: those ids (and dropped special tokens) lose their mass.
        """
        idx = self.maps[member]
        n = min(len(idx), logp.shape[-1])
        probs = torch.zeros(self.size + 1, dtype=torch.float32)
        probs.index_add_(0, idx[:n], logp[:n].float().exp())
        common = probs[: self.size]
        with torch.no_grad():
            return torch.where(common > 0, common.log(), torch.full_like(common, NEG_INF))


def advance_ids(
    ids: list[int], text: str, piece: str, single: int | None, encode: Callable[[str], list[int]]
) -> list[int]:
    """A member's token ids for its generated text after ``piece`` is appended to ``text``.

    ``single`` is the member's one token spelling ``piece`` (append it); otherwise the whole new text is re-encoded
    with the member's ``encode`` (so its next forward pass sees its own tokenization of the chosen text).
    """
    if single is not None:
        return [*ids, single]
    return list(encode(text + piece))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists (how much of a KV cache survives a re-encoding)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
