"""The video part of ``make bench``: 1 GiB downloads through the gateway vs direct vs nginx,
a slow reader, a client abort, and many callers polling one unfinished job."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import downloads, gateway_proc, nginx, wrk
from bench.downloads import DownloadRun
from bench.procs import HarnessError
from bench.report import Goal
from gateway.dev.process import stop_process

SLOW_RATE, SLOW_SECONDS = "10M", 15
POLL_CONNECTIONS = 32
STATUS_ROUTE = 'route="/v1/videos/{id}"'


@dataclass(frozen=True)
class Ports:
    proxy: int
    video: int


@dataclass(frozen=True)
class PollRun:
    result: wrk.WrkResult
    upstream_calls: int

    @property
    def allowed_calls(self) -> int:
        # One per interval, plus one for a run that starts just before an interval ends.
        return math.ceil(self.result.seconds / gateway_proc.POLL_INTERVAL_S) + 1


def create_job(gw: gateway_proc.Gateway, token: str) -> str:
    body = {"prompt": "benchmark", "model": "sora-2", "seconds": "4", "size": "1280x720"}
    req = urllib.request.Request(  # noqa: S310 (loopback URL)
        gw.url("/v1/videos"),
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback URL)
            video_id = json.loads(resp.read())["id"]
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"create through the gateway failed: {exc}") from exc
    return str(video_id)


def header_file(tmp: Path, token: str) -> Path:
    path = tmp / "auth.header"
    path.touch(mode=0o600)
    path.write_text(f"Authorization: Bearer {token}\n")
    return path


@dataclass
class Results:
    runs: dict[tuple[str, int], list[DownloadRun]]
    slow: DownloadRun
    aborts: list[downloads.AbortRun]
    poll: PollRun


def measure(
    tmp: Path,
    ports: Ports,
    env: dict[str, str],
    token: str,
    cores: tuple[int, int],
    rounds: int,
    duration: int,
    log: Callable[[str], None],
) -> Results:
    gw_core, load_core = cores
    headers = header_file(tmp, token)
    upstream = f"http://127.0.0.1:{ports.video}"
    gw = gateway_proc.start(tmp, "gw-video", upstream, gw_core, env)
    try:
        video_id = create_job(gw, token)
        content = "/v1/videos/{}/content"
        urls = {
            "direct": (upstream + content.format(nginx.DONE_TASK), None, None),
            "nginx": (
                f"http://127.0.0.1:{ports.proxy}" + content.format(nginx.DONE_TASK),
                None,
                None,
            ),
            "gateway": (gw.url(content.format(video_id)), headers, gw.pid),
        }
        runs: dict[tuple[str, int], list[DownloadRun]] = {}
        for clients in (1, 4):
            for _ in range(rounds):
                for name, (url, hdr, pid) in urls.items():
                    r = downloads.download(url, hdr, clients, load_core, pid)
                    if not r.complete or any(f.size != nginx.DOWNLOAD_BYTES for f in r.fetches):
                        raise HarnessError(f"{name}: incomplete download {r.fetches}")
                    runs.setdefault((name, clients), []).append(r)
                    growth = (
                        ""
                        if r.rss_growth_mib is None
                        else (f", RSS +{r.rss_growth_mib:.1f} MiB, CPU {r.cpu_s:.2f} s")
                    )
                    log(f"  {clients} client(s) {name:8} {r.mb_s:7.0f} MB/s{growth}")
        gw_url, _, _ = urls["gateway"]
        slow = downloads.download(
            gw_url, headers, 1, load_core, gw.pid, rate=SLOW_RATE, max_time=SLOW_SECONDS
        )
        log(
            f"  slow reader ({SLOW_RATE}B/s, {SLOW_SECONDS} s): "
            f"{slow.fetches[0].size / downloads.MB:.0f} MB, RSS +{slow.rss_growth_mib:.1f} MiB"
        )
        aborts = []
        for _ in range(rounds):
            a = downloads.abort(gw_url, headers, load_core, gw.pid, ports.video)
            aborts.append(a)
            log(
                f"  abort after {a.received_mb:.0f} MB (gateway CPU {a.busy_before:.0%}): "
                f"upstream closed in {_fmt(a.closed_ms, 'ms')}, idle in {_fmt(a.idle_ms, 'ms')}, "
                f"CPU after {a.cpu_after_ms:.0f} ms"
            )
    finally:
        stop_process(gw.proc)

    gw = gateway_proc.start(tmp, "gw-poll", upstream + nginx.PENDING_PREFIX, gw_core, env)
    try:
        video_id = create_job(gw, token)
        script = wrk.write_get_script(tmp / "get-auth.lua", token)
        url = gw.url(f"/v1/videos/{video_id}")
        wrk.run(url, script, POLL_CONNECTIONS, 2, load_core)
        before = gw.counted("gateway_upstream_requests_total", STATUS_ROUTE)
        result = wrk.run(url, script, POLL_CONNECTIONS, duration, load_core)
        poll = PollRun(result, gw.counted("gateway_upstream_requests_total", STATUS_ROUTE) - before)
        log(
            f"  polls: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, errors "
            f"{result.errors}; upstream status calls {poll.upstream_calls}"
        )
    finally:
        stop_process(gw.proc)
    return Results(runs, slow, aborts, poll)


def _fmt(v: float | None, unit: str) -> str:
    return "-" if v is None else f"{v:.1f} {unit}"


def report(res: Results) -> list[str]:
    lines = [
        "| clients | target | MB/s (median) | MB/s range | vs direct | vs nginx "
        "| gateway peak RSS growth | gateway CPU s per GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in (1, 4):
        med = {
            name: downloads.mb_s_spread(res.runs[(name, clients)])
            for name in ("direct", "nginx", "gateway")
        }
        for name, (m, lo, hi) in med.items():
            runs = res.runs[(name, clients)]
            growth = downloads.worst_growth(runs)
            cpu = [r.cpu_s / clients for r in runs if r.cpu_s is not None]
            lines.append(
                f"| {clients} | {name} | {m:,.0f} | {lo:,.0f}..{hi:,.0f} "
                f"| {m / med['direct'][0]:.2f} | {m / med['nginx'][0]:.2f} "
                f"| {_fmt(growth, 'MiB')} | {_fmt(min(cpu) if cpu else None, 's')} |"
            )
    slow = res.slow
    lines += [
        "",
        f"Slow reader: curl --limit-rate {SLOW_RATE} for {SLOW_SECONDS} s through the gateway, "
        f"{slow.fetches[0].size / downloads.MB:.0f} MB read, gateway peak RSS growth "
        f"{_fmt(slow.rss_growth_mib, 'MiB')}.",
        "",
        "| abort | client had read | gateway CPU before | upstream connection closed after "
        "| gateway CPU idle after | gateway CPU in the 3 s after |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, a in enumerate(res.aborts, 1):
        lines.append(
            f"| {i} | {a.received_mb:.0f} MB | {a.busy_before:.0%} of a core "
            f"| {_fmt(a.closed_ms, 'ms')} "
            f"| {_fmt(a.idle_ms, 'ms')} | {a.cpu_after_ms:.0f} ms |"
        )
    p = res.poll
    lines += [
        "",
        f"Polls of one unfinished job: wrk -c{POLL_CONNECTIONS} GET /v1/videos/{{id}} for "
        f"{p.result.seconds:.1f} s: {p.result.rps:,.0f} req/s, p50 {p.result.p50_ms:.2f} ms, "
        f"p99 {p.result.p99_ms:.2f} ms, {p.result.errors} errors; the upstream saw "
        f"{p.upstream_calls} status calls (poll interval {gateway_proc.POLL_INTERVAL_S} s).",
    ]
    return lines


def goals(res: Results) -> list[Goal]:
    one = downloads.mb_s_spread(res.runs[("gateway", 1)])[0]
    four = downloads.worst_growth(res.runs[("gateway", 4)])
    slow = res.slow.rss_growth_mib
    closed = [a.closed_ms for a in res.aborts]
    idle = [a.idle_ms for a in res.aborts]
    worst_closed = None if None in closed else max(c for c in closed if c is not None)
    worst_idle = None if None in idle else max(i for i in idle if i is not None)
    p = res.poll
    return [
        Goal("1 GiB download, one client: ≥ 600 MB/s", f"{one:,.0f} MB/s", one >= 600),
        Goal(
            "four clients: gateway RSS growth ≤ 10 MB",
            _fmt(four, "MiB"),
            four is not None and four * 1.048576 <= 10,
        ),
        Goal(
            f"{SLOW_RATE}B/s reader: gateway RSS growth ≤ 10 MB",
            _fmt(slow, "MiB"),
            slow is not None and slow * 1.048576 <= 10,
        ),
        Goal(
            "abort: upstream closed and CPU idle within 1 s",
            f"closed {_fmt(worst_closed, 'ms')}, idle {_fmt(worst_idle, 'ms')} (worst)",
            worst_closed is not None
            and worst_idle is not None
            and max(worst_closed, worst_idle) <= 1000,
        ),
        Goal(
            f"polls of one job: ≥ 1,000 req/s at {POLL_CONNECTIONS} connections",
            f"{p.result.rps:,.0f} req/s, {p.result.errors} errors",
            p.result.rps >= 1000 and p.result.errors == 0,
        ),
        Goal(
            "polls: upstream sees ≤ one status call per interval",
            f"{p.upstream_calls} calls (1..{p.allowed_calls} expected)",
            1 <= p.upstream_calls <= p.allowed_calls,
        ),
    ]
