"""Every deployment file parses, and none of them carries a real secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    PLACEHOLDER,
    SECRET_TEMPLATE,
    load_json,
    read_env_file,
)

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


def _id(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


def test_the_kit_is_complete() -> None:
    expected = [
        "Dockerfile",
        "requirements.lock",
        "build-requirements.lock",
        "docker-compose.yml",
        "env.example",
        "gateway.compose.yaml",
        "nginx/nginx.conf",
        "prometheus/prometheus.yml",
        "prometheus/rules.yml",
        "grafana/dashboards/gateway.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/gateway.yml",
        "kubernetes/kustomization.yaml",
    ]
    missing = [p for p in expected if not (DEPLOY / p).is_file()]
    assert not missing
    assert DOCKERIGNORE.is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_id)
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{_id(path)} is empty"
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", JSON_FILES, ids=_id)
def test_json_parses(path: Path) -> None:
    assert isinstance(load_json(path), dict)


# An OpenAI/Crazyrouter-style key, a JWT, a PEM private key: none may be committed.
_SECRET_SHAPES = re.compile(
    r"sk-[A-Za-z0-9]{20,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY"
)


@pytest.mark.parametrize(
    "path", sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env"), ids=_id
)
def test_no_secret_is_committed(path: Path) -> None:
    assert not _SECRET_SHAPES.search(path.read_text(errors="replace"))


def test_secret_templates_hold_only_placeholders() -> None:
    active, _ = read_env_file(ENV_EXAMPLE)
    assert active
    assert all(PLACEHOLDER in v for v in active.values()), active
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    assert secret["kind"] == "Secret"
    assert secret["stringData"]
    assert all(PLACEHOLDER in v for v in secret["stringData"].values())
    assert not secret.get("data")


def test_filled_in_env_file_is_ignored() -> None:
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
