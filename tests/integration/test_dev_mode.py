"""Development mode (``make run`` = ``gateway serve --dev --config config/dev.yaml``) where it
meets the machine: a port already taken, a data directory already in use, the first install."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import listen_problem
from tests.integration.test_cli import ROOT, Served, _dev_serve, clean_env, gateway_cmd
from tests.servers import free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def processes_in(directory: Path) -> list[int]:
    """Live processes working in ``directory`` or below. Redis and Valkey rename their command
    line, but they run in their data directory; the gateway and the simulator in its cwd."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.is_relative_to(directory):
            found.append(int(entry.name))
    return found


def test_a_taken_port_stops_dev_mode_before_anything_starts(
    tmp_path: Path, taken_port: int
) -> None:
    done = subprocess.run(
        gateway_cmd(
            "serve", "--dev", "--config", str(ROOT / "config/dev.yaml"), "--port", str(taken_port)
        ),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""  # no banner, no token
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"gateway: cannot start: port {taken_port} on 127.0.0.1 is already in use; "
        "nothing was started"
    )
    assert lines[1].startswith('gateway: to listen on another port: make run ARGS="--port ')
    suggested = int(lines[1].split("--port ")[1].split('"')[0])
    assert suggested != taken_port
    assert len(lines) == 2
    # no embedded Redis, no simulator, no secret and no data directory
    assert list(tmp_path.iterdir()) == []
    assert processes_in(tmp_path) == []


def test_a_taken_port_stops_production_serve_with_its_own_hint(
    tmp_path: Path, taken_port: int
) -> None:
    cfg = tmp_path / "prod.yaml"
    cfg.write_text(
        "redis: {url: '${REDIS_URL}'}\nauth: {hs256_secrets: ['${GATEWAY_JWT_SECRET}']}\n"
    )
    done = subprocess.run(
        gateway_cmd("serve", "--config", str(cfg), "--port", str(taken_port)),
        env=clean_env(
            GATEWAY_JWT_SECRET="s" * 40,
            CRAZYROUTER_API_KEYS="p:sk-unused",
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"port {taken_port} on 127.0.0.1 is already in use" in done.stderr
    assert "to listen on another port: --port " in done.stderr
    assert "server.port in the config" in done.stderr
    assert "make run" not in done.stderr


def test_a_second_dev_run_on_the_same_data_directory_starts_nothing(tmp_path: Path) -> None:
    first = _dev_serve(tmp_path, free_port())
    try:
        first.wait_for(r"Application startup complete")
        redis_dir = tmp_path / ".gateway-data/redis"
        assert len(processes_in(redis_dir)) == 1
        second = Served(
            gateway_cmd(
                "serve",
                "--dev",
                "--config",
                str(ROOT / "config/dev.yaml"),
                "--port",
                str(free_port()),
            ),
            tmp_path,
            clean_env(),
        )
        assert second.proc.wait(timeout=60) == 2
        second.stop()
        assert second.output.strip() == (
            "gateway: cannot start: another development gateway is using .gateway-data (its "
            "Redis data); stop it first, or give this one its own redis.data_dir"
        )
        assert len(processes_in(redis_dir)) == 1
    finally:
        assert first.stop() == 0


def test_the_first_make_run_says_it_installs_and_shows_progress(tmp_path: Path) -> None:
    venv = tmp_path / "venv"

    def dry_run(target: str) -> list[str]:
        done = subprocess.run(
            ["make", "-n", target, f"VENV={venv}", f"SDK2_VENV={tmp_path / 'sdk2'}", "ARGS="],
            cwd=ROOT,
            # Under `make test` (as in CI) this would be a sub-make: it would inherit the outer
            # make's variables and print "Entering/Leaving directory" lines.
            env={
                k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.splitlines()

    run = dry_run("run")
    said = run.index(
        f'echo "Installing the gateway into {venv} (first run only, about a minute)..."'
    )
    install = run[said + 1]
    assert install == f"{venv}/bin/pip install --progress-bar on -e ."
    assert run[-1] == f"{venv}/bin/gateway serve --dev --config config/dev.yaml "
    # the test target's install stays quiet, so the suite's output is what one reads
    test = dry_run("test")
    assert f"{venv}/bin/pip install --quiet -e '.[dev]'" in test
    assert not any("Installing the gateway" in line for line in test)
    assert not list(tmp_path.iterdir())  # a dry run creates nothing


def test_listen_problem_binds_like_the_server(taken_port: int) -> None:
    assert listen_problem("127.0.0.1", taken_port) == (
        f"port {taken_port} on 127.0.0.1 is already in use"
    )
    # a wildcard listener would collide with the loopback one too
    assert (
        listen_problem("0.0.0.0", taken_port) == f"port {taken_port} on 0.0.0.0 is already in use"
    )
    free = free_port()
    assert listen_problem("127.0.0.1", free) is None
    assert listen_problem("localhost", free) is None
    assert listen_problem("127.0.0.1", 0) is None  # any port: nothing to check
    # TEST-NET-1 is never an address of this machine
    assert listen_problem("192.0.2.1", free) == (
        f"cannot listen on 192.0.2.1:{free}: Cannot assign requested address"
    )
