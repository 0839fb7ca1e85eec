"""``swarmgate search blend``: PSO over blend weights on the toy world, resumable, writing a servable spec snippet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.spec import parse_spec
from offline_search.blend_search import load_blend_config, run_blend_search
from offline_search.cli import app
from offline_search.config import prepare

pytestmark = pytest.mark.timeout(900)


def write_config(tmp: Path, out: Path, **over: Any) -> Path:
    cfg = {
        "name": "t-blend",
        "toy_world": True,
        "experts": ["toy-big", "toy-adder", "toy-sorter"],
        "engine": "transformers",
        "swarm_size": 4,
        "pso": {"max_iterations": 2, "patience": 3},
        "data": {"paths": ["data/add", "data/sort"], "dev_limit": 6, "test_limit": 6},
        "generation": {"max_tokens": 8},
        "output_dir": str(out),
        **over,
    }
    path = tmp / f"blend-{len(list(tmp.glob('blend-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_search_writes_a_servable_snippet_and_resumes(tmp_path: Path, toy_world: Any) -> None:
    out = tmp_path / "run"
    path = write_config(tmp_path, out)
    result = await run_blend_search(prepare(load_blend_config(path), path), progress=False)
    s = result.summary
    assert set(s["experts"]) == {"toy-big", "toy-adder", "toy-sorter"}
    assert s["searched"]["dev"] >= s["uniform"]["dev"]  # uniform weights are particle 0: the search keeps the best
    assert sum(s["searched"]["weights"]) == pytest.approx(1.0)
    for key in ("summary.json", "log.jsonl", "spec_snippet.yaml", "convergence.png", "state/latest.json"):
        assert (out / key).exists(), key
    snippet = yaml.safe_load((out / "spec_snippet.yaml").read_text())
    spec = yaml.safe_load(toy_world.spec_path.read_text())
    spec["ensembles"] = snippet["ensembles"]
    parsed = parse_spec(spec, path=toy_world.spec_path)
    assert parsed.ensembles["t-blend"].kind == "blend"
    assert parsed.ensembles["t-blend"].weights == pytest.approx(s["searched"]["weights"], abs=1e-5)


async def test_a_killed_search_resumes_to_the_same_result(tmp_path: Path, toy_world: Any, monkeypatch) -> None:
    from offline_search import blend_search

    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    pso = {"max_iterations": 3, "patience": 5}
    full_cfg = write_config(tmp_path, full_dir, pso=pso)
    full = await run_blend_search(prepare(load_blend_config(full_cfg), full_cfg), progress=False)

    real = blend_search.BlendSearch._dev_utility
    calls = {"n": 0}

    async def dying(self: Any, part: Any, examples: Any) -> float:
        calls["n"] += 1
        if calls["n"] > 6:  # iteration 0 (4 particles) done, iteration 1 killed midway
            raise KeyboardInterrupt
        return await real(self, part, examples)

    cut_cfg = write_config(tmp_path, cut_dir, pso=pso)
    monkeypatch.setattr(blend_search.BlendSearch, "_dev_utility", dying)
    with pytest.raises(KeyboardInterrupt):
        await run_blend_search(prepare(load_blend_config(cut_cfg), cut_cfg), progress=False)
    monkeypatch.setattr(blend_search.BlendSearch, "_dev_utility", real)
    with pytest.raises(Exception, match="--resume"):
        await run_blend_search(prepare(load_blend_config(cut_cfg), cut_cfg), progress=False)
    resumed = await run_blend_search(prepare(load_blend_config(cut_cfg), cut_cfg), resume=True, progress=False)
    lines = [json.loads(x) for x in (cut_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["event"] == "iteration"] == [0, 1, 2]
    assert any(r["event"] == "resume" for r in lines)
    assert resumed.summary["searched"]["weights"] == pytest.approx(full.summary["searched"]["weights"])
    assert resumed.summary["searched"]["dev"] == full.summary["searched"]["dev"]


def test_cli_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, tmp_path / "x", lead="toy-counter")
    r = CliRunner().invoke(app, ["blend", "--config", str(path)])
    assert r.exit_code == 2 and "lead" in r.output
    path = write_config(tmp_path, tmp_path / "y", experts=["toy-big"])
    r = CliRunner().invoke(app, ["blend", "--config", str(path)])
    assert r.exit_code == 2 and "at least 2 experts" in r.output
