"""Downloads keep the gateway's memory flat: a 1 GiB body and a slow reader, measured on the
gateway's own process (the simulator runs in another one)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from gateway.dev.process import stop_process
from tests.servers import free_port, wait_for, wait_for_async

GIB = 1024**3


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Served:
    url: str
    token: str
    gateway_pid: int


def _up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("mem")
    key, secret = "sk-mem-" + secrets.token_hex(8), secrets.token_urlsafe(48)
    sim_port, gw_port = free_port(), free_port()
    redis = RedisProcess().start()
    env = {
        **os.environ,
        "GATEWAY_SIM_KEYS": key,
        "CRAZYROUTER_API_KEYS": f"mem:{key}",
        "REDIS_URL": redis.url,
        "GATEWAY_JWT_SECRET": secret,
    }
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "sim",
            "--port",
            str(sim_port),
            "--job-seconds",
            "0.2",
            "--content-bytes",
            str(GIB),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cfg = tmp / "gw.yaml"
    cfg.write_text(
        f'upstream: {{base_url: "http://127.0.0.1:{sim_port}"}}\n'
        'redis: {url: "${REDIS_URL}"}\n'
        'auth: {hs256_secrets: ["${GATEWAY_JWT_SECRET}"]}\n'
        "videos: {poll_interval_seconds: 0, poll_after_ms: 100}\n"
    )
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(gw_port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{gw_port}"
        wait_for(
            lambda: _up(f"http://127.0.0.1:{sim_port}/_sim/health") and _up(url + "/healthz"),
            timeout=30,
        )
        yield Served(url, mint_token(secret, team="t", user="u"), gw.pid)
    finally:
        stop_process(gw)
        stop_process(sim)
        redis.stop()


async def _finished_video(s: Served, http: aiohttp.ClientSession) -> str:
    headers = {"Authorization": f"Bearer {s.token}"}
    async with http.post(s.url + "/v1/videos", json={"prompt": "p"}, headers=headers) as r:
        vid = str((await r.json())["id"])

    async def completed() -> bool:
        async with http.get(f"{s.url}/v1/videos/{vid}", headers=headers) as r:
            return bool((await r.json())["status"] == "completed")

    await wait_for_async(completed, timeout=10, interval=0.1)
    return vid


async def test_one_gib_download_keeps_memory_flat(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        vid = await _finished_video(served, http)
        before = peak = rss_mib(served.gateway_pid)
        total = 0
        headers = {"Authorization": f"Bearer {served.token}"}
        async with http.get(f"{served.url}/v1/videos/{vid}/content", headers=headers) as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(1 << 20):
                total += len(chunk)
                if total % (64 << 20) < len(chunk):
                    peak = max(peak, rss_mib(served.gateway_pid))
    assert total == GIB
    assert peak - before < 30, f"gateway RSS grew {peak - before:.1f} MiB"


async def test_slow_reader_does_not_grow_memory(served: Served) -> None:
    async with aiohttp.ClientSession(read_bufsize=64 * 1024) as http:
        vid = await _finished_video(served, http)
        headers = {"Authorization": f"Bearer {served.token}"}
        async with http.get(f"{served.url}/v1/videos/{vid}/content", headers=headers) as r:
            await r.content.readexactly(1 << 20)
            before = rss_mib(served.gateway_pid)
            # about 1 MB/s for three seconds: the gateway must wait, not buffer the file
            for _ in range(12):
                await r.content.readexactly(256 * 1024)
                await asyncio.sleep(0.25)
            grown = rss_mib(served.gateway_pid) - before
            r.close()
    assert grown < 10, f"gateway RSS grew {grown:.1f} MiB behind a slow reader"
