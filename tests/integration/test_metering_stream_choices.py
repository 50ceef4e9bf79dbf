"""A chat stream with n=2 and vLLM's continuous_usage_stats (usage so far on every chunk),
cut after its first choice finished while the second still ran: it has not reported its
whole, so it is charged its estimate (docs/metering.md), not the usage of the chunk that
finished choice 0."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from tests.conftest import Stack, gateway_config
from tests.servers import run_server, wait_for

PROMPT = 20


def chunk(index: int, content: str | None, finish: str | None, completion: int) -> bytes:
    doc = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": index,
                "delta": {"content": content} if content else {},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT,
            "completion_tokens": completion,
            "total_tokens": PROMPT + completion,
        },
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def upstream() -> Starlette:
    async def chat(request: Request) -> Response:
        await request.body()

        async def events() -> Any:
            yield chunk(0, "Hi", None, 1)
            yield chunk(0, None, "stop", 1)  # choice 0 is done; choice 1 runs on
            for i in range(50):
                yield chunk(1, "word ", None, 2 + i)
            raise RuntimeError("the upstream's connection is cut")

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.contextmanager
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    jwt_secret = secrets.token_urlsafe(48)
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with run_server(upstream()) as up:
        settings = gateway_config(
            up,
            redis_url,
            jwt_secret,
            keys,
            teams={"default": {}, team: {"spend_per_day": 100}},
            pricing={"models": prices},
        )
        app = create_app(settings)
        with run_server(app, server_header=False) as url:
            yield Stack(url, up, None, app, settings, jwt_secret, keys)


def test_a_cut_n2_stream_after_one_choice_finished_is_charged_its_estimate(
    redis_url: str,
) -> None:
    team = "n2-" + secrets.token_hex(4)
    with stack(redis_url, team) as s:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "two stories"}],
            "n": 2,
            "max_tokens": 1000,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        raw = json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {s.token(team=team)}",
            "Content-Type": "application/json",
        }
        with (
            contextlib.suppress(httpx2.HTTPError),
            httpx2.stream("POST", s.v1 + "/chat/completions", content=raw, headers=headers) as r,
        ):
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
        # Settled (counted in the spend metric) whichever way it was charged.
        wait_for(lambda: s.metric("gateway_spend_total", kind="chat") > 0, timeout=10)
        # The estimate: the body's bytes as input tokens, max_tokens * n as output, at 1 per
        # million each, rounded up to the stored millionth.
        estimate = (len(raw) + 1000 * 2) / 1_000_000
        quota = httpx2.get(s.v1 + "/gateway/quota", headers=headers).json()
        spent = float(quota["limits"]["spend_per_day"]["used"])
        assert spent == estimate, f"charged {spent}, estimate {estimate}"
        assert s.metric("gateway_usage_estimated_total", kind="chat") == 1
