"""Token-level blending (``kind: blend``): several experts' next-token distributions mixed at every step.

Three decoders share one set of per-engine *groups* (a ``ScoringSession`` and the members whose rows it holds):

- **step** (``speculate: 0``): every position, the lead's distribution decides (with the optional gate) whether the
  position is blended; the other members catch up on the tokens they missed in one forward pass and the blend is
  sampled. Without a gate this is naive lockstep blending (members on one engine run as rows of one batch: LoRA
  adapters on one base cost one forward pass per token, the fast path).
- **speculative** (``speculate: k``): the lead drafts up to k tokens alone; the other members score the drafted
  continuation in one forward pass per engine; each draft is kept with probability ``min(1, p/q)`` (p the blend, q the
  lead) and the first rejected one is replaced by a draw from ``norm(max(p - q, 0))``. Samples follow the blend exactly;
  greedy output equals the step decoder's. Gated positions have p = q (always kept), and a round whose drafts are all
  gated does not call the other members at all: they catch up later.
- **aligned** (members with different tokenizers): the step decoder on a common space of token surface strings
  (``gateway.blending.VocabAlignment``); each member appends the chosen text as its own single token when it has one,
  else re-encodes its generated text (its KV cache survives up to the common prefix).

Route: one ``StepInfo`` per member (its prompt and completion tokens, forward passes, scored tokens); the lead's also
carries the blend's facts: mode, fraction of positions blended, drafted/accepted tokens and the acceptance rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gateway import blending as B
from gateway.engines.base import (
    Chunk,
    EngineError,
    FinishReason,
    InvalidEngineRequest,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    can_score,
)
from gateway.engines.sampling import seeded_generator, sendable
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExecEvent, ExecRequest, Executor, ExpertHandle, StepInfo

log = logging.getLogger(__name__)


def scoring(engine: Any) -> Any:
    """An engine seen through its blending methods (``open_scoring``, ``blend_tokenizer``, ``blend_eos_ids``,
    ``encode_for_blend``; see ``gateway.engines.base.can_score``): typed loosely, as only some engines have them."""
    return engine


@dataclass(frozen=True)
class BlendConfig:
    """How a blend decodes (the spec's ``kind: blend`` fields, resolved)."""

    weights: tuple[float, ...]
    """One weight per member (normalised to sum 1)."""
    rule: B.Rule = "linear"
    """``linear`` (Σ wᵢpᵢ) or ``loglinear`` (product of experts)."""
    lead: int = 0
    """Index of the member that drafts and gates."""
    gate: B.Gate | None = None
    """Blend only where the lead is unsure (None: every position)."""
    speculate: int = 4
    """Tokens the lead drafts per round (0: step-by-step)."""
    top_k: int | None = None
    """Tokens per position an engine reports (vLLM; None: the whole vocabulary). Blends over the members' union."""


@dataclass
class _Group:
    """Members served by one engine in one session: their rows advance together over ``ids``."""

    engine: Any
    members: list[int]
    session: Any = None
    prompt_len: int = 0
    ids: list[int] = field(default_factory=list)
    """Generated ids in this group's tokenization (fed or still to feed)."""
    text: str = ""
    """The generated text this group's ids spell (aligned mode)."""
    fed: int = 0
    """How many of ``ids`` the session has seen."""
    last: torch.Tensor | None = None
    """``[rows, V]``: next-token log-distributions after the fed tokens (None: must re-feed)."""
    forwards: int = 0
    scored: int = 0

    async def feed(self, tokens: list[int], last: int) -> torch.Tensor:
        out = await self.session.feed(tokens, last=last)
        self.forwards += 1
        self.scored += len(tokens)
        return out

    async def catch_up(self) -> torch.Tensor:
        """``[rows, V]`` after every id (one forward pass over the ids not yet fed)."""
        if self.fed < len(self.ids):
            out = await self.feed(self.ids[self.fed :], 1)
            self.fed = len(self.ids)
            self.last = out[:, -1]
        elif self.last is None:  # rolled back onto a boundary: re-feed the last token
            await self.session.rollback(self.prompt_len + self.fed - 1)
            tok = self.ids[self.fed - 1] if self.fed else None
            if tok is None:
                raise EngineError("blend: lost the prompt's distribution")
            self.last = (await self.feed([tok], 1))[:, -1]
        return self.last

    async def set_ids(self, new: list[int]) -> None:
        """Replace the generated ids (aligned re-encoding); the KV cache survives up to the common prefix."""
        keep = B.common_prefix(self.ids[: self.fed], new)
        if keep < self.fed:
            await self.session.rollback(self.prompt_len + keep)
            self.fed, self.last = keep, None
        self.ids = new

    async def keep(self, fed: int, last: torch.Tensor) -> None:
        """After a speculative round: forget fed ids past ``fed``; ``last`` is the distribution after them."""
        if fed < self.fed:
            await self.session.rollback(self.prompt_len + fed)
        self.fed, self.last = fed, last


@dataclass
class _Stats:
    positions: int = 0
    blended: int = 0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class _Decoding:
    """What a decoder works on: the groups (``lead_group`` among them, the lead member its row ``lead_row``), the
    request's sampling parameters and generator (None: greedy), the counters and the answer being built."""

    groups: list[_Group]
    lead_group: _Group
    lead_row: int
    params: SamplingParams
    gen: torch.Generator | None
    stats: _Stats
    out: _Output


@dataclass
class _Draft:
    """One speculative round's drafts from the lead."""

    tokens: list[int]
    qs: list[torch.Tensor]
    """The lead's log-distribution at each draft (what the draft was sampled from)."""
    lead_dists: list[torch.Tensor]
    """``[rows, V]`` of the lead's group at each draft position."""
    one_request: bool
    """Drafted in one engine request (vLLM, greedy): the drafts are not in the session until appended."""


class BlendExecutor(Executor):
    """Serves a ``kind: blend`` ensemble: the members' next-token distributions mixed at every step."""

    kind = "blend"

    def __init__(self, name: str, members: Sequence[ExpertHandle], config: BlendConfig):
        super().__init__(name)
        if len(members) < 1:
            raise ValueError("a blend needs at least one member")
        if len(config.weights) != len(members):
            raise ValueError(f"{len(members)} members but {len(config.weights)} weights")
        for m in members:
            if not can_score(m.engine):
                raise ValueError(f"member {m.name!r}: the {m.engine.kind} engine can't score tokens for blending")
        self.members = list(members)
        self.config = config
        self.weights = B.normalise_weights(config.weights)
        self._alignment: B.VocabAlignment | None = None
        self._shared: bool | None = None

    @classmethod
    def from_spec(cls, name: str, ens: Any, experts: dict[str, ExpertHandle]) -> BlendExecutor:
        gate = B.Gate(metric=ens.gate.metric, threshold=ens.gate.threshold) if ens.gate is not None else None
        members = [experts[n] for n in ens.experts]
        weights = tuple(ens.weights) if ens.weights is not None else tuple(1.0 for _ in members)
        cfg = BlendConfig(
            weights=weights,
            rule=ens.rule,
            lead=ens.experts.index(ens.lead or ens.experts[0]),
            gate=gate,
            speculate=ens.speculate,
            top_k=ens.top_k,
        )
        return cls(name, members, cfg)

    # ------------------------------------------------------------------------------------------------ Executor
    def experts(self) -> list[ExpertHandle]:
        return list(self.members)

    @property
    def lead(self) -> ExpertHandle:
        return self.members[self.config.lead]

    def max_model_len(self) -> int | None:
        return min(m.engine.max_model_len for m in self.members)

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return max(len(scoring(m.engine).encode_for_blend(prompt)) for m in self.members)

    def shared_vocab(self) -> bool:
        """All members speak one tokenizer (same vocabulary and end tokens): no alignment needed."""
        if self._shared is None:
            engines = {id(m.engine): m.engine for m in self.members}
            first, *rest = engines.values()
            v0, e0 = scoring(first).blend_tokenizer().get_vocab(), scoring(first).blend_eos_ids()
            self._shared = all(
                scoring(e).blend_tokenizer().get_vocab() == v0 and scoring(e).blend_eos_ids() == e0 for e in rest
            )
        return self._shared

    def alignment(self) -> B.VocabAlignment:
        if self._alignment is None:
            self._alignment = B.VocabAlignment.from_tokenizers(
                [scoring(m.engine).blend_tokenizer() for m in self.members],
                [scoring(m.engine).blend_eos_ids() for m in self.members],
            )
        return self._alignment

    def mode(self) -> str:
        if not self.shared_vocab():
            return "aligned"
        return "speculative" if self.config.speculate > 0 else ("gated" if self.config.gate else "naive")

    # ------------------------------------------------------------------------------------------------ groups
    def _groups(self, mode: str) -> tuple[list[_Group], _Group, int]:
        """Sessions to open: by engine; the lead alone unless every member advances in lockstep (naive)."""
        lead = self.config.lead
        groups: list[_Group] = []
        by_engine: dict[int, _Group] = {}
        lead_group = _Group(self.lead.engine, [lead])
        groups.append(lead_group)
        if mode == "naive":
            by_engine[id(self.lead.engine)] = lead_group
        for i, m in enumerate(self.members):
            if i == lead:
                continue
            g = by_engine.get(id(m.engine))
            if g is None:
                g = _Group(m.engine, [])
                by_engine[id(m.engine)] = g
                groups.append(g)
            g.members.append(i)
        return groups, lead_group, lead_group.members.index(lead)

    async def _open(self, groups: list[_Group], prompt: Prompt, max_tokens: int) -> None:
        for g in groups:
            ids = self._prompt_ids(g, prompt)
            if not ids:
                raise EngineError("blend: empty prompt")
            limit = g.engine.max_model_len
            if len(ids) + max_tokens > limit:
                raise PromptTooLong(len(ids), max_tokens, limit)
            g.session = await g.engine.open_scoring(
                [self.members[i].adapter for i in g.members], top_k=self.config.top_k
            )
            g.prompt_len = len(ids)
            g.last = (await g.feed(ids, 1))[:, -1]
            g.scored = 0  # prompt tokens are reported as prompt_tokens, not scored tokens

    def _prompt_ids(self, g: _Group, prompt: Any) -> list[int]:
        """The ids a group starts from: its engine's encoding, or token ids as given (one shared vocabulary only)."""
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            if not self.shared_vocab():
                raise InvalidEngineRequest("a blend of members with different tokenizers needs a text prompt")
            return list(prompt)
        return list(scoring(g.engine).encode_for_blend(prompt))

    def _member_logps(self, groups: list[_Group], dists: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Per member (in spec order) its log-distribution, from ``dists[id(group)]`` of shape ``[rows, V]``."""
        out: list[torch.Tensor | None] = [None] * len(self.members)
        for g in groups:
            d = dists.get(id(g))
            if d is None:
                continue
            for r, i in enumerate(g.members):
                out[i] = d[r]
        return [o for o in out if o is not None]

    def _blend(self, logps: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.config.top_k is not None or any(bool(torch.isnan(lp).any()) for lp in logps):
            return B.blend_topk(logps, self.weights, self.config.rule)
        return B.combine(logps, self.weights, self.config.rule)

    def _lead_only(self, logp: torch.Tensor) -> torch.Tensor:
        return B.blend_topk([logp], [1.0]) if bool(torch.isnan(logp).any()) else logp

    # ------------------------------------------------------------------------------------------------ stream
    UNSUPPORTED = (
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("repetition_penalty", "repetition_penalty"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("min_tokens", "min_tokens"),
        ("logit_bias", "logit_bias"),
        ("ignore_eos", "ignore_eos"),
        ("prompt_logprobs", "prompt_logprobs"),
        ("structured", "response_format"),
        ("tools", "tools"),
    )
    """(SamplingParams field, request field) pairs a blend does not implement: it samples from the blended
    distribution with temperature, top_p, seed, stop and max_tokens only."""

    def check(self, params: SamplingParams) -> None:
        """Refuse (400 naming the field) what blending can't honour, instead of serving it silently without."""
        defaults = SamplingParams()
        for attr, name in self.UNSUPPORTED:
            if getattr(params, attr) != getattr(defaults, attr):
                raise InvalidRequestError(
                    f"'{name}' is not supported by blend model {self.name!r}: a blend samples from its members' mixed "
                    "distribution with temperature, top_p, seed, stop and max_tokens only; ask a single expert",
                    param=name,
                )

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        params = request.params
        self.check(params)
        mode = self.mode()
        groups, lead_group, lead_row = self._groups(mode if mode != "aligned" else "aligned")
        gen = seeded_generator(params.seed) if params.temperature > 0 else None  # greedy draws nothing
        stats = _Stats()
        t0 = time.perf_counter()
        out = _Output(self, params, mode)
        run = _Decoding(groups, lead_group, lead_row, params, gen, stats, out)
        try:
            await self._open(groups, request.prompt, params.max_tokens)
            if mode == "aligned":
                decoder = self._aligned(run)
            elif mode == "speculative":
                decoder = self._speculative(run)
            else:
                decoder = self._step(run)
            async for chunk in decoder:
                yield chunk
        finally:
            for g in groups:
                if g.session is not None:
                    await g.session.close()
        latency = (time.perf_counter() - t0) * 1e3
        infos: list[tuple[int, StepInfo]] = []
        for gi, g in enumerate(groups):
            for i in g.members:
                m = self.members[i]
                extra: dict[str, Any] = {
                    "role": "lead" if i == self.config.lead else "member",
                    "weight": round(self.weights[i], 6),
                    "group": gi,
                    "forward_passes": g.forwards,
                    "scored_tokens": g.scored,
                }
                if i == self.config.lead:
                    extra["blend"] = {
                        "mode": mode,
                        "rule": self.config.rule,
                        "positions": stats.positions,
                        "fraction_blended": round(stats.blended / stats.positions, 6) if stats.positions else 0.0,
                        "drafted": stats.drafted,
                        "accepted": stats.accepted,
                        "acceptance_rate": round(stats.accepted / stats.drafted, 6) if stats.drafted else None,
                        "rounds": stats.rounds,
                    }
                info = StepInfo(
                    node=str(i),
                    expert=m.name,
                    prompt_tokens=g.prompt_len,
                    completion_tokens=len(g.ids) if mode == "aligned" else out.completion_tokens,
                    cost=m.cost,
                    latency_ms=latency,
                    finish_reason=out.finish_reason,
                    extra=extra,
                )
                infos.append((i, info))
        for _, info in sorted(infos, key=lambda x: (x[0] != self.config.lead, x[0])):  # lead first, then spec order
            yield info

    # ------------------------------------------------------------------------------------------------ decoders
    async def _step(self, run: _Decoding) -> AsyncIterator[Chunk]:
        """One position at a time (naive lockstep, or gated: the others catch up only where the lead is unsure)."""
        while True:
            dists = {id(run.lead_group): await run.lead_group.catch_up()}
            lead_lp = dists[id(run.lead_group)][run.lead_row]
            if B.gate_open(self._lead_only(lead_lp), self.config.gate):
                for g in run.groups:
                    if g is not run.lead_group:
                        dists[id(g)] = await g.catch_up()
                target = self._blend(self._member_logps(run.groups, dists))
                run.stats.blended += 1
            else:
                target = self._lead_only(lead_lp)
            token = B.pick(B.sampling_probs(target, run.params.temperature, run.params.top_p), run.gen)
            run.stats.positions += 1
            for g in run.groups:
                g.ids.append(token)
            chunk = run.out.add(token, target)
            if chunk is not None:
                yield chunk
            if run.out.finish_reason is not None:
                return

    async def _speculative(self, run: _Decoding) -> AsyncIterator[Chunk]:
        """Lead drafts, others score the drafts in one pass, accept/resample (exact: samples follow the blend).

        A round: the lead drafts up to k tokens (``_draft``); where the gate is open at some draft, the other groups
        score the drafted continuation in one forward pass each (``_score_drafts``); each draft is kept with
        probability ``min(1, p/q)`` and the first rejected one is replaced by a draw from the residual; every group
        then keeps what survived (``_keep_round``)."""
        k = self.config.speculate
        others = [g for g in run.groups if g is not run.lead_group]
        while True:
            run.stats.rounds += 1
            base = len(run.lead_group.ids)
            budget = min(k, run.params.max_tokens - run.out.completion_tokens)
            draft = await self._draft(run, budget)
            run.stats.drafted += len(draft.tokens)
            open_at = [B.gate_open(q, self.config.gate) for q in draft.qs]
            other_dists = await self._score_drafts(others, draft.tokens, base) if any(open_at) else {}
            accepted = 0
            final: int | None = None
            for j, d in enumerate(draft.tokens):
                q = B.sampling_probs(draft.qs[j], run.params.temperature, run.params.top_p)
                if open_at[j]:
                    dists = {id(run.lead_group): draft.lead_dists[j]}
                    dists.update({gid: dd[:, j] for gid, dd in other_dists.items()})
                    target = self._blend(self._member_logps(run.groups, dists))
                    p = B.sampling_probs(target, run.params.temperature, run.params.top_p)
                else:
                    target, p = draft.qs[j], q
                u = float(torch.rand((), generator=run.gen)) if run.gen is not None else 0.0
                run.stats.positions += 1
                run.stats.blended += int(open_at[j])
                if B.accept(p, q, d, u):
                    accepted += 1
                    chunk = run.out.add(d, target)
                else:
                    final = B.pick(B.residual(p, q), run.gen)
                    chunk = run.out.add(final, target)
                if chunk is not None:
                    yield chunk
                if run.out.finish_reason is not None or final is not None:
                    break
            run.stats.accepted += accepted
            if run.out.finish_reason is not None:
                return
            await self._keep_round(run, others, draft, other_dists, base, accepted)

    async def _draft(self, run: _Decoding, n: int) -> _Draft:
        """The lead drafts up to ``n`` tokens alone (stopping at an end token). Afterwards the lead's session has
        seen every draft but the last, which is not fed until it is kept."""
        base = len(run.lead_group.ids)
        # vLLM, greedy: the lead drafts all n tokens in one request (the drafts are then appended once accepted)
        if run.gen is None and hasattr(run.lead_group.session, "draft") and len(run.lead_group.members) == 1:
            lag = run.lead_group.ids[run.lead_group.fed :]
            drafted, dl = await run.lead_group.session.draft(lag, n)
            run.lead_group.forwards += 1
            run.lead_group.scored += len(lag) + len(drafted)
            run.lead_group.fed, run.lead_group.last = base, None
            lead_dists = [dl[j].unsqueeze(0) for j in range(len(drafted))]
            return _Draft(drafted, [self._lead_only(d[0]) for d in lead_dists], lead_dists, one_request=True)
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        lead_dists = [await run.lead_group.catch_up()]  # [rows, V] after ids + drafts[:j]
        for j in range(n):
            q_lp = self._lead_only(lead_dists[j][run.lead_row])
            qs.append(q_lp)
            d = B.pick(B.sampling_probs(q_lp, run.params.temperature, run.params.top_p), run.gen)
            tokens.append(d)
            if d in run.out.eos_ids or j == n - 1:
                break
            lead_dists.append((await run.lead_group.feed([d], 1))[:, -1])
        run.lead_group.fed = base + len(tokens) - 1
        run.lead_group.ids = run.lead_group.ids + tokens[:-1]
        return _Draft(tokens, qs, lead_dists, one_request=False)

    async def _score_drafts(self, others: list[_Group], drafts: list[int], base: int) -> dict[int, torch.Tensor]:
        """Each other group's distributions at every draft position, ``id(group) -> [rows, m, V]``: one forward pass
        over the ids it has not seen and every draft but the last."""
        m = len(drafts)
        other_dists: dict[int, torch.Tensor] = {}
        for g in others:
            lag = g.ids[g.fed :]
            tokens = lag + drafts[:-1]
            if lag:
                d_all = await g.feed(tokens, m)
            else:
                assert g.last is not None
                d_all = g.last.unsqueeze(1)
                if m > 1:
                    d_all = torch.cat([d_all, await g.feed(drafts[:-1], m - 1)], dim=1)
            g.fed = base + m - 1
            g.ids = g.ids + drafts[:-1]
            other_dists[id(g)] = d_all
        return other_dists

    async def _keep_round(
        self,
        run: _Decoding,
        others: list[_Group],
        draft: _Draft,
        other_dists: dict[int, torch.Tensor],
        base: int,
        accepted: int,
    ) -> None:
        """Keep what survived the round: ids + drafts[:accepted] (+ the replacement, not yet fed anywhere)."""
        keep = base + min(accepted, len(draft.tokens) - 1)
        new_ids = run.out.ids[:]  # generated ids so far (eos excluded; none here since not finished)
        if draft.one_request:
            await run.lead_group.session.append(draft.tokens[: keep - base])
            run.lead_group.fed = keep
        await run.lead_group.keep(keep, draft.lead_dists[keep - base])
        run.lead_group.ids = new_ids
        for g in others:
            dd = other_dists.get(id(g))
            if dd is not None:
                await g.keep(keep, dd[:, keep - base])
            g.ids = new_ids[:]

    async def _aligned(self, run: _Decoding) -> AsyncIterator[Chunk]:
        """Step decoding over the common surface-string space (members with different tokenizers)."""
        al = self.alignment()
        lead = self.config.lead
        while True:
            dists = {id(run.lead_group): await run.lead_group.catch_up()}
            lead_lp = al.project(lead, self._lead_only(dists[id(run.lead_group)][run.lead_row]))
            if B.gate_open(lead_lp, self.config.gate):
                for g in run.groups:
                    if g is not run.lead_group:
                        dists[id(g)] = await g.catch_up()
                logps = self._member_logps(run.groups, dists)
                target = self._blend([al.project(i, self._lead_only(lp)) for i, lp in enumerate(logps)])
                run.stats.blended += 1
            else:
                target = lead_lp
            choice = B.pick(B.sampling_probs(target, run.params.temperature, run.params.top_p), run.gen)
            run.stats.positions += 1
            piece = al.common[choice]
            for g in run.groups:
                member = g.members[0]  # one tokenizer per engine
                single = al.token_of[member].get(choice)
                if piece == B.EOS_KEY:
                    continue
                tok = scoring(g.engine).blend_tokenizer()
                new = B.advance_ids(g.ids, g.text, piece, single, _encoder(tok))
                g.text += piece
                await g.set_ids(new)
            chunk = run.out.add_text(piece, target, choice)
            if chunk is not None:
                yield chunk
            if run.out.finish_reason is not None:
                return


class _Output:
    """The answer being built: text, stop strings held back, finish reason, logprobs of the blended distribution."""

    def __init__(self, ex: BlendExecutor, params: SamplingParams, mode: str):
        self.params = params
        self.tok = scoring(ex.lead.engine).blend_tokenizer()
        self.eos_ids = scoring(ex.lead.engine).blend_eos_ids()
        self.alignment = ex.alignment() if mode == "aligned" else None
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.sent = 0
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    def _logprob(self, target: torch.Tensor, token: int, label: str) -> list[TokenLogprob] | None:
        k = self.params.logprobs
        if k is None:
            return None
        top: tuple[tuple[str, float], ...] = ()
        if k > 0:
            vals, idx = torch.topk(target.nan_to_num(nan=B.NEG_INF), min(k, target.shape[-1]))
            top = tuple((self._label(int(t)), float(v)) for v, t in zip(vals, idx, strict=True))
        return [TokenLogprob(label, float(target[token]), top)]

    def _label(self, token: int) -> str:
        if self.alignment is not None:
            s = self.alignment.common[token]
            return self.tok.eos_token or "" if s == B.EOS_KEY else s
        if token in self.eos_ids:
            return self.tok.decode([token])
        return self.tok.convert_ids_to_tokens(token)

    def add(self, token: int, target: torch.Tensor) -> Chunk | None:
        """A generated token (shared vocabulary)."""
        lp = self._logprob(target, token, self._label(token))
        self.completion_tokens += 1
        is_eos = token in self.eos_ids
        if not is_eos:
            self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        return self._emit(text, is_eos, lp, [token])

    def add_text(self, piece: str, target: torch.Tensor, choice: int) -> Chunk | None:
        """A generated common-space entry (aligned vocabularies)."""
        lp = self._logprob(target, choice, self._label(choice))
        self.completion_tokens += 1
        is_eos = piece == B.EOS_KEY
        if not is_eos:
            self.pieces.append(piece)
        return self._emit("".join(self.pieces), is_eos, lp, [choice])

    def _emit(self, text: str, is_eos: bool, lp: list[TokenLogprob] | None, ids: list[int]) -> Chunk | None:
        full = self.completion_tokens >= self.params.max_tokens
        text, finish, emit_to = sendable(text, self.params.stop, self.sent, eos=is_eos, full=full)
        delta = text[self.sent : emit_to]
        self.sent = max(self.sent, emit_to)
        chunk = Chunk(text=delta, token_ids=ids, logprobs=lp)
        if finish is not None:
            self.finish_reason = finish
            chunk.finish_reason = finish
            chunk.completion_tokens = self.completion_tokens
            return chunk
        return chunk if (delta or lp) else None


def _encoder(tok: Any) -> Any:
    """A member's text -> ids, without special tokens (how generated text is re-encoded)."""

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    return encode
