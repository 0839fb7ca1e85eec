"""Ensembles served out of the box: a searched swarmed expert, a searched DAG and a trained router over the toy world.

``build_ensembles()`` runs the project's own offline tools at small budgets (minutes on two cores, the transformers
engine, no vLLM needed):
- ``toy-swarm``: Model Swarms (``offline_search.model_swarms``) over the four LoRA specialists, or the baseline that
  scores higher on dev (the uniform average of their weights, or random search's best combination at the same budget);
- ``toy-dag``: Heterogeneous Swarms (``offline_search.hetero_swarms``) for the composed task ``addrev``, or the best
  hand-wired chain where that scores higher on dev;
- ``toy-router``: trajectory collection + PPO (``router.workflow``), a ``kind: chain`` over every toy expert;
- ``toy-blend``: blend-weight search (``offline_search.blend_search``), a ``kind: blend`` of the three LoRA
  generalists ``toy-gen-a/b/c`` with the weights dev chose;
then writes ``spec.yaml`` serving the toy world's experts plus those four. Everything is cached under
``<toy world>/ensembles/<hash>``, the hash covering the small configs below and the toy world's own hash, so a second
call returns at once. Small budgets mean these are demonstrations that the pipeline works end to end, not the best
the searches can do: ``swarmgate search ...`` and ``swarmgate router ...`` with the default configs go further.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

SWARM = {
    "swarm_size": 6,
    "pso": {"max_iterations": 3, "patience": 2, "restart_patience": 2},
    "data": {"dev_limit": 12, "test_limit": 20},
}
"""Overrides of ``offline_search/configs/toy_swarm.yaml`` (small budget)."""
GRAPH = {
    "swarm_size": 6,
    "pso": {"max_iterations": 3, "patience": 2},
    "weight_step": {"iterations": 0},
    "data": {"dev_limit": 12, "test_limit": 20},
}
"""Overrides of ``offline_search/configs/toy_graph.yaml`` (small budget; no weight-step)."""
ROUTER = {
    "data": {"limit_per_task": 40, "eval_limit_per_task": 8},
    "train": {"total_timesteps": 60000, "n_envs": 4, "progress_bar": False},
    "ppo": {"n_steps": 256, "batch_size": 256},
    "collect": {"engine": "transformers"},
    "encoder": {"vocab_min_questions": 15},  # 40 questions per task: a task word is in 40, an operand in at most 10
}
"""Overrides of ``router/toy.yaml`` (small budget: 40 training questions per task, 60k PPO steps; the built router
scored 0.890 on 300 dev questions at its default lambda, against the keyword rule's 0.907; on the machine of
2026-12-06, 0.927 against 0.927, and 0.913 against 0.927 once big learnt to count (build d9d43f4673777fd0); with
payloads read by their shape, 0.923 at cost 1.36; with 8 questions per task it learned to answer ``addrev`` with the
reverser alone)."""
BLEND = {
    "swarm_size": 6,
    "pso": {"max_iterations": 3, "patience": 2},
    "data": {"dev_limit": 25, "test_limit": 25},
}
"""Overrides of ``offline_search/configs/toy_blend.yaml`` (small budget: 100 dev questions choose the weights)."""
VERSION = 6
"""Bumped when what ``build_ensembles`` writes changes (part of the cache hash with the configs)."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ensembles_hash(world_root: Path) -> str:
    """Hash of the small configs, the default configs they override, ``VERSION`` and the toy world's build hash."""
    repo = Path(__file__).resolve().parents[1]  # the config files themselves: no heavy imports to hash them
    configs = repo / "offline_search" / "configs"
    defaults = [yaml.safe_load((configs / f"toy_{k}.yaml").read_text()) for k in ("swarm", "graph", "blend")]
    router = yaml.safe_load((repo / "router" / "toy.yaml").read_text())
    for key in ("baselines", "retrain", "eval_dir"):  # what eval/retrain read does not change what is built
        router.pop(key, None)
    h = hashlib.sha256()
    h.update(json.dumps([VERSION, SWARM, GRAPH, BLEND, ROUTER, defaults, router], sort_keys=True).encode())
    h.update(world_root.name.encode())  # the toy world's content hash
    return h.hexdigest()[:16]


def _absolute_spec(world: Any) -> dict[str, Any]:
    data = yaml.safe_load(Path(world.spec_path).read_text()) or {}
    for expert in (data.get("experts") or {}).values():
        for key in ("model", "adapter"):
            value = expert.get(key)
            if value and not Path(value).is_absolute() and (Path(world.root) / value).exists():
                expert[key] = str((Path(world.root) / value).resolve())
    return data


def _search(kind: str, overrides: dict[str, Any], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one search at a small budget; return its spec snippet (as data) and its summary."""
    from offline_search.config import default_config_path, load_graph_config, load_swarm_config, prepare

    data = yaml.safe_load(default_config_path(kind).read_text())  # type: ignore[arg-type]
    data = _merge(data, overrides)
    data["output_dir"] = str(out / kind)
    data["engine"] = "transformers"
    path = out / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if out.joinpath(kind).exists():
        shutil.rmtree(out / kind)
    if kind == "swarm":
        from offline_search.model_swarms import run_swarm_search

        cfg = load_swarm_config(path)
        result = asyncio.run(run_swarm_search(prepare(cfg, path), progress=False))
    elif kind == "graph":
        from offline_search.hetero_swarms import run_graph_search

        cfg = load_graph_config(path)
        result = asyncio.run(run_graph_search(prepare(cfg, path), progress=False))
    else:
        from offline_search.blend_search import load_blend_config, run_blend_search

        cfg = load_blend_config(path)
        result = asyncio.run(run_blend_search(prepare(cfg, path), progress=False))
    snippet = yaml.safe_load(result.spec_snippet.read_text())
    for group in ("experts", "ensembles"):  # searched on transformers; served like the toy experts (auto)
        for entry in (snippet.get(group) or {}).values():
            if entry.get("engine") == "transformers":
                entry["engine"] = "auto"
    return snippet, result.summary


def _dev_selected_swarm(snippet: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Dev selects what ``toy-swarm`` serves: the searched particle, or the baseline the search reports that scored
    higher on dev at this small budget: the uniform average of the experts' weights, or random search's best draw at
    the same budget (said in the description; the search's report keeps every number)."""
    from offline_search.base import searched_for

    name, entry = next(iter((snippet.get("ensembles") or {}).items()))
    baselines = summary.get("baselines") or {}
    best = summary["best"]["dev"]
    experts = ", ".join(summary.get("experts") or {})
    kinds = {
        "uniform_average": f"uniform average of the weights of {experts}",
        "random_search": f"random search's best of {baselines.get('random_search', {}).get('evaluations')} weight "
        f"combinations of {experts}",
    }
    better = [(baselines[k]["dev"], k) for k in kinds if "dir" in baselines.get(k, {}) and baselines[k]["dev"] > best]
    if not better:
        entry["description"] = f"{entry.get('description', '')}; dev {best:.3f}".strip("; ")
        return {name: entry}
    dev, kind = max(better)
    entry["adapter" if "adapter" in entry else "model"] = baselines[kind]["dir"]
    entry["description"] = (
        f"{kinds[kind]}, searched for {searched_for(summary.get('tasks') or [])}: it beat the searched particle on "
        f"dev at this small budget ({dev:.3f} vs {best:.3f}); `swarmgate search swarm` searches further"
    )
    return {name: entry}


def _dev_selected_dag(snippet: dict[str, Any], summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Dev selects what ``toy-dag`` serves: the searched DAG, or the best hand-wired chain when that scored higher
    on dev at this small budget (said in the description; the search's own report keeps both numbers)."""
    from gateway.templates import PROMPT_PRESETS
    from offline_search.hetero_swarms import chain_topology

    chain = (summary.get("baselines") or {}).get("best_chain")
    name, entry = next(iter((snippet.get("ensembles") or {}).items()))
    if chain is None or chain["dev"] <= summary["dag"]["dev"]:
        entry["description"] = f"{entry.get('description', '')}; dev {summary['dag']['dev']:.3f}".strip("; ")
        return {name: entry}
    first, second = chain["chain"].split(" -> ")
    path = chain_topology(first, second, PROMPT_PRESETS["toy"]).save(out / "graph" / "chain_topology.json")
    entry = {
        "kind": "dag",
        "topology": str(path.resolve()),
        "description": (
            f"{first} -> {second}: the hand-wired chain beat the searched DAG on dev at this small budget "
            f"({chain['dev']:.3f} vs {summary['dag']['dev']:.3f}); `swarmgate search graph` searches further"
        ),
    }
    return {name: entry}


def _router(out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Collect + PPO at a small budget; return the ``kind: chain`` entry."""
    from router.config import TOY_CONFIG, config_from_dict, resolve_toy
    from router.workflow import collect_splits, load_split, train_on

    data = _merge(yaml.safe_load(TOY_CONFIG.read_text()), ROUTER)
    data.update(cache="trajectories.sqlite", policy_dir="policy", eval_dir="eval")
    d = out / "router"
    d.mkdir(parents=True, exist_ok=True)
    cfg = resolve_toy(config_from_dict(data, base=d, where="swarmgate.ensembles.ROUTER"))
    collect_splits(cfg, [cfg.data.train_split], progress=False, say=say)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress_bar=False))
    train_on(cfg, load_split(cfg, cfg.data.train_split), progress=False, say=say)
    return {
        "kind": "chain",
        "policy": str(Path(cfg.policy_dir).resolve()),
        "experts": list(cfg.experts),
        "max_steps": cfg.env.max_steps,
        "description": "PPO-routed chain over the toy experts (DER); trained at a small budget",
    }


def _validated(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write ``spec`` and load it: a spec the loader refuses is an error here, never a half-served toy world."""
    from gateway.spec import load_spec

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    load_spec(path)
    return spec


def build_ensembles(world: Any = None, *, force: bool = False, say: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the toy ensembles and return the path of the spec serving them with the toy experts."""
    from toyworld.build import build_toy_world

    world = world or build_toy_world(progress=False)
    root = Path(world.root) / "ensembles" / ensembles_hash(Path(world.root))
    spec_path = root / "spec.yaml"
    if spec_path.is_file() and (root / "done.json").is_file() and not force:
        return spec_path
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    try:
        spec = _absolute_spec(world)
        ensembles: dict[str, Any] = {}
        say("toy ensembles: Model Swarms (toy-swarm) ...")
        t = time.perf_counter()
        snippet, summary = _search("swarm", SWARM, tmp)
        ensembles.update(_dev_selected_swarm(snippet, summary))
        times["swarm"] = time.perf_counter() - t
        say("toy ensembles: Heterogeneous Swarms (toy-dag) ...")
        t = time.perf_counter()
        snippet, summary = _search("graph", GRAPH, tmp)
        spec["experts"].update(snippet.get("experts") or {})
        ensembles.update(_dev_selected_dag(snippet, summary, tmp))
        times["dag"] = time.perf_counter() - t
        say("toy ensembles: router collect + PPO (toy-router) ...")
        t = time.perf_counter()
        ensembles["toy-router"] = _router(tmp, say=lambda m: log.info("%s", m))
        times["router"] = time.perf_counter() - t
        say("toy ensembles: blend-weight search (toy-blend) ...")
        t = time.perf_counter()
        snippet, summary = _search("blend", BLEND, tmp)
        for name, entry in (snippet.get("ensembles") or {}).items():
            entry["description"] = (
                f"token-level blend of the three toy generalists, weights chosen on dev "
                f"({summary['searched']['dev']:.3f}; best member {summary['experts'][summary['best_member_on_dev']]['dev']:.3f})"
            )
            ensembles[name] = entry
        times["blend"] = time.perf_counter() - t
        spec["ensembles"] = {**(spec.get("ensembles") or {}), **ensembles}
        # the searches wrote absolute paths under tmp: point them at the final directory
        text = yaml.safe_dump(spec, sort_keys=False).replace(str(tmp.resolve()), str(root.resolve()))
        spec = yaml.safe_load(text)
        for p in [*tmp.rglob("*.json"), *tmp.rglob("*.yaml")]:
            text = p.read_text()
            if str(tmp.resolve()) in text:
                p.write_text(text.replace(str(tmp.resolve()), str(root.resolve())))
        if root.exists():
            shutil.rmtree(root)
        os.rename(tmp, root)
        spec = _validated(spec, spec_path)
        (root / "done.json").write_text(
            json.dumps({"seconds": round(time.perf_counter() - t0, 1), "steps": times, "ensembles": list(ensembles)})
            + "\n"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"toy ensembles built in {time.perf_counter() - t0:.0f}s: {spec_path}")
    return spec_path
