"""The real ``swarmgate router spec`` command in a subprocess: the toy spec plus a ``kind: chain`` ensemble."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.spec import load_spec
from tests.helpers import REPO
from tests.router.conftest import scripted_policy

EXPERTS = ["toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"]
COSTS = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]


def test_router_spec_writes_a_servable_chain_spec(toy_world, tmp_path: Path) -> None:
    root = tmp_path / "policy"
    scripted_policy(root, "toy-adder", "toy-reverser", experts=EXPERTS, costs=COSTS)
    out = tmp_path / "served" / "spec.yaml"
    cmd = [sys.executable, "-m", "swarmgate.cli", "router", "spec", "--out", str(out), "--policy", str(root)]
    done = subprocess.run([*cmd, "--name", "my-router", "--max-steps", "2"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"swarmgate serve --spec {out}" in done.stdout
    spec = load_spec(out)  # validated like the gateway does: paths resolve, the chain names loaded experts
    chain = spec.ensembles["my-router"]
    assert chain.kind == "chain" and list(chain.experts) == EXPERTS and chain.max_steps == 2
    assert Path(chain.policy).resolve() == root.resolve()
    toy = load_spec(toy_world.spec_path)
    assert set(spec.experts) == set(toy.experts)
    assert all(Path(spec.experts[n].model) == Path(toy.experts[n].model) for n in toy.experts)


def test_router_spec_refuses_a_missing_policy(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "swarmgate.cli", "router", "spec", "--out", str(tmp_path / "s.yaml")]
    done = subprocess.run([*cmd, "--policy", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "policy not found" in done.stdout + done.stderr
    assert not (tmp_path / "s.yaml").exists()
