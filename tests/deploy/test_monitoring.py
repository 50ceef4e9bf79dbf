"""Prometheus scrape config, alert rules and the Grafana dashboard: they parse, point at the
compose services, and query only metrics (and labels) the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any, cast

import pytest

from gateway.observability.metrics import Metrics
from tests.deploy.metric_names import EXPORTED_METRICS, HISTOGRAM, METRIC_NAMES, base_name
from tests.deploy.support import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    K8S,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES_FILE,
    gateway_paths,
    gateway_services,
    listen_port,
    load_json,
    load_yaml,
    promql_grouping_labels,
    promql_metrics,
    promql_selectors,
)

# Series Prometheus makes up itself for every target; the gateway does not export them.
PROMETHEUS_SYNTHETIC = frozenset({"up"})
TARGET_LABELS = frozenset({"instance", "job"})
SEVERITIES = frozenset({"critical", "warning", "info"})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return cast("dict[str, Any]", load_yaml(COMPOSE_FILE))


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = load_yaml(RULES_FILE)["groups"]
    assert groups
    return [rule for g in groups for rule in g["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return cast("dict[str, Any]", load_json(DASHBOARD))


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> path under deploy/ for a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            out[target] = str((COMPOSE_FILE.parent / source).resolve().relative_to(DEPLOY))
    return out


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def _label_values(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if m := re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip()):
            out.append((m.group(1), m.group(2)))
    return out


def _all_exprs(rules: list[dict[str, Any]], dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"rule {r['alert']}", r["expr"]) for r in rules] + [
        (f"dashboard {i}", e) for i, e in enumerate(_dashboard_exprs(dashboard))
    ]


def _labels_of(series: str) -> frozenset[str]:
    """The labels a series has; unknown names are test_queries_use_only_exported_metrics'."""
    name = base_name(series)
    kind, labels = EXPORTED_METRICS.get(name, ("", ()))
    extra = {"le"} if kind == HISTOGRAM and series.endswith("_bucket") else set()
    return frozenset(labels) | extra


# -- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_both_replicas(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "crazyrouter-gateway"]
    assert job.get("metrics_path", "/metrics") in gateway_paths()
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"{name}:{listen_port()}" for name in gateway_services(compose)}
    assert targets == expected
    assert len(targets) == 2


def test_prometheus_job_is_the_kubernetes_service_name() -> None:
    # The ServiceMonitor's job label is the Service's name; rules select on it.
    service = load_yaml(K8S / "service.yaml")
    assert service["metadata"]["name"] == "crazyrouter-gateway"


def test_prometheus_loads_the_mounted_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    flags = dict(a.removeprefix("--").split("=", 1) for a in prometheus["command"] if "=" in a)
    assert mounts[flags["config.file"]] == str(PROMETHEUS_CONFIG.relative_to(DEPLOY))
    rule_files = load_yaml(PROMETHEUS_CONFIG)["rule_files"]
    assert [mounts[f] for f in rule_files] == [str(RULES_FILE.relative_to(DEPLOY))]


# -- alert rules ------------------------------------------------------------------------------


def test_every_rule_is_complete(rules: list[dict[str, Any]]) -> None:
    names = [r.get("alert") for r in rules]
    assert all(names), "recording rules are not expected here"
    assert len(set(names)) == len(names), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Gateway[A-Z][A-Za-z0-9]+", name), name
        assert isinstance(rule.get("expr"), str), name
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: needs a 'for'"


def test_rules_cover_the_failure_modes(rules: list[dict[str, Any]]) -> None:
    exprs = " ".join(r["expr"] for r in rules)
    expected = [
        r'gateway_requests_total\{status=~"5\.\."',  # 5xx ratio
        r'gateway_upstream_key_state\{state="healthy"\}',  # no usable key
        r'gateway_upstream_key_state\{state="quarantined"\}',  # a key quarantined
        r"gateway_redis_errors_total",  # Redis errors
        r'result="fail_open"',  # quota fail-open
        r"gateway_reconciler_last_run_timestamp_seconds",  # reconciler stalled
        r"gateway_quota_usage.*/\s*max by \(team, kind\) \(gateway_quota_limit",  # budget
        r"histogram_quantile\(0\.99,\s*sum by \(route, le\) \(rate\("
        r"gateway_request_duration_seconds_bucket",  # p99
    ]
    for pattern in expected:
        assert re.search(pattern, exprs, re.S), pattern


def test_every_alert_is_documented(rules: list[dict[str, Any]]) -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc.partition("\n## Alerts\n")[2].partition("\n## ")[0]
    assert section, "docs/deployment.md has no Alerts section"
    documented = set(re.findall(r"`(Gateway[A-Za-z0-9]+)`", section))
    assert documented == {r["alert"] for r in rules}


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (it ships with Prometheus)")
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- metric names: the contract with the gateway ----------------------------------------------


def test_queries_use_only_exported_metrics(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    exprs = _all_exprs(rules, dashboard)
    assert len(exprs) > 40
    unknown = {}
    for where, expr in exprs:
        names = promql_metrics(expr)
        assert names, f"{where}: no metric in {expr!r}"
        bad = {n for n in names if base_name(n) not in METRIC_NAMES} - PROMETHEUS_SYNTHETIC
        # A histogram suffix only on a histogram, and never a bare histogram name.
        bad |= {n for n in names if n in METRIC_NAMES and EXPORTED_METRICS[n][0] == HISTOGRAM}
        if bad:
            unknown[where] = bad
    for metric, _ in _label_values(dashboard):
        if metric not in METRIC_NAMES:
            unknown[f"variable {metric}"] = {metric}
    assert not unknown


def test_queries_use_only_exported_labels(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    for where, expr in _all_exprs(rules, dashboard):
        known = set(TARGET_LABELS)
        for series in promql_metrics(expr) - PROMETHEUS_SYNTHETIC:
            known |= _labels_of(series)
        for name, labels in promql_selectors(expr):
            own = TARGET_LABELS | (_labels_of(name) if name not in PROMETHEUS_SYNTHETIC else set())
            assert labels <= own, f"{where}: {name} has no label {labels - own}"
        grouping = promql_grouping_labels(expr)
        assert grouping <= known, f"{where}: no such label {grouping - known}"
    for metric, label in _label_values(dashboard):
        assert label in _labels_of(metric) | TARGET_LABELS, f"{metric} has no label {label}"


def test_dashboard_shows_every_exported_metric(dashboard: dict[str, Any]) -> None:
    used = {base_name(n) for e in _dashboard_exprs(dashboard) for n in promql_metrics(e)}
    assert METRIC_NAMES - used == set()


def test_declared_metrics_are_in_the_list() -> None:
    # The other direction (every listed metric is exported) is the live scrape's business:
    # tests/integration/test_metrics_scrape.py.
    declared = set()
    for family in Metrics().registry.collect():
        declared.add(family.name + "_total" if family.type == "counter" else family.name)
    assert declared
    assert declared <= METRIC_NAMES, declared - METRIC_NAMES


# -- Grafana ----------------------------------------------------------------------------------


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "crazyrouter-gateway"
    assert dashboard["title"]
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0, p["title"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        here = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not here & cells, f"{p['title']} overlaps another panel"
        cells |= here
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip(), p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_covers_the_asked_for_views(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(dashboard))
    for words in (
        "requests / s",
        "error ratio",
        "p50 / p99",
        "budget used",
        "job funnel",
        "job duration",
        "key states",
        "redis errors",
        "failed open",
        "download throughput",
        "reconciler lag",
    ):
        assert words in titles, words


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "grafana/provisioning"
    [datasource] = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    host, _, port = datasource["url"].removeprefix("http://").partition(":")
    assert host in compose["services"]
    prometheus_ports = [str(p).rsplit(":", 1)[-1] for p in compose["services"][host]["ports"]]
    assert port in prometheus_ports
    [provider] = load_yaml(DEPLOY / "grafana/provisioning/dashboards/gateway.yml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == str(DASHBOARD.parent.relative_to(DEPLOY))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
