"""The image and the compose setup: ports, health checks, mounts and environment agree with
what the gateway really serves and reads."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    COMPOSE_GATEWAY_CONFIG,
    DEPLOY,
    DOCKERFILE,
    ENV_EXAMPLE,
    NGINX_CONF,
    ROOT,
    compose_gateway_env,
    compose_vars,
    config_env_refs,
    drain_seconds,
    entrypoint,
    env_read_by,
    final_stage,
    gateway_paths,
    gateway_services,
    healthcheck_url,
    listen_port,
    load_yaml,
    option,
    read_env_file,
    seconds,
    service_env,
    without_compose_refs,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return cast("dict[str, Any]", load_yaml(COMPOSE_FILE))


@pytest.fixture(scope="module")
def gateways(compose: dict[str, Any]) -> dict[str, Any]:
    return gateway_services(compose)


@pytest.fixture(scope="module")
def gateway_config() -> dict[str, Any]:
    return cast("dict[str, Any]", load_yaml(COMPOSE_GATEWAY_CONFIG))


# -- Dockerfile -------------------------------------------------------------------------------


def test_image_runs_as_non_root() -> None:
    users = [a for w, a in final_stage() if w == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    # USER comes before the entrypoint, so the server never starts as root.
    words = [w for w, _ in final_stage()]
    assert words.index("USER") < words.index("ENTRYPOINT")


def test_image_healthcheck_hits_healthz_without_curl() -> None:
    checks = [a for w, a in final_stage() if w == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "curl" not in checks[0]
    assert "wget" not in checks[0]
    assert "urllib" in checks[0]
    url = urlsplit(healthcheck_url(checks[0]))
    assert url.path == "/healthz"
    assert url.path in gateway_paths()
    assert url.port == listen_port()


def test_image_exposes_and_serves_one_port() -> None:
    exposed = [a for w, a in final_stage() if w == "EXPOSE"]
    assert exposed == [str(listen_port())]
    assert listen_port() == 8080


def test_entrypoint_serves_the_mounted_config() -> None:
    argv = entrypoint()
    assert argv[:2] == ["gateway", "serve"]
    assert option(argv, "--config") == "/etc/gateway/gateway.yaml"
    assert option(argv, "--host") == "0.0.0.0"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gateway" in scripts


# -- docker compose ---------------------------------------------------------------------------


def test_compose_runs_two_replicas_of_one_image(gateways: dict[str, Any]) -> None:
    assert len(gateways) == 2, sorted(gateways)
    builds = [svc["build"] for svc in gateways.values()]
    images = {svc.get("image") for svc in gateways.values()}
    assert builds[0] == builds[1]
    assert len(images) == 1
    context = (COMPOSE_FILE.parent / builds[0]["context"]).resolve()
    assert context == ROOT
    assert (context / builds[0]["dockerfile"]).resolve() == DOCKERFILE


def test_compose_ports_match_the_gateway(
    compose: dict[str, Any], gateways: dict[str, Any], gateway_config: dict[str, Any]
) -> None:
    port = listen_port()
    assert int(gateway_config["server"]["port"]) == port
    for name, svc in gateways.items():
        assert [int(p) for p in svc.get("expose", [])] == [port], name
        assert "ports" not in svc, f"{name}: clients go through the load balancer"
    # nginx listens where compose publishes it and forwards to every replica on that port.
    conf = NGINX_CONF.read_text()
    upstream = re.search(r"upstream\s+gateway\s*\{(.*?)\}", conf, re.S)
    assert upstream
    servers = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", upstream.group(1), re.M))
    assert servers == {f"{name}:{port}" for name in gateways}
    listen = re.findall(r"^\s*listen\s+(\d+)\s*;", conf, re.M)
    lb = compose["services"]["lb"]
    published = [str(p).rsplit(":", 1)[-1] for p in lb["ports"]]
    assert published == listen
    assert str(NGINX_CONF.relative_to(DEPLOY)) in " ".join(lb["volumes"])


def test_compose_healthcheck_hits_a_real_endpoint(gateways: dict[str, Any]) -> None:
    for name, svc in gateways.items():
        url = urlsplit(healthcheck_url(svc["healthcheck"]["test"]))
        assert url.path == "/healthz", name
        assert url.path in gateway_paths()
        assert url.hostname in ("127.0.0.1", "localhost")
        assert url.port == listen_port()


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    mounted = 0
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                mounted += 1
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"
    assert mounted >= 6


def test_compose_mounts_the_config_the_image_serves(gateways: dict[str, Any]) -> None:
    config_path = option(entrypoint(), "--config")
    for name, svc in gateways.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert config_path in mounts, name
        assert (COMPOSE_FILE.parent / mounts[config_path]).resolve() == COMPOSE_GATEWAY_CONFIG


def test_compose_secrets_come_from_the_env_file(compose: dict[str, Any]) -> None:
    used = compose_vars(compose)
    active, optional = read_env_file(ENV_EXAMPLE)
    required = {name for name, req in used.items() if req}
    assert required, "secrets must be required (${VAR:?...}), not defaulted"
    assert required <= set(active), required - set(active)
    assert set(used) <= set(active) | optional, set(used) - set(active) - optional
    assert set(active) | optional <= set(used), "env.example documents unused variables"
    for secret in ("GATEWAY_JWT_SECRET", "CRAZYROUTER_API_KEYS", "REDIS_PASSWORD"):
        assert used.get(secret) is True, f"{secret} must be required"


def test_compose_sets_only_variables_the_gateway_reads(
    gateways: dict[str, Any], gateway_config: dict[str, Any]
) -> None:
    known = env_read_by(gateway_config)
    for name, svc in gateways.items():
        env = set(service_env(svc))
        assert env <= known, f"{name} sets {env - known}, which the gateway never reads"
        required = {n for n, req in config_env_refs(gateway_config).items() if req}
        assert required <= env, f"{name} leaves {required - env} unset"


def test_compose_config_passes_check_config(gateways: dict[str, Any]) -> None:
    env = compose_gateway_env(next(iter(gateways.values())))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(COMPOSE_GATEWAY_CONFIG)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK (2 upstream keys)" in proc.stdout


def test_compose_stop_grace_outlasts_the_drain(
    gateways: dict[str, Any], gateway_config: dict[str, Any]
) -> None:
    drain = drain_seconds(gateway_config)
    for name, svc in gateways.items():
        assert seconds(svc["stop_grace_period"]) >= drain + 5, name


def test_compose_gateways_reach_redis(compose: dict[str, Any], gateways: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+-alpine(@sha256:[0-9a-f]{64})?", redis["image"])
    assert "healthcheck" in redis
    for name, svc in gateways.items():
        url = urlsplit(compose_gateway_env(svc)["REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname == "redis"
        assert url.port == 6379
        assert url.password, f"{name}: Redis needs a password"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_containers_are_locked_down(gateways: dict[str, Any]) -> None:
    for name, svc in gateways.items():
        assert svc.get("read_only") is True, name
        assert "ALL" in svc.get("cap_drop", []), name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name


def test_compose_monitoring_is_local_only(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for port in compose["services"][name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


# -- docker compose: the file's shape ---------------------------------------------------------

# The compose-spec service fields this file may use; a misspelt key would be ignored by older
# compose versions and rejected by newer ones.
_SERVICE_KEYS = frozenset(
    {
        "build", "cap_add", "cap_drop", "command", "configs", "container_name", "depends_on",
        "deploy", "entrypoint", "env_file", "environment", "expose", "extra_hosts",
        "healthcheck", "hostname", "image", "init", "labels", "logging", "networks", "pids_limit",
        "ports", "profiles", "read_only", "restart", "secrets", "security_opt", "stop_grace_period",
        "stop_signal", "sysctls", "tmpfs", "ulimits", "user", "volumes", "working_dir",
    }
)  # fmt: skip
_HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)
# An exact release (1.2.3, v2.55.1, 7.4.11-alpine), optionally with its digest.
_EXACT_IMAGE = re.compile(
    r"[a-z0-9][a-z0-9./_-]*:v?\d+\.\d+\.\d+(?:-[a-z0-9.]+)?(?:@sha256:[0-9a-f]{64})?"
)
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS?$|_AUTH$")


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_compose_file_is_well_formed(compose: dict[str, Any]) -> None:
    top = {k for k in compose if not k.startswith("x-")}
    assert top <= {"name", "services", "volumes", "networks", "configs", "secrets"}, top
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in services.items():
        assert set(svc) <= _SERVICE_KEYS, f"{name}: {set(svc) - _SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, name
        assert svc.get("restart") == "unless-stopped", name
        for dep, condition in _depends_on(svc).items():
            assert dep in services, f"{name} depends on a missing {dep}"
            assert condition in ("service_started", "service_healthy"), (name, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck"
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared, f"named volumes: used {used}, declared {declared}"


def test_compose_healthchecks_are_complete(
    compose: dict[str, Any], gateways: dict[str, Any]
) -> None:
    checked = {n for n, svc in compose["services"].items() if "healthcheck" in svc}
    assert set(gateways) | {"redis"} <= checked
    for name in checked:
        check = compose["services"][name]["healthcheck"]
        assert set(check) <= _HEALTHCHECK_KEYS, f"{name}: {set(check) - _HEALTHCHECK_KEYS}"
        assert not check.get("disable"), name
        assert isinstance(check["test"], list), f"{name}: exec form, no shell in between"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name
        assert int(check["retries"]) >= 1, name


def test_compose_images_are_exact_releases(
    compose: dict[str, Any], gateways: dict[str, Any]
) -> None:
    for name, svc in compose["services"].items():
        if name in gateways:
            continue  # built here from deploy/Dockerfile, whose base is pinned
        assert _EXACT_IMAGE.fullmatch(svc["image"]), f"{name}: {svc['image']} is not exact"


def test_compose_holds_no_inline_secret(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in service_env(svc).items():
            written = without_compose_refs(value)
            if _SECRET_NAME.search(key):
                assert not written, f"{name}: {key} is written in the file"
            url = urlsplit(written)
            assert not url.password, f"{name}: {key} holds a password"
        command = svc.get("command") or []
        words = " ".join(command if isinstance(command, list) else [command]).split()
        for flag, arg in itertools.pairwise(words):
            if flag in ("--requirepass", "--masterauth"):
                assert arg.strip("\"'").startswith("$"), f"{name}: {flag} {arg}"


def test_compose_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema (which vendors the compose-spec schema) is not installed",
    )
    jsonschema = pytest.importorskip("jsonschema")
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
