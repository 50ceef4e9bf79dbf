"""Token metering exact across replicas: four `gateway serve` processes sharing one real Redis,
200 identical chat calls at once through the official SDK. Each call is admitted on its
estimate E; against a `tokens_per_minute` limit of N*E + (E-1), N and only N calls get
through, whichever replica they reach, and no refused call reaches the upstream."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import httpx2
import openai
import pytest
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.tokens import mint_token
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.integration.test_cli import clean_env, start_replicas
from tests.servers import run_server, wait_for_async

REPLICAS = 4
CALLS = 200
ADMITTED = 37  # N
PROBE_LIMIT = 1_000_000  # the probe team's tokens per minute: far more than one call
MAX_COMPLETION_TOKENS = 64
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "one of many identical calls, each the same estimate"}
]
HOLD_S = 30.0  # the longest the simulator parks an answer, should the test never release it
CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
quota: {{reconcile_interval_seconds: 3600}}
pricing:
  models: {{gpt-4o-mini: {{input_per_million: 0.15, output_per_million: 0.6}}}}
teams:
  default: {{}}
  probe: {{tokens_per_minute: {probe}}}
  metered: {{tokens_per_minute: {limit}}}
"""


async def create(client: openai.AsyncOpenAI) -> LegacyAPIResponse[ChatCompletion]:
    """One call, the same body every time: ``with_raw_response`` for the status and headers."""
    return await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=MAX_COMPLETION_TOKENS
    )


def sent_body() -> bytes:
    """The exact bytes the SDK sends for that call, captured on a mock transport."""
    seen: list[bytes] = []

    async def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(await request.aread())
        doc = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
        return httpx2.Response(200, json=doc)

    async def run() -> None:
        transport = httpx2.MockTransport(answer)
        async with (
            httpx2.AsyncClient(transport=transport) as http,
            openai.AsyncOpenAI(
                base_url="http://capture.invalid/v1", api_key="x", max_retries=0, http_client=http
            ) as client,
        ):
            await create(client)

    asyncio.run(run())
    (body,) = seen
    return body


class Hold:
    """The simulator behind a gate: while it is shut, every chat answer is parked before its
    first byte (the simulator has already recorded the request), so no admitted call can
    settle until the gate opens. The simulator's own ``slow`` fault only delays by a fixed
    time, which would leave the outcome to timing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._open = threading.Event()
        self._open.set()

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return

        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":
                deadline = time.monotonic() + HOLD_S
                # The gate is opened from the test's thread: poll it on this server's loop.
                while not self._open.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
            await send(message)

        await self.app(scope, receive, held)


class Replicas(TypedDict):
    urls: list[str]
    jwt: str
    sim: Starlette
    hold: Hold
    estimate: int


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[Replicas]:
    # E, as estimate.py bounds a chat call: the body's bytes (no image, file or audio part
    # in it) plus max_completion_tokens * n (n = 1). The test checks it against a live
    # replica's own accounting before relying on it.
    estimate = len(sent_body()) + MAX_COMPLETION_TOKENS
    limit = ADMITTED * estimate + estimate - 1
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    sim_app = create_sim_app(SimConfig(keys=(key,)))
    hold = Hold(sim_app)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(run_server(hold, server_header=False))
        stack.callback(hold.open)  # a failed test leaves no answer parked for the sim's stop
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(CONFIG.format(sim=sim, redis=redis_url, probe=PROBE_LIMIT, limit=limit))
        env = clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key)
        urls = start_replicas(stack, cfg, tmp_path, env, REPLICAS)
        yield {
            "urls": urls,
            "jwt": jwt,
            "sim": sim_app,
            "hold": hold,
            "estimate": estimate,
        }


def remaining(headers: httpx2.Headers) -> int:
    return int(headers["x-ratelimit-remaining-tokens"])


def chat_calls(sim: Starlette) -> int:
    return sum(1 for r in sim.state.sim.requests if r["path"] == "/v1/chat/completions")


async def test_four_replicas_admit_exactly_the_token_limit(replicas: Replicas) -> None:
    urls, e, sim, hold = replicas["urls"], replicas["estimate"], replicas["sim"], replicas["hold"]

    # E from a live replica, on a team of its own: the room a fresh minute loses to one call.
    probe = mint_token(replicas["jwt"], team="probe", user="u", ttl_seconds=600)
    async with openai.AsyncOpenAI(base_url=urls[0] + "/v1", api_key=probe, max_retries=0) as c:
        raw = await create(c)
    assert int(raw.headers["x-ratelimit-limit-tokens"]) == PROBE_LIMIT
    assert PROBE_LIMIT - remaining(raw.headers) == e

    # Settling refunds what a call did not use (the simulator's usage is far below E), which
    # would let more calls in. So the simulator holds every answer until each of the calls
    # has been decided (refused back to its caller, or admitted and arrived upstream): then
    # exactly N fit, and every decision is known exactly.
    before = chat_calls(sim)
    token = mint_token(replicas["jwt"], team="metered", user="u", ttl_seconds=600)
    clients = [
        openai.AsyncOpenAI(base_url=u + "/v1", api_key=token, max_retries=0, timeout=30)
        for u in urls
    ]
    start = asyncio.Event()

    async def one(client: openai.AsyncOpenAI) -> tuple[int, str, int, int]:
        """(status, error code, tokens the answer says remain, tokens the call used)."""
        await start.wait()
        try:
            raw = await create(client)
        except openai.APIStatusError as exc:
            return exc.status_code, exc.code or "", remaining(exc.response.headers), 0
        done = raw.parse()
        assert done.usage is not None
        return raw.status_code, "", remaining(raw.headers), done.usage.total_tokens

    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        hold.shut()
        tasks = [asyncio.create_task(one(clients[i % REPLICAS])) for i in range(CALLS)]
        await asyncio.sleep(0)  # one turn of the loop: every task is now parked on the event
        start.set()
        try:
            await wait_for_async(
                lambda: chat_calls(sim) - before + sum(t.done() for t in tasks) >= CALLS,
                timeout=30,
                message="every call admitted upstream or answered",
            )
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        finally:
            hold.open()
        results = await asyncio.gather(*tasks)

    counts = collections.Counter((status, code) for status, code, _, _ in results)
    assert counts == {(200, ""): ADMITTED, (429, "token_quota_exceeded"): CALLS - ADMITTED}
    assert chat_calls(sim) - before == ADMITTED
    # With no refund in between, the k-th admission left (N-k)*E + E-1, one replica or another;
    # every refusal saw all N reservations, so E-1 of room.
    admitted = sorted(left for status, _, left, _ in results if status == 200)
    assert admitted == [e - 1 + k * e for k in range(ADMITTED)]
    assert {left for status, _, left, _ in results if status == 429} == {e - 1}

    # Once answered, each admitted call is settled to its real usage, exactly once.
    async with httpx2.AsyncClient() as http:
        r = await http.get(
            urls[1] + "/v1/gateway/quota", headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["tokens_per_minute"]["used"] == sum(u for *_, u in results)
