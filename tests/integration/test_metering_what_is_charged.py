"""What a call is charged when the upstream's answer (or price list) says something odd: an
upstream of the test's own on a real socket, a real Redis, the gateway on a real socket.
Each test says what docs/metering.md (or new-api's own billing) promises."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from tests.conftest import Stack, gateway_config
from tests.servers import run_server


class Upstream:
    """What the fake upstream answers; tests change it between calls."""

    def __init__(self) -> None:
        self.pricing: Any = {"success": True, "data": [], "group_ratio": {"default": 1}}
        self.chat: Any = None  # a dict (JSON answer) or a list of SSE event strings
        self.responses: Any = None
        self.images: Any = None
        self.transcription: Any = None
        self.seen: list[dict[str, Any]] = []


def upstream_app(state: Upstream) -> Starlette:
    async def pricing(request: Request) -> Response:
        body = state.pricing
        if body == "slow":

            async def trickle() -> Any:
                yield b'{"success": true, "data": ['
                for _ in range(120):
                    await asyncio.sleep(0.5)
                    yield b" "

            return StreamingResponse(trickle(), media_type="application/json")
        if isinstance(body, bytes):
            return Response(body, media_type="application/json")
        return JSONResponse(body)

    def answer(what: Any) -> Response:
        if isinstance(what, list):

            async def events() -> Any:
                for e in what:
                    yield e

            return StreamingResponse(events(), media_type="text/event-stream")
        if isinstance(what, bytes):
            return Response(what, media_type="application/json")
        return JSONResponse(what)

    async def chat(request: Request) -> Response:
        state.seen.append(await request.json())
        return answer(state.chat)

    async def responses(request: Request) -> Response:
        state.seen.append(await request.json())
        return answer(state.responses)

    async def images(request: Request) -> Response:
        state.seen.append(await request.json())
        return answer(state.images)

    async def transcription(request: Request) -> Response:
        state.seen.append({"bytes": len(await request.body())})
        return answer(state.transcription)

    return Starlette(
        routes=[
            Route("/api/pricing", pricing),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/images/generations", images, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcription, methods=["POST"]),
        ]
    )


@contextlib.contextmanager
def stack_on(
    redis_url: str, state: Upstream, *, team: str, limits: dict[str, Any], pricing: dict[str, Any]
) -> Iterator[Stack]:
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    jwt_secret = secrets.token_urlsafe(48)
    with run_server(upstream_app(state)) as up:
        settings = gateway_config(
            up, redis_url, jwt_secret, keys, teams={"default": {}, team: limits}, pricing=pricing
        )
        if pricing.get("source") == "crazyrouter":
            settings = replace(settings, pricing=replace(settings.pricing, refresh_seconds=0.2))
        app = create_app(settings)
        with run_server(app, server_header=False) as url:
            yield Stack(url, up, None, app, settings, jwt_secret, keys)


def auth(s: Stack, team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {s.token(team=team)}"}


def used(s: Stack, team: str, kind: str = "spend_per_day") -> float:
    quota = httpx2.get(s.v1 + "/gateway/quota", headers=auth(s, team)).json()
    return float(quota["limits"][kind]["used"])


def post(s: Stack, team: str, path: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(s.v1 + path, headers=auth(s, team), json=body, timeout=30)


@pytest.fixture
def team() -> str:
    return "charged-" + secrets.token_hex(4)


def chat_doc() -> dict[str, Any]:
    """A chat answer without usage."""
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    }


def sse(doc: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + "data: " + (doc if isinstance(doc, str) else json.dumps(doc)) + "\n\n"


# ---------------------------------------------------------------------------------------------
# 1. A Responses stream that reports its usage twice: docs/metering.md says "A stream that
# reports usage more than once is charged the larger of each count ... so a later report of
# zeros never lowers the charge".


def test_responses_stream_second_terminal_event_with_zeros_does_not_lower_the_charge(
    redis_url: str, team: str
) -> None:
    state = Upstream()
    big = {"input_tokens": 1000, "output_tokens": 1000, "total_tokens": 2000}
    zero = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    state.responses = [
        sse({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}}),
        sse({"type": "response.completed", "response": {"id": "r1", "usage": big}}),
        sse({"type": "response.completed", "response": {"id": "r1", "usage": zero}}),
    ]
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"models": prices, "default_max_output_tokens": 5000},
    ) as s:
        got = post(s, team, "/responses", {"model": "m", "input": "hi", "stream": True})
        assert got.status_code == 200
        # 1000 input + 1000 output tokens at $1 per million each.
        assert used(s, team) >= 0.002, f"charged {used(s, team)}, the stream reported 0.002"


# ---------------------------------------------------------------------------------------------
# 2. A transcription whose duration is unreadable: "A count that is not a whole number ... (text,
# a fraction, a negative) makes the usage unreadable: the call is charged its estimate, never 0".

WHISPER = {"whisper-1": {"per_audio_second": 0.001}}


def transcribe(s: Stack, team: str, fmt: str = "verbose_json") -> httpx2.Response:
    return httpx2.post(
        s.v1 + "/audio/transcriptions",
        headers=auth(s, team),
        data={"model": "whisper-1", "response_format": fmt},
        files={"file": ("a.mp3", b"ID3" + b"\0" * 2000, "audio/mpeg")},
        timeout=30,
    )


@pytest.mark.parametrize(
    "answer",
    [
        {"text": "hi", "usage": {"type": "duration", "seconds": "600"}},
        {"text": "hi", "usage": {"type": "duration", "seconds": -600}},
        {"text": "hi", "duration": -600},
        {"text": "hi", "duration": True},
        b'{"text": "hi", "duration": NaN}',
    ],
    ids=["seconds-string", "seconds-negative", "duration-negative", "duration-bool", "nan"],
)
def test_an_unreadable_transcription_duration_is_charged_the_estimate_not_zero(
    redis_url: str, team: str, answer: Any
) -> None:
    state = Upstream()
    state.transcription = answer
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"models": WHISPER, "transcription_max_seconds": 1500},
    ) as s:
        got = transcribe(s, team)
        assert got.status_code == 200, got.text
        # The estimate: 1500 s at $0.001.
        assert float(got.headers["x-gateway-cost"]) == 1.5, got.headers["x-gateway-cost"]


# ---------------------------------------------------------------------------------------------
# 3. The estimate of a transcription priced by the second is not an upper bound: the
# settlement charges the reported duration, whatever it is, so one call takes a team far past
# its budget ("The estimate must be an upper bound").


def test_a_long_transcription_cannot_take_a_team_past_its_budget(redis_url: str, team: str) -> None:
    state = Upstream()
    state.transcription = {"text": "hi", "usage": {"type": "duration", "seconds": 36000}}
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 2},
        pricing={"models": WHISPER, "transcription_max_seconds": 1500},
    ) as s:
        got = transcribe(s, team)  # admitted on 1.5 (1500 s), within the 2 budget
        assert got.status_code == 200, got.text
        assert used(s, team) <= 2, f"a team with a budget of 2 has spent {used(s, team)}"
        assert got.headers["x-gateway-cost"] == "1.500000"  # the bound: 1500 s


def test_a_large_upload_is_reserved_for_as_long_as_it_can_play(redis_url: str, team: str) -> None:
    """1.2 MB of audio can hold 2000 s at the floor of 600 bytes a second: reserved for that
    (not the configured 1500 s), so an answer of 1900 s is charged in full."""
    state = Upstream()
    state.transcription = {"text": "hi", "usage": {"type": "duration", "seconds": 1900}}
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"models": WHISPER, "transcription_max_seconds": 1500},
    ) as s:
        got = httpx2.post(
            s.v1 + "/audio/transcriptions",
            headers=auth(s, team),
            data={"model": "whisper-1", "response_format": "verbose_json"},
            files={"file": ("a.mp3", b"ID3" + b"\0" * 1_200_000, "audio/mpeg")},
            timeout=30,
        )
        assert got.status_code == 200, got.text
        assert got.headers["x-gateway-cost"] == "1.900000"
        assert used(s, team) == 1.9


# ---------------------------------------------------------------------------------------------
# 4. new-api bills a chat answer whose usage is all zeros by its own count of the prompt and
# the completion (relay/channel/openai/relay-openai.go, OpenaiHandler: "TotalTokens == 0 ||
# (PromptTokens == 0 && CompletionTokens == 0)" -> CountTextToken), and passes the zeros on.
# The gateway charges the zeros: the call is free for the team, billed upstream.


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        {"prompt_tokens": 0, "completion_tokens": 0},
    ],
)
def test_a_chat_answer_with_zero_usage_is_not_free(
    redis_url: str, team: str, usage: dict[str, int]
) -> None:
    state = Upstream()
    state.chat = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 500}}],
        "usage": usage,
    }
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url, state, team=team, limits={"spend_per_day": 100}, pricing={"models": prices}
    ) as s:
        got = post(
            s,
            team,
            "/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "write 500 words"}]},
        )
        assert got.status_code == 200
        assert got.headers["x-gateway-cost"] != "0.000000", "a 500-word answer charged nothing"


# ---------------------------------------------------------------------------------------------
# 5. Prices from Crazyrouter's list that charge nothing.

GPT = {
    "quota_type": 0,
    "model_ratio": 0.075,
    "model_price": 0,
    "completion_ratio": 4,
    "enable_groups": ["default"],
    "supported_endpoint_types": ["openai"],
}


def list_of(**entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "success": True,
        "data": [{"model_name": k, **v} for k, v in entries.items()],
        "group_ratio": {"default": 1},
        "usable_group": {"default": ""},
    }


def images_answer(n: int) -> dict[str, Any]:
    return {
        "created": 1,
        "data": [{"b64_json": "AAAA"} for _ in range(n)],
        "usage": {
            "input_tokens": 50,
            "output_tokens": 4160,
            "total_tokens": 4210,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
        },
    }


def test_a_token_priced_image_model_from_the_list_is_refused_not_free(
    redis_url: str, team: str
) -> None:
    """gpt-image-1 is priced by tokens (quota_type 0) in new-api's list: a price the gateway
    cannot charge an image call by. Refused as unpriced, never forwarded for nothing."""
    state = Upstream()
    state.pricing = list_of(
        **{
            "gpt-image-1": {
                **GPT,
                "model_ratio": 2.5,
                "supported_endpoint_types": ["image-generation"],
            }
        }
    )
    state.images = images_answer(1)
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"source": "crazyrouter", "unpriced": "refuse"},
    ) as s:
        assert s.app.prices().lookup("gpt-image-1") is not None  # loaded: listed, by tokens
        got = post(s, team, "/images/generations", {"model": "gpt-image-1", "prompt": "a fox"})
        assert got.status_code == 403, got.text
        assert got.json()["error"]["code"] == "model_not_priced"
        assert "per_image" in got.json()["error"]["message"]
        assert state.seen == []
        assert used(s, team) == 0


def test_a_config_price_in_another_unit_is_refused_not_free(redis_url: str, team: str) -> None:
    state = Upstream()
    state.images = images_answer(1)
    prices = {"img": {"input_per_million": 5, "output_per_million": 40}, "free": {}}
    with stack_on(
        redis_url, state, team=team, limits={"spend_per_day": 100}, pricing={"models": prices}
    ) as s:
        got = post(s, team, "/images/generations", {"model": "img", "prompt": "a fox"})
        assert (got.status_code, got.json()["error"]["code"]) == (403, "model_not_priced")
        assert state.seen == []
        # An entry that prices nothing at all says so on purpose: free, and forwarded.
        got = post(s, team, "/images/generations", {"model": "free", "prompt": "a fox"})
        assert got.status_code == 200, got.text
        assert got.headers["x-gateway-cost"] == "0.000000"


@pytest.mark.parametrize(
    ("duration", "charged"),
    [
        # new-api's countAudioTokens: a minute of audio is 1,000 prompt tokens, from whole
        # seconds, rounded; ratio 15 is 30 per million input tokens.
        (60.0, "0.030000"),
        (59.2, "0.030000"),
        (0.4, "0.000510"),  # 1 second: 16.67, 17 tokens
        # More tokens than the upload's bound holds (the form's bytes as tokens, the output cap):
        # charged that bound, which the reservation fitted in.
        (600.0, "estimate"),
    ],
)
def test_a_list_priced_whisper_is_charged_its_seconds_as_new_api_counts_them(
    redis_url: str, team: str, duration: float, charged: str
) -> None:
    """new-api prices whisper-1 by a token ratio (15) and bills its audio as prompt tokens,
    a thousand a minute: the gateway charges the same, never nothing."""
    state = Upstream()
    state.pricing = list_of(**{"whisper-1": {**GPT, "model_ratio": 15, "completion_ratio": 1}})
    state.transcription = {"text": "hi", "duration": duration}
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"source": "crazyrouter", "unpriced": "refuse"},
    ) as s:
        price = s.app.prices().lookup("whisper-1")
        assert price is not None
        got = transcribe(s, team)
        assert got.status_code == 200, got.text
        cost = got.headers["x-gateway-cost"]
        if charged == "estimate":
            # The form's bytes as input tokens and the output cap, at 30 per million each.
            (sent,) = state.seen
            cap = s.app.settings.pricing.default_max_output_tokens
            bound = (sent["bytes"] + cap) * 30 / 1_000_000
            assert float(cost) == pytest.approx(bound, abs=1e-6)
        else:
            assert cost == charged
        assert float(cost) == pytest.approx(used(s, team), abs=1e-6)


@pytest.mark.parametrize("where", ["group_ratio", "model_ratio"])
def test_a_list_that_zeroes_a_ratio_does_not_make_models_free(
    redis_url: str, team: str, where: str
) -> None:
    state = Upstream()
    doc = list_of(**{"gpt-4o-mini": GPT})
    if where == "group_ratio":
        doc["group_ratio"] = {"default": 0}
    else:
        doc["data"][0]["model_ratio"] = 0
    state.pricing = doc
    state.chat = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 100000, "completion_tokens": 100000, "total_tokens": 200000},
    }
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"source": "crazyrouter", "unpriced": "refuse"},
    ) as s:
        got = post(
            s,
            team,
            "/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        # Either refused as unpriced, or charged something: never silently free.
        assert got.status_code == 403 or got.headers["x-gateway-cost"] != "0.000000"


# ---------------------------------------------------------------------------------------------
# 6. Usage counts past 64 bits.


@pytest.mark.parametrize("count", [2**53 + 1])
def test_a_huge_usage_count_neither_crashes_nor_corrupts_the_budget(
    redis_url: str, team: str, count: int
) -> None:
    state = Upstream()
    usage = {"prompt_tokens": count, "completion_tokens": 1, "total_tokens": count + 1}
    state.chat = json.dumps({**chat_doc(), "usage": usage}).encode()
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100, "tokens_per_day": 10**9},
        pricing={"models": prices},
    ) as s:
        got = post(
            s,
            team,
            "/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert got.status_code == 200, got.text
        cost = got.headers.get("x-gateway-cost")
        spend = used(s, team)
        tokens = used(s, team, "tokens_per_day")
        # What the header says was charged is what the budget holds (to the stored unit), and
        # one absurd count (2**53 tokens: $9e9) does not lock the team out for the month.
        assert cost is not None
        assert abs(float(cost) - spend) < 5e-7, (cost, spend, tokens)
        assert spend < 100, f"one answer charged {spend}"


# ---------------------------------------------------------------------------------------------
# 7. Streams that report usage twice (chat: the larger is kept; a transcription stream?).


def test_chat_stream_second_usage_of_zeros_does_not_lower_the_charge(
    redis_url: str, team: str
) -> None:
    state = Upstream()
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
    }
    big = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    state.chat = [
        sse(chunk),
        sse({**chunk, "choices": [], "usage": big}),
        sse({**chunk, "choices": [], "usage": zero}),
        sse("[DONE]"),
    ]
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url, state, team=team, limits={"spend_per_day": 100}, pricing={"models": prices}
    ) as s:
        got = post(
            s,
            team,
            "/chat/completions",
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert got.status_code == 200
        assert used(s, team) == 0.002


def test_transcription_stream_second_done_event_does_not_lower_the_charge(
    redis_url: str, team: str
) -> None:
    state = Upstream()
    big = {
        "type": "tokens",
        "input_tokens": 100000,
        "output_tokens": 100000,
        "total_tokens": 200000,
    }
    zero = {"type": "tokens", "input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    state.transcription = [
        sse({"type": "transcript.text.delta", "delta": "hi"}),
        sse({"type": "transcript.text.done", "text": "hi", "usage": big}),
        sse({"type": "transcript.text.done", "text": "hi", "usage": zero}),
    ]
    prices = {"gpt-4o-transcribe": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url, state, team=team, limits={"spend_per_day": 100}, pricing={"models": prices}
    ) as s:
        got = httpx2.post(
            s.v1 + "/audio/transcriptions",
            headers=auth(s, team),
            data={"model": "gpt-4o-transcribe", "stream": "true"},
            files={"file": ("a.mp3", b"ID3" + b"\0" * 200, "audio/mpeg")},
            timeout=30,
        )
        assert got.status_code == 200, got.text
        assert used(s, team) >= 0.2, f"charged {used(s, team)}, the stream reported 0.2"


# ---------------------------------------------------------------------------------------------
# 8. One upstream key's charge that Redis cannot add (a usage count past 64 bits reaches
# SpendByKey.add) poisons every later flush: the other keys' charges are re-added after each
# failed pipeline, so they are counted again every 5 seconds.


async def test_a_charge_redis_cannot_add_does_not_recount_the_other_keys(redis_url: str) -> None:
    from redis.asyncio import Redis

    from gateway.metering.reconcile import SpendByKey
    from gateway.store.keys import upstream_key_charged

    redis = Redis.from_url(redis_url)
    try:
        spend = SpendByKey(redis)
        spend.add("poisoned", 2**63)  # what settle() passes on for a count past 2**63 tokens
        spend.add("healthy", 10)
        for _ in range(3):  # three flushes, 5 s apart in production
            with contextlib.suppress(Exception):
                await spend.flush()
        got = int(await redis.get(upstream_key_charged("healthy")) or 0)
        assert got == 10, f"the healthy key was charged 10 and counted {got}"
    finally:
        await redis.aclose()


def test_an_answer_with_a_count_no_call_reaches_is_charged_its_estimate(
    redis_url: str, team: str
) -> None:
    """A prompt_tokens of 2**63 once broke the settlement (and the per-key spend with it):
    now it is an unreadable count, charged what an answer without usage is."""
    state = Upstream()
    silent = chat_doc()
    huge = json.dumps({**silent, "usage": {"prompt_tokens": 2**63}}).encode()
    prices = {"m": {"input_per_million": 1, "output_per_million": 1}}
    with stack_on(
        redis_url, state, team=team, limits={"spend_per_day": 100}, pricing={"models": prices}
    ) as s:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        state.chat = huge
        first = post(s, team, "/chat/completions", body)
        state.chat = silent
        second = post(s, team, "/chat/completions", body)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-gateway-cost"] == second.headers["x-gateway-cost"] != "0.000000"
        assert used(s, team) == pytest.approx(2 * float(first.headers["x-gateway-cost"]))


# ---------------------------------------------------------------------------------------------
# 9. Estimates whose numbers do not fit Redis's integers: an answer, never a 500.


@pytest.mark.parametrize(
    ("path", "body", "price"),
    [
        (
            "/chat/completions",
            {
                "model": "m",
                "n": 128,
                "max_tokens": 10_000_000,
                "messages": [{"role": "user", "content": "hi"}],
            },
            {"output_per_million": 1_000_000},
        ),
        (
            "/completions",
            {"model": "m", "best_of": 128, "max_tokens": 10_000_000, "prompt": [""] * 150_000},
            {"output_per_million": 1},
        ),
        (
            "/completions",
            {"model": "m", "best_of": 128, "max_tokens": 10_000_000, "prompt": [""] * 150_000},
            {"output_per_million": 1_000_000},
        ),
    ],
    ids=["chat-n128", "completions-tokens", "completions-money"],
)
def test_a_huge_estimate_is_an_answer_not_a_500(
    redis_url: str, team: str, path: str, body: dict[str, Any], price: dict[str, Any]
) -> None:
    state = Upstream()
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={},
        pricing={"models": {"m": price}},
    ) as s:
        got = post(s, team, path, body)
        assert got.status_code == 400, got.text
        assert got.json()["error"]["code"] == "estimate_too_large"
        assert state.seen == []
        quota = httpx2.get(s.v1 + "/gateway/quota", headers=auth(s, team)).json()["limits"]
        assert all(not v.get("used") for v in quota.values() if isinstance(v, dict)), quota


@pytest.mark.parametrize(("asked", "came", "charged"), [(3, 1, "0.060000"), (1, 2, "0.040000")])
def test_images_are_charged_as_many_as_were_asked_for(
    redis_url: str, team: str, asked: int, came: int, charged: str
) -> None:
    """new-api bills an image call its price times the ``n`` asked for, whatever came back."""
    state = Upstream()
    state.images = images_answer(came)
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"models": {"img": {"per_image": 0.02}}},
    ) as s:
        got = post(s, team, "/images/generations", {"model": "img", "prompt": "a fox", "n": asked})
        assert got.status_code == 200, got.text
        assert got.headers["x-gateway-cost"] == charged
        assert used(s, team) == float(charged)
