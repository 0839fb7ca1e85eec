"""The real ``swarmgate`` CLI in subprocesses: ``toy path``, ``toy build`` (reusing the cached build), and ``serve``
with no ``--spec`` (the toy world) and with ``SWARMGATE_SPEC``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.helpers import REPO, gateway_process


def swarmgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmgate.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_toy_path_prints_the_cached_build(toy_world) -> None:
    out = swarmgate("toy", "path")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip().splitlines()[-1]) == Path(toy_world.root)


def test_toy_build_reuses_a_finished_build_and_prints_the_matrix(toy_world) -> None:
    stamp = (Path(toy_world.root) / "toyworld.json").stat().st_mtime_ns
    out = swarmgate("toy", "build", "--root", str(toy_world.root))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "add", "rev"]
    adder = next(x for x in lines if x.startswith("adder")).split()
    assert float(adder[1]) == round(100 * toy_world.accuracy["adder"]["add"], 1)
    assert f"toy world: {toy_world.root}" in out.stdout and f"spec: {toy_world.spec_path}" in out.stdout
    assert (Path(toy_world.root) / "toyworld.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.slow
def test_serve_without_spec_serves_the_toy_world(toy_world) -> None:
    """Loads all six toy experts in a fresh process (the slowest start of the suite)."""
    with gateway_process(None, timeout_s=900, args=("--engine", "transformers")) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        ids = {m.id for m in client.models.list().data}
        assert {"toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"} <= ids
        r = client.chat.completions.create(
            model="toy-adder", messages=[{"role": "user", "content": "add 23 45"}], temperature=0, max_tokens=8
        )
        assert r.choices[0].message.content == "68"


def test_serve_reads_the_spec_from_swarmgate_spec(toy_world, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"experts:\n  only-reverser: {{model: {toy_world.base_dir}, adapter: {toy_world.expert_dirs['reverser']}}}\n"
    )
    with gateway_process(None, env={"SWARMGATE_SPEC": str(spec)}, args=("--engine", "transformers")) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["only-reverser"]
        r = client.chat.completions.create(
            model="only-reverser", messages=[{"role": "user", "content": "rev abcdef"}], temperature=0, max_tokens=8
        )
        assert r.choices[0].message.content == "fedcba"
