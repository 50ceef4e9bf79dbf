"""``python -m bench``: the gateway vs direct vs nginx on loopback, as a Markdown report.

The gateway runs pinned to core 0; nginx, Redis, wrk, the SSE upstream and the stream client
share core 1, so the gateway's core measures the gateway alone. Targets are interleaved within
each round so that the machine's noise falls on all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import gateway as gateway_pkg
from bench import gateway_proc, nginx, procs, report, streams, videos, wrk
from bench.procs import HarnessError
from gateway.dev.process import stop_process

GATEWAY_CORE, LOAD_CORE = 0, 1
CONNECTIONS = (1, 32, 256)
WARMUP_S = 2
CHAT_PATH = "/v1/chat/completions"
RESULTS = Path(__file__).parent / "results"
INSTALL = "apt-get update && apt-get install -y nginx-light wrk"


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    script: Path
    pid: int | None = None  # the proxy's pid, to account its CPU
    token: str | None = field(default=None, repr=False)  # the probe's, when not the JWT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 s rounds (one unless --rounds)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 8)")
    p.add_argument("--rounds", type=int, help="measured rounds per target (default 2)")
    p.add_argument("--only", choices=["json", "stream", "videos"], help="run one part only")
    p.add_argument("--streams", type=int, default=400, help="concurrent streams (default 400)")
    args = p.parse_args(argv)
    args.duration = max(1, round(args.duration or (3 if args.quick else 8)))
    args.rounds = max(1, args.rounds or (1 if args.quick else 2))
    args.sequential = 10 if args.quick else 20
    return args


def machine() -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("uvicorn", "starlette", "aiohttp")
    )
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    nginx_v = nginx_v.removeprefix("nginx version: ")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- Machine: {os.cpu_count()} cores (nproc), {model}; load average at start {load}",
        f"- Python {platform.python_version()}; {versions}; {nginx_v}",
    ]


def probe(url: str, token: str | None) -> None:
    """One request before measuring: a benchmark of 401s or 502s would be worthless."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = wrk.CHAT_REQUEST.encode()
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (loopback URL)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (loopback URL)
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"probe {url}: {exc}") from exc
    if answer.get("object") != "chat.completion":
        raise HarnessError(f"probe {url}: unexpected answer {answer!r}")


def bench_json(targets: list[Target], duration: int, rounds: int) -> report.Rows:
    rows: report.Rows = {}
    for c in CONNECTIONS:
        runs: dict[str, list[wrk.WrkResult]] = {t.name: [] for t in targets}
        cpu: dict[str, list[float]] = {t.name: [] for t in targets}
        for _ in range(rounds):
            for t in targets:
                wrk.run(t.url, t.script, c, WARMUP_S, LOAD_CORE)
                before = procs.cpu_seconds(t.pid) if t.pid else 0.0
                r = wrk.run(t.url, t.script, c, duration, LOAD_CORE)
                if t.pid:
                    cpu[t.name].append(procs.cpu_seconds(t.pid) - before)
                runs[t.name].append(r)
                log(
                    f"  c={c:<3} {t.name:8} {r.rps:9,.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                    f"p99 {r.p99_ms:8.2f} ms  errors {r.errors} (timeouts {r.timeouts})"
                )
        for t in targets:
            rows[(t.name, c)] = report.Row.of(t.name, c, runs[t.name], cpu[t.name])
    return rows


def _script_commands() -> frozenset[str]:
    """Commands the gateway's Lua scripts run inside Redis: INFO counts them too, but they cost
    no round trip. Read from the scripts, so that a new script cannot skew the count."""
    found: set[str] = set()
    for script in Path(gateway_pkg.__file__).parent.rglob("*.lua"):
        found.update(
            m.lower() for m in re.findall(r"redis\.call\('([A-Za-z]+)'", script.read_text())
        )
    return frozenset(found)


_IN_SCRIPT = _script_commands()


def redis_calls(url: str) -> int:
    """Commands clients have sent the Redis server so far (INFO commandstats, without the
    commands the rate script runs inside the server; INFO itself is left out too)."""
    import redis as redis_sync

    client = redis_sync.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if isinstance(v, dict) and k.removeprefix("cmdstat_") not in _IN_SCRIPT | {"info"}
    )


def commands_per_request(gw: gateway_proc.Gateway, script: Path, url: str) -> float:
    """Redis commands per request while this gateway alone serves 32 connections for 3 s."""
    calls0 = redis_calls(url)
    counted0 = gw.counted("gateway_requests_total", 'team="bench"')
    wrk.run(gw.url(CHAT_PATH), script, 32, 3, LOAD_CORE)
    counted = _when_quiet(lambda: gw.counted("gateway_requests_total", 'team="bench"'))
    return (redis_calls(url) - calls0) / max(1, counted - counted0)


def _when_quiet(count: Callable[[], int], deadline_s: float = 5.0) -> int:
    """``count`` once it stops moving. When wrk stops, up to one request per connection is
    still in the gateway: its Redis commands are already counted, the request only once it
    ends (read at once, 2.011 commands per metered request where the calls are 2.000)."""
    last = count()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now == last:
            return now
        last = now
    return last


AB_SECONDS = 5


def alternate(
    targets: dict[str, tuple[str, Path]], connections: int, runs: int
) -> dict[str, list[wrk.WrkResult]]:
    """Runs of each (url, script) at ``connections``, the targets taking turns: compared run
    against run, they share the machine's drift, which the table's medians of two rounds
    (minutes apart for one pair of rows) do not."""
    out: dict[str, list[wrk.WrkResult]] = {name: [] for name in targets}
    for _ in range(runs):
        for name, (url, script) in targets.items():
            wrk.run(url, script, connections, 1, LOAD_CORE)  # warm-up
            out[name].append(wrk.run(url, script, connections, AB_SECONDS, LOAD_CORE))
    return out


SIDE_SECONDS = 5


def side_by_side(
    target: tuple[str, Path, int], base: tuple[str, Path, int], runs: int
) -> tuple[list[report.SideRun], list[report.SideRun]]:
    """Two gateways, both pinned to the gateway core, each loaded by its own wrk at 32
    connections at the same moments: the kernel shares the core between them, so each run's
    ratio of their req/s is the ratio of what a request costs each, with the machine's speed
    the same for both (it swings by a third within seconds here, which runs taking turns
    cannot tell from a difference between the gateways)."""
    mine: list[report.SideRun] = []
    theirs: list[report.SideRun] = []
    loads = [(target[0], target[1]), (base[0], base[1])]
    for _ in range(runs):
        wrk.run_together(loads, 32, 1, LOAD_CORE)  # warm-up
        before = [procs.cpu_seconds(target[2]), procs.cpu_seconds(base[2])]
        a, b = wrk.run_together(loads, 32, SIDE_SECONDS, LOAD_CORE)
        after = [procs.cpu_seconds(target[2]), procs.cpu_seconds(base[2])]
        mine.append(report.SideRun(a.rps, after[0] - before[0], a.requests))
        theirs.append(report.SideRun(b.rps, after[1] - before[1], b.requests))
        log(
            f"  side by side: {a.rps:,.0f} : {b.rps:,.0f} req/s "
            f"({a.rps / max(1.0, b.rps):.3f}), {mine[-1].cpu_us_per_req:.0f} / "
            f"{theirs[-1].cpu_us_per_req:.0f} µs/req"
        )
    return mine, theirs


T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    import uvloop

    # The client shares core 1 with the upstream: uvloop keeps its own cost out of the gaps.
    return uvloop.run(coro)


FIRST_EVENT_TURNS = 40


def run(args: argparse.Namespace, out: list[str]) -> None:
    from gateway.auth.tokens import mint_token
    from gateway.dev.embedded_redis import RedisProcess

    creds = gateway_proc.Secrets()
    token = mint_token(creds.jwt, team="bench", user="bench", ttl_seconds=3600)
    goals: list[report.Goal] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-bench-")))
        # Started while this process is pinned to core 1, so Redis runs there too.
        redis = RedisProcess()
        stack.callback(redis.stop)
        redis.start()
        env = creds.env(redis.url)

        if args.only in (None, "json", "videos"):
            up, px, vp = procs.free_port(), procs.free_port(), procs.free_port()
            stack.callback(stop_process, nginx.start(tmp, up, px, vp, LOAD_CORE))

        if args.only in (None, "json"):
            with contextlib.ExitStack() as gw_stack:
                gw = gateway_proc.start(tmp, "gw-json", f"http://127.0.0.1:{up}", GATEWAY_CORE, env)
                gw_stack.callback(stop_process, gw.proc)
                unmetered = gateway_proc.start(
                    tmp, "gw-nometer", f"http://127.0.0.1:{up}", GATEWAY_CORE, env, metering=False
                )
                gw_stack.callback(stop_process, unmetered.proc)
                bare = gateway_proc.start(
                    tmp, "gw-noquota", f"http://127.0.0.1:{up}", GATEWAY_CORE, env, quota=False
                )
                gw_stack.callback(stop_process, bare.proc)
                plain = wrk.write_script(tmp / "post.lua", None)
                authed = wrk.write_script(tmp / "post-auth.lua", token)
                admin = mint_token(creds.jwt, team="ops", user="bench", roles=["gateway-admin"])
                gw_key = gw.api_key(admin, "bench")
                keyed = wrk.write_script(tmp / "post-key.lua", gw_key)
                limited_key = gw.api_key(admin, "bench", limited=True)
                limited = wrk.write_script(tmp / "post-key-limits.lua", limited_key)
                targets = [
                    Target("direct", f"http://127.0.0.1:{up}{CHAT_PATH}", plain),
                    Target("nginx", f"http://127.0.0.1:{px}{CHAT_PATH}", plain),
                    Target("gateway", gw.url(CHAT_PATH), authed, gw.pid),
                    Target("gateway-key", gw.url(CHAT_PATH), keyed, gw.pid, gw_key),
                    Target("key-limits", gw.url(CHAT_PATH), limited, gw.pid, limited_key),
                    Target("no-metering", unmetered.url(CHAT_PATH), authed, unmetered.pid),
                    Target("no-quota", bare.url(CHAT_PATH), authed, bare.pid),
                ]
                for t in targets:
                    probe(t.url, t.token or (token if t.pid else None))
                rss0 = procs.rss_mib(gw.pid)
                log(f"JSON: POST {CHAT_PATH}, {len(nginx.chat_completion())}-byte answer")
                rows = bench_json(targets, args.duration, args.rounds)
                rss1 = procs.rss_mib(gw.pid)
                counted = gw.counted("gateway_requests_total", 'team="bench"')
                # Commands per request, each gateway measured alone (the table's runs interleave).
                per_request = commands_per_request(gw, authed, redis.url)
                per_unmetered = commands_per_request(unmetered, authed, redis.url)
                runs = args.rounds + 2
                key_ab = alternate(
                    {"jwt": (gw.url(CHAT_PATH), authed), "key": (gw.url(CHAT_PATH), keyed)},
                    32,
                    runs,
                )
                checks = {
                    "gateway": (gw.url(CHAT_PATH), authed),
                    "no-metering": (unmetered.url(CHAT_PATH), authed),
                    "no-quota": (bare.url(CHAT_PATH), authed),
                }
                checks_ab = {c: alternate(checks, c, runs) for c in (1, 32)}
                gw_side = (gw.url(CHAT_PATH), authed, gw.pid)
                unmetered_side = (unmetered.url(CHAT_PATH), authed, unmetered.pid)
                bare_side = (bare.url(CHAT_PATH), authed, bare.pid)
                side: report.SidePairs = {
                    ("no-metering", "no-quota"): side_by_side(unmetered_side, bare_side, runs),
                    ("gateway", "no-metering"): side_by_side(gw_side, unmetered_side, runs),
                }
            out += [
                "## Small JSON requests",
                "",
                f"POST {CHAT_PATH} with a bearer token (the gateway verifies it and records "
                f"metrics), {len(nginx.chat_completion())}-byte answer; wrk -t1 pinned to core "
                f"{LOAD_CORE}, --timeout 2s; {WARMUP_S} s warm-up before every run. req/s, p50 "
                "and p99 are medians of rounds, errors are summed over rounds. Proxy CPU is the "
                f"gateway process's CPU time while measured (its core: {GATEWAY_CORE}).",
                "",
                *report.json_table(rows, list(CONNECTIONS)),
                "",
                f"Gateway RSS {rss0:.0f} → {rss1:.0f} MiB over the JSON runs; its /metrics "
                f"counted {counted:,} requests for team bench. `gateway` checks the team's "
                "rate limit and meters every call in Redis (a price for the model, token and "
                "spend limits far above the load, so none is refused); `gateway-key` is the same "
                "gateway called with a gateway API key instead of the JWT (found in the "
                "replica's cache; the key sets no limits of its own); `key-limits` with a key "
                "that has its own request and token limits, far above the load (a second "
                "sliding log and token window in the same scripts); "
                "`no-metering` is the same "
                "gateway with `pricing.enabled: false` (the rate check only); `no-quota` with "
                "`quota.enabled: false`. Redis received "
                f"{per_request:.3f} commands per `gateway` request and {per_unmetered:.3f} per "
                "`no-metering` request, each measured alone at 32 connections (INFO "
                "commandstats without the commands the gateway's scripts run inside Redis; "
                "background refreshes included).",
                "",
            ]
            jwt_runs = [r.rps for r in key_ab["jwt"]]
            key_runs = [r.rps for r in key_ab["key"]]
            out += [
                f"Key against JWT, alternating on the one gateway ({len(key_runs)} runs of "
                f"{AB_SECONDS} s each at 32 connections, after the table): JWT "
                f"{' / '.join(f'{x:,.0f}' for x in jwt_runs)} req/s, key "
                f"{' / '.join(f'{x:,.0f}' for x in key_runs)} req/s. The table's rows of one "
                "process run minutes apart and carry the machine's drift; alternating runs "
                "compare the two credentials under the same conditions.",
                "",
            ]
            out += [
                f"Quota and metering, alternating on the three gateways ({runs} runs of "
                f"{AB_SECONDS} s each per connection count, after the table):",
                "",
                *report.alternating_table(checks_ab),
                "",
                f"Side by side ({runs} runs of {SIDE_SECONDS} s for each pair, after the "
                f"alternating runs): two gateways pinned to core {GATEWAY_CORE} at once, each "
                f"with its own wrk at 32 connections on core {LOAD_CORE}. The kernel shares the "
                "core between them, so a run's ratio of their req/s is the ratio of what a "
                "request costs each, measured at the same moments; the per-request CPU is higher "
                "than alone (two processes take turns on one core's caches). These runs judge "
                "the req/s goals of the quota check and of metering: on this machine the speed "
                "of a core swings by up to a third within seconds, and runs that take turns "
                "carry that swing into their ratios.",
                "",
                *report.side_table(side, SIDE_SECONDS),
                "",
            ]
            goals += report.json_goals(
                rows,
                per_request,
                per_unmetered,
                key_ab={name: [r.rps for r in runs_] for name, runs_ in key_ab.items()},
                checks_ab=checks_ab,
                side=side,
            )

        if args.only in (None, "stream"):
            sse_port = procs.free_port()
            sse = procs.spawn(
                [sys.executable, "-m", "bench.sse_upstream", str(sse_port)],
                LOAD_CORE,
                log=tmp / "sse.log",
            )
            stack.callback(stop_process, sse)
            procs.wait_port(sse_port, sse)
            sse_url = f"http://127.0.0.1:{sse_port}"
            n, seq = args.streams, args.sequential
            log(f"Streams: 64 events 20 ms apart; {seq} single streams, then {n} concurrent")
            direct_url = f"{sse_url}{CHAT_PATH}"
            direct = run_async(streams.measure(direct_url, None, n, seq))
            log(
                f"  direct  first event {direct.first_event_ms:.2f} ms, gap p99 "
                f"{direct.gap_p99_ms:.1f} ms, {direct.completed}/{n} complete"
            )
            flavours: dict[str, dict[str, bool]] = {
                "gateway": {},
                "no-metering": {"metering": False},
                "no-quota": {"quota": False},
            }
            measured: dict[str, streams.StreamStats] = {}
            for name, flavour in flavours.items():
                # One gateway on core 0 at a time: another's start-up or background work
                # (its reconciler's first pass, after the JSON part) lands in the gaps.
                g = gateway_proc.start(tmp, f"sse-{name}", sse_url, GATEWAY_CORE, env, **flavour)
                try:
                    got = run_async(streams.measure(g.url(CHAT_PATH), token, n, seq))
                finally:
                    stop_process(g.proc)
                measured[name] = got
                log(
                    f"  {name} first event {got.first_event_ms:.2f} ms, gap p99 "
                    f"{got.gap_p99_ms:.1f} ms, {got.completed}/{n} complete"
                )
            via, no_meter, no_quota = (measured[k] for k in flavours)
            # The first events taking turns need all three up at once (one streams at a time).
            urls: dict[str, tuple[str, str | None]] = {"direct": (direct_url, None)}
            for name, flavour in flavours.items():
                g = gateway_proc.start(tmp, f"turns-{name}", sse_url, GATEWAY_CORE, env, **flavour)
                stack.callback(stop_process, g.proc)
                urls[name] = (g.url(CHAT_PATH), token)
            turns = FIRST_EVENT_TURNS // (2 if args.quick else 1)
            firsts = run_async(streams.first_events(urls, turns))
            log(
                "  first events taking turns: "
                + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in firsts.items())
            )
            out += [
                "## Streamed chat",
                "",
                "Upstream: bench/sse_upstream.py (uvloop, core 1), 64 events 20 ms apart then "
                f"[DONE]. Client: aiohttp on uvloop, core {LOAD_CORE}. First event: median of "
                f"{seq} sequential streams on a warm connection, one target after another.",
                "",
                *report.stream_table(direct, via, no_quota, no_meter),
                "",
                f"First events taking turns ({turns} turns, after the table): the four targets "
                "take turns (one-event streams on warm connections, 0.1 s apart; each measured "
                "stream right after an unmeasured one to the same target, as in the table's "
                "back-to-back streams), so that their differences are measured under the same "
                "conditions; the "
                "table's first events are measured one target after another, minutes apart. "
                "These judge the first-event goals.",
                "",
                *report.first_events_table(firsts),
                "",
            ]
            goals += report.stream_goals(direct, via, no_quota, no_meter, firsts=firsts)

        if args.only in (None, "videos"):
            log(f"Videos: 1 GiB downloads ({args.rounds} round(s)), a slow reader, aborts, polls")
            res = videos.measure(
                tmp,
                videos.Ports(proxy=px, video=vp),
                env,
                token,
                (GATEWAY_CORE, LOAD_CORE),
                args.rounds,
                args.duration,
                log,
            )
            out += [
                "## Video downloads and polls",
                "",
                f"A 1 GiB file served by nginx (sendfile, core {LOAD_CORE}) as the job's content; "
                f"clients are curl to /dev/null on core {LOAD_CORE}. nginx proxies with "
                "proxy_buffering off. Peak RSS is the kernel's VmHWM for the gateway process, "
                "reset before each run. MB are 10^6 bytes.",
                "",
                *videos.report(res),
                "",
            ]
            goals += videos.goals(res)

    out += [
        "## Goals (authentication and metrics on, one worker)",
        "",
        *report.goals_table(goals),
    ]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Callable[[int, FrameType | None], Any] | int | None = signal.signal(
        signal.SIGTERM, handler
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in ("nginx", "wrk", "taskset") if shutil.which(t) is None]
    if missing:
        log(f"bench: {' and '.join(missing)} not found; install with:\n  {INSTALL}")
        return 2
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        log("bench: needs 2 cores (the gateway on one, the load on the other)")
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    lines = [
        "# Gateway benchmark",
        "",
        *machine(),
        f"- Command: `{command}`",
        f"- Runs: {args.rounds} round(s) of {args.duration} s per target and connection count",
        "",
    ]
    try:
        with sigterm_as_interrupt():
            run(args, lines)
    except KeyboardInterrupt:
        log("bench: interrupted; every process it started has been stopped")
        return 130
    except HarnessError as exc:
        log(f"bench: {exc}")
        return 1
    lines += ["", f"Took {time.monotonic() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    log(f"written to {RESULTS / 'latest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
