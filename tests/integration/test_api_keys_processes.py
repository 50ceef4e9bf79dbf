"""Gateway API keys across replicas: two `gateway serve` processes sharing one real Redis and
one pepper. A key made on one works on the other; revoked there, it is refused here within
the one-second bound; and a key's own limit admits exactly its number of calls whichever
replica they reach, with nothing refused reaching the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import httpx2
import openai
import pytest
from starlette.applications import Starlette

from gateway.auth.tokens import mint_token
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.integration.test_cli import clean_env, start_replicas
from tests.servers import run_server, wait_for

KEY_RPM = 7
CALLS = 40
CACHE_S = 1.0  # auth.api_key_cache_seconds: the revocation bound
CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth:
  hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]
  api_key_pepper: "${{GATEWAY_API_KEY_PEPPER}}"
  api_key_cache_seconds: {cache}
quota: {{reconcile_interval_seconds: 3600}}
pricing:
  models: {{gpt-4o-mini: {{input_per_million: 0.15, output_per_million: 0.6}}}}
teams:
  default: {{requests_per_minute: 100000}}
"""
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


class Replicas(TypedDict):
    urls: list[str]
    jwt: str
    sim: Starlette


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[Replicas]:
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    sim_app = create_sim_app(SimConfig(keys=(key,)))
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(run_server(sim_app, server_header=False))
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(CONFIG.format(sim=sim, redis=redis_url, cache=CACHE_S))
        env = clean_env(
            GATEWAY_JWT_SECRET=jwt,
            UPSTREAM_KEY=key,
            GATEWAY_API_KEY_PEPPER=secrets.token_urlsafe(32),
        )
        urls = start_replicas(stack, cfg, tmp_path, env, 2)
        yield {"urls": urls, "jwt": jwt, "sim": sim_app}


def admin(r: Replicas) -> dict[str, str]:
    token = mint_token(r["jwt"], team="ops", user="root", roles=["gateway-admin"])
    return {"Authorization": f"Bearer {token}"}


def create_key(r: Replicas, url: str, team: str, **doc: Any) -> dict[str, Any]:
    made = httpx2.post(
        f"{url}/admin/v1/teams/{team}/api-keys", json={"name": "svc", **doc}, headers=admin(r)
    )
    assert made.status_code == 201, made.text
    return made.json()  # type: ignore[no-any-return]


def chat(url: str, key: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 8}
    r = httpx2.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return r.status_code


def chat_calls(sim: Starlette) -> int:
    return sum(1 for q in sim.state.sim.requests if q["path"] == "/v1/chat/completions")


def test_a_key_made_on_one_replica_is_revoked_on_every_replica_within_a_second(
    replicas: Replicas,
) -> None:
    a, b = replicas["urls"]
    made = create_key(replicas, a, "svc-team")
    with openai.OpenAI(base_url=b + "/v1", api_key=made["key"], max_retries=0) as client:
        done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert done.choices
        assert list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        )
    # Both replicas now hold the key in their caches.
    assert chat(a, made["key"]) == 200
    assert chat(b, made["key"]) == 200
    r = httpx2.delete(f"{a}/admin/v1/api-keys/{made['id']}", headers=admin(replicas))
    assert r.status_code == 200
    revoked_at = time.monotonic()
    # Polling shows when B stops accepting the key (a small margin for the request's own
    # time); past the bound, neither replica accepts it, and nothing more goes upstream.
    wait_for(lambda: chat(b, made["key"]) == 401, timeout=CACHE_S + 0.25, interval=0.02)
    assert time.monotonic() - revoked_at <= CACHE_S + 0.25
    while time.monotonic() - revoked_at < CACHE_S:  # the bound itself, not luck
        time.sleep(0.01)
    calls = chat_calls(replicas["sim"])
    assert [chat(url, made["key"]) for url in (a, b, a, b)] == [401] * 4
    assert chat_calls(replicas["sim"]) == calls


async def test_a_keys_request_limit_is_exact_across_replicas(replicas: Replicas) -> None:
    a, b = replicas["urls"]
    made = create_key(replicas, a, "busy-team", limits={"requests_per_minute": KEY_RPM})
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 8}
    headers = {"Authorization": f"Bearer {made['key']}"}
    async with httpx2.AsyncClient(timeout=30) as http:

        async def one(i: int) -> int:
            url = (a, b)[i % 2]
            r = await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            return r.status_code

        statuses = await asyncio.gather(*(one(i) for i in range(CALLS)))
    assert statuses.count(200) == KEY_RPM
    assert statuses.count(429) == CALLS - KEY_RPM
    assert chat_calls(replicas["sim"]) == KEY_RPM
    # The team is not out of requests: another caller of it goes on.
    token = mint_token(replicas["jwt"], team="busy-team", user="alice")
    assert chat(b, token) == 200
