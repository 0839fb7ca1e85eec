"""The pod, as a process: the CPU scenario's rendered gateway container (command, args, environment, plus the image's
own ENV) runs on this machine and serves the rendered ConfigMap's spec over the toy world; its probes answer, the
`helm test` hook's own command gets a chat completion from it, and an upgraded ConfigMap is hot-reloaded.

The spec directory is written the way the kubelet writes a ConfigMap volume (files are symlinks through ``..data``,
which is swapped atomically on update), so the test shows why the chart mounts it as a directory.

Replaced, because they exist only in the cluster or the image: volume mount paths (temporary directories here; the
model volume holds the toy world as ``toy/``, as the CPU scenario expects), the image's virtualenv (this checkout's
.venv), the engine (forced to transformers), the bind address (loopback only) and port (0: the kernel picks), the
Service URL the hook calls, and the pod name from the downward API. OMP_NUM_THREADS=1 keeps the shared test machine
usable. Everything else is taken from the render as is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy._chart import NAMESPACE, REPO, Render, container, render

POD_NAME = "sg-swarmgate-5d4f7b8c9-x2x7q"


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV of the Dockerfile's final stage, in order (``$VAR`` expanded against earlier values)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, value = pair.split("=", 1)
                env[key] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value)
    return env


def container_env(c: dict[str, Any], r: Render) -> dict[str, str]:
    """A container's env as the kubelet builds it: Secret keys, downward API, ``$(VAR)`` references."""
    out: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            value = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            data = r.get("Secret", ref["name"]).get("stringData", {})
            if ref["key"] not in data:
                assert ref.get("optional"), f"{e['name']}: Secret {ref['name']} has no key {ref['key']}"
                continue
            value = data[ref["key"]]
        else:
            value = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}[
                e["valueFrom"]["fieldRef"]["fieldPath"]
            ]
        out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), value)
    return out


def relocate(env: dict[str, str], moves: dict[str, str]) -> dict[str, str]:
    """Rewrite every path under one of ``moves``' prefixes (longest prefix first), also inside PATH-like lists."""

    def move(path: str) -> str:
        for old in sorted(moves, key=len, reverse=True):
            if path == old or path.startswith(old + "/"):
                return moves[old] + path[len(old) :]
        return path

    return {k: ":".join(move(p) for p in v.split(":")) if k == "PATH" else move(v) for k, v in env.items()}


def write_configmap_volume(directory: Path, data: dict[str, str]) -> None:
    """Publish ``data`` into ``directory`` as the kubelet's atomic writer does: a fresh timestamped folder, then
    ``..data`` re-pointed by one rename, with every key a symlink through ``..data``."""
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    version.mkdir()
    for key, text in data.items():
        (version / key).write_text(text)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(version.name)
    os.replace(tmp_link, directory / "..data")
    for key in data:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")


def configmap_data(r: Render, moves: dict[str, str]) -> dict[str, str]:
    """The rendered spec ConfigMap, with the pod's volume paths inside the spec moved like the volumes."""
    data = dict(r.get("ConfigMap", "sg-swarmgate-spec")["data"])
    spec = yaml.safe_load(data["spec.yaml"])
    for section in ("experts", "ensembles"):
        for entry in (spec.get(section) or {}).values():
            for key in ("model", "adapter", "topology", "policy"):
                if isinstance(entry.get(key), str):
                    entry[key] = relocate({"p": entry[key]}, moves)["p"]
    data["spec.yaml"] = yaml.safe_dump(spec)
    return data


@pytest.mark.timeout(300)
def test_rendered_gateway_pod_runs_and_answers_the_helm_test(
    helm: str, renders: dict[str, Render], toy_world, tmp_path: Path
) -> None:
    r = renders["cpu"]
    pod = r.gateway()["spec"]["template"]["spec"]
    gw = container(pod, "gateway")

    # the pod's volumes become directories here
    moves = {m["mountPath"]: str(tmp_path / m["name"]) for m in gw["volumeMounts"]}
    moves["/opt/venv"] = str(REPO / ".venv")
    for path in moves.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    env = relocate({**image_env(REPO / "docker" / "Dockerfile.cpu"), **container_env(gw, r)}, moves)
    for key in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "SWARMGATE_CACHE"):
        assert env[key].startswith(str(tmp_path)), (key, env[key])  # nothing writes outside the volumes
    # the model volume holds the toy world where the CPU scenario's spec looks for it; the spec volume the ConfigMap
    (Path(moves["/models"]) / "toy").symlink_to(toy_world.root)
    spec_dir = Path(moves["/etc/swarmgate/spec"])
    write_configmap_volume(spec_dir, configmap_data(r, moves))
    assert env["SWARMGATE_SPEC"] == str(spec_dir / "spec.yaml")
    env["SWARMGATE_ENGINE"] = "transformers"
    env["OMP_NUM_THREADS"] = "1"

    args = list(gw["args"])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = "0"
    exe = shutil.which(gw["command"][0], path=env["PATH"])
    assert exe and Path(exe).parent == REPO / ".venv" / "bin", exe
    workdir = tmp_path / "cache" / "home"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, *gw["command"][1:], *args], env=env, cwd=workdir, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    log: list[str] = []
    port: list[int] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        # the probes, as the kubelet would call them
        startup = gw["startupProbe"]
        deadline = time.monotonic() + min(startup["periodSeconds"] * startup["failureThreshold"], 240)
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            if port:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port[0]}{gw['readinessProbe']['httpGet']['path']}", timeout=5)
                    if ready.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, "".join(log[-40:])
        base = f"http://127.0.0.1:{port[0]}"
        assert httpx.get(base + gw["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        # /metrics wants a key when keys are set: the one the chart's Secret holds for Prometheus works
        assert httpx.get(base + "/metrics", timeout=5).status_code == 401
        secret = r.get("Secret", "sg-swarmgate-auth")["stringData"]
        scrape = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {secret['metrics-key']}"}, timeout=5)
        assert scrape.status_code == 200 and "swarmgate_requests_queued" in scrape.text

        # the helm test hook's own command, with the Service URL pointed here
        (hook,) = r.of("Pod")
        hc = hook["spec"]["containers"][0]
        hook_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **container_env(hc, r), "SWARMGATE_TEST_URL": base}
        answer = subprocess.run(
            [*hc["command"], *hc["args"]], env=hook_env, capture_output=True, text=True, timeout=120
        )
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert "toy-adder answered '68'" in answer.stdout, answer.stdout

        # the API key from the Secret is enforced: the same hook with another key is refused
        wrong = subprocess.run(
            [*hc["command"], *hc["args"]],
            env={**hook_env, "SWARMGATE_API_KEYS": "not-the-key-000000"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode != 0 and "HTTP 401" in wrong.stderr, wrong.stdout + wrong.stderr

        # `helm upgrade` with one more expert: the kubelet swaps the ConfigMap volume, the gateway's poll reloads it
        upgraded = render(
            helm,
            "cpu",
            extra=[
                "--set-json",
                'spec.experts.toy-sorter={"model":"/models/toy/base","adapter":"/models/toy/experts/sorter"}',
            ],
        )
        write_configmap_volume(spec_dir, configmap_data(upgraded, moves))
        auth = {"Authorization": f"Bearer {hook_env['SWARMGATE_API_KEYS'].split(',')[0]}"}
        interval = float(env["SWARMGATE_SPEC_RELOAD_INTERVAL_S"])
        deadline = time.monotonic() + 3 * interval + 30
        models: list[str] = []
        while time.monotonic() < deadline and "toy-sorter" not in models:
            time.sleep(1)
            models = [m["id"] for m in httpx.get(base + "/v1/models", headers=auth, timeout=10).json()["data"]]
        assert "toy-sorter" in models, f"the updated ConfigMap was not reloaded: {models}\n{''.join(log[-20:])}"

        # the request log lands on the artifacts volume, one file per pod (what the retrain CronJob reads)
        request_log = Path(moves["/artifacts"]) / "logs" / f"{POD_NAME}.jsonl"
        records = [json.loads(line) for line in request_log.read_text().splitlines()]
        assert any("toy-adder" in json.dumps(rec) for rec in records)
    finally:
        # Kubernetes stops a pod with SIGTERM and kills it after terminationGracePeriodSeconds
        grace = pod["terminationGracePeriodSeconds"]
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        reader.join(timeout=5)
        if os.environ.get("SWARMGATE_TEST_VERBOSE"):
            sys.stderr.write("".join(log))
    # a clean exit, or uvicorn's re-raised SIGTERM after a finished shutdown (the pod reports 143): not a kill
    assert code in (0, -signal.SIGTERM), f"the gateway did not stop within the {grace} s grace period ({code})"
    assert any("Application shutdown complete" in line for line in log), "".join(log[-20:])
