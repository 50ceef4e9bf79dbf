"""When no usage ever arrives, a call is charged its estimate, and counted.

The estimate is computed here from the documented rule (docs/metering.md, "The estimate"):
input tokens are the bytes of the body the caller sent (plus an allowance per media part,
none here), output tokens the call's cap times ``n`` (the model's or the configured default
cap when it names none); its cost is those tokens at the configured prices, rounded up once.
Three ways a call ends without usage, each on real sockets:

* the caller closes a chat stream part way (the simulator streams slowly, so the usage it
  would send last is still seconds away);
* the upstream cuts a chat stream part way (the simulator's ``drop`` fault);
* an answer that carries none: a hostile upstream of the test's own, which answers a chat call
  (JSON, or a complete stream that ignores ``include_usage``) without ``usage``, and whisper's
  ``text`` format from the simulator, which says no duration.

Each must leave the estimate in the quota and the ledger, and count one more
``gateway_usage_estimated_total{kind}``. And a stream's end reaches the caller only once its
call has settled: ``[DONE]`` and the end of the answer together, after the upstream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.sim.config import SimConfig
from gateway.sim.drop import SimulatedDrop
from tests.clock import Clock
from tests.conftest import Stack
from tests.metering_views import (
    day_of,
    get_json,
    metric,
    pinned_clock,
    pinned_stack,
    shown,
    stored,
    token,
    token_cost,
    units,
)
from tests.servers import run_server, wait_for

CHAT = "gpt-4o-mini"
PRICES: dict[str, dict[str, Any]] = {
    CHAT: {"input_per_million": 0.15, "cached_input_per_million": 0.075, "output_per_million": 0.6},
    "whisper-1": {"per_audio_second": 0.0001},
}
DEFAULT_CAP = 700  # pricing.default_max_output_tokens: the cap sent when a call names none
MAX_AUDIO_S = 900  # pricing.transcription_max_seconds
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a long story about a fox who finds a badger's sett."}
]
ESTIMATED = "gateway_usage_estimated_total"


class Bodies:
    """The request bodies the SDK sends, exactly as they leave it (the estimate's input)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def hook(self, request: httpx2.Request) -> None:
        self.sent.append(request.read())  # a multipart body too (read, it is sent as read)

    @property
    def last(self) -> bytes:
        return self.sent[-1]


class Caller:
    def __init__(self, stack: Stack, clock: Clock, team: str) -> None:
        self.stack, self.clock, self.team = stack, clock, team
        self.bodies = Bodies()
        self.http = httpx2.Client(event_hooks={"request": [self.bodies.hook]})
        self.bearer = token(stack, clock, team=team, user="carol")
        self.sdk = openai.OpenAI(
            base_url=stack.v1,
            api_key=self.bearer,
            max_retries=0,
            http_client=self.http,
            _strict_response_validation=True,
        )

    def close(self) -> None:
        self.sdk.close()
        self.http.close()

    def ledger(self) -> list[dict[str, Any]]:
        day = day_of(self.clock)
        doc = get_json(
            self.stack.v1 + "/gateway/usage",
            self.bearer,
            group_by="user,model",
            **{"from": day, "to": day},
        )
        rows: list[dict[str, Any]] = doc["data"]
        return rows

    def quota(self) -> dict[str, Any]:
        limits: dict[str, Any] = get_json(self.stack.v1 + "/gateway/quota", self.bearer)["limits"]
        return limits

    def settled(self) -> bool:
        """Whether a call of this team has entered the ledger (it does when it settles)."""
        return bool(self.ledger())


def chat_estimate(body: bytes, cap: int, n: int = 1) -> tuple[int, int, int]:
    """(input tokens, output tokens, cost in stored units) of a chat call's estimate."""
    inp, out = len(body), cap * n
    return inp, out, token_cost(PRICES[CHAT], inp, out)


def assert_charged_estimate(
    caller: Caller, *, model: str, kind: str, inp: int, out: int, cost: int, before: float
) -> None:
    """The ledger, the quota and the counter all show one call charged its estimate."""
    wait_for(caller.settled, timeout=10, message="the call was not settled")
    (row,) = caller.ledger()
    assert (row["user"], row["model"]) == ("carol", model)
    assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (1, inp, out)
    assert row["cached_tokens"] == 0
    assert stored(row["spend"]) == cost
    limits = caller.quota()
    assert stored(limits["spend_per_day"]["used"]) == cost
    assert stored(limits["spend_per_month"]["used"]) == cost
    tokens = inp + out if kind == "chat" else 0  # only token kinds count in tokens_per_day
    assert limits["tokens_per_day"]["used"] == tokens
    # Counted before the ledger was written: by now it must show.
    assert metric(caller.stack, ESTIMATED, kind=kind) == before + 1


@pytest.fixture
def clock() -> Clock:
    return pinned_clock()


@pytest.fixture
def team() -> str:
    return "est-" + secrets.token_hex(4)


def sections(team: str) -> dict[str, Any]:
    return {
        "teams": {"default": {}, team: {"spend_per_day": 100, "tokens_per_day": 1_000_000}},
        "pricing": {
            "models": PRICES,
            "default_max_output_tokens": DEFAULT_CAP,
            "transcription_max_seconds": MAX_AUDIO_S,
        },
    }


@pytest.fixture
def caller_of(redis_url: str, clock: Clock, team: str) -> Iterator[Callable[..., Caller]]:
    """A function: a gateway over the simulator (``sim``) or the upstream at ``sim_url`` ->
    a caller of it, closed at the end of the test."""
    with contextlib.ExitStack() as stack:

        def make(**kw: Any) -> Caller:
            s = stack.enter_context(pinned_stack(redis_url, clock, **sections(team), **kw))
            caller = Caller(s, clock, team)
            stack.callback(caller.close)
            return caller

        yield make


def until_cut(stream: Any) -> list[Any]:
    """The chunks of a stream the upstream cuts, read until the SDK raises for the cut."""
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)
    return received


def test_a_stream_the_caller_abandons_is_charged_its_estimate(
    caller_of: Callable[..., Caller],
) -> None:
    # Eight pieces a second apart: the usage chunk would come seven seconds after the first.
    caller = caller_of(sim=SimConfig(stream_events=8, stream_interval=1.0))
    before = metric(caller.stack, ESTIMATED, kind="chat")
    stream = caller.sdk.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content
    stream.close()  # the caller hangs up
    body = caller.bodies.last
    inp, out, cost = chat_estimate(body, DEFAULT_CAP)  # no cap named: the default one
    assert_charged_estimate(
        caller, model=CHAT, kind="chat", inp=inp, out=out, cost=cost, before=before
    )
    # The gateway let go of the upstream stream, which had not yet sent its usage.
    sim = caller.stack.sim_app.state.sim
    wait_for(lambda: sim.aborted == 1, timeout=10, message="the upstream stream was not closed")
    (sent,) = caller.stack.sim_requests("/v1/chat/completions")
    assert sent["json"]["max_completion_tokens"] == DEFAULT_CAP


def test_a_stream_the_upstream_cuts_is_charged_its_estimate(
    caller_of: Callable[..., Caller],
) -> None:
    caller = caller_of()
    caller.stack.sim_app.state.sim.add_fault(kind="drop", path_prefix="/v1/chat/completions")
    before = metric(caller.stack, ESTIMATED, kind="chat")
    stream = caller.sdk.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=40,
        n=2,
    )
    received = until_cut(stream)
    assert len(received) == 2  # the two events the fault lets through, no usage among them
    assert all(c.usage is None for c in received)
    inp, out, cost = chat_estimate(caller.bodies.last, 40, n=2)
    assert_charged_estimate(
        caller, model=CHAT, kind="chat", inp=inp, out=out, cost=cost, before=before
    )


def test_a_stream_with_usage_on_every_chunk_cut_midway_is_charged_its_estimate(
    caller_of: Callable[..., Caller],
) -> None:
    """vLLM's continuous_usage_stats (passed on by new-api) puts the usage so far on every
    chunk: a stream cut after two of them has not reported its whole, and is charged its
    estimate, not the two chunks' count."""
    caller = caller_of()
    caller.stack.sim_app.state.sim.add_fault(kind="drop", path_prefix="/v1/chat/completions")
    before = metric(caller.stack, ESTIMATED, kind="chat")
    stream = caller.sdk.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        stream=True,
        # vLLM's extension, which the SDK does not type.
        extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        max_tokens=40,
    )
    received = until_cut(stream)
    assert len(received) == 2
    assert [c.usage.completion_tokens for c in received if c.usage] == [1, 2]
    inp, out, cost = chat_estimate(caller.bodies.last, 40)
    assert_charged_estimate(
        caller, model=CHAT, kind="chat", inp=inp, out=out, cost=cost, before=before
    )


def test_a_whole_stream_with_usage_on_every_chunk_is_charged_its_end(
    caller_of: Callable[..., Caller],
) -> None:
    caller = caller_of()
    stream = caller.sdk.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        stream=True,
        # vLLM's extension, which the SDK does not type.
        extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    chunks = list(stream)
    last = chunks[-1].usage
    assert last is not None
    assert not chunks[-1].choices
    assert [c.usage is not None for c in chunks] == [True] * len(chunks)
    wait_for(caller.settled, timeout=10, message="the call was not settled")
    (row,) = caller.ledger()
    assert (row["input_tokens"], row["output_tokens"]) == (
        last.prompt_tokens,
        last.completion_tokens,
    )
    assert stored(row["spend"]) == token_cost(
        PRICES[CHAT], last.prompt_tokens, last.completion_tokens
    )


class NoUsageUpstream:
    """An upstream that answers every chat call in full, but never with ``usage``: JSON
    without it, or a stream that ignores ``stream_options.include_usage``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            doc = await request.json()
            with self.lock:
                self.seen.append(doc)
            head = {"id": "chatcmpl-x", "created": 1, "model": doc["model"]}
            if not doc.get("stream"):
                message = {"role": "assistant", "content": "a fox"}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                return JSONResponse({**head, "object": "chat.completion", "choices": [choice]})

            async def events() -> AsyncIterator[bytes]:
                for i, word in enumerate(("a ", "fox")):
                    delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                    choice = {"index": 0, "delta": delta, "finish_reason": "stop" if i else None}
                    chunk = {**head, "object": "chat.completion.chunk", "choices": [choice]}
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_an_answer_without_usage_is_charged_its_estimate(
    caller_of: Callable[..., Caller], streamed: bool
) -> None:
    upstream = NoUsageUpstream()
    with run_server(upstream.app(), server_header=False) as url:
        caller = caller_of(sim_url=url)
        before = metric(caller.stack, ESTIMATED, kind="chat")
        if streamed:
            chunks = list(
                caller.sdk.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a fox"
            inp, out, cost = chat_estimate(caller.bodies.last, DEFAULT_CAP)
            (seen,) = upstream.seen
            assert seen["stream_options"] == {"include_usage": True}  # asked for, in vain
            assert seen["max_completion_tokens"] == DEFAULT_CAP
        else:
            raw = caller.sdk.chat.completions.with_raw_response.create(
                model=CHAT, messages=MESSAGES, max_completion_tokens=90
            )
            assert raw.parse().usage is None
            inp, out, cost = chat_estimate(caller.bodies.last, 90)
            assert raw.headers["x-gateway-cost"] == shown(cost)
        assert_charged_estimate(
            caller, model=CHAT, kind="chat", inp=inp, out=out, cost=cost, before=before
        )


def test_a_transcription_that_says_no_duration_is_charged_its_estimate(
    caller_of: Callable[..., Caller],
) -> None:
    caller = caller_of()
    before = metric(caller.stack, ESTIMATED, kind="transcription")
    text = caller.sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1",
        file=("a.wav", b"RIFF" + bytes(4000), "audio/wav"),
        response_format="text",
    )
    # whisper bills seconds, and a text answer says none: the most a call may last
    cost = units(Fraction(str(PRICES["whisper-1"]["per_audio_second"])) * MAX_AUDIO_S)
    assert text.headers["x-gateway-cost"] == shown(cost)
    wait_for(caller.settled, timeout=10, message="the call was not settled")
    (row,) = caller.ledger()
    assert (row["model"], row["requests"], row["audio_seconds"]) == ("whisper-1", 1, MAX_AUDIO_S)
    # ... and the estimate's tokens: the upload's bytes, and the output cap
    assert (row["input_tokens"], row["output_tokens"]) == (len(caller.bodies.last), DEFAULT_CAP)
    assert stored(row["spend"]) == cost
    assert stored(caller.quota()["spend_per_day"]["used"]) == cost
    assert metric(caller.stack, ESTIMATED, kind="transcription") == before + 1


class HeldEndUpstream:
    """Streams a chat answer without usage, then keeps its answer open after ``[DONE]`` until
    the test releases it (at most ten seconds)."""

    def __init__(self, *, ping: bool = False) -> None:
        self.ping = ping  # a keep-alive comment every 0.2 s while it holds its answer open
        self.done_sent = threading.Event()
        self.release = threading.Event()
        self.done_at = 0.0  # when [DONE] left
        self.ended_at = 0.0  # when the answer ended: released, or its connection closed

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            await request.body()

            async def events() -> AsyncIterator[bytes]:
                choice = {"index": 0, "delta": {"content": "a fox"}, "finish_reason": "stop"}
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1}
                chunk |= {"model": CHAT, "choices": [choice]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                self.done_at = time.monotonic()
                self.done_sent.set()
                deadline = time.monotonic() + 10
                try:
                    pinged = time.monotonic()
                    while not self.release.is_set() and time.monotonic() < deadline:
                        await asyncio.sleep(0.005)
                        if self.ping and time.monotonic() - pinged > 0.2:
                            pinged = time.monotonic()
                            yield b": ping\n\n"
                finally:
                    self.ended_at = time.monotonic()

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_streams_end_reaches_the_caller_settled_and_in_one_piece(
    caller_of: Callable[..., Caller],
) -> None:
    upstream = HeldEndUpstream()
    with run_server(upstream.app(), server_header=False) as url:
        caller = caller_of(sim_url=url)
        v1 = urlsplit(caller.stack.v1)
        body = json.dumps({"model": CHAT, "messages": MESSAGES, "stream": True}).encode()
        head = (
            f"POST {v1.path}/chat/completions HTTP/1.1\r\nHost: {v1.netloc}\r\n"
            f"Authorization: Bearer {caller.bearer}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        got = b""
        done_at = 0.0
        with socket.create_connection((v1.hostname, v1.port), timeout=0.05) as conn:
            conn.sendall(head + body)
            deadline = time.monotonic() + 10
            while b"[DONE]" not in got:
                assert time.monotonic() < deadline, got
                if upstream.done_sent.is_set() and not done_at:
                    done_at = time.monotonic()
                # The upstream's [DONE] is out: give it 0.3 s to reach the caller, which it
                # must not before the upstream has ended and the call has settled.
                if done_at and time.monotonic() - done_at > 0.3:
                    upstream.release.set()
                with contextlib.suppress(TimeoutError):
                    got += conn.recv(65536)
            released, settled = upstream.release.is_set(), caller.settled()
    assert released, "[DONE] reached the caller while the upstream's answer was still open"
    assert settled, "[DONE] reached the caller before its call was settled"
    # The end of the answer came in the same write: a client that stops at [DONE] finds its
    # response complete and keeps the connection.
    assert got.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), got[-80:]


@pytest.mark.parametrize("ping", [False, True], ids=["silent", "pinging"])
def test_an_upstream_that_keeps_its_stream_open_after_done_is_not_waited_out(
    caller_of: Callable[..., Caller], ping: bool
) -> None:
    # Never released: it would hold its answer open for 10 s (pinging: with keep-alive
    # comments, which restart any wait counted from the last byte).
    upstream = HeldEndUpstream(ping=ping)
    with run_server(upstream.app(), server_header=False) as url:
        caller = caller_of(sim_url=url)  # the upstream read timeout: 10 s
        before = metric(caller.stack, ESTIMATED, kind="chat")
        chunks = list(
            caller.sdk.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
        )
        finished = time.monotonic()
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a fox"
        # Whole, a short grace after [DONE] instead of the read timeout, and the upstream's
        # connection closed rather than left to its ten seconds.
        assert finished - upstream.done_at < 6
        wait_for(lambda: upstream.ended_at > 0, timeout=6, message="the upstream was left open")
        assert not upstream.release.is_set()
        assert upstream.ended_at - upstream.done_at < 6
        wait_for(caller.settled, timeout=10, message="the call was not settled")
        # The stream reported no usage: charged its estimate, and counted so.
        assert metric(caller.stack, ESTIMATED, kind="chat") == before + 1


class CutAfterDoneUpstream:
    """Streams a whole chat answer, usage and ``[DONE]`` included, then drops the connection
    instead of ending the answer."""

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            await request.body()

            async def events() -> AsyncIterator[bytes]:
                choice = {"index": 0, "delta": {"content": "a fox"}, "finish_reason": "stop"}
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1}
                yield b"data: " + json.dumps({**chunk, "model": CHAT, "choices": [choice]}).encode()
                yield b"\n\n"
                usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
                tail = {**chunk, "model": CHAT, "choices": [], "usage": usage}
                yield b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n"
                raise SimulatedDrop("dropped after [DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_stream_cut_after_its_done_reaches_the_caller_whole_and_charged_its_usage(
    caller_of: Callable[..., Caller],
) -> None:
    with run_server(CutAfterDoneUpstream().app(), server_header=False) as url:
        caller = caller_of(sim_url=url)
        before = metric(caller.stack, ESTIMATED, kind="chat")
        # The SDK reads on to the end of the answer after [DONE]: a cut answer would raise.
        chunks = list(
            caller.sdk.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a fox"
        assert all(c.usage is None for c in chunks)  # not asked for: not shown
        wait_for(caller.settled, timeout=10, message="the call was not settled")
        (row,) = caller.ledger()
        assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (1, 7, 3)
        assert stored(row["spend"]) == token_cost(PRICES[CHAT], 7, 3)
        assert metric(caller.stack, ESTIMATED, kind="chat") == before  # the real usage
