"""Quotas exact across replicas: four `gateway serve` processes sharing one real Redis, hit all
at once. With a limit of N, N and only N requests get through, whichever replica they reach."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import aiohttp
import pytest
from starlette.applications import Starlette

from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.integration.test_cli import clean_env, start_replicas
from tests.servers import run_server

REPLICAS = 4
CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
teams:
  default: {{}}
  rate: {{requests_per_minute: 100}}
  jobs: {{concurrent_jobs: 5}}
videos: {{poll_interval_seconds: 0}}
"""


class Replicas(TypedDict):
    urls: list[str]
    jwt: str
    sim: Starlette


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess
) -> Iterator[Replicas]:
    tmp = Path(tmp_path_factory.mktemp("replicas"))
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    sim_app = create_sim_app(SimConfig(keys=(key,), job_seconds=3600))
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(run_server(sim_app, server_header=False))
        cfg = tmp / "gateway.yaml"
        cfg.write_text(CONFIG.format(sim=sim, redis=redis_server.url))
        env = clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key)
        urls = start_replicas(stack, cfg, tmp, env, REPLICAS)
        yield {"urls": urls, "jwt": jwt, "sim": sim_app}


async def burst(
    urls: list[str], token: str, n: int, method: str, path: str, body: object = None
) -> list[tuple[int, str]]:
    """``n`` requests released together, spread over the replicas; (status, error code)."""
    start = asyncio.Event()

    async def one(http: aiohttp.ClientSession, i: int) -> tuple[int, str]:
        await start.wait()
        async with http.request(
            method,
            urls[i % len(urls)] + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            doc = await r.json()
            return r.status, (doc.get("error") or {}).get("code") or ""

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tasks = [asyncio.create_task(one(http, i)) for i in range(n)]
        await asyncio.sleep(0)  # one turn of the loop: every task is now parked on the event
        start.set()
        return await asyncio.gather(*tasks)


def test_four_replicas_admit_exactly_the_rate_limit(redis_url: str, replicas: Replicas) -> None:
    token = mint_token(replicas["jwt"], team="rate", user="u", ttl_seconds=600)
    results = asyncio.run(burst(replicas["urls"], token, 400, "GET", "/v1/models"))
    counts = collections.Counter(results)
    assert counts == {(200, ""): 100, (429, "rate_limit_exceeded"): 300}
    seen = [r for r in replicas["sim"].state.sim.requests if r["path"] == "/v1/models"]
    assert len(seen) == 100


def test_four_replicas_admit_exactly_the_concurrency_limit(
    redis_url: str, replicas: Replicas
) -> None:
    token = mint_token(replicas["jwt"], team="jobs", user="u", ttl_seconds=600)
    sim = replicas["sim"].state.sim
    before = sum(1 for r in sim.requests if r["path"] == "/v1/videos" and r["method"] == "POST")
    body = {"prompt": "at once", "model": "sora-2", "seconds": "4"}
    results = asyncio.run(burst(replicas["urls"], token, 20, "POST", "/v1/videos", body))
    counts = collections.Counter(results)
    assert counts == {(200, ""): 5, (429, "concurrency_limit_exceeded"): 15}
    after = sum(1 for r in sim.requests if r["path"] == "/v1/videos" and r["method"] == "POST")
    assert after - before == 5
