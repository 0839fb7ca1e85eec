"""Helpers for the chart tests: run helm, render a scenario, pick manifests out of the render."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "swarmgate"
SCENARIOS = ("cpu", "gpu", "split")
"""The chart's ci/values-<name>.yaml scenarios: minimal CPU, one GPU in-process, split with engines + retraining."""
CRDS = ("monitoring.coreos.com/v1/ServiceMonitor", "keda.sh/v1alpha1/ScaledObject")
"""API versions a cluster with the Prometheus Operator and KEDA declares (``helm template --api-versions``)."""
K8S_VERSION = "1.33.0"
"""Kubernetes version the renders are validated against (kubernetes-validate ships its schemas; no network)."""
RELEASE = "sg"
NAMESPACE = "swarmgate"


def values_file(scenario: str) -> Path:
    return CHART / "ci" / f"values-{scenario}.yaml"


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with no cluster and no repositories (a private HELM_* home under the test's cache)."""
    cache = Path(os.environ.get("SWARMGATE_CACHE", Path.home() / ".cache" / "swarmgate")) / "tools" / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(cache / "cache"),
        "HELM_CONFIG_HOME": str(cache / "config"),
        "HELM_DATA_HOME": str(cache / "data"),
        "KUBECONFIG": os.devnull,
    }
    proc = subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Render:
    """One ``helm template`` output: its text and its manifests."""

    text: str
    docs: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} named {name}, found {[d['metadata']['name'] for d in self.of(kind)]}"
        )
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(``Kind/name``, pod spec) of every workload: Deployments, CronJobs, bare Pods (the test hook)."""
        for d in self.docs:
            where = f"{d['kind']}/{d['metadata']['name']}"
            if d["kind"] == "Deployment":
                yield where, d["spec"]["template"]["spec"]
            elif d["kind"] == "CronJob":
                yield where, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            elif d["kind"] == "Pod":
                yield where, d["spec"]

    def gateway(self) -> dict[str, Any]:
        return self.get("Deployment", f"{RELEASE}-swarmgate")

    def spec_text(self) -> str:
        return self.get("ConfigMap", f"{RELEASE}-swarmgate-spec")["data"]["spec.yaml"]


def render(helm: str, scenario: str, *, crds: Sequence[str] = CRDS, extra: Sequence[str] = ()) -> Render:
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values_file(scenario))]
    for api in crds:
        args += ["--api-versions", api]
    text = run_helm(helm, *args, *extra).stdout
    return Render(text, [d for d in yaml.safe_load_all(text) if d])


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert found, f"no container {name!r} in {[c['name'] for c in pod_spec['containers']]}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {e["name"]: e for e in c.get("env", [])}
