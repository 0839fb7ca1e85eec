"""Heterogeneous Swarms (Feng et al. 2025): search a DAG of experts (role-step) and their weights (weight-step).

**Role-step.** Particles are continuous n x n adjacency matrices over the n experts (U(0, 1), zero diagonal). Each is
decoded by G-Decode (``offline_search.decode``; top-p while searching, so a particle explores nearby graphs) into a
DAG, which runs on the dev split through ``DagExecutor.run_batch`` (the same executor that serves ``kind: dag``), and
its utility drives the PSO update. The result is the best graph actually scored (and the deterministic decode of the
global best particle, if that scores higher).

**Weight-step** (optional, ``weight_step.iterations > 0``; LoRA experts on one base). Particles are the weights of
the experts in the best graph. A model's utility is its *JFK-score*: random assignments of those models to the
graph's nodes (each node draws a model, with replacement) are scored, and a model's score is the mean utility over
the slots it filled (a model no assignment sampled has no score this iteration, and the swarm leaves its personal
best alone). The updated experts (each model's personal best, back in its own role) are kept only if the best graph
scores higher on dev with them than without (``weight_step.accept: always`` keeps them regardless, as the paper
does).

Rounds alternate the two steps. Outputs, under ``output_dir``: ``topology.json`` (nodes, experts, edges, prompts,
search provenance), ``experts/<name>/`` for updated experts, ``spec_snippet.yaml`` (a ``kind: dag`` ensemble plus
any updated experts), ``summary.json`` (dev and test utility of the DAG and of every single expert), ``log.jsonl``,
``convergence.png`` and ``state/`` (``--resume``, any phase).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gateway.engines.base import Adapter
from gateway.executors.base import ExpertHandle
from gateway.executors.dag import DagExecutor
from gateway.templates import PROMPT_PRESETS, PromptTemplates
from gateway.topology import Topology, TopologyNode
from offline_search.base import BaseSearch, check_output_dir, gains_on_test
from offline_search.checkpoints import LoraAdapter, read_adapter, write_adapter
from offline_search.config import GraphSearchConfig, Prepared
from offline_search.decode import DecodedGraph, g_decode, random_adjacency
from offline_search.evaluate import expert_handle, sampling, write_spec_snippet
from offline_search.pso import Params, ParticleSwarm
from offline_search.tracking import Evaluate, RunLog, drive
from scoring.base import UtilityResult
from scoring.examples import Example

log = logging.getLogger(__name__)


def templates_of(cfg: GraphSearchConfig) -> PromptTemplates:
    if isinstance(cfg.prompts, str):
        return PROMPT_PRESETS[cfg.prompts]
    return PromptTemplates(**cfg.prompts.model_dump())


def to_topology(
    graph: DecodedGraph,
    slot_names: list[str],
    experts: list[str],
    templates: PromptTemplates,
    *,
    search: dict[str, Any] | None = None,
) -> Topology:
    """A decoded graph as an executable topology: node ``k`` is ``slot_names[k]`` run by ``experts[k]``."""
    nodes = []
    for k in graph.order():
        has_preds = any(j == k for _, j in graph.edges)
        prompt = templates.for_node(has_predecessors=has_preds, is_final=k == graph.end)
        nodes.append(TopologyNode(id=slot_names[k], expert=experts[k], prompt=prompt))
    edges = tuple((slot_names[i], slot_names[j]) for i, j in graph.edges)
    return Topology(tuple(nodes), edges, slot_names[graph.end], templates.response, search or {})


def single_topology(expert: str, templates: PromptTemplates) -> Topology:
    """One expert answering alone (the baseline a DAG must beat), prompted as a source node."""
    return Topology((TopologyNode(id=expert, expert=expert, prompt=templates.source),), (), expert, templates.response)


@dataclass
class Member:
    """One expert of the graph (a node's default model)."""

    name: str
    handle: ExpertHandle
    adapter_dir: str | None
    origin: str
    """The configured expert it descends from."""
    updated_in_round: int | None = None


@dataclass
class GraphResult:
    output_dir: Path
    topology_path: Path
    spec_snippet: Path
    summary: dict[str, Any] = field(default_factory=dict)


class HeteroSwarms(BaseSearch):
    config_type = GraphSearchConfig
    cfg: GraphSearchConfig

    def __init__(self, prepared: Prepared, *, progress: bool = True):
        super().__init__(prepared, progress=progress)
        self.templates = templates_of(self.cfg)
        self.params = sampling(self.cfg.generation)
        self.members: list[Member] = []
        self.progress_state: dict[str, Any] = {}
        self.phase_best: dict[str, Any] | None = None
        self._scores: dict[str, UtilityResult] = {}

    # ----------------------------------------------------------------------------------------------- scoring graphs
    async def score_topology(
        self, topo: Topology, handles: dict[str, ExpertHandle], examples: list[Example], split: str
    ) -> UtilityResult:
        """Utility of a topology on a split, memoised (with the cache on) by what execution depends on: the graph, its
        prompts and its experts' weights. With ``cache: false`` every call runs the graph."""
        weights = [(e, _weights_id(handles[e])) for e in topo.experts()]
        key = json.dumps([topo.signature(), weights, split])
        if key in self._scores:
            return self._scores[key]
        run = await DagExecutor("search", topo, handles).run_batch(
            [e.question for e in examples], self.params, generate=self.generator.generate
        )
        result = await (self.report if split == "test" else self.utility).score(examples, run.outputs)
        if self.cfg.cache:
            self._scores[key] = result
        return result

    def _handles(self) -> dict[str, ExpertHandle]:
        return {m.name: m.handle for m in self.members}

    async def _drive(
        self,
        swarm: ParticleSwarm,
        evaluate: Evaluate,
        run_log: RunLog,
        phase: str,
        desc: str,
        extra: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        """Run a phase's swarm to its end (unless it is done already), saving its state with ``extra()`` and the
        evaluation count under ``state/<phase>``."""
        if not swarm.done:
            await drive(
                swarm,
                evaluate,
                state_dir=self.out / "state" / phase,
                run_log=run_log,
                phase=phase,
                extra_state=lambda: {**extra(), "evaluations": self.evaluations},
                progress=self.progress,
                desc=desc,
            )

    # ----------------------------------------------------------------------------------------------- role-step
    async def _role_step(self, round_: int, run_log: RunLog, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        phase = f"role-{round_}"
        state_dir = self.out / "state" / phase
        if resume and ParticleSwarm.saved_iteration(state_dir) is not None:
            swarm, extra = ParticleSwarm.load(state_dir)
            self.phase_best = extra.get("best")
            self.evaluations = int(extra.get("evaluations", self.evaluations))
        else:
            n = len(self.members)
            rng = np.random.default_rng([cfg.seed, round_, 2])
            init = [torch.tensor(random_adjacency(n, rng), dtype=torch.float32) for _ in range(cfg.swarm_size)]
            prev = self.progress_state.get("best")
            if prev is not None and len(prev["adjacency"]) == n:
                init[0] = torch.tensor(prev["adjacency"], dtype=torch.float32)
            swarm = ParticleSwarm(cfg.pso.build(cfg.seed + 1000 * round_), init)
            self.phase_best = None

        async def evaluate(positions: list[Params], iteration: int) -> tuple[list[float | None], dict[str, Any]]:
            return await self._score_graphs(round_, positions, iteration)

        await self._drive(swarm, evaluate, run_log, phase, f"role-step {round_}", lambda: {"best": self.phase_best})
        best = await self._role_best(swarm)
        best["round"] = round_
        run_log.write("role_step_done", phase=phase, best=best, stop_reason=swarm.stop_reason)
        return best

    async def _score_graphs(
        self, round_: int, positions: list[Params], iteration: int
    ) -> tuple[list[float | None], dict[str, Any]]:
        """A role-step iteration: decode every particle (top-p) into a DAG, score each distinct one on dev, and keep
        the best graph scored in this phase (``phase_best``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        names = [m.name for m in self.members]
        graphs = []
        for i, x in enumerate(positions):
            rng = np.random.default_rng([cfg.seed, round_, 3, iteration, i])
            graphs.append(g_decode(x, top_p=cfg.decode_top_p, rng=rng, edge_threshold=cfg.edge_threshold))
        topos = [to_topology(g, names, names, self.templates) for g in graphs]
        unique = {t.signature(): t for t in topos} if cfg.cache else {str(i): t for i, t in enumerate(topos)}
        handles = self._handles()
        dev = self.p.splits.dev
        results = dict(
            zip(
                unique,
                await asyncio.gather(*(self.score_topology(t, handles, dev, "dev") for t in unique.values())),
                strict=True,
            )
        )
        keys = [t.signature() for t in topos] if cfg.cache else [str(i) for i in range(len(topos))]
        us: list[float | None] = [results[k].value for k in keys]
        self.evaluations += len(positions)
        for i, (t, u) in enumerate(zip(topos, us, strict=True)):
            if self.phase_best is None or u > self.phase_best["dev"]:
                x = positions[i]
                assert isinstance(x, torch.Tensor)
                self.phase_best = {
                    "dev": u,
                    "topology": t.to_json(),
                    "adjacency": x.tolist(),
                    "iteration": iteration,
                    "particle": i,
                    "decode": "top_p",
                }
        facts = {
            "graphs": [_describe(t) for t in topos],
            "unique_graphs": len(unique),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return us, facts

    async def _role_best(self, swarm: ParticleSwarm) -> dict[str, Any]:
        """The phase's best graph: the deterministic decode of the global best particle competes with the best graph
        actually scored."""
        assert isinstance(swarm.global_best_x, torch.Tensor) and self.phase_best is not None
        names = [m.name for m in self.members]
        g = g_decode(swarm.global_best_x, top_p=0.0, edge_threshold=self.cfg.edge_threshold)
        t = to_topology(g, names, names, self.templates)
        r = await self.score_topology(t, self._handles(), self.p.splits.dev, "dev")
        best = dict(self.phase_best)
        if r.value > best["dev"]:
            best = {
                "dev": r.value,
                "topology": t.to_json(),
                "adjacency": swarm.global_best_x.tolist(),
                "iteration": None,
                "particle": swarm.global_best_index,
                "decode": "deterministic",
            }
        return best

    # ----------------------------------------------------------------------------------------------- weight-step
    async def _weight_step(self, round_: int, best: dict[str, Any], run_log: RunLog, resume: bool) -> dict[str, Any]:
        """PSO over the weights of the experts in the best graph, scored by JFK (see the module docstring)."""
        cfg, ws = self.cfg, self.cfg.weight_step
        phase = f"weight-{round_}"
        state_dir = self.out / "state" / phase
        graph = Topology.from_json(best["topology"])
        index = {m.name: i for i, m in enumerate(self.members)}
        used = [index[e] for e in graph.experts()]  # the models of the system; nodes are its slots
        if len(used) < 2:
            run_log.write("weight_step_skipped", phase=phase, reason="the best graph has a single model")
            return best
        models = [self.members[i] for i in used]
        adapters: list[LoraAdapter] = [read_adapter(m.adapter_dir) for m in models if m.adapter_dir]
        base = self.p.experts[0]
        engine = await self.pool.get(base.engine, base.model, base.engine_args)

        if resume and ParticleSwarm.saved_iteration(state_dir) is not None:
            swarm, extra = ParticleSwarm.load(state_dir)
            self.evaluations = int(extra.get("evaluations", self.evaluations))
        else:
            init = [{k: t.to(torch.float32) for k, t in a.tensors.items()} for a in adapters]
            pso = ws.pso.model_copy(update={"max_iterations": ws.iterations})
            swarm = ParticleSwarm(pso.build(cfg.seed + 1000 * round_ + 500), init)

        def handle_of(k: int, x: Params) -> ExpertHandle:
            assert isinstance(x, dict)
            d, digest = write_adapter(self.out / "particles", x, adapters[0], base.model)
            name = f"{models[k].name}@{digest[:16]}"
            return ExpertHandle(name, engine, Adapter(name=name, path=str(d)), models[k].handle.cost)

        async def evaluate(positions: list[Params], iteration: int) -> tuple[list[float | None], dict[str, Any]]:
            t0 = time.perf_counter()
            handles = [handle_of(k, x) for k, x in enumerate(positions)]
            us, facts = await self._score_assignments(graph, models, handles, [cfg.seed, round_, 4, iteration])
            facts["seconds"] = round(time.perf_counter() - t0, 3)
            return us, facts

        await self._drive(swarm, evaluate, run_log, phase, f"weight-step {round_}")

        # Candidates: each model's personal best, in its own role. Kept only if the best graph gains on dev.
        candidates = [handle_of(k, p.best_x) for k, p in enumerate(swarm.particles)]
        cand_topo = _with_experts(graph, {m.name: c.name for m, c in zip(models, candidates, strict=True)})
        r = await self.score_topology(cand_topo, {c.name: c for c in candidates}, self.p.splits.dev, "dev")
        accepted = ws.accept == "always" or r.value > best["dev"]
        run_log.write(
            "weight_step_done", phase=phase, dev_before=best["dev"], dev_with_updated=r.value, accepted=accepted
        )
        if not accepted:
            return best
        renamed = self._adopt(round_, used, candidates, engine)
        return {**best, "dev": r.value, "topology": _with_experts(graph, renamed).to_json(), "weight_round": round_}

    async def _score_assignments(
        self, graph: Topology, models: list[Member], handles: list[ExpertHandle], seed: list[int]
    ) -> tuple[list[float | None], dict[str, Any]]:
        """A weight-step iteration: random assignments of the particles (``handles``, one per model) to the graph's
        nodes, scored on dev; each model's utility is its JFK-score."""
        ws, n_models = self.cfg.weight_step, len(models)
        rng = np.random.default_rng(seed)
        assignments = [[int(rng.integers(n_models)) for _ in graph.nodes] for _ in range(ws.assignments)]
        topos = [
            Topology(
                tuple(TopologyNode(n.id, handles[a[k]].name, n.prompt) for k, n in enumerate(graph.nodes)),
                graph.edges,
                graph.final,
                graph.response_template,
            )
            for a in assignments
        ]
        by_name = {h.name: h for h in handles}
        results = await asyncio.gather(*(self.score_topology(t, by_name, self.p.splits.dev, "dev") for t in topos))
        us = [r.value for r in results]
        self.evaluations += len(assignments)
        facts = {
            "assignments": [[models[k].name for k in a] for a in assignments],
            "assignment_utilities": us,
            "models": [h.name for h in handles],
        }
        return jfk_scores(assignments, us, n_models), facts

    def _adopt(self, round_: int, used: list[int], candidates: list[ExpertHandle], engine: Any) -> dict[str, str]:
        """Make the accepted candidates members in their models' places, each copied to ``experts/<origin>-hs<k>``;
        returns old name -> new name."""
        renamed: dict[str, str] = {}
        for i, cand in zip(used, candidates, strict=True):
            member = self.members[i]
            assert cand.adapter is not None
            new_name = f"{member.origin}-hs{round_ + 1}"
            target = self.out / "experts" / new_name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(cand.adapter.path, target)
            handle = ExpertHandle(new_name, engine, self.pool.adapter(new_name, target), member.handle.cost)
            self.members[i] = Member(new_name, handle, str(target), member.origin, round_)
            renamed[member.name] = new_name
        return renamed

    # ----------------------------------------------------------------------------------------------- run
    def _save_progress(self) -> None:
        self.progress_state["members"] = [
            {"name": m.name, "adapter": m.adapter_dir, "origin": m.origin, "updated_in_round": m.updated_in_round}
            for m in self.members
        ]
        self.progress_state["evaluations"] = self.evaluations
        p = self.out / "state" / "progress.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.progress_state, indent=1))
        os.replace(tmp, p)

    async def _restore_members(self, saved: list[dict[str, Any]]) -> None:
        base = self.p.experts[0]
        for i, s in enumerate(saved):
            if s["updated_in_round"] is None:
                continue
            engine = await self.pool.get(base.engine, base.model, base.engine_args)
            ad = self.pool.adapter(s["name"], s["adapter"])
            handle = ExpertHandle(name=s["name"], engine=engine, adapter=ad, cost=self.members[i].handle.cost)
            self.members[i] = Member(s["name"], handle, s["adapter"], s["origin"], s["updated_in_round"])

    async def run(self, *, resume: bool = False) -> GraphResult:
        cfg, out = self.cfg, self.out
        check_output_dir(out, resume=resume, config_path=self.p.config_path, marker="state/progress.json")
        out.mkdir(parents=True, exist_ok=True)
        run_log = RunLog(out / "log.jsonl")
        t_start = time.perf_counter()
        progress_path = out / "state" / "progress.json"
        try:
            for e in self.p.experts:
                h = await expert_handle(self.pool, e)
                self.members.append(Member(e.name, h, e.adapter, e.name))
            if resume and progress_path.is_file():
                self.progress_state = json.loads(progress_path.read_text())
                await self._restore_members(self.progress_state.get("members", []))
                self.evaluations = int(self.progress_state.get("evaluations", 0))
                run_log.write("resume", done=self.progress_state.get("done", []))
            else:
                resume = False
                shutil.rmtree(out / "state", ignore_errors=True)
                if (out / "log.jsonl").exists():
                    (out / "log.jsonl").unlink()
                self.progress_state = {"done": []}
                run_log.write(
                    "start",
                    experts=[m.name for m in self.members],
                    config=cfg.model_dump(),
                    dev_examples=len(self.p.splits.dev),
                    test_examples=len(self.p.splits.test),
                )
                self._save_progress()
            done: list[str] = self.progress_state.setdefault("done", [])
            for r in range(cfg.rounds):
                if f"role-{r}" not in done:
                    self.progress_state["best"] = _better(
                        self.progress_state.get("best"), await self._role_step(r, run_log, resume)
                    )
                    done.append(f"role-{r}")
                    self._save_progress()
                if cfg.weight_step.iterations > 0 and f"weight-{r}" not in done:
                    self.progress_state["best"] = await self._weight_step(
                        r, self.progress_state["best"], run_log, resume
                    )
                    done.append(f"weight-{r}")
                    self._save_progress()
            return await self._finish(run_log, time.perf_counter() - t_start)
        finally:
            await self.close()

    async def _baselines(
        self, originals: dict[str, ExpertHandle], dev: list[Example], test: list[Example]
    ) -> dict[str, Any]:
        """What the search must beat, chosen on dev and reported on test: the best hand-wired chain (every ordered
        pair of the original experts) and random graph search with the search's own number of evaluations."""
        cfg, names = self.cfg, list(originals)
        chains: dict[str, dict[str, float]] = {}
        for a in names:
            for b in names:
                if a != b:
                    r = await self.score_topology(chain_topology(a, b, self.templates), originals, dev, "dev")
                    chains[f"{a} -> {b}"] = {"dev": r.value}
        best_chain = max(chains, key=lambda k: chains[k]["dev"])
        a, b = best_chain.split(" -> ")
        r = await self.score_topology(chain_topology(a, b, self.templates), originals, test, "test")
        chains[best_chain]["test"] = r.value
        budget = max(self.evaluations, 1)
        rng = np.random.default_rng([cfg.seed, 99])
        best: tuple[float, Topology] | None = None
        for _ in range(budget):
            g = g_decode(
                random_adjacency(len(names), rng),
                top_p=cfg.decode_top_p,
                rng=rng,
                edge_threshold=cfg.edge_threshold,
            )
            t = to_topology(g, names, names, self.templates)
            u = (await self.score_topology(t, originals, dev, "dev")).value
            if best is None or u > best[0]:
                best = (u, t)
        assert best is not None
        rand_test = await self.score_topology(best[1], originals, test, "test")
        return {
            "chains_dev": {k: v["dev"] for k, v in chains.items()},
            "best_chain": {"chain": best_chain, "dev": chains[best_chain]["dev"], "test": chains[best_chain]["test"]},
            "random_search": {
                "evaluations": budget,
                "graph": _describe(best[1]),
                "dev": best[0],
                "test": rand_test.value,
            },
        }

    async def _finish(self, run_log: RunLog, seconds: float) -> GraphResult:
        """Score the best graph, every single expert and the baselines on test; write ``topology.json``, the summary,
        the convergence plot and the spec snippet."""
        cfg, out = self.cfg, self.out
        best = self.progress_state["best"]
        topo = Topology.from_json(best["topology"])
        dev, test = self.p.splits.dev, self.p.splits.test
        dag_test = await self.score_topology(topo, self._handles(), test, "test")
        originals = {e.name: await expert_handle(self.pool, e) for e in self.p.experts}
        singles = await self._single_scores(originals)
        best_single = max(singles, key=lambda n: singles[n]["dev"])
        strongest_test = max(s["test"] for s in singles.values())
        baselines = await self._baselines(originals, dev, test)
        search_meta = {
            "utility": self.utility.name,
            "dev": best["dev"],
            "test": dag_test.value,
            "adjacency": best["adjacency"],
            "experts": [m.name for m in self.members],
            "decode": best.get("decode"),
            "round": best.get("round"),
            "seed": cfg.seed,
        }
        topo = Topology(topo.nodes, topo.edges, topo.final, topo.response_template, search_meta)
        topo_path = topo.save(out / "topology.json")
        summary: dict[str, Any] = {
            **self.summary_head(),
            "dag": {
                "topology": str(topo_path.resolve()),
                "nodes": [{"id": n.id, "expert": n.expert} for n in topo.nodes],
                "edges": [list(e) for e in topo.edges],
                "final": topo.final,
                "dev": best["dev"],
                "test": dag_test.value,
                "test_per_task": dag_test.per_task,
            },
            "experts": singles,
            "best_single_expert": best_single,
            **gains_on_test(
                dag_test.value, {"best_single": singles[best_single]["test"], "strongest_single": strongest_test}
            ),
            "baselines": baselines,
            "test_gain_vs_best_chain": dag_test.value - baselines["best_chain"]["test"],
            "test_gain_vs_random_search": dag_test.value - baselines["random_search"]["test"],
            "updated_experts": [m.name for m in self.members if m.updated_in_round is not None],
            **self.session_facts(seconds),
        }
        self.conclude(
            summary,
            run_log,
            title=f"Heterogeneous Swarms: {cfg.name} ({self.utility.name}, dev)",
            baselines={f"best single ({best_single})": singles[best_single]["dev"]},
        )
        snippet = write_spec_snippet(
            out / "spec_snippet.yaml",
            experts=self._updated_experts(set(topo.experts())) or None,
            ensembles={
                cfg.name: {
                    "kind": "dag",
                    "topology": str(topo_path.resolve()),
                    "description": f"Heterogeneous Swarms DAG over {[m.name for m in self.members]} ({self.utility.name})",
                }
            },
        )
        shutil.rmtree(out / "particles", ignore_errors=True)
        return GraphResult(out, topo_path, snippet, summary)

    async def _single_scores(self, originals: dict[str, ExpertHandle]) -> dict[str, dict[str, Any]]:
        """Each original expert answering alone: dev and test utility."""
        dev, test = self.p.splits.dev, self.p.splits.test
        singles: dict[str, dict[str, Any]] = {}
        for name, h in originals.items():
            one = {name: h}
            d = await self.score_topology(single_topology(name, self.templates), one, dev, "dev")
            t = await self.score_topology(single_topology(name, self.templates), one, test, "test")
            singles[name] = {"dev": d.value, "test": t.value, "test_per_task": t.per_task}
        return singles

    def _updated_experts(self, used: set[str]) -> dict[str, dict[str, Any]]:
        """Spec entries of the experts the weight-step updated that the graph ``used``."""
        base = self.p.experts[0]
        new_experts: dict[str, dict[str, Any]] = {}
        for m in self.members:
            if m.updated_in_round is not None and m.name in used:
                entry: dict[str, Any] = {
                    "engine": self.cfg.engine or "auto",
                    "model": str(Path(base.model).resolve()),
                    "adapter": str(Path(m.adapter_dir or "").resolve()),
                }
                if base.engine_args:
                    entry["engine_args"] = base.engine_args
                entry["cost"] = m.handle.cost
                entry["description"] = f"{m.origin} after the Heterogeneous Swarms weight-step"
                new_experts[m.name] = entry
        return new_experts


def chain_topology(first: str, second: str, templates: PromptTemplates) -> Topology:
    """A hand-wired two-expert chain: ``second`` sees ``first``'s answer (what a person would wire by hand)."""
    nodes = (
        TopologyNode(id=first, expert=first, prompt=templates.source),
        TopologyNode(id=second, expert=second, prompt=templates.for_node(has_predecessors=True, is_final=True)),
    )
    return Topology(nodes, ((first, second),), second, templates.response)


def _with_experts(topo: Topology, experts: dict[str, str]) -> Topology:
    """The same graph with node experts renamed (``experts``: old name -> new name)."""
    nodes = tuple(TopologyNode(n.id, experts.get(n.expert, n.expert), n.prompt) for n in topo.nodes)
    return Topology(nodes, topo.edges, topo.final, topo.response_template)


def jfk_scores(assignments: list[list[int]], utilities: list[float], n_models: int) -> list[float | None]:
    """A model's JFK-score: mean utility over the slots it filled across assignments (None if it filled none)."""
    total = np.zeros(n_models)
    count = np.zeros(n_models)
    for assign, u in zip(assignments, utilities, strict=True):
        for m in assign:
            total[m] += u
            count[m] += 1
    return [float(total[m] / count[m]) if count[m] > 0 else None for m in range(n_models)]


def _weights_id(handle: ExpertHandle) -> str:
    """What a handle's outputs depend on: its adapter (named by content) or, without one, its engine's model."""
    if handle.adapter is not None:
        return handle.adapter.name
    return f"{handle.engine.kind}:{getattr(handle.engine, 'model_path', None) or getattr(handle.engine, 'model', '')}"


def _describe(t: Topology) -> str:
    return "; ".join(f"{a}->{b}" for a, b in t.edges) or f"{t.final} alone"


def _better(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    return new if old is None or new["dev"] >= old["dev"] else old


async def run_graph_search(prepared: Prepared, *, resume: bool = False, progress: bool = True) -> GraphResult:
    return await HeteroSwarms(prepared, progress=progress).run(resume=resume)


__all__ = ["GraphResult", "HeteroSwarms", "jfk_scores", "run_graph_search", "to_topology"]
