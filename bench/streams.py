"""Streamed-chat measurements: time to the first event, and gaps between events under load."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass

import aiohttp

BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True)
class StreamStats:
    ttfe_ms: float  # median time to the first event, single stream
    completed: int
    started: int
    gap_p50_ms: float
    gap_p99_ms: float


async def _one(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, list[float], bool]:
    t0 = time.perf_counter()
    first = 0.0
    stamps: list[float] = []
    done = False
    async with session.post(url, json=BODY, headers=headers) as resp:
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter()
            if line.startswith(b"data: [DONE]"):
                done = True
                break
            if not stamps:
                first = now - t0
            stamps.append(now)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return first, gaps, done


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    url: str, token: str | None, concurrent: int, sequential: int = 20
) -> StreamStats:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await _one(session, url, headers)  # warm the connection pools
        firsts = [(await _one(session, url, headers))[0] for _ in range(sequential)]
        results = await asyncio.gather(
            *(_one(session, url, headers) for _ in range(concurrent)), return_exceptions=True
        )
    gaps: list[float] = []
    completed = 0
    for r in results:
        if isinstance(r, BaseException):
            continue
        gaps.extend(r[1])
        completed += r[2]
    return StreamStats(
        ttfe_ms=statistics.median(firsts) * 1000,
        completed=completed,
        started=concurrent,
        gap_p50_ms=_pct(gaps, 0.5) * 1000,
        gap_p99_ms=_pct(gaps, 0.99) * 1000,
    )
