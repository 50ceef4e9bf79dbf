"""Run wrk (pinned, with a request script) and read its ``--latency`` report."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HarnessError

CHAT_REQUEST = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}]},
    separators=(",", ":"),
)
_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int  # connect + read + write + timeout
    timeouts: int
    non_2xx: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise HarnessError(f"wrk: unparsable latency {text!r}")
    return float(m.group(1)) * _TO_MS[m.group(2)]


def _find(pattern: str, output: str) -> re.Match[str]:
    m = re.search(pattern, output, re.MULTILINE)
    if m is None:
        raise HarnessError(f"wrk: no match for {pattern!r} in its output:\n{output}")
    return m


def parse(output: str) -> WrkResult:
    done = _find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    counts = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        rps=float(_find(r"^Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=_ms(_find(r"^\s+50(?:\.0+)?%\s+(\S+)", output).group(1)),
        p99_ms=_ms(_find(r"^\s+99(?:\.0+)?%\s+(\S+)", output).group(1)),
        socket_errors=sum(counts),
        timeouts=counts[3],
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def write_script(path: Path, token: str | None) -> Path:
    """A Lua script POSTing a small chat request (with the bearer token when given)."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [[{CHAT_REQUEST}]]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    path.touch(mode=0o600)  # it may hold a bearer token
    path.write_text("\n".join(lines) + "\n")
    return path


def write_get_script(path: Path, token: str) -> Path:
    """A Lua script sending GETs with the bearer token."""
    path.touch(mode=0o600)
    path.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return path


def _argv(
    url: str, script: Path, connections: int, seconds: int, core: int, timeout_s: int
) -> list[str]:
    argv = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    return [*argv, "--timeout", f"{timeout_s}s", "--latency", "-s", str(script), url]


def run(
    url: str, script: Path, connections: int, seconds: int, core: int, timeout_s: int = 2
) -> WrkResult:
    argv = _argv(url, script, connections, seconds, core, timeout_s)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30)
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"wrk failed ({exc.returncode}): {exc.stderr or exc.stdout}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"wrk did not finish: {' '.join(argv)}") from exc
    return parse(out.stdout)


def run_together(
    loads: list[tuple[str, Path]], connections: int, seconds: int, core: int, timeout_s: int = 2
) -> list[WrkResult]:
    """One wrk per (url, script), all running at the same time."""
    procs = [
        subprocess.Popen(
            _argv(url, script, connections, seconds, core, timeout_s),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url, script in loads
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 30)
            if proc.returncode != 0:
                raise HarnessError(f"wrk failed ({proc.returncode}): {err or out}")
            results.append(parse(out))
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"wrk did not finish: {exc.cmd}") from exc
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
