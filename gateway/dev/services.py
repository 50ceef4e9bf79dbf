"""Development fallbacks for `make run`: embedded Redis, the simulator, a local JWT secret.

These exist only in development mode (``gateway serve --dev``). A production start that lacks
a Redis URL, upstream keys or a JWT secret refuses to start instead (see ``production_problems``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.dev.embedded_redis import RedisProcess, free_port
from gateway.dev.process import stop_process
from gateway.settings import Settings, load_settings


@dataclass
class DevServices:
    """What dev mode started; ``stop`` ends all of it."""

    redis: RedisProcess | None = None
    sim: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        stop_process(self.sim)
        if self.redis is not None:
            self.redis.stop()


def _local_secret(data_dir: Path) -> str:
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback, our own sim)
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start") from None
            time.sleep(0.05)


def start_dev_services(config: str | None, env: MutableMapping[str, str]) -> DevServices:
    """Fill the gaps a development run may have, writing the results into ``env``.

    The workers load the same config file and find the resolved values in the environment.
    """
    services = DevServices()
    settings: Settings = load_settings(config, {**env, "GATEWAY_JWT_SECRET": "x" * 32})
    data_dir = Path(settings.redis.data_dir)
    if not env.get("GATEWAY_JWT_SECRET") and not settings.auth.public_keys:
        env["GATEWAY_JWT_SECRET"] = _local_secret(data_dir)
        services.notes.append(f"JWT secret: generated once, kept in {data_dir / 'jwt-secret'}")
    try:
        if settings.redis.embedded:
            services.redis = RedisProcess(data_dir=data_dir / "redis").start()
            env["REDIS_URL"] = services.redis.url
            services.notes.append(
                f"Redis: embedded server on {services.redis.url} (data in {data_dir / 'redis'})"
            )
        if not settings.upstream.keys:
            port = free_port()
            key = "sk-sim-" + secrets.token_hex(16)
            services.sim = subprocess.Popen(
                [sys.executable, "-m", "gateway", "sim", "--port", str(port)],
                env={**env, "GATEWAY_SIM_KEYS": key},
            )
            _wait_http(f"http://127.0.0.1:{port}/_sim/health", services.sim)
            env["CRAZYROUTER_API_KEYS"] = f"sim:{key}"
            env["CRAZYROUTER_BASE_URL"] = f"http://127.0.0.1:{port}"
            services.notes.append(
                f"UPSTREAM IS THE SIMULATOR on 127.0.0.1:{port}, not Crazyrouter "
                "(set CRAZYROUTER_API_KEYS to use the real upstream)"
            )
    except BaseException:
        services.stop()
        raise
    return services
