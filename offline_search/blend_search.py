"""Blend-weight search: PSO over a ``kind: blend`` ensemble's mixture weights (and, optionally, its gate threshold).

A particle is a point ``x`` in ``R^M`` (``R^(M+1)`` with the gate): the weights are ``softmax(x[:M])`` and the gate
threshold is ``exp(x[M])``. Each particle's utility is the dev utility of the blend's greedy answers. The initial swarm
holds uniform weights, each member alone (one-hot, nearly) and random points, so the search can only beat every
member and the uniform blend on dev, never silently lose to them.

Greedy blending is deterministic, and particles' answers share most of their prefixes, so the evaluator walks the
answers with a cache of each member's next-token distribution keyed by (member, token prefix): every distribution is
computed once per search, by the engine's ``next_token_logprobs``. It decodes exactly what the gateway's blend executor
decodes (the tests check the executor against this very recomputation). The test split is scored at the end, for the
best particle, uniform weights and every member, through the real ``BlendExecutor`` and the members' own generation.

Writes ``spec_snippet.yaml`` (a ``kind: blend`` ensemble), ``summary.json``, ``log.jsonl``, ``convergence.png`` and
``state/`` (``--resume``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from gateway import blending as B
from gateway.engines.base import SamplingParams
from gateway.engines.pool import EnginePool
from gateway.executors.base import ExecRequest, ExpertHandle, StepInfo
from gateway.executors.blend import scoring
from offline_search.config import ConfigError, Prepared, PSOSettings, _load, _SearchBase
from offline_search.evaluate import build_utilities, expert_handle, question_prompt, relative_gain
from offline_search.pso import ParticleSwarm
from offline_search.tracking import RunLog, drive, plot_convergence
from scoring.examples import Example

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "toy_blend.yaml"


class BlendSearchConfig(_SearchBase):
    """PSO over a blend's weights (and gate threshold)."""

    name: str = "blend"
    rule: Literal["linear", "loglinear"] = "linear"
    """Combination rule of the blend (fixed during the search)."""
    lead: str | None = None
    """Lead member (None: the first expert)."""
    search_gate: bool = False
    """Also search the gate threshold (entropy or margin, ``gate_metric``)."""
    gate_metric: Literal["entropy", "margin"] = "entropy"
    speculate: int = Field(default=4, ge=0, le=32)
    """Speculation length written into the spec snippet (does not change greedy answers)."""
    swarm_size: int = Field(default=8, ge=2)
    """Particles: uniform, each member alone, then random points."""
    init_scale: float = Field(default=1.5, gt=0)
    """Spread of the random initial logits (and how far one-hot starts lean to their member)."""
    pso: PSOSettings = Field(default_factory=PSOSettings)
    output_dir: str = "runs/search/blend"


def load_blend_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BlendSearchConfig:
    cfg: BlendSearchConfig = _load(path, BlendSearchConfig, overrides)
    if cfg.lead is not None and cfg.lead not in [e if isinstance(e, str) else e.name for e in cfg.experts]:
        raise ConfigError(path, "lead", f"{cfg.lead!r} is not one of the experts")
    if len(cfg.experts) < 2:
        raise ConfigError(path, "experts", "a blend search needs at least 2 experts")
    return cfg


@dataclass
class Particle:
    """A decoded position."""

    weights: list[float]
    gate: float | None


def decode_position(x: torch.Tensor, members: int, search_gate: bool) -> Particle:
    w = torch.softmax(x[:members].double(), -1).tolist()
    gate = float(math.exp(min(float(x[members]), 5.0))) if search_gate else None
    return Particle(weights=w, gate=gate)


@dataclass
class BlendResult:
    output_dir: Path
    spec_snippet: Path
    summary: dict[str, Any] = field(default_factory=dict)


class CachedGreedyBlend:
    """Greedy blended decoding over a (member, prefix) -> next-token distribution cache (shared vocabulary)."""

    def __init__(self, members: list[ExpertHandle], lead: int, rule: B.Rule, max_tokens: int, stop: tuple[str, ...]):
        self.members = members
        self.lead = lead
        self.rule = rule
        self.max_tokens = max_tokens
        self.stop = stop
        self.cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        self.engine = members[lead].engine
        self.eos = scoring(self.engine).blend_eos_ids()
        self.tok = scoring(self.engine).blend_tokenizer()
        self.misses = 0

    async def dist(self, i: int, ids: tuple[int, ...]) -> torch.Tensor:
        """Member ``i``'s next-token log-distribution after ``ids``. A miss scores every member on the same engine at
        once (one forward pass whose rows are the members' adapters) and caches them all."""
        key = (i, ids)
        hit = self.cache.get(key)
        if hit is None:
            engine = self.members[i].engine
            rows = [j for j, m in enumerate(self.members) if m.engine is engine and (j, ids) not in self.cache]
            session = await scoring(engine).open_scoring([self.members[j].adapter for j in rows])
            try:
                out = await session.feed(list(ids))
            finally:
                await session.close()
            for r, j in enumerate(rows):
                self.cache[(j, ids)] = out[r, -1]
            self.misses += 1
            hit = self.cache[key]
        return hit

    async def answer(self, prompt_ids: list[int], weights: list[float], gate: B.Gate | None) -> str:
        ids = tuple(prompt_ids)
        out: list[int] = []
        for _ in range(self.max_tokens):
            lead_lp = await self.dist(self.lead, ids)
            if B.gate_open(lead_lp, gate):
                live = [i for i, w in enumerate(weights) if w > 0]
                lps = [await self.dist(i, ids) for i in live]
                target = B.combine(lps, [weights[i] for i in live], self.rule)
            else:
                target = lead_lp
            token = int(torch.argmax(target))
            if token in self.eos:
                break
            out.append(token)
            ids = (*ids, token)
            text = self.tok.decode(out, skip_special_tokens=True)
            if any(s and s in text for s in self.stop):
                break
        text = self.tok.decode(out, skip_special_tokens=True)
        cut = [text.find(s) for s in self.stop if s and s in text]
        return text[: min(cut)] if cut else text


class BlendSearch:
    def __init__(self, prepared: Prepared, *, progress: bool = True):
        if not isinstance(prepared.config, BlendSearchConfig):
            raise TypeError("BlendSearch needs a BlendSearchConfig")
        self.p = prepared
        self.cfg: BlendSearchConfig = prepared.config
        self.out = prepared.output_dir
        self.progress = progress
        self.pool = EnginePool()
        self.utility, self.report = build_utilities(self.cfg, prepared.root)
        self.names = [e.name for e in prepared.experts]
        self.lead = self.names.index(self.cfg.lead) if self.cfg.lead else 0
        self.members: list[ExpertHandle] = []
        self.decoder: CachedGreedyBlend | None = None
        self.prompt_ids: dict[str, list[int]] = {}
        self.memo: dict[str, float] = {}

    def _gate(self, part: Particle) -> B.Gate | None:
        return B.Gate(self.cfg.gate_metric, part.gate) if part.gate is not None else None

    async def _dev_utility(self, part: Particle, examples: list[Example]) -> float:
        key = json.dumps([round(w, 6) for w in part.weights] + [part.gate and round(part.gate, 6)])
        if key in self.memo:
            return self.memo[key]
        assert self.decoder is not None
        decoder = self.decoder
        outputs = list(
            await asyncio.gather(
                *(decoder.answer(self.prompt_ids[e.question], part.weights, self._gate(part)) for e in examples)
            )
        )
        value = (await self.utility.score(examples, outputs)).value
        self.memo[key] = value
        return value

    def _initial(self) -> list[torch.Tensor]:
        m = len(self.members)
        dims = m + (1 if self.cfg.search_gate else 0)
        g = torch.Generator().manual_seed(self.cfg.seed)
        init: list[torch.Tensor] = [torch.zeros(dims)]
        for i in range(m):
            x = torch.zeros(dims)
            x[i] = 2 * self.cfg.init_scale
            init.append(x)
        while len(init) < self.cfg.swarm_size:
            init.append(torch.randn(dims, generator=g) * self.cfg.init_scale)
        if self.cfg.search_gate:
            for x in init:
                x[m] = math.log(0.5)
        return init[: max(self.cfg.swarm_size, 2)]

    async def _executor_answers(self, part: Particle, examples: list[Example]) -> list[str]:
        from gateway.executors.blend import BlendConfig, BlendExecutor

        ex = BlendExecutor(
            self.cfg.name,
            self.members,
            BlendConfig(
                weights=tuple(part.weights),
                rule=self.cfg.rule,
                lead=self.lead,
                gate=self._gate(part),
                speculate=self.cfg.speculate,
            ),
        )
        gen = self.cfg.generation
        params = SamplingParams(max_tokens=gen.max_tokens, temperature=0.0, stop=tuple(gen.stop))
        outs = []
        for e in examples:
            text = ""
            async for ev in ex.stream(ExecRequest(question_prompt(gen, e.question), params, "search")):
                if not isinstance(ev, StepInfo):
                    text += ev.text
            outs.append(text)
        return outs

    async def _member_answers(self, member: ExpertHandle, examples: list[Example]) -> list[str]:
        gen = self.cfg.generation
        params = SamplingParams(max_tokens=gen.max_tokens, temperature=0.0, stop=tuple(gen.stop))
        prompts = [question_prompt(gen, e.question) for e in examples]
        done = await member.engine.complete_batch(prompts, params, adapters=[member.adapter] * len(prompts))
        return [d.text for d in done]

    async def run(self, *, resume: bool = False) -> BlendResult:
        from offline_search.base import check_output_dir

        cfg, out = self.cfg, self.out
        check_output_dir(out, resume=resume, config_path=self.p.config_path)
        out.mkdir(parents=True, exist_ok=True)
        run_log = RunLog(out / "log.jsonl")
        state_dir = out / "state"
        try:
            await self._open_members()
            dev, test = self.p.splits.dev, self.p.splits.test
            n_members = len(self.members)

            if resume and ParticleSwarm.saved_iteration(state_dir) is not None:
                swarm, extra = ParticleSwarm.load(state_dir)
                self.memo = dict(extra.get("memo", {}))
                run_log.write("resume", iteration=swarm.iteration)
            else:
                if state_dir.exists():
                    shutil.rmtree(state_dir)
                swarm = ParticleSwarm(cfg.pso.build(cfg.seed), self._initial())
                run_log.write("start", experts=self.names, dev=len(dev), test=len(test))

            async def evaluate(positions: list[Any], iteration: int) -> tuple[list[float | None], dict[str, Any]]:
                parts = [decode_position(x, n_members, cfg.search_gate) for x in positions]
                us: list[float | None] = [await self._dev_utility(p, dev) for p in parts]
                return us, {"weights": [p.weights for p in parts], "gates": [p.gate for p in parts]}

            await drive(
                swarm,
                evaluate,
                state_dir=state_dir,
                run_log=run_log,
                phase="blend",
                extra_state=lambda: {"memo": self.memo},
                progress=self.progress,
                desc="blend weights",
            )
            assert swarm.global_best_x is not None
            assert isinstance(swarm.global_best_x, torch.Tensor)
            best = decode_position(swarm.global_best_x, n_members, cfg.search_gate)
            summary = await self._summary(best)
            summary["stop_reason"] = swarm.stop_reason
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
            snippet = self._write_snippet(best)
            run_log.write("done", summary=summary)
            try:
                plot_convergence(
                    run_log.read(),
                    out / "convergence.png",
                    title=f"blend weights: {cfg.name}",
                    baselines={f"{n} (dev)": v["dev"] for n, v in summary["experts"].items()}
                    | {"uniform (dev)": summary["uniform"]["dev"]},
                )
            except Exception:  # pragma: no cover - plotting is a nicety
                log.exception("convergence plot failed")
            return BlendResult(out, snippet, summary)
        finally:
            await self.pool.close()

    async def _open_members(self) -> None:
        """The members' engines (they must score tokens, with one tokenizer), every question's prompt ids and the
        cached greedy decoder."""
        self.members = [await expert_handle(self.pool, x) for x in self.p.experts]
        for m in self.members:
            if not callable(getattr(m.engine, "open_scoring", None)):
                raise ConfigError(self.p.config_path, "experts", f"{m.name}: engine can't score tokens")
        vocab0 = scoring(self.members[0].engine).blend_tokenizer().get_vocab()
        if any(scoring(m.engine).blend_tokenizer().get_vocab() != vocab0 for m in self.members):
            raise ConfigError(
                self.p.config_path, "experts", "blend search needs members with one tokenizer (shared vocabulary)"
            )
        gen = self.cfg.generation
        for e in [*self.p.splits.dev, *self.p.splits.test]:
            self.prompt_ids[e.question] = scoring(self.members[self.lead].engine).encode_for_blend(
                question_prompt(gen, e.question)
            )
        self.decoder = CachedGreedyBlend(self.members, self.lead, self.cfg.rule, gen.max_tokens, tuple(gen.stop))

    async def _summary(self, best: Particle) -> dict[str, Any]:
        """Dev and test utilities of every member alone, of uniform weights and of the searched blend (test through
        the real executor and the members' own generation), and the searched blend's gains on test."""
        dev, test = self.p.splits.dev, self.p.splits.test
        n_members = len(self.members)
        uniform = Particle([1.0 / n_members] * n_members, None)
        summary: dict[str, Any] = {
            "utility": self.utility.name,
            "report_utility": self.report.name,
            "experts": {},
            "lead": self.names[self.lead],
            "rule": self.cfg.rule,
        }
        for name, member in zip(self.names, self.members, strict=True):
            d = (await self.utility.score(dev, await self._member_answers(member, dev))).value
            t_res = await self.report.score(test, await self._member_answers(member, test))
            summary["experts"][name] = {"dev": d, "test": t_res.value, "test_per_task": t_res.per_task}
        best_member = max(summary["experts"], key=lambda n: summary["experts"][n]["dev"])  # chosen on dev
        for label, part in (("uniform", uniform), ("searched", best)):
            d = await self._dev_utility(part, dev)
            t_res = await self.report.score(test, await self._executor_answers(part, test))
            summary[label] = {
                "weights": part.weights,
                "gate": part.gate,
                "dev": d,
                "test": t_res.value,
                "test_per_task": t_res.per_task,
            }
        summary["best_member_on_dev"] = best_member
        summary["best_member_on_test"] = max(summary["experts"], key=lambda n: summary["experts"][n]["test"])
        bm_test = summary["experts"][summary["best_member_on_test"]]["test"]
        summary["test_gain_vs_best_member"] = relative_gain(summary["searched"]["test"], bm_test)
        summary["test_gain_vs_uniform"] = relative_gain(summary["searched"]["test"], summary["uniform"]["test"])
        assert self.decoder is not None
        summary["distributions_computed"] = self.decoder.misses
        return summary

    def _write_snippet(self, best: Particle) -> Path:
        """``spec_snippet.yaml``: the searched blend as a ``kind: blend`` ensemble."""
        import yaml

        cfg = self.cfg
        ens: dict[str, Any] = {
            "kind": "blend",
            "experts": self.names,
            "weights": [round(w, 6) for w in best.weights],
            "rule": cfg.rule,
            "lead": self.names[self.lead],
            "speculate": cfg.speculate,
        }
        if best.gate is not None:
            ens["gate"] = {"metric": cfg.gate_metric, "threshold": round(best.gate, 6)}
        snippet = self.out / "spec_snippet.yaml"
        snippet.write_text(
            "# Generated by `swarmgate search blend`: merge this entry into your serving spec.\n"
            + yaml.safe_dump({"ensembles": {cfg.name: ens}}, sort_keys=False)
        )
        return snippet


async def run_blend_search(prepared: Prepared, *, resume: bool = False, progress: bool = True) -> BlendResult:
    return await BlendSearch(prepared, progress=progress).run(resume=resume)
