"""`python -m bench`: gateway vs direct vs nginx on loopback, printed as a Markdown table.

The gateway runs pinned to core 0; nginx, the load generator and the stream client share
core 1, so the gateway's core measures the gateway alone. Numbers are medians of rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import procs, streams, wrk
from gateway.auth.tokens import mint_token
from gateway.embedded_redis import RedisProcess, free_port

GATEWAY_CORE, LOAD_CORE = 0, 1
RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def json_rows(
    tmp: Path,
    targets: dict[str, tuple[str, str | None]],
    conns: list[int],
    secs: float,
    rounds: int,
) -> dict[tuple[str, int], wrk.WrkResult]:
    out: dict[tuple[str, int], wrk.WrkResult] = {}
    for c in conns:
        for name, (url, token) in targets.items():
            lua = wrk.script(tmp, token)
            wrk.run(url, lua, c, 2, LOAD_CORE)  # warm-up
            runs = [wrk.run(url, lua, c, secs, LOAD_CORE) for _ in range(rounds)]
            out[(name, c)] = wrk.WrkResult(
                rps=statistics.median(r.rps for r in runs),
                p50_ms=statistics.median(r.p50_ms for r in runs),
                p99_ms=statistics.median(r.p99_ms for r in runs),
                errors=max(r.errors for r in runs),
            )
            r = out[(name, c)]
            print(
                f"  {name:8} c={c:<4} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                f"p99 {r.p99_ms:8.2f} ms  errors {r.errors}",
                file=sys.stderr,
            )
    return out


def render_json(rows: dict[tuple[str, int], wrk.WrkResult], conns: list[int]) -> list[str]:
    lines = [
        "| connections | target | req/s | p50 ms | p99 ms | errors | req/s vs direct | vs nginx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in conns:
        d, n = rows[("direct", c)], rows[("nginx", c)]
        for name in ("direct", "nginx", "gateway"):
            r = rows[(name, c)]
            lines.append(
                f"| {c} | {name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} "
                f"| {r.rps / d.rps:.2f} | {r.rps / n.rps:.2f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="3 s rounds, one round")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["json", "stream"])
    parser.add_argument("--streams", type=int, default=400)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    missing = procs.require_tools()
    if missing:
        print(
            f"bench: missing {', '.join(missing)}; install with:\n"
            "  sudo apt-get update && sudo apt-get install -y nginx-light wrk util-linux",
            file=sys.stderr,
        )
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, team="bench", user="bench", ttl_seconds=3600)
    started: list[subprocess.Popen[bytes]] = []
    redis = RedisProcess(extra_args=()).start()
    lines = [
        f"Machine: {machine()}",
        f"Command: make bench ARGS='{' '.join(argv or sys.argv[1:])}'",
        f"Rounds: {args.rounds} x {args.duration:g} s after a 2 s warm-up (medians)",
        "",
    ]
    goals: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gw-bench-") as d:
            tmp = Path(d)
            env = {
                "REDIS_URL": redis.url,
                "GATEWAY_JWT_SECRET": secret,
                "BENCH_UPSTREAM_KEY": "sk-bench-" + secrets.token_hex(8),
            }
            up, px, gw = free_port(), free_port(), free_port()
            started.append(procs.start_nginx(tmp, up, px, LOAD_CORE))
            if args.only in (None, "json"):
                started.append(
                    procs.start_gateway(tmp, "gw", f"http://127.0.0.1:{up}", gw, GATEWAY_CORE, env)
                )
                path = "/v1/chat/completions"
                targets = {
                    "direct": (f"http://127.0.0.1:{up}{path}", None),
                    "nginx": (f"http://127.0.0.1:{px}{path}", None),
                    "gateway": (f"http://127.0.0.1:{gw}{path}", token),
                }
                conns = [1, 32, 256]
                print(
                    "JSON requests (POST /v1/chat/completions, 534-byte answer):", file=sys.stderr
                )
                rows = json_rows(tmp, targets, conns, args.duration, args.rounds)
                lines += ["### Small JSON requests", "", *render_json(rows, conns), ""]
                g32, g256 = rows[("gateway", 32)], rows[("gateway", 256)]
                added = rows[("gateway", 1)].p50_ms - rows[("direct", 1)].p50_ms
                goals += [
                    _goal(">= 3,000 req/s at 32 connections", f"{g32.rps:,.0f}", g32.rps >= 3000),
                    _goal("added p50 <= 0.5 ms at 1 connection", f"{added:.2f} ms", added <= 0.5),
                    _goal("256 connections: 0 errors", str(g256.errors), g256.errors == 0),
                    _goal(
                        "256 connections: p99 <= 250 ms",
                        f"{g256.p99_ms:.0f} ms",
                        g256.p99_ms <= 250,
                    ),
                ]
                procs.stop(started.pop())
            if args.only in (None, "stream"):
                sse = free_port()
                started.append(
                    subprocess.Popen(
                        [
                            "taskset",
                            "-c",
                            str(LOAD_CORE),
                            sys.executable,
                            "-m",
                            "bench.sse_upstream",
                            str(sse),
                        ]
                    )
                )
                gws = free_port()
                _wait_port(sse)
                started.append(
                    procs.start_gateway(
                        tmp, "gw-sse", f"http://127.0.0.1:{sse}", gws, GATEWAY_CORE, env
                    )
                )
                path = "/v1/chat/completions"
                print(
                    f"Streams (64 events 20 ms apart; {args.streams} concurrent):", file=sys.stderr
                )
                direct = asyncio.run(
                    streams.measure(f"http://127.0.0.1:{sse}{path}", None, args.streams)
                )
                via = asyncio.run(
                    streams.measure(f"http://127.0.0.1:{gws}{path}", token, args.streams)
                )
                lines += [
                    "### Streamed chat",
                    "",
                    "| target | time to first event (1 stream, median) | streams completed "
                    "| gap p50 ms | gap p99 ms |",
                    "|---|---|---|---|---|",
                ]
                for name, s in (("direct", direct), ("gateway", via)):
                    lines.append(
                        f"| {name} | {s.ttfe_ms:.2f} ms | {s.completed}/{s.started} "
                        f"| {s.gap_p50_ms:.1f} | {s.gap_p99_ms:.1f} |"
                    )
                lines.append("")
                added_first = via.ttfe_ms - direct.ttfe_ms
                growth = via.gap_p99_ms - direct.gap_p99_ms
                goals += [
                    _goal(
                        "stream: added time to first event <= 2 ms",
                        f"{added_first:.2f} ms",
                        added_first <= 2,
                    ),
                    _goal(
                        f"{args.streams} streams all complete",
                        f"{via.completed}/{via.started}",
                        via.completed == via.started,
                    ),
                    _goal("p99 gap growth <= 15 ms", f"{growth:.1f} ms", growth <= 15),
                ]
    finally:
        for p in reversed(started):
            procs.stop(p)
        redis.stop()
    lines += ["### Goals", "", "| goal | measured | result |", "|---|---|---|", *goals]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text + "\n")
    return 0


def _goal(name: str, value: str, ok: bool) -> str:
    return f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |"


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


if __name__ == "__main__":
    raise SystemExit(main())
