"""Child processes of a benchmark run: start pinned, wait until they answer, always stop."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """The harness itself failed (as opposed to a goal being missed)."""


def _die_with_parent() -> None:
    # Even a SIGKILLed harness must not leave nginx or a gateway holding a core.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str],
    core: int,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``core``, in its own session so Ctrl-C reaches only the harness
    (which then stops children in order instead of racing them)."""
    out: IO[bytes] | int = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (below)
    try:
        return subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            # preexec_fn is unsafe with threads; the harness has none while it spawns.
            preexec_fn=_die_with_parent,
        )
    finally:
        if not isinstance(out, int):
            out.close()  # the child holds its own descriptor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path | None, timeout: float) -> None:
    """Poll ``url`` until it answers 2xx; fail early (with the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback URL we built)
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise HarnessError(f"{url}: process exited with {proc.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{url} did not answer within {timeout:g} s{_tail(log)}")
        time.sleep(0.05)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            pass
        if proc.poll() is not None:
            raise HarnessError(f"port {port}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise HarnessError(f"port {port} did not open within {timeout:g} s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); index 0 here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(text) if text else ""
