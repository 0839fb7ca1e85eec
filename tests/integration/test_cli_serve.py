"""The real `swarmgate serve` command in a subprocess, called with the openai SDK; a bad spec fails the start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai

from tests.helpers import REPO, gateway_process


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "swarmgate.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("serve", "toy", "search", "router"):
        assert command in out.stdout


def test_serve_spec_over_http(toy_world) -> None:
    with gateway_process(toy_world.spec_path, args=("--engine", "transformers")) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert "toy-counter" in {m.id for m in client.models.list().data}
        r = client.chat.completions.create(
            model="toy-counter", messages=[{"role": "user", "content": "count a in abaca"}], temperature=0, max_tokens=4
        )
        assert r.choices[0].finish_reason == "stop" and r.usage.total_tokens > 0


def test_bad_spec_fails_start_with_clear_message(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("experts:\n  a: {model: ./nowhere}\n")
    out = subprocess.run(
        [sys.executable, "-m", "swarmgate.cli", "serve", "--spec", str(spec), "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"{spec}: experts.a.model: model directory not found" in out.stderr + out.stdout
