"""The image and the compose setup: ports, health checks, mounts and environment agree with
what the gateway really serves and reads."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from typing import Any
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
    dockerfile_instructions,
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
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def gateways(compose: dict[str, Any]) -> dict[str, Any]:
    return gateway_services(compose)


@pytest.fixture(scope="module")
def gateway_config() -> dict[str, Any]:
    return load_yaml(COMPOSE_GATEWAY_CONFIG)


# -- Dockerfile -------------------------------------------------------------------------------


def test_image_is_python_311_slim() -> None:
    ins = dockerfile_instructions()
    args = dict(a.partition("=")[::2] for w, a in ins if w == "ARG" and "=" in a)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0])
        for w, a in ins
        if w == "FROM"
    ]
    assert bases
    assert all(b.startswith("python:3.11-slim") for b in bases), bases


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


def test_image_copies_only_what_the_build_context_keeps() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    assert "*" in ignore  # everything is excluded unless listed
    sources: list[str] = []
    for word, args in dockerfile_instructions():
        if word == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert any(src == k or fnmatch.fnmatch(src, k) for k in kept), f"{src} is ignored"


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
    assert redis["image"] == "redis:7-alpine"
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
