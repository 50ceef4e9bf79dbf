"""Development fallbacks for `make run`: embedded Redis, the simulator, local secrets (the JWT
secret, the API-key pepper, the console's session secret).

These exist only in development mode (``gateway serve --dev``). A production start that lacks
a Redis URL, upstream keys or a JWT secret refuses to start instead (see ``production_problems``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gateway.dev.embedded_redis import RedisProcess, free_port
from gateway.dev.process import stop_process
from gateway.settings import Settings, load_settings


class DevModeError(RuntimeError):
    """Development mode cannot start; the message says why and what to do."""


@dataclass
class DevServices:
    """What dev mode started; ``stop`` ends all of it."""

    redis: RedisProcess | None = None
    sim: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)
    lock: IO[str] | None = None

    def stop(self) -> None:
        stop_process(self.sim)
        if self.redis is not None:
            self.redis.stop()
        if self.lock is not None:
            self.lock.close()  # releases the data directory's lock
            self.lock = None


def generates_secret(settings: Settings, env: Mapping[str, str]) -> bool:
    return not env.get("GATEWAY_JWT_SECRET") and not settings.auth.public_keys


def dev_settings(config: str | None, env: Mapping[str, str]) -> Settings:
    """The settings ``serve --dev`` starts from, found without starting or writing anything.

    Raises SettingsError exactly where a development start would fail on the config.
    """
    if env.get("GATEWAY_JWT_SECRET"):
        return load_settings(config, env)
    # A stand-in for the secret generated later, so that nothing is written to find out.
    placeholder = secrets.token_urlsafe(48)
    settings = load_settings(config, {**env, "GATEWAY_JWT_SECRET": placeholder})
    if not generates_secret(settings, env):
        # With public keys no secret is generated: check what the real start will see.
        settings = load_settings(config, env)
    return settings


def dev_fallbacks(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """The fallbacks a development run with these settings uses, in words."""
    out = []
    if settings.redis.embedded:
        out.append(f"embedded Redis (data in {Path(settings.redis.data_dir) / 'redis'})")
    if not settings.upstream.keys:
        out.append("the simulator as upstream (no upstream key)")
    if generates_secret(settings, env):
        out.append(f"a generated JWT secret ({Path(settings.redis.data_dir) / 'jwt-secret'})")
    return out


def _local_secret(data_dir: Path, name: str = "jwt-secret") -> str:
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _lock_data_dir(data_dir: Path) -> IO[str]:
    # Two servers appending to one data directory's files would corrupt them: the second
    # development run on the same directory stops before starting anything.
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DevModeError(
            f"another development gateway is using {data_dir} (its Redis data); "
            "stop it first, or give this one its own redis.data_dir"
        ) from None
    return lock


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
    settings = dev_settings(config, env)
    data_dir = Path(settings.redis.data_dir)
    try:
        if settings.redis.embedded:
            services.lock = _lock_data_dir(data_dir)
        if generates_secret(settings, env):
            env["GATEWAY_JWT_SECRET"] = _local_secret(data_dir)
            services.notes.append(f"JWT secret: generated once, kept in {data_dir / 'jwt-secret'}")
        if not env.get("GATEWAY_API_KEY_PEPPER") and settings.auth.api_key_pepper is None:
            # Gateway API keys work in development too; their hashes need a stable pepper.
            env["GATEWAY_API_KEY_PEPPER"] = _local_secret(data_dir, "api-key-pepper")
            services.notes.append(
                f"API key pepper: generated once, kept in {data_dir / 'api-key-pepper'}"
            )
        console = settings.console
        if console.enabled and not env.get("GATEWAY_CONSOLE_SECRET") and not console.session_secret:
            # The console's sessions survive a restart of `make run` like everything else.
            env["GATEWAY_CONSOLE_SECRET"] = _local_secret(data_dir, "console-secret")
            services.notes.append(
                f"Console session secret: generated once, kept in {data_dir / 'console-secret'}"
            )
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
