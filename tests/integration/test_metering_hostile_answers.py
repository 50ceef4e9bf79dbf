"""Metered calls against an upstream of the test's own whose answers are odd but possible:
an error with a body too large to judge or cut mid-way (refunded, as any failed call), a
stream whose content type is spelled in capitals (read as a stream: its usage charged, not
the estimate, and none shown to a caller who did not ask), and JSON answers larger than the
process may hold at once (streamed on whole, charged their estimate)."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.proxy import metered
from tests.conftest import Stack, make_stack
from tests.servers import run_server, wait_for

PRICES = {"m": {"input_per_million": 1, "output_per_million": 2}}
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
REAL = "0.000033"  # 9 input and 12 output tokens at 1 and 2 per million


def answer(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": USAGE,
    }


async def chat(request: Request) -> Response:
    doc = await request.json()
    how = doc["messages"][0]["content"]
    if how == "huge-error":
        return Response(b'{"error": "' + b"x" * (2 << 20) + b'"}', 500)
    if how == "cut-error":

        async def cut() -> Any:
            yield b'{"error": {"message": "half'
            raise RuntimeError("the upstream breaks mid-body")

        return StreamingResponse(cut(), 500, media_type="application/json")
    if how == "capitals":

        async def events() -> Any:
            chunk = {**answer("m"), "object": "chat.completion.chunk", "usage": None}
            chunk["choices"] = [{"index": 0, "delta": {"content": "hi"}}]
            yield f"data: {json.dumps(chunk)}\n\n"
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': USAGE})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="Text/Event-Stream; charset=utf-8")
    if how == "large":
        return JSONResponse({**answer("m"), "padding": "p" * (3 << 20)})
    if how == "huge":
        return JSONResponse({**answer("m"), "padding": "p" * (40 << 20)})
    return JSONResponse(answer("m"))


@pytest.fixture
def stack(redis_url: str) -> Iterator[tuple[Stack, str]]:
    team = "ha-" + secrets.token_hex(4)
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with (
        run_server(app) as upstream,
        make_stack(
            redis_url,
            sim_url=upstream,
            teams={"default": {}, team: {"spend_per_day": 100}},
            pricing={"models": PRICES, "default_max_output_tokens": 1000},
        ) as s,
    ):
        yield s, team


def call(s: Stack, team: str, how: str, **extra: Any) -> httpx2.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": how}], **extra}
    auth = {"Authorization": f"Bearer {s.token(team=team)}"}
    return httpx2.post(s.v1 + "/chat/completions", headers=auth, json=body, timeout=30)


def spent(s: Stack, team: str) -> float:
    auth = {"Authorization": f"Bearer {s.token(team=team)}"}
    quota = httpx2.get(s.v1 + "/gateway/quota", headers=auth).json()
    return float(quota["limits"]["spend_per_day"]["used"])


@pytest.mark.parametrize("how", ["huge-error", "cut-error"])
def test_an_error_with_a_body_too_large_or_cut_is_refunded(
    stack: tuple[Stack, str], how: str
) -> None:
    s, team = stack
    got = call(s, team, how)
    assert got.status_code in (500, 502)
    assert got.json()["error"]["code"] != "internal_error"
    assert "x" * 100 not in got.text
    assert spent(s, team) == 0  # new-api bills no failed call
    assert call(s, team, "ok").headers["x-gateway-cost"] == REAL  # and the connection is sound


def test_a_stream_labelled_in_capitals_is_read_as_a_stream(stack: tuple[Stack, str]) -> None:
    s, team = stack
    got = call(s, team, "capitals", stream=True)
    assert got.status_code == 200
    assert got.text.rstrip().endswith("data: [DONE]")
    assert '"usage"' not in got.text  # the caller did not ask for it
    assert spent(s, team) == float(REAL)  # the usage, not the 1,000-token estimate


def test_json_answers_past_what_the_process_holds_are_streamed_and_charged_the_estimate(
    stack: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, team = stack
    other = "ha-" + secrets.token_hex(4)  # a team of the config's default limits
    budget = metered._Budget(8 << 20, per_team=4 << 20)
    monkeypatch.setattr(metered, "BUFFERED", budget)
    got = call(s, team, "large")
    assert got.status_code == 200
    assert len(got.json()["padding"]) == 3 << 20  # whole
    assert got.headers["x-gateway-cost"] == REAL  # held within the budget: read for usage
    assert budget.held == 0  # given back
    # As if the team held its share in answers its callers read slowly: its next large
    # answer is streamed on whole and charged the estimate, another team's is read as usual.
    assert budget.take(team, (4 << 20) - 1024)
    got = call(s, team, "large")
    assert got.status_code == 200
    assert len(got.json()["padding"]) == 3 << 20
    assert "x-gateway-cost" not in got.headers
    assert spent(s, team) > 2 * float(REAL)  # the estimate: the usage could not be read
    assert call(s, other, "large").headers["x-gateway-cost"] == REAL
    assert budget.held == (4 << 20) - 1024  # everything else taken was given back


def test_a_held_answer_stays_counted_until_the_caller_has_read_it(
    stack: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer left in one send, which returns once it is in the server's buffer: the
    budget was given back while 40 MiB still waited for a caller who does not read. Sent in
    slices, each after the one before has drained, it stays counted until it has gone."""
    s, team = stack
    budget = metered._Budget(256 << 20, per_team=64 << 20)
    monkeypatch.setattr(metered, "BUFFERED", budget)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "huge"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {s.token(team=team)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    parts = urlsplit(s.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode())
        first = sock.recv(65536)  # the answer has started: its body was read whole
        assert first.startswith(b"HTTP/1.1 200")
        assert b"x-gateway-cost" in first.lower()
        # The caller reads nothing more; the kernel's buffers hold a few MiB at most. Sent
        # whole, the answer was given back within milliseconds though it had not left.
        watched_until = time.monotonic() + 1.0
        while time.monotonic() < watched_until:
            assert budget.held > 30 << 20
            time.sleep(0.02)
        got = len(first)
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
            if got > 40 << 20:
                break
    wait_for(lambda: budget.held == 0, timeout=10)
