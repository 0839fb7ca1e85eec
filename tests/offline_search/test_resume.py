"""A search killed midway (SIGKILL, a real process) and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.offline_search.test_search_toy import graph_config, swarm_config


def cli(kind: str, config: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "swarmgate.cli", "search", kind, "--config", str(config), "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the search ended before it could be killed:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("the search never reached the kill point")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def iterations(out: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [(r["phase"], r["iteration"], r["utilities"], r["best"]) for r in rows if r["event"] == "iteration"]


def saved_iteration(state: Path) -> int:
    try:
        return json.loads((state / "latest.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


def test_swarm_search_resumes_to_the_same_end(toy_world, tmp_path):
    over = {"pso": {"max_iterations": 4, "patience": 10, "restart_patience": 1}, "seed": 3}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cfg_killed, cfg_whole = swarm_config(toy_world, killed, **over), swarm_config(toy_world, whole, **over)

    proc = cli("swarm", cfg_killed)
    kill_when(proc, lambda: saved_iteration(killed / "state") >= 2)
    assert not (killed / "summary.json").exists()  # really killed midway
    refused = subprocess.run(
        [sys.executable, "-m", "swarmgate.cli", "search", "swarm", "--config", str(cfg_killed), "-q"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "--resume" in refused.stderr  # no silent overwrite
    finish(cli("swarm", cfg_killed, "--resume"))
    finish(cli("swarm", cfg_whole))

    a, b = json.loads((killed / "summary.json").read_text()), json.loads((whole / "summary.json").read_text())
    assert a["best"]["digest"] == b["best"]["digest"]
    assert a["best"]["dev"] == b["best"]["dev"] and a["best"]["test"] == b["best"]["test"]
    assert a["iterations"] == b["iterations"] == 4 and a["utility_evaluations"] == b["utility_evaluations"] == 12
    assert iterations(killed) == iterations(whole)
    assert (killed / "best" / "adapter_model.safetensors").read_bytes() == (
        whole / "best" / "adapter_model.safetensors"
    ).read_bytes()


@pytest.mark.slow
def test_graph_search_resumes_to_the_same_end(toy_world, tmp_path):
    over = {"pso": {"max_iterations": 3, "patience": 10}, "weight_step": {"iterations": 2, "assignments": 2}, "seed": 5}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cfg_killed, cfg_whole = graph_config(toy_world, killed, **over), graph_config(toy_world, whole, **over)
    proc = cli("graph", cfg_killed)
    kill_when(proc, lambda: saved_iteration(killed / "state" / "role-0") >= 2)
    finish(cli("graph", cfg_killed, "--resume"))
    finish(cli("graph", cfg_whole))
    a, b = json.loads((killed / "summary.json").read_text()), json.loads((whole / "summary.json").read_text())
    a["dag"].pop("topology"), b["dag"].pop("topology")  # the paths differ, nothing else may
    assert a["dag"] == b["dag"] and a["experts"] == b["experts"]
    assert iterations(killed) == iterations(whole)
    assert (killed / "topology.json").read_text() == (whole / "topology.json").read_text()
