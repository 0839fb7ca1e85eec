"""collect -> train -> eval -> spec on the real toy world (real checkpoints through the transformers engine).

Slow: minutes of generation. The full-size run and its numbers are in the router's closing note; this keeps the
path through real engines working.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.routing.policy import load_policy
from router.cli import app
from tests.router.conftest import toy_router_config


@pytest.mark.slow
def test_toy_world_pipeline_through_the_cli(toy_world, tmp_path: Path) -> None:
    _, config = toy_router_config(toy_world, tmp_path, limit=4, timesteps=3000)
    runner = CliRunner()

    r = runner.invoke(app, ["collect", "--config", str(config), "--split", "train"])
    assert r.exit_code == 0, r.output
    assert "collected" in r.output
    r = runner.invoke(app, ["train", "--config", str(config)])
    assert r.exit_code == 0, r.output
    policy = load_policy(tmp_path / "policy")
    assert policy.experts[-1] == "toy-big" and policy.costs[-1] == 4.0 and policy.max_steps == 2
    r = runner.invoke(app, ["eval", "--config", str(config), "--collect", "--oracle-depth", "1"])
    assert r.exit_code == 1 and "no upper bound" in r.output  # a shallower oracle than the router is refused
    r = runner.invoke(app, ["eval", "--config", str(config), "--collect"])  # dev, every baseline, full-depth oracle
    assert r.exit_code == 0, r.output
    assert "| single:toy-big |" in r.output and "| keyword |" in r.output and "| classifier |" in r.output
    assert (tmp_path / "eval" / "dev" / "frontier.png").is_file()
    r = runner.invoke(app, ["spec", "--config", str(config), "--out", str(tmp_path / "spec.yaml")])
    assert r.exit_code == 0, r.output
    chain = yaml.safe_load((tmp_path / "spec.yaml").read_text())["ensembles"]["toy-router"]
    assert chain["kind"] == "chain" and chain["max_steps"] == 2
