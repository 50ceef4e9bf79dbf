"""A three-master Redis Cluster from the bundled server binary, for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from gateway.dev.embedded_redis import RedisProcess, free_port, server_binary


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_with_free_bus() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port < 55_000 and _bindable(port + 10_000):
            return port


class Cluster:
    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [
            RedisProcess(
                port=_port_with_free_bus(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / f"nodes-{i}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30) -> Cluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> Cluster:
        for node in self.nodes:
            node.start()
        cli = str(Path(server_binary()).with_name("valkey-cli"))
        if not Path(cli).exists():
            cli = str(Path(server_binary()).with_name("redis-cli"))
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                out = subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                if "cluster_state:ok" in out:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not converge:\n{out}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
