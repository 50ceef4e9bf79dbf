"""The CLI as operators run it, in subprocesses: serve (dev and production), token, check-config."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import openai

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CRAZYROUTER_", "GATEWAY_", "REDIS_URL"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Served:
    """A `gateway serve` subprocess whose output is collected by a reader thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; output:\n{self.output}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_replicas(
    stack: contextlib.ExitStack, config: Path, cwd: Path, env: dict[str, str], n: int
) -> list[str]:
    """``n`` `gateway serve` processes on one config, each stopped when ``stack`` closes;
    their base URLs once every one has started."""
    ports = [free_port() for _ in range(n)]
    served = [
        Served(gateway_cmd("serve", "--config", str(config), "--port", str(p)), cwd, env)
        for p in ports
    ]
    for s in served:
        stack.callback(s.stop)
    for s in served:
        s.wait_for(r"Application startup complete")
    return [f"http://127.0.0.1:{p}" for p in ports]


def _dev_serve(cwd: Path, port: int) -> Served:
    return Served(
        gateway_cmd(
            "serve", "--dev", "--config", str(ROOT / "config/dev.yaml"), "--port", str(port)
        ),
        cwd,
        clean_env(),
    )


def _children_gone(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _admin_with(exports: list[str], command: str) -> subprocess.CompletedProcess[str]:
    """``gateway admin COMMAND`` in a shell that ran only the banner's export lines."""
    return subprocess.run(
        [
            "sh",
            "-c",
            "\n".join([*exports, f'exec "$0" -m gateway admin {command}']),
            sys.executable,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_mode_serves_the_printed_example_and_keeps_state(tmp_path: Path) -> None:
    dev_dir = tmp_path
    port = free_port()
    served = _dev_serve(dev_dir, port)
    try:
        served.wait_for(r"Application startup complete")
        out = served.output
        assert "UPSTREAM IS THE SIMULATOR" in out
        assert "Redis: embedded server" in out
        # the printed three-line example runs as printed
        example = re.search(r"(from openai import OpenAI\n.*\n.*\n)", out)
        assert example is not None
        token = served.wait_for(r'api_key="([^"]+)"').group(1)
        result = subprocess.run(
            [sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
        # the printed export lines are all the admin CLI needs
        exports = re.findall(r"^export GATEWAY_\w+=\S+$", out, re.MULTILINE)
        assert [e.split("=")[0] for e in exports] == [
            "export GATEWAY_URL",
            "export GATEWAY_ADMIN_TOKEN",
        ]
        assert f"export GATEWAY_URL=http://127.0.0.1:{port}" in exports
        admin = _admin_with(exports, "show dev")
        assert admin.returncode == 0, admin.stderr
        assert admin.stdout.startswith("team dev (")
        # ... and to give a service a gateway API key (the pepper was generated too)
        made = _admin_with(exports, "api-keys create svc --team dev")
        assert made.returncode == 0, made.stderr
        found = re.search(r"^key\s+(gwk_\S+)$", made.stdout, re.MULTILINE)
        assert found is not None
        service_key = found.group(1)
        assert f'make run ARGS="--port {port + 1}"' in out
        children = _child_pids(served.proc.pid)
        assert len(children) >= 2  # the embedded Redis and the simulator
    finally:
        assert served.stop() == 0
    deadline = time.monotonic() + 10
    while not _children_gone(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children_gone(children), "dev services outlived the gateway"
    assert (dev_dir / ".gateway-data/jwt-secret").exists()
    assert (dev_dir / ".gateway-data/api-key-pepper").exists()
    assert (dev_dir / ".gateway-data/redis").is_dir()

    # a restart keeps the secrets: the token minted and the key issued before still work
    served = _dev_serve(dev_dir, port)
    try:
        served.wait_for(r"Application startup complete")
        for credential in (token, service_key):
            with openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=credential, max_retries=0
            ) as client:
                assert client.models.list().data
    finally:
        served.stop()


def test_dev_mode_stops_its_services_on_sigterm(tmp_path: Path) -> None:
    served = _dev_serve(tmp_path, free_port())
    try:
        served.wait_for(r"Application startup complete")
        children = _child_pids(served.proc.pid)
        assert len(children) >= 2  # the embedded Redis and the simulator
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        served.stop()
    deadline = time.monotonic() + 10
    while not _children_gone(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children_gone(children), "dev services outlived a SIGTERM"


def test_production_serve_refuses_to_start_without_keys_or_redis(tmp_path: Path) -> None:
    cfg = tmp_path / "prod.yaml"
    cfg.write_text('auth: {hs256_secrets: ["${GATEWAY_JWT_SECRET}"]}\n')
    result = subprocess.run(
        gateway_cmd("serve", "--config", str(cfg)),
        env=clean_env(GATEWAY_JWT_SECRET=secrets.token_urlsafe(40)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "upstream.keys: no upstream key configured" in result.stderr
    assert "redis.url: no Redis URL configured" in result.stderr


def test_check_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('auth: {hs256_secrets: ["short"]}\n')
    result = subprocess.run(
        gateway_cmd("check-config", str(bad)), env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "auth.hs256_secrets[0]: must be at least 32 bytes" in result.stderr

    missing_env = subprocess.run(
        gateway_cmd("check-config", str(ROOT / "config/gateway.example.yaml")),
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert missing_env.returncode == 1
    assert "environment variable" in missing_env.stderr

    good = subprocess.run(
        gateway_cmd("check-config", str(ROOT / "config/gateway.example.yaml")),
        env=clean_env(
            GATEWAY_JWT_SECRET=secrets.token_urlsafe(40),
            CRAZYROUTER_KEY_PRIMARY="sk-" + secrets.token_hex(8),
            CRAZYROUTER_KEY_SECONDARY="sk-" + secrets.token_hex(8),
            REDIS_URL="redis://127.0.0.1:6379/0",
        ),
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert "OK (2 upstream keys)" in good.stdout


def test_token_command_mints_a_verifiable_token() -> None:
    secret = secrets.token_urlsafe(40)
    result = subprocess.run(
        gateway_cmd("token", "--team", "search", "--user", "bot", "--roles", "a,b", "--ttl", "120"),
        env=clean_env(GATEWAY_JWT_SECRET=secret),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["team"], claims["sub"], claims["roles"]) == ("search", "bot", ["a", "b"])
    assert claims["exp"] - claims["iat"] == 120

    short = subprocess.run(
        gateway_cmd("token", "--team", "t", "--user", "u"),
        env=clean_env(GATEWAY_JWT_SECRET="short"),
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2


def test_check_config_rejects_weak_key_material(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # deliberately weak: the gateway must refuse it
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        weak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cfg = tmp_path / "rs.yaml"
    cfg.write_text(f"auth: {{algorithms: [RS256], public_keys: ['{pem}']}}\n")
    result = subprocess.run(
        gateway_cmd("check-config", str(cfg), "--dev"),
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "auth.public_keys[0]: RSA keys need at least 2048 bits" in result.stderr
    assert "Traceback" not in result.stderr
