"""Faults on either side: a slow or broken upstream, a caller who leaves, Redis going away,
and an identity provider serving JWKS over a real socket."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx2
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.config import SimConfig
from tests.conftest import Stack, make_stack
from tests.servers import run_server, wait_for, wait_for_async

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def sdk(stack: Stack, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=stack.token(), **kw)


def status_of(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_slow_upstream_post_is_504_and_never_resent(redis_url: str) -> None:
    with make_stack(redis_url, upstream={"read_timeout": 0.3}) as s:
        s.sim_app.state.sim.add_fault(kind="slow", delay=2, count=-1)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            sdk(s, max_retries=2).chat.completions.create(model="m", messages=CHAT)
        assert time.monotonic() - started < 2
        assert info.value.status_code == 504
        assert info.value.code == "upstream_timeout"
        assert info.value.response.headers["x-should-retry"] == "false"
        assert len(s.sim_requests("/v1/chat/completions")) == 1


def test_upstream_breaking_mid_stream_aborts_the_callers_stream(stack: Stack) -> None:
    stack.sim_app.state.sim.add_fault(kind="drop", path_prefix="/v1/chat/completions")
    stream = sdk(stack, max_retries=0).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    received: list[Any] = []

    def drain() -> None:
        for chunk in stream:
            received.append(chunk)

    # the caller must see a transport failure, never a clean but truncated end of stream
    with pytest.raises(openai.APIConnectionError) as info:
        drain()
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert len(received) == 2


async def test_caller_disconnect_closes_the_upstream_stream(redis_url: str) -> None:
    sim = SimConfig(stream_events=400, stream_interval=0.05)
    with make_stack(redis_url, sim=sim) as s:
        body = {"model": "m", "stream": True, "messages": CHAT}
        headers = {"Authorization": f"Bearer {s.token()}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(s.v1 + "/chat/completions", json=body, headers=headers) as resp,
        ):
            assert resp.status == 200
            first = await resp.content.readline()
            assert first.startswith(b"data:")
            resp.close()  # the caller hangs up twenty seconds early
        await wait_for_async(
            lambda: s.sim_app.state.sim.aborted >= 1,
            timeout=2,
            interval=0.02,
            message="the upstream stream was not closed within 1-2 s",
        )


def test_redis_down_keeps_traffic_flowing_and_readyz_reports_it(tmp_path: Any) -> None:
    redis = RedisProcess().start()
    try:
        with make_stack(redis.url) as s:
            assert status_of(s.url + "/readyz")[0] == 200
            redis.stop()
            started = time.monotonic()
            code, body = status_of(s.url + "/readyz")
            assert time.monotonic() - started < 2
            # Rate checks fail open by default: the replica still serves, so it stays ready.
            assert (code, body["checks"]["redis"]) == (200, "unreachable (rate checks fail open)")
            # pass-through needs no Redis: the key pool keeps its last known health
            for _ in range(3):
                assert sdk(s, max_retries=0).chat.completions.create(model="m", messages=CHAT)
            redis = RedisProcess(port=redis.port).start()
            wait_for(lambda: status_of(s.url + "/readyz")[0] == 200, timeout=5)
    finally:
        redis.stop()


@pytest.fixture
def idp() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"keys": [], "calls": 0, "down": False}

    async def jwks(request: Request) -> JSONResponse:
        state["calls"] += 1
        if state["down"]:
            return JSONResponse({"error": "down"}, status_code=503)
        docs = [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in state["keys"]
        ]
        return JSONResponse({"keys": docs})

    with run_server(Starlette(routes=[Route("/jwks", jwks)])) as url:
        yield url + "/jwks", state


def test_jwks_from_a_real_idp(redis_url: str, idp: tuple[str, dict[str, Any]]) -> None:
    url, state = idp
    key = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    state["keys"] = [("k1", key)]
    auth = {"algorithms": ["ES256"], "jwks_url": url, "jwks_refetch_cooldown": 60}
    with make_stack(redis_url, auth=auth) as s:
        now = int(time.time())
        claims = {"sub": "u", "team": "team-a", "iat": now, "exp": now + 300}

        def call(k: Any, kid: str, sub: str = "u") -> int:
            token = jwt.encode({**claims, "sub": sub}, k, algorithm="ES256", headers={"kid": kid})
            try:
                openai.OpenAI(base_url=s.v1, api_key=token, max_retries=0).models.list()
            except openai.AuthenticationError:
                return 401
            return 200

        assert call(key, "k1") == 200
        assert call(stranger, "k9") == 401
        calls = state["calls"]
        assert call(stranger, "k8") == 401
        assert state["calls"] == calls  # the unknown-kid refetch is rate limited
        state["down"] = True
        assert call(key, "k1", sub="other-user") == 200  # the last good keys keep working


def test_a_team_holding_its_share_of_upstream_connections_leaves_the_rest_to_others(
    redis_url: str,
) -> None:
    """Answers a team's callers do not read hold their upstream connections: past its share
    (here 2 of 4) the team's next call is 429 concurrency_limit_exceeded with nothing sent
    upstream, another team is served, and the share comes back as the answers end."""
    with make_stack(
        redis_url,
        sim=SimConfig(stream_events=40, stream_interval=0.25),
        upstream={"max_connections": 4, "max_connections_per_team": 2},
    ) as s:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}

        def auth(team: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {s.token(team=team)}"}

        with httpx2.Client(timeout=10) as http:
            held = [
                http.stream("POST", s.v1 + "/chat/completions", json=body, headers=auth("team-a"))
                for _ in range(2)
            ]
            streams = [h.__enter__() for h in held]
            assert [r.status_code for r in streams] == [200, 200]
            r = http.post(s.v1 + "/chat/completions", json=body, headers=auth("team-a"))
            assert (r.status_code, r.json()["error"]["code"]) == (429, "concurrency_limit_exceeded")
            assert r.headers["retry-after"] == "1"
            assert len(s.sim_requests("/v1/chat")) == 2
            quick = {**body, "stream": False}
            r = http.post(s.v1 + "/chat/completions", json=quick, headers=auth("team-b"))
            assert r.status_code == 200
            for h in held:
                h.__exit__(None, None, None)

            def served_again() -> bool:
                again = http.post(s.v1 + "/chat/completions", json=quick, headers=auth("team-a"))
                return again.status_code == 200

            wait_for(served_again, timeout=10, interval=0.1, message="team-a's share never freed")
