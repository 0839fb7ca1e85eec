"""`swarmgate search graph` and `swarmgate search swarm --engine vllm` as a user runs them: real subprocesses on the
toy world, tiny budgets, then `--report` reprinting the finished run's baseline table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.topology import Topology
from tests.helpers import REPO
from tests.offline_search.test_search_toy import graph_config, swarm_config


def search(kind: str, config: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "swarmgate.cli", "search", kind, "--config", str(config), "--quiet", *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def table_rows(out: str) -> dict[str, tuple[str, str]]:
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {m.strip(): (d.strip(), t.strip()) for m, d, t in rows if m.strip() != "method"}


def test_search_graph_through_the_cli_and_its_report(toy_world, tmp_path: Path) -> None:
    out_dir = tmp_path / "graph"
    over = {"swarm_size": 2, "pso": {"max_iterations": 1}, "weight_step": {"iterations": 0}}
    config = graph_config(
        toy_world,
        out_dir,
        data={"paths": [str(toy_world.data_dir / "addrev")], "dev_limit": 4, "test_limit": 4},
        **over,
    )
    out = search("graph", config)
    rows = table_rows(out)
    assert "Heterogeneous Swarms DAG" in rows and {
        "expert toy-adder",
        "expert toy-reverser",
        "expert toy-sorter",
    } <= set(rows)
    assert any(m.startswith("best hand-wired chain (") for m in rows)
    assert any(m.startswith("random graph search (") for m in rows)
    topology = Topology.load(out_dir / "topology.json")
    assert {n.expert for n in topology.nodes} <= {"toy-adder", "toy-reverser", "toy-sorter"}
    assert topology.final in {n.id for n in topology.nodes}
    summary = json.loads((out_dir / "summary.json").read_text())
    assert rows["Heterogeneous Swarms DAG"] == (f"{summary['dag']['dev']:.4f}", f"{summary['dag']['test']:.4f}")
    assert f"topology:     {out_dir / 'topology.json'}" in out

    again = search("graph", config, "--report")  # runs nothing, reprints the same table
    assert table_rows(again) == rows and "topology:" not in again


@pytest.mark.vllm
@pytest.mark.slow
def test_search_swarm_on_the_vllm_engine_through_the_cli(toy_world, tmp_path: Path) -> None:
    out_dir = tmp_path / "swarm"
    config = swarm_config(
        toy_world,
        out_dir,
        swarm_size=2,
        pso={"max_iterations": 1},
        data={"paths": [str(toy_world.data_dir / "add")], "dev_limit": 4, "test_limit": 4},
    )
    out = search("swarm", config, "--engine", "vllm")
    rows = table_rows(out)
    assert {"Model Swarms best", "expert toy-adder", "expert toy-reverser"} <= set(rows)
    assert float(rows["expert toy-adder"][1]) >= 0.75  # the adder, served by vLLM, answers its own task
    snippet = yaml.safe_load((out_dir / "spec_snippet.yaml").read_text())
    assert snippet["ensembles"]["test-swarm"]["engine"] == "vllm"  # served as it was searched
    best = Path(out.split("best checkpoint:")[1].split()[0])
    assert (best / "adapter_config.json").is_file() and (best / "adapter_model.safetensors").is_file()
    assert table_rows(search("swarm", config, "--report")) == rows
