"""The Kubernetes manifests: they parse, wire ports and labels consistently, probe real
endpoints, set only environment the gateway reads, and carry a config the gateway accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gateway.auth.verifier import TokenVerifier
from gateway.settings import production_problems, settings_from_mapping
from tests.deploy import kustomize
from tests.deploy.support import (
    K8S,
    PLACEHOLDER,
    ROOT,
    RULES_FILE,
    SECRET_TEMPLATE,
    config_env_refs,
    drain_seconds,
    entrypoint,
    env_read_by,
    gateway_paths,
    listen_port,
    load_yaml,
    option,
)

CONFIG_KEY = "gateway.yaml"


def _manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for every resource the kustomization lists."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                assert doc["kind"] not in out, f"two {doc['kind']}s"
                out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def m() -> dict[str, dict[str, Any]]:
    return _manifests()


@pytest.fixture(scope="module")
def pod(m: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return cast("dict[str, Any]", m["Deployment"]["spec"]["template"])


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return cast("dict[str, Any]", containers[0])


@pytest.fixture(scope="module")
def gateway_doc(m: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return cast("dict[str, Any]", yaml.safe_load(m["ConfigMap"]["data"][CONFIG_KEY]))


def _secret_template() -> dict[str, str]:
    return cast("dict[str, str]", load_yaml(SECRET_TEMPLATE)["stringData"])


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, secret references filled from the Secret template."""
    secret = load_yaml(SECRET_TEMPLATE)
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], item["name"]
        assert ref["key"] in secret["stringData"], f"{item['name']}: no key {ref['key']!r}"
        env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container_port(container: dict[str, Any], ref: int | str) -> int:
    for p in container["ports"]:
        if ref in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"no container port {ref!r}")


# -- the files --------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert listed <= present, listed - present
    assert present - listed == {SECRET_TEMPLATE.name}


def test_every_manifest_parses(m: dict[str, dict[str, Any]]) -> None:
    assert set(m) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for kind, doc in m.items():
        assert doc["apiVersion"], kind
        assert doc["metadata"]["name"] == "crazyrouter-gateway", kind
    assert m["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert m["PrometheusRule"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert m["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert m["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def test_kustomization_renders(m: dict[str, dict[str, Any]]) -> None:
    rendered = {d["kind"]: d for d in kustomize.render(K8S)}
    assert set(rendered) == set(m)
    part_of = load_yaml(K8S / "kustomization.yaml")["labels"][0]["pairs"]
    for kind, doc in rendered.items():
        assert part_of.items() <= doc["metadata"]["labels"].items(), kind
        # The labels stay off selectors, which a Deployment can never change once applied.
        assert doc.get("spec", {}).get("selector") == m[kind].get("spec", {}).get("selector")
    [container] = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = re.fullmatch(r"[^@]+:(?P<tag>[^:/@]+)(@sha256:[0-9a-f]{64})?", container["image"])
    assert image, container["image"]
    assert image.group("tag") == version, "the image tag follows pyproject.toml's version"


def _kustomize_version(kubectl: str) -> tuple[int, ...] | None:
    proc = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        found = json.loads(proc.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+).*", found)
    return tuple(int(g) for g in m.groups()) if m else None


def test_kubectl_kustomize_renders_the_same() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH (the Python rendering above still runs)")
    version = _kustomize_version(kubectl)
    if version is None or version < (4, 1, 0):
        # Debian's kubernetes-client (1.20) embeds kustomize 2.0.3, which predates `labels`.
        pytest.skip(f"kubectl's kustomize is older than v4.1 ({version}); it cannot read labels")
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in kustomize.render(K8S)}
    assert theirs == ours


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_API_VERSION = re.compile(r"v\d+|([a-z0-9-]+\.)*[a-z0-9-]+/v\d+((alpha|beta)\d+)?")


@pytest.mark.parametrize(
    "path", sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml"), ids=str
)
def test_every_manifest_is_a_named_resource(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, path.name
    [doc] = docs
    assert _API_VERSION.fullmatch(doc["apiVersion"]), doc["apiVersion"]
    assert re.fullmatch(r"[A-Z][A-Za-z]+", doc["kind"]), doc["kind"]
    assert _DNS_LABEL.fullmatch(doc["metadata"]["name"]), doc["metadata"]["name"]
    assert "namespace" not in doc["metadata"], "the namespace is chosen at apply time (-n)"
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "crazyrouter-gateway"
    assert isinstance(doc.get("spec", doc.get("data", doc.get("stringData"))), dict)


def test_manifests_match_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (which ships the Kubernetes schemas) is not installed",
    )
    version = kubernetes_validate.latest_version()
    checked = set()
    for doc in [*kustomize.render(K8S), load_yaml(SECRET_TEMPLATE)]:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's CRDs: no schema in the package
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= checked


def test_prometheus_rule_matches_the_rules_file(m: dict[str, dict[str, Any]]) -> None:
    assert m["PrometheusRule"]["spec"] == load_yaml(RULES_FILE)


# -- wiring -----------------------------------------------------------------------------------


def test_replicas_and_autoscaling(m: dict[str, dict[str, Any]]) -> None:
    assert m["Deployment"]["spec"]["replicas"] >= 2
    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == m["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert [x["resource"]["name"] for x in hpa["metrics"]] == ["cpu"]


def test_selectors_match_the_pods(m: dict[str, dict[str, Any]], pod: dict[str, Any]) -> None:
    labels = pod["metadata"]["labels"]
    deployment_selector = m["Deployment"]["spec"]["selector"]["matchLabels"]
    assert _matches(deployment_selector, labels)
    assert _matches(m["Service"]["spec"]["selector"], labels)
    assert _matches(m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], labels)
    monitor = m["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert _matches(monitor, m["Service"]["metadata"]["labels"])


def test_ports_line_up(m: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    [port] = container["ports"]
    assert port["containerPort"] == listen_port()
    [service_port] = m["Service"]["spec"]["ports"]
    assert _container_port(container, service_port["targetPort"]) == port["containerPort"]
    for endpoint in m["ServiceMonitor"]["spec"]["endpoints"]:
        assert endpoint["port"] == service_port["name"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["path"] in gateway_paths()


def test_probes_hit_real_endpoints(container: dict[str, Any]) -> None:
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            assert get["path"] in gateway_paths(), probe
            assert _container_port(container, get["port"]) == listen_port(), probe


def test_resources_and_security(pod: dict[str, Any], container: dict[str, Any]) -> None:
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    pod_sc = pod["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_grace_period_outlasts_the_drain(
    pod: dict[str, Any], container: dict[str, Any], gateway_doc: dict[str, Any]
) -> None:
    drain = drain_seconds(gateway_doc)
    assert drain == 30
    # The kubelet's grace period covers the preStop hook and the gateway's own drain.
    pause = 0.0
    if pre_stop := container.get("lifecycle", {}).get("preStop"):
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        pause = float(command[1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace == 40
    assert grace >= pause + drain + 3


# -- configuration and secrets ----------------------------------------------------------------


def test_config_map_is_mounted_where_the_image_reads_it(
    m: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    config_path = option(entrypoint(), "--config")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = [vm for vm in container["volumeMounts"] if "configMap" in volumes[vm["name"]]]
    assert len(mounts) == 1
    volume = volumes[mounts[0]["name"]]["configMap"]
    assert volume["name"] == m["ConfigMap"]["metadata"]["name"]
    paths = {i["key"]: i["path"] for i in volume["items"]}
    assert f"{mounts[0]['mountPath']}/{paths[CONFIG_KEY]}" == config_path
    # The read-only root needs a writable /tmp.
    assert any(vm["mountPath"] == "/tmp" for vm in container["volumeMounts"])


def test_env_comes_from_the_secret(container: dict[str, Any]) -> None:
    for item in container["env"]:
        assert "value" not in item, f"{item['name']}: secrets come from the Secret"
    assert _pod_env(container)  # every reference resolves in the template


def test_env_is_only_what_the_gateway_reads(
    container: dict[str, Any], gateway_doc: dict[str, Any]
) -> None:
    env = {item["name"] for item in container["env"]}
    known = env_read_by(gateway_doc)
    assert env <= known, f"the gateway never reads {env - known}"
    required = {name for name, req in config_env_refs(gateway_doc).items() if req}
    assert required <= env, f"the config needs {required - env}"


def test_config_map_is_a_valid_gateway_config(
    container: dict[str, Any], gateway_doc: dict[str, Any]
) -> None:
    settings = settings_from_mapping(gateway_doc, env=_pod_env(container))
    assert production_problems(settings) == []
    assert settings.server.drain_seconds == 30
    TokenVerifier(settings.auth)  # what `gateway check-config` checks beyond the parser
    assert settings.server.port == listen_port()
    assert settings.server.workers == 1
    assert settings.server.metrics_token, "/metrics is guarded in the cluster"


def test_metrics_token_is_shared_with_the_service_monitor(
    m: dict[str, dict[str, Any]], container: dict[str, Any], gateway_doc: dict[str, Any]
) -> None:
    token_ref = gateway_doc["server"]["metrics_token"]
    [name] = list(config_env_refs({"t": token_ref}))
    [item] = [i for i in container["env"] if i["name"] == name]
    pod_ref = item["valueFrom"]["secretKeyRef"]
    for endpoint in m["ServiceMonitor"]["spec"]["endpoints"]:
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"] == {
            "name": pod_ref["name"],
            "key": pod_ref["key"],
        }


def test_secret_template_is_not_deployed() -> None:
    assert SECRET_TEMPLATE.name not in load_yaml(K8S / "kustomization.yaml")["resources"]
    assert all(PLACEHOLDER in v for v in _secret_template().values())
