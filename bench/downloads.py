"""1 GiB downloads with curl as the client: throughput, the proxy's peak RSS and CPU, a slow
reader, and what happens after a client abort (upstream connection closed, CPU idle)."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.procs import HarnessError

MB = 1_000_000
_WRITE_OUT = "%{http_code} %{size_download} %{time_total}\\n"


@dataclass(frozen=True)
class Fetch:
    status: int
    size: int
    seconds: float


@dataclass(frozen=True)
class DownloadRun:
    clients: int
    fetches: tuple[Fetch, ...]
    wall_s: float
    rss_growth_mib: float | None  # the proxy's peak RSS minus its RSS before (gateway only)
    cpu_s: float | None

    @property
    def mb_s(self) -> float:
        """Aggregate throughput: every byte every client got, over the slowest client's time."""
        return sum(f.size for f in self.fetches) / max(f.seconds for f in self.fetches) / MB

    @property
    def complete(self) -> bool:
        return all(f.status in (200, 206) for f in self.fetches)


@dataclass(frozen=True)
class AbortRun:
    received_mb: float  # what the client had before it was killed
    busy_before: float  # the gateway's CPU share (of one core) while the client was reading
    closed_ms: float | None  # abort → the gateway's upstream connection gone
    idle_ms: float | None  # abort → the gateway's CPU below 5 % of a core for 250 ms
    cpu_after_ms: float  # CPU the gateway used in the window after the abort


def _curl(
    url: str, headers: Path | None, core: int, *, rate: str | None, max_time: float | None
) -> subprocess.Popen[str]:
    argv = ["taskset", "-c", str(core), "curl", "-s", "-o", "/dev/null", "-w", _WRITE_OUT]
    if headers is not None:
        argv += ["-H", f"@{headers}"]  # from a file: the token stays out of ps
    if rate:
        argv += ["--limit-rate", rate]
    if max_time:
        argv += ["--max-time", f"{max_time:g}"]
    return subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], timeout: float) -> Fetch:
    out, _ = proc.communicate(timeout=timeout)
    parts = out.split()
    if len(parts) != 3:
        raise HarnessError(f"curl exited {proc.returncode} with {out!r}")
    return Fetch(int(parts[0]), int(parts[1]), float(parts[2]))


def _reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next reading covers this run only."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise HarnessError(f"no {field} for pid {pid}")


def download(
    url: str,
    headers: Path | None,
    clients: int,
    core: int,
    pid: int | None,
    *,
    rate: str | None = None,
    max_time: float | None = None,
) -> DownloadRun:
    """``clients`` concurrent curls of ``url``; the proxy ``pid``'s peak RSS and CPU meanwhile."""
    rss0 = cpu0 = 0.0
    if pid is not None:
        rss0 = _status_kib(pid, "VmRSS") / 1024
        if not _reset_peak(pid):
            raise HarnessError("cannot reset the peak RSS (/proc/PID/clear_refs)")
        cpu0 = procs.cpu_seconds(pid)
    started = time.monotonic()
    curls = [_curl(url, headers, core, rate=rate, max_time=max_time) for _ in range(clients)]
    try:
        fetches = tuple(_result(c, timeout=(max_time or 120) + 30) for c in curls)
    finally:
        for c in curls:
            with contextlib.suppress(ProcessLookupError):
                c.kill()
            c.wait()
    wall = time.monotonic() - started
    growth = cpu = None
    if pid is not None:
        growth = _status_kib(pid, "VmHWM") / 1024 - rss0
        cpu = procs.cpu_seconds(pid) - cpu0
    return DownloadRun(clients, fetches, wall, growth, cpu)


def median_run(runs: list[DownloadRun]) -> DownloadRun:
    """The run with the median throughput (its RSS and CPU travel with it)."""
    ranked = sorted(runs, key=lambda r: r.mb_s)
    return ranked[len(ranked) // 2]


def worst_growth(runs: list[DownloadRun]) -> float | None:
    values = [r.rss_growth_mib for r in runs if r.rss_growth_mib is not None]
    return max(values) if values else None


def upstream_connections(pid: int, port: int) -> int:
    """Established TCP connections from ``pid`` to 127.0.0.1:``port`` (from /proc, no tools)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                remote_port = int(f[2].rsplit(":", 1)[1], 16)
                if f[3] == "01" and remote_port == port and f[9] in inodes:
                    count += 1
    return count


def abort(
    url: str, headers: Path, core: int, pid: int, upstream_port: int, *, watch_s: float = 3.0
) -> AbortRun:
    """Kill a full-speed download mid-body; time how long the gateway takes to let go."""
    if upstream_connections(pid, upstream_port):
        raise HarnessError("the gateway holds upstream connections before the abort run")
    argv = ["taskset", "-c", str(core), "curl", "-s", "-N", "-H", f"@{headers}", url]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert client.stdout is not None
    received = 0
    mark: tuple[float, float] | None = None
    try:
        # Read well into the body, so the gateway is mid-stream at full speed when the client dies.
        while received < 200 * MB:
            chunk = client.stdout.read1(1 << 20)  # type: ignore[attr-defined]
            if not chunk:
                raise HarnessError(f"download ended after {received} bytes")
            received += len(chunk)
            if mark is None and received >= 100 * MB:
                mark = (time.monotonic(), procs.cpu_seconds(pid))
        if upstream_connections(pid, upstream_port) != 1:
            raise HarnessError("no upstream connection seen for the download in progress")
        client.send_signal(signal.SIGKILL)
        aborted = time.monotonic()
        cpu0 = procs.cpu_seconds(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        client.wait()
    assert mark is not None
    busy = (cpu0 - mark[1]) / (aborted - mark[0])
    closed: float | None = None
    samples: list[tuple[float, float]] = []
    while (now := time.monotonic()) - aborted < watch_s:
        samples.append((now - aborted, procs.cpu_seconds(pid)))
        if closed is None and upstream_connections(pid, upstream_port) == 0:
            closed = (now - aborted) * 1000
        time.sleep(0.01)
    return AbortRun(
        received_mb=received / MB,
        busy_before=busy,
        closed_ms=closed,
        idle_ms=_idle_after(samples),
        cpu_after_ms=(samples[-1][1] - cpu0) * 1000,
    )


def _idle_after(samples: list[tuple[float, float]], window: float = 0.25) -> float | None:
    """First time from which the CPU stays under 5 % of a core for ``window`` seconds."""
    for i, (t, cpu) in enumerate(samples):
        later = [(t2, c2) for t2, c2 in samples[i:] if t2 - t >= window]
        if not later:
            return None
        t2, c2 = later[0]
        if (c2 - cpu) / (t2 - t) < 0.05:
            return t * 1000
    return None


def mb_s_spread(runs: list[DownloadRun]) -> tuple[float, float, float]:
    values = [r.mb_s for r in runs]
    return statistics.median(values), min(values), max(values)
