"""Model Swarms (Feng et al. 2024): PSO in weight space to adapt a set of experts to a utility.

Particles are the experts' LoRA weights (PEFT adapters on one base) or full checkpoints of one architecture. The
initial swarm is the experts plus children ``w A + (1 - w) B`` (w ~ U(0, 2) by default: interpolation and
extrapolation). Each iteration writes every particle as a real adapter (or checkpoint) directory named by content,
scores it on the dev split through the engine layer (all particles in one multi-adapter batch; greedy outputs cached,
so an unchanged particle is never generated twice), and moves the swarm (``offline_search.pso``).

Outputs, under ``output_dir``:
- ``best/``: the global best, as a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``, loadable
  by PEFT, transformers and vLLM) or a full checkpoint; ``best_merged/`` optionally (LoRA merged into the base);
- ``uniform_average/`` and ``random_search/``: two baselines in the same form (the experts' mean weights; random
  search's best draw at the search's budget);
- ``spec_snippet.yaml``: an ``kind: expert`` ensemble serving it; ``summary.json``: dev and test utilities of the
  best particle, of every initial expert and of the baselines; ``log.jsonl``; ``convergence.png``; ``state/``
  (``--resume``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gateway.engines.base import Adapter
from gateway.executors.base import ExpertHandle
from offline_search.base import BaseSearch, check_output_dir, gains_on_test, searched_for
from offline_search.checkpoints import (
    LoraAdapter,
    delta_rank,
    lora_deltas,
    read_adapter,
    read_full,
    write_adapter,
    write_delta_adapter,
    write_full,
)
from offline_search.config import Prepared, ResolvedExpert, SwarmSearchConfig
from offline_search.evaluate import expert_handle, relative_gain, score_expert, write_spec_snippet
from offline_search.pso import Params, ParticleSwarm, combine, interpolate_children
from offline_search.tracking import RunLog, drive

log = logging.getLogger(__name__)


@dataclass
class SwarmResult:
    output_dir: Path
    best_dir: Path
    spec_snippet: Path
    summary: dict[str, Any]


class ModelSwarms(BaseSearch):
    config_type = SwarmSearchConfig
    cfg: SwarmSearchConfig

    def __init__(self, prepared: Prepared, *, progress: bool = True):
        super().__init__(prepared, progress=progress)
        self.template: LoraAdapter | None = None
        self.dtype = torch.float32
        self.static: dict[str, torch.Tensor] = {}
        self.rank = 0
        """``particles: delta``: the rank of the adapters particles are written as (holds any combination exactly)."""

    # ----------------------------------------------------------------------------------------------- particles
    def _expert_params(self) -> list[Params]:
        if self.cfg.particles != "full":
            adapters = [read_adapter(e.adapter) for e in self.p.experts if e.adapter]
            self.template = adapters[0]
            self.dtype = adapters[0].dtype
            if self.cfg.particles == "lora":
                return [{k: t.to(torch.float32) for k, t in a.tensors.items()} for a in adapters]
            deltas = [lora_deltas(a) for a in adapters]
            shapes = {k: t.shape for d in deltas for k, t in d.items()}  # a weight one adapter skips: delta 0
            deltas = [{k: d.get(k, torch.zeros(shape)) for k, shape in sorted(shapes.items())} for d in deltas]
            self.rank = delta_rank(deltas, adapters)
            return deltas
        fulls = [read_full(e.model) for e in self.p.experts]
        self.dtype = next(t.dtype for t in fulls[0].values() if t.is_floating_point())
        self.static = {k: t for k, t in fulls[0].items() if not t.is_floating_point()}  # int buffers: not searched
        return [{k: t.to(torch.float32) for k, t in f.items() if t.is_floating_point()} for f in fulls]

    def _write(self, x: Params) -> tuple[Path, str]:
        assert isinstance(x, dict)
        root = self.out / "particles"
        if self.cfg.particles == "lora":
            assert self.template is not None
            return write_adapter(root, x, self.template, self.p.experts[0].model)
        if self.cfg.particles == "delta":
            assert self.template is not None
            return write_delta_adapter(root, x, self.template, self.p.experts[0].model, self.rank)
        return write_full(root, x, self.p.experts[0].model, self.dtype, static=self.static)

    async def _handle(self, x: Params) -> tuple[ExpertHandle, Path]:
        d, digest = self._write(x)
        base = self.p.experts[0]
        name = f"{self.cfg.name}@{digest[:16]}"
        if self.cfg.particles != "full":
            engine = await self.pool.get(base.engine, base.model, self._engine_args())
            return ExpertHandle(name=name, engine=engine, adapter=Adapter(name=name, path=str(d))), d
        engine = await self.pool.get(base.engine, str(d), self._engine_args())
        return ExpertHandle(name=name, engine=engine), d

    async def _release(self, handle: ExpertHandle, d: Path) -> None:
        if self.cfg.particles == "full":
            await self.pool.release(self.p.experts[0].engine, str(d), self._engine_args())

    def _engine_args(self) -> dict[str, Any]:
        """The experts' engine arguments; on vLLM, enough LoRA slots for a whole swarm in one batch."""
        args = dict(self.p.experts[0].engine_args)
        if self.p.experts[0].engine == "vllm" and self.cfg.particles != "full":
            args.setdefault("max_loras", min(self.cfg.swarm_size, 16))
            if self.cfg.particles == "delta":
                from gateway.engines.vllm import max_lora_rank_for

                ranks = [self.rank, int(args.get("max_lora_rank", 16))]
                ranks += [int(read_adapter(e.adapter).config.get("r", 8)) for e in self.p.experts if e.adapter]
                args["max_lora_rank"] = max_lora_rank_for(max(ranks))
        return args

    async def _expert_handle(self, e: ResolvedExpert) -> ExpertHandle:
        """An original expert, on the swarm's engine (one engine per base for the whole search)."""
        if self.cfg.particles == "full":
            return await expert_handle(self.pool, e)
        engine = await self.pool.get(e.engine, e.model, self._engine_args())
        assert e.adapter is not None
        return ExpertHandle(name=e.name, engine=engine, adapter=self.pool.adapter(e.name, e.adapter), cost=e.cost)

    def _gc(self, keep: set[Path]) -> None:
        if self.cfg.keep_particles:
            return
        root = self.out / "particles"
        for d in root.iterdir() if root.is_dir() else ():
            if d.is_dir() and d not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # ----------------------------------------------------------------------------------------------- evaluation
    async def _score_positions(
        self, positions: list[Params], examples: list[Any]
    ) -> tuple[list[Any], list[str], list[Path]]:
        gen = self.cfg.generation
        if self.cfg.particles != "full":  # one engine: every particle in one multi-adapter batch
            made = [await self._handle(x) for x in positions]
            scored = await asyncio.gather(
                *(score_expert(self.generator, h, examples, gen, self.utility) for h, _ in made)
            )
            results = [r for r, _ in scored]
        else:  # one engine per checkpoint: one at a time, to bound memory
            made, results = [], []
            for x in positions:
                h, d = await self._handle(x)
                r, _ = await score_expert(self.generator, h, examples, gen, self.utility)
                await self._release(h, d)
                made.append((h, d))
                results.append(r)
        return results, [h.name for h, _ in made], [d for _, d in made]

    async def _evaluate(self, positions: list[Params], iteration: int) -> tuple[list[float | None], dict[str, Any]]:
        t0 = time.perf_counter()
        before = self.generator.stats.snapshot()
        results, names, dirs = await self._score_positions(positions, self.p.splits.dev)
        self.evaluations += len(positions)
        self._gc(set(dirs))
        after = self.generator.stats.snapshot()
        facts = {
            "particles": names,
            "per_task": [r.per_task for r in results],
            "generated": after["generated"] - before["generated"],
            "cache_hits": after["cache_hits"] - before["cache_hits"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return [r.value for r in results], facts

    # ----------------------------------------------------------------------------------------------- run
    async def run(self, *, resume: bool = False) -> SwarmResult:
        cfg, out = self.cfg, self.out
        check_output_dir(out, resume=resume, config_path=self.p.config_path)
        out.mkdir(parents=True, exist_ok=True)
        state_dir = out / "state"
        run_log = RunLog(out / "log.jsonl")
        t_start = time.perf_counter()
        try:
            expert_params = self._expert_params()
            saved = ParticleSwarm.saved_iteration(state_dir) if resume else None
            if saved is not None:
                swarm, extra = ParticleSwarm.load(state_dir)
                self.evaluations = int(extra.get("evaluations", 0))
                run_log.write("resume", iteration=swarm.iteration)
                log.info("resuming Model Swarms at iteration %d", swarm.iteration)
            else:
                if out.joinpath("log.jsonl").exists():
                    out.joinpath("log.jsonl").unlink()
                initial = self._initial_swarm(expert_params)
                swarm = ParticleSwarm(cfg.pso.build(cfg.seed), [x for x, _ in initial])
                run_log.write(
                    "start",
                    phase="swarm",
                    experts=[e.name for e in self.p.experts],
                    children=[who for _, who in initial[len(expert_params) :]],
                    config=cfg.model_dump(),
                    dev_examples=len(self.p.splits.dev),
                    test_examples=len(self.p.splits.test),
                )
            if not swarm.done:
                if cfg.particles != "full":  # start the shared engine up front, so iteration times are search only
                    t0 = time.perf_counter()
                    base = self.p.experts[0]
                    await self.pool.get(base.engine, base.model, self._engine_args())
                    run_log.write(
                        "engine_started", phase="swarm", engine=base.engine, seconds=round(time.perf_counter() - t0, 3)
                    )
                await drive(
                    swarm,
                    self._evaluate,
                    state_dir=state_dir,
                    run_log=run_log,
                    phase="swarm",
                    extra_state=lambda: {"evaluations": self.evaluations},
                    progress=self.progress,
                    desc=f"Model Swarms ({cfg.name})",
                )
            return await self._finish(swarm, expert_params, run_log, time.perf_counter() - t_start)
        finally:
            await self.close()

    async def _finish(
        self, swarm: ParticleSwarm, expert_params: list[Params], run_log: RunLog, seconds: float
    ) -> SwarmResult:
        """Keep the best particle as ``best/``, score it, every expert and the baselines on test, and write the summary,
        the convergence plot and the spec snippet."""
        cfg, out = self.cfg, self.out
        assert swarm.global_best_x is not None and swarm.global_best_u is not None
        best_src, digest = self._write(swarm.global_best_x)
        best_dir = out / "best"
        if best_dir.exists():
            shutil.rmtree(best_dir)
        shutil.copytree(best_src, best_dir)

        # Report on test only: the best particle and every initial expert (their own, original checkpoints).
        best_handle, d = await self._handle(swarm.global_best_x)
        best_test, _ = await score_expert(self.generator, best_handle, self.p.splits.test, cfg.generation, self.report)
        await self._release(best_handle, d)
        experts = await self._expert_scores(swarm)
        best_initial = max(experts, key=lambda n: experts[n]["dev"])
        strongest_test = max(v["test"] for v in experts.values())
        baselines = await self._baselines(swarm, expert_params)
        best_iter = next(
            (r.iteration for r in swarm.records if r.best is not None and r.best >= swarm.global_best_u), None
        )
        summary: dict[str, Any] = {
            **self.summary_head(),
            "best": {
                "dir": str(best_dir.resolve()),
                "digest": digest,
                "dev": swarm.global_best_u,
                "test": best_test.value,
                "test_per_task": best_test.per_task,
                "found_at_iteration": best_iter,
                "particle": swarm.global_best_index,
            },
            "experts": experts,
            "best_initial_expert": best_initial,
            **gains_on_test(
                best_test.value, {"best_initial": experts[best_initial]["test"], "strongest_expert": strongest_test}
            ),
            "baselines": baselines,
            **{
                f"test_relative_gain_vs_{name}": relative_gain(best_test.value, baselines[name]["test"])
                for name in ("best_initial_particle", "uniform_average", "random_search")
            },
            "iterations": swarm.iteration,
            "stop_reason": swarm.stop_reason,
            **self.session_facts(seconds),
        }
        if cfg.particles != "full" and cfg.export_merged:
            summary["best"]["merged_dir"] = str(await asyncio.to_thread(self._merge, best_dir))
        self.conclude(
            summary,
            run_log,
            title=f"Model Swarms: {cfg.name} ({self.utility.name}, dev)",
            baselines={
                **{f"expert {n}": v["dev"] for n, v in experts.items()},
                **(
                    {"best initial particle": baselines["best_initial_particle"]["dev"]}
                    if "best_initial_particle" in baselines
                    else {}
                ),
                "uniform average": baselines["uniform_average"]["dev"],
                f"random search ({baselines['random_search']['evaluations']})": baselines["random_search"]["dev"],
            },
        )
        snippet = write_spec_snippet(out / "spec_snippet.yaml", ensembles={cfg.name: self._spec_entry(best_dir)})
        if not cfg.keep_particles:
            shutil.rmtree(out / "particles", ignore_errors=True)
        return SwarmResult(out, best_dir, snippet, summary)

    async def _expert_scores(self, swarm: ParticleSwarm) -> dict[str, dict[str, Any]]:
        """Every original expert's dev utility (as the swarm scored it in iteration 0; NaN if it never was) and its
        test utility (scored now, on its own checkpoint)."""
        out: dict[str, dict[str, Any]] = {}
        for e, particle in zip(self.p.experts, swarm.particles, strict=False):
            h = await self._expert_handle(e)
            r, _ = await score_expert(self.generator, h, self.p.splits.test, self.cfg.generation, self.report)
            first = particle.history[0] if particle.history else None
            dev = float(first) if first is not None else float("nan")
            out[e.name] = {"dev": dev, "test": r.value, "test_per_task": r.per_task}
        return out

    def _spec_entry(self, best_dir: Path) -> dict[str, Any]:
        """A ``kind: expert`` ensemble serving ``best_dir`` as the experts' engine does (``spec_snippet.yaml``)."""
        cfg, base = self.cfg, self.p.experts[0]
        entry: dict[str, Any] = {"kind": "expert", "engine": cfg.engine or "auto"}
        if cfg.particles != "full":
            entry.update(model=str(Path(base.model).resolve()), adapter=str(best_dir.resolve()))
        else:
            entry.update(model=str(best_dir.resolve()))
        engine_args = dict(base.engine_args)
        if cfg.particles == "delta" and base.engine == "vllm" and self.rank > 16:  # vLLM's default max_lora_rank
            from gateway.engines.vllm import max_lora_rank_for

            engine_args["max_lora_rank"] = max(max_lora_rank_for(self.rank), int(engine_args.get("max_lora_rank", 0)))
            entry["engine"] = "vllm"
        if engine_args:
            entry["engine_args"] = engine_args
        entry["description"] = (
            f"Model Swarms over {[e.name for e in self.p.experts]}, searched for {searched_for(self.p.splits.tasks())}"
            f" ({self.utility.name})"
        )
        return entry

    async def _baselines(self, swarm: ParticleSwarm, expert_params: list[Params]) -> dict[str, Any]:
        """What the search must beat, chosen on dev and reported on test: the best particle of the initial swarm
        (experts and their children, as scored in iteration 0), random search at the same budget
        (``_random_search``) and the uniform average of the experts' weights (written to
        ``<output_dir>/uniform_average``, in the same form as ``best``)."""
        cfg, dev, test = self.cfg, self.p.splits.dev, self.p.splits.test
        initial = self._initial_swarm(expert_params)  # the search's start, drawn again: the same children
        first = [p.history[0] if p.history else None for p in swarm.particles]
        scored = [(u, i) for i, u in enumerate(first) if u is not None]
        out: dict[str, Any] = {}
        if scored:
            u0, i0 = max(scored)
            x, who = initial[i0]
            h, d = await self._handle(x)
            r, _ = await score_expert(self.generator, h, test, cfg.generation, self.report)
            await self._release(h, d)
            out["best_initial_particle"] = {"index": i0, "particle": who, "dev": u0, "test": r.value}
        out["random_search"] = await self._random_search(expert_params)
        avg = {k: sum(x[k] for x in expert_params) / len(expert_params) for k in expert_params[0]}  # type: ignore[index]
        h, d = await self._handle(avg)
        r_dev, _ = await score_expert(self.generator, h, dev, cfg.generation, self.utility)
        r_test, _ = await score_expert(self.generator, h, test, cfg.generation, self.report)
        await self._release(h, d)
        out["uniform_average"] = {
            "dir": str(self._keep(d, "uniform_average")),
            "dev": r_dev.value,
            "test": r_test.value,
            "test_per_task": r_test.per_task,
        }
        return out

    async def _random_search(self, expert_params: list[Params]) -> dict[str, Any]:
        """Random search at the search's budget: as many particles as the search scored (``utility_evaluations``),
        with no PSO moves. The first draws are the initial swarm itself (the experts and the same children); the rest
        are random convex combinations of all the experts' weights, ``Σ c_k W_k`` with ``c ~ Dirichlet(1, ..., 1)``
        (uniform on the experts' simplex, where the search's best particles lie: every PSO position is an affine
        combination of the experts). Made and scored one swarm-sized batch at a time; the best on dev is scored on
        test and kept in ``<output_dir>/random_search``; ``dev_all`` keeps every draw's dev utility, in order."""
        cfg, dev, test = self.cfg, self.p.splits.dev, self.p.splits.test
        budget = max(self.evaluations, len(expert_params))
        best: tuple[float, Params, Any] | None = None
        scores: list[float] = []
        stream = random_search_draws(self._initial_swarm(expert_params), seed=cfg.seed)
        while len(scores) < budget:
            batch = list(itertools.islice(stream, min(cfg.swarm_size, budget - len(scores))))
            results, _, _ = await self._score_positions([x for x, _ in batch], dev)
            self._gc(set())
            scores += [r.value for r in results]
            for (x, who), r in zip(batch, results, strict=True):
                if best is None or r.value > best[0]:
                    best = (r.value, x, who)
        assert best is not None
        h, d = await self._handle(best[1])
        r_test, _ = await score_expert(self.generator, h, test, cfg.generation, self.report)
        await self._release(h, d)
        return {
            "dir": str(self._keep(d, "random_search")),
            "evaluations": budget,
            "particle": best[2],
            "dev": best[0],
            "test": r_test.value,
            "test_per_task": r_test.per_task,
            "dev_all": scores,
        }

    def _keep(self, particle_dir: Path, name: str) -> Path:
        """Copy a baseline's particle beside ``best`` (``particles/`` may be removed): servable in its place where it
        scores higher on dev, in the same form."""
        kept = self.out / name
        if kept.exists():
            shutil.rmtree(kept)
        shutil.copytree(particle_dir, kept)
        return kept.resolve()

    def _initial_swarm(self, expert_params: list[Params]) -> list[tuple[Params, Any]]:
        low, high = self.cfg.child_weight_range
        names = [e.name for e in self.p.experts]
        return initial_swarm(
            expert_params, names, seed=self.cfg.seed, swarm_size=self.cfg.swarm_size, low=low, high=high
        )

    def _merge(self, best_dir: Path) -> Path:
        """The best adapter merged into the base: a plain full checkpoint."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = self.p.experts[0].model
        model = AutoModelForCausalLM.from_pretrained(base, dtype=self.dtype)
        merged = PeftModel.from_pretrained(model, str(best_dir)).merge_and_unload()
        target = self.out / "best_merged"
        if target.exists():
            shutil.rmtree(target)
        merged.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(target)
        return target.resolve()


def initial_swarm(
    experts: list[Params], names: list[str], *, seed: int, swarm_size: int, low: float, high: float
) -> list[tuple[Params, Any]]:
    """A search's initial swarm with each particle's provenance: the experts (by name), then children
    ``w A + (1 - w) B`` (``{"a", "b", "w", "kind": "child"}``), the same for the same seed."""
    rng = np.random.default_rng([seed, 1])
    children, origin = interpolate_children(experts, swarm_size - len(experts), rng, low=low, high=high)
    kids = [{**o, "a": names[o["a"]], "b": names[o["b"]], "kind": "child"} for o in origin]
    return [*zip(experts, names, strict=True), *zip(children, kids, strict=True)]


def random_search_draws(initial: list[tuple[Params, Any]], *, seed: int) -> Iterator[tuple[Params, Any]]:
    """The particles random search scores, with their provenance, without end: first ``initial`` (a search's initial
    swarm), then convex combinations ``Σ c_k W_k`` of its experts (the particles named by a string) with
    ``c ~ Dirichlet(1, ..., 1)``."""
    yield from initial
    experts = [(x, who) for x, who in initial if isinstance(who, str)]
    soup = np.random.default_rng([seed, 5])
    while True:
        c = soup.dirichlet(np.ones(len(experts)))
        x = combine([(float(w), e) for w, (e, _) in zip(c, experts, strict=True)])
        yield x, {"kind": "convex", "weights": {name: float(w) for w, (_, name) in zip(c, experts, strict=True)}}


async def run_swarm_search(prepared: Prepared, *, resume: bool = False, progress: bool = True) -> SwarmResult:
    return await ModelSwarms(prepared, progress=progress).run(resume=resume)
