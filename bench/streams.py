"""Streamed-chat measurements with an aiohttp client: time to the first event for one stream,
and the gaps between events with many concurrent streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

from bench.procs import HarnessError
from bench.sse_upstream import EVENTS

BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class StreamResult:
    first_event_s: float = float("nan")
    gaps_s: list[float] = field(default_factory=list)
    events: int = 0
    done: bool = False
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.done and self.events == EVENTS


@dataclass(frozen=True)
class StreamStats:
    first_event_ms: float  # median over sequential single streams
    first_event_spread_ms: tuple[float, float]
    single_gap_p99_ms: float  # gaps seen by one stream alone: the baseline
    concurrent: int
    completed: int
    errors: tuple[str, ...]
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float


async def one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> StreamResult:
    out = StreamResult()
    stamps: list[float] = []
    t0 = time.perf_counter()
    try:
        async with session.post(url, json=BODY, headers=headers) as resp:
            if resp.status != 200:
                out.error = f"HTTP {resp.status}"
                return out
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                if line.startswith(b"data: [DONE]"):
                    out.done = True
                    break
                stamps.append(now)
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.error = type(exc).__name__
    out.events = len(stamps)
    if stamps:
        out.first_event_s = stamps[0] - t0
    out.gaps_s = [b - a for a, b in itertools.pairwise(stamps)]
    return out


# One event, then [DONE]: the stream ends at once and its connection is reused.
SHORT_BODY = {**BODY, "max_tokens": 1}


async def first_event(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> float | None:
    """Seconds to the first event of a one-event stream (None if it did not complete)."""
    first = None
    t0 = time.perf_counter()
    try:
        async with session.post(url, json=SHORT_BODY, headers=headers) as resp:
            if resp.status != 200:
                return None
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                if line.startswith(b"data: [DONE]"):
                    return first
    except (aiohttp.ClientError, TimeoutError):
        return None
    return None


async def first_events(
    targets: dict[str, tuple[str, str | None]], rounds: int, pause_s: float = 0.1
) -> dict[str, list[float]]:
    """Milliseconds to the first event of single streams, the targets taking turns stream by
    stream: measured one target after another, minutes apart, their difference carried the
    machine's drift, which on this machine is larger than a goal of 0.3 ms. The pause lets a
    target finish with a stream (its settlement, its access log line) before the next starts;
    each measured stream follows an unmeasured one to the same target."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    async with contextlib.AsyncExitStack() as stack:
        sessions = {
            name: await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            for name in targets
        }
        heads = {
            name: {"Authorization": f"Bearer {token}"} if token else {}
            for name, (_, token) in targets.items()
        }
        for name, (url, _) in targets.items():  # warm: a pooled connection, a first call
            await first_event(sessions[name], url, heads[name])
        for _ in range(rounds):
            for name, (url, _) in targets.items():
                await asyncio.sleep(pause_s)
                # Right after one of its own, as the table's back-to-back streams are: a target
                # idle while the others ran has had its caches taken, which made the Python
                # gateways' first events ~0.5 ms later than when warm, and not alike.
                await first_event(sessions[name], url, heads[name])
                took = await first_event(sessions[name], url, heads[name])
                if took is None:
                    raise HarnessError(f"{url}: a stream sent no event")
                out[name].append(took * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(url: str, token: str | None, concurrent: int, sequential: int) -> StreamStats:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = await one_stream(session, url, headers)  # opens the pooled connections
        if not warm.complete:
            raise HarnessError(f"{url}: a single stream did not complete ({warm.error})")
        singles = [await one_stream(session, url, headers) for _ in range(sequential)]
        many = await asyncio.gather(*(one_stream(session, url, headers) for _ in range(concurrent)))
    firsts = [s.first_event_s * 1000 for s in singles if s.complete]
    gaps = [g * 1000 for s in many for g in s.gaps_s]
    return StreamStats(
        first_event_ms=statistics.median(firsts) if firsts else float("nan"),
        first_event_spread_ms=(min(firsts), max(firsts)) if firsts else (0.0, 0.0),
        single_gap_p99_ms=percentile([g * 1000 for s in singles for g in s.gaps_s], 0.99),
        concurrent=concurrent,
        completed=sum(s.complete for s in many),
        errors=tuple(sorted({s.error for s in many if s.error})),
        gap_p50_ms=percentile(gaps, 0.50),
        gap_p99_ms=percentile(gaps, 0.99),
        gap_max_ms=max(gaps, default=float("nan")),
    )
