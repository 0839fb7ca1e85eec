"""Logits processing for local engines that sample themselves (the transformers engine): vLLM's semantics, in torch.

One function per idea, applied in vLLM's order to one row's next-token logits:
structured-output mask -> logit bias -> min_tokens (EOS masked) -> repetition / frequency / presence penalties ->
temperature -> top-k -> top-p -> min-p -> sample (argmax when greedy).

Structured outputs (``response_format``) use xgrammar (the constrained-decoding library vLLM itself uses): a JSON
schema, or the built-in JSON grammar, is compiled once per (tokenizer, constraint) and a ``GrammarMatcher`` per
sequence masks every step's logits to the tokens that keep the output valid.

Every loop that decodes token by token itself (this engine, the blend executor) also takes its seeded generator and
its stop strings' handling (``sendable``: what of the decoded text may be sent, and whether it is finished) from here.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gateway.engines.base import FinishReason, InvalidEngineRequest, SamplingParams, StructuredOutput

NEG_INF = float("-inf")


def apply_penalties(logits: Any, params: SamplingParams, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> Any:
    """Repetition (prompt and output tokens), frequency and presence (output tokens) penalties, in place."""
    import torch

    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        if len(seen):
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and output_ids:
        counts = Counter(output_ids)
        ids = torch.tensor(list(counts), dtype=torch.long)
        freq = torch.tensor([counts[i] for i in counts], dtype=logits.dtype)
        logits[ids] -= params.frequency_penalty * freq + params.presence_penalty
    return logits


def process(
    logits: Any,
    params: SamplingParams,
    *,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    eos_ids: set[int],
    constraint: Constraint | None = None,
) -> Any:
    """The logits one row samples from (a new tensor; ``logits`` is left as the model gave it)."""
    x = logits.clone()
    if constraint is not None:
        constraint.mask(x)
    for token, bias in params.logit_bias:
        if 0 <= token < x.shape[-1]:
            x[token] += bias
    if params.min_tokens and len(output_ids) < params.min_tokens:
        for e in eos_ids:
            x[e] = NEG_INF
    return apply_penalties(x, params, prompt_ids, output_ids)


def sample(logits: Any, params: SamplingParams, gen: Any) -> int:
    """One token from processed logits: argmax when greedy, else temperature, top-k, top-p, min-p and a draw."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    x = logits / params.temperature
    if params.top_k > 0 and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, NEG_INF), x)
    probs = torch.softmax(x, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_p[keep]
        probs = filtered / filtered.sum()
    if params.min_p > 0.0:
        probs = torch.where(probs < params.min_p * probs.max(), torch.zeros_like(probs), probs)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


# ------------------------------------------------------------------------------------------------ structured outputs
class Constraint:
    """One sequence's grammar state: masks logits to what keeps the output valid; follows the sampled tokens."""

    def __init__(self, compiled: Any, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: Any) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(logits, self.bitmask.to(logits.device))

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise RuntimeError(f"structured output: token {token} was sampled outside the grammar")

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_terminated())


class ConstraintCompiler:
    """Compiles ``StructuredOutput``s for one tokenizer (xgrammar), caching compiled grammars by constraint."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]):
        try:
            import xgrammar as xgr
        except ImportError as exc:  # pragma: no cover - xgrammar ships with vLLM; a bare install may lack it
            raise InvalidEngineRequest(
                "response_format needs the 'xgrammar' package on the transformers engine (pip install xgrammar)",
                param="response_format",
            ) from exc
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_ids))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)
        self._lock = threading.Lock()
        self._compile = functools.lru_cache(maxsize=64)(self._compile_uncached)

    def _compile_uncached(self, structured: StructuredOutput) -> Any:
        # json_object is OpenAI's "a JSON object" (xgrammar's built-in JSON grammar would also allow arrays)
        schema = '{"type": "object"}' if structured.kind == "json_object" else (structured.schema or "{}")
        return self._compiler.compile_json_schema(schema, any_whitespace=False)

    def constraint(self, structured: StructuredOutput) -> Constraint:
        """A fresh per-sequence constraint; a schema xgrammar can't compile is the client's 400."""
        try:
            with self._lock:
                compiled = self._compile(structured)
        except Exception as exc:
            raise InvalidEngineRequest(
                f"response_format: the JSON schema can't be compiled for constrained decoding: {exc}",
                param="response_format",
            ) from exc
        return Constraint(compiled, self.vocab_size)


def prompt_logprobs(logits: Any, prompt_ids: Sequence[int], k: int, token_text: Any) -> list[dict[str, Any] | None]:
    """vLLM's ``prompt_logprobs`` shape from the prefill logits of one row (``logits[j]`` predicts token ``j+1``)."""
    import torch

    out: list[dict[str, Any] | None] = [None]
    logp = torch.log_softmax(logits.float(), dim=-1)
    for j in range(1, len(prompt_ids)):
        row = logp[j - 1]
        tok = int(prompt_ids[j])
        entry: dict[str, Any] = {}
        if k > 0:
            vals, idx = torch.topk(row, k)
            for rank, (v, t) in enumerate(zip(vals.tolist(), idx.tolist(), strict=True), start=1):
                entry[str(t)] = {"logprob": v, "rank": rank, "decoded_token": token_text(t)}
        if str(tok) not in entry:
            rank = int((row > row[tok]).sum()) + 1
            entry[str(tok)] = {"logprob": float(row[tok]), "rank": rank, "decoded_token": token_text(tok)}
        out.append(entry)
    return out


def seeded_generator(seed: int | None) -> Any:
    """A torch generator for one sequence's draws: seeded with ``seed``, or from the OS when it is None."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return g


def find_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Earliest index where a stop string begins (searching from just before what was already sent)."""
    best: int | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, max(0, sent - len(s) + 1))
        if i != -1 and (best is None or i < best):
            best = i
    return best


def sendable(
    text: str, stops: tuple[str, ...], sent: int, *, eos: bool, full: bool, search_stop: bool = True
) -> tuple[str, FinishReason | None, int]:
    """Where a sequence's decoded ``text`` stands after a token: ``(text, finish reason or None, emit_to)``.

    A stop string (searched from just before the ``sent`` characters, unless ``search_stop`` is off: before
    ``min_tokens``) cuts the text and finishes it; else the end token (``eos``) or a spent budget (``full``) finishes
    it. ``text[sent:emit_to]`` may be sent now: the rest of a finished text; of an unfinished one, all but what may
    start a stop string and a multi-byte character still being built."""
    finish: FinishReason | None = None
    stop_at = find_stop(text, stops, sent) if search_stop else None
    if stop_at is not None:
        text, finish = text[:stop_at], "stop"
    elif eos:
        finish = "stop"
    elif full:
        finish = "length"
    if finish is not None:
        return text, finish, len(text)
    hold = max((len(s) - 1 for s in stops), default=0)
    emit_to = max(sent, len(text) - hold)
    # never split a multi-byte character being built: decode marks it with U+FFFD
    while emit_to > sent and text[emit_to - 1] == "\ufffd":
        emit_to -= 1
    return text, None, emit_to
