"""``gateway check-config`` as operators run it, in a subprocess: every problem at once, keys
given twice, one clean line per YAML error, cleartext warnings, and ``--dev``."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.integration.test_cli import ROOT, clean_env, gateway_cmd


def check(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_cmd("check-config", *args),
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def production_env(**extra: str) -> dict[str, str]:
    return {
        "GATEWAY_JWT_SECRET": secrets.token_urlsafe(40),
        "CRAZYROUTER_API_KEYS": "primary:sk-" + secrets.token_hex(8),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        **extra,
    }


PRODUCTION = (
    "upstream: {base_url: '${BASE:-https://api.crazyrouter.com}'}\n"
    "redis: {url: '${REDIS_URL}'}\n"
    "auth:\n"
    "  hs256_secrets: ['${GATEWAY_JWT_SECRET}']\n"
    "  jwks_url: ${JWKS:-}\n"
    "  audience: ${AUD:-}\n"
    "  algorithms: '${ALGS:-HS256}'\n"
    "quota: {rate_fail_open: '${FAIL_OPEN:-false}'}\n"
    "teams: {search: {videos_private: '${PRIVATE:-on}'}}\n"
)


def test_every_problem_is_reported_each_naming_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n"
        "  metrics_token: scrape-me\n"
        "  port: 99999\n"
        "auth:\n"
        "  hs256_secrets: [short]\n"
        "  leeway: soon\n"
        "server:\n"
        "  host: 0.0.0.0\n"
        "upstream: {colour: blue}\n"
        "quota: {rate_fail_open: '${X:-perhaps}'}\n",
    )
    done = check(str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}: server: duplicate key (lines 1 and 7); the second would silently replace "
        "the first",
        f"{path}: upstream.colour: unknown setting",
        f"{path}: auth.hs256_secrets[0]: must be at least 32 bytes",
        f"{path}: auth.leeway: must be a number, got 'soon'",
        f"{path}: quota.rate_fail_open: must be true or false (or yes/no, on/off, 1/0), "
        "got 'perhaps'",
    ]


def test_a_yaml_error_is_one_line_naming_the_file_once(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8080\n   host: x\n")
    done = check(str(path))
    assert done.returncode == 1
    assert done.stderr == f"{path}:3:8: could not parse YAML: mapping values are not allowed here\n"
    assert "<unicode string>" not in done.stderr

    done = check(str(tmp_path / "nope.yaml"))
    assert done.returncode == 1
    assert (
        done.stderr == f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or directory\n"
    )


def test_booleans_from_the_environment_pass(tmp_path: Path) -> None:
    path = write(tmp_path, PRODUCTION)
    done = check(str(path), env=production_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: OK (1 upstream keys)\n"
    assert done.stderr == ""


def test_cleartext_urls_are_warnings_and_errors_with_strict(tmp_path: Path) -> None:
    path = write(tmp_path, PRODUCTION)
    env = production_env(
        BASE="http://crazyrouter.internal:3000",
        JWKS="http://idp.internal/jwks",
        ALGS="HS256,RS256",
        AUD="gateway",
    )
    done = check(str(path), env=env)
    assert done.returncode == 0
    assert done.stdout == f"{path}: OK (1 upstream keys)\n"
    assert done.stderr.splitlines() == [
        f"{path}: warning: upstream.base_url: cleartext http to crazyrouter.internal: the "
        "upstream keys would cross unencrypted (use https)",
        f"{path}: warning: auth.jwks_url: cleartext http to idp.internal: the token signing "
        "keys would come unencrypted (use https)",
    ]

    strict = check(str(path), "--strict", env=env)
    assert strict.returncode == 1
    assert strict.stdout == ""
    assert strict.stderr.splitlines()[:2] == done.stderr.splitlines()
    assert strict.stderr.splitlines()[-1] == f"{path}: --strict: warnings count as errors"

    loopback = check(
        str(path),
        "--strict",
        env=production_env(
            BASE="http://127.0.0.1:8090",
            JWKS="http://localhost:9000/jwks",
            ALGS="HS256,RS256",
            AUD="gateway",
        ),
    )
    assert loopback.returncode == 0, loopback.stderr
    assert loopback.stderr == ""


def test_an_idp_without_an_audience_is_a_warning_and_an_error_with_strict(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, PRODUCTION)
    env = production_env(JWKS="https://idp.example/jwks", ALGS="HS256,RS256")
    done = check(str(path), env=env)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"{path}: warning: auth.audience: not set, so a token the IdP issued for any "
        "application is accepted here; set it to the audience the IdP puts in this gateway's "
        "tokens"
    ]
    assert check(str(path), "--strict", env=env).returncode == 1
    assert check(str(path), "--strict", env={**env, "AUD": "gateway"}).returncode == 0


def test_dev_applies_the_development_fallbacks_and_starts_nothing(tmp_path: Path) -> None:
    dev_yaml = str(ROOT / "config/dev.yaml")
    done = check(dev_yaml, "--dev", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == (
        f"{dev_yaml}: OK (0 upstream keys; development fallbacks: embedded Redis (data in "
        ".gateway-data/redis), the simulator as upstream (no upstream key), a generated JWT "
        "secret (.gateway-data/jwt-secret))\n"
    )
    assert list(tmp_path.iterdir()) == []  # no secret written, no data directory

    # what is set is used, and checked
    given = check(
        dev_yaml, "--dev", cwd=tmp_path, env={"GATEWAY_JWT_SECRET": secrets.token_urlsafe(40)}
    )
    assert given.returncode == 0, given.stderr
    assert "a generated JWT secret" not in given.stdout
    short = check(dev_yaml, "--dev", cwd=tmp_path, env={"GATEWAY_JWT_SECRET": "short"})
    assert short.returncode == 1
    assert short.stderr == f"{dev_yaml}: auth.hs256_secrets[0]: must be at least 32 bytes\n"

    # without --dev the same file lacks what production needs
    production = check(dev_yaml, cwd=tmp_path)
    assert production.returncode == 1
    assert "auth.hs256_secrets: HS algorithms need at least one secret" in production.stderr
    assert list(tmp_path.iterdir()) == []
