"""Metering as a team sees it: the official SDK against the gateway against the simulator, on
real sockets with a real Redis. Every call is charged its real usage (read from the JSON, or
from the stream as it passes), a caller that did not ask for a stream's usage never sees it,
and a refusal (unpriced, not allowed, over a budget) leaves nothing upstream."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Stack, make_stack

M = 1_000_000
PRICES: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {
        "input_per_million": 0.15,
        "cached_input_per_million": 0.075,
        "output_per_million": 0.6,
    },
    "o4-mini": {"input_per_million": 1.1, "output_per_million": 4.4, "max_output_tokens": 300},
    "gpt-3.5-turbo-instruct": {"input_per_million": 1.5, "output_per_million": 2},
    "text-embedding-3-small": {"input_per_million": 0.02},
    "dall-e-3": {"per_image": {"1024x1024/hd": 0.08, "*": 0.04}},
    "tts-1": {"per_character": 0.000015},
    "whisper-1": {"per_audio_second": 0.0001},
    "gpt-image-1": {"per_image": {"*": 0.05}},
    "gpt-4o-mini-tts": {"per_character": 0.00002},
    "gpt-4o-transcribe": {"per_request": 0.003},
    "claude-sonnet-4": {"input_per_million": 3, "output_per_million": 15},
}


def fresh_team() -> str:
    return "m-" + secrets.token_hex(4)


@pytest.fixture
def team() -> str:
    return fresh_team()


def metered_stack(redis_url: str, limits: dict[str, dict[str, Any]], **kw: Any) -> Any:
    pricing = {"models": PRICES, **kw.pop("pricing", {})}
    return make_stack(redis_url, teams={"default": {}, **limits}, pricing=pricing, **kw)


_open: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def sdk(stack: Stack, team: str, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(
        base_url=stack.v1,
        api_key=stack.token(team=team),
        max_retries=0,
        _strict_response_validation=True,
        **kw,
    )
    _open.append(c)
    return c


def quota(stack: Stack, team: str) -> dict[str, Any]:
    r = httpx2.get(
        stack.v1 + "/gateway/quota", headers={"Authorization": f"Bearer {stack.token(team=team)}"}
    )
    assert r.status_code == 200, r.text
    return r.json()["limits"]  # type: ignore[no-any-return]


def units(money: Fraction) -> int:
    return math.ceil(money * M)


def token_cost(model: str, inp: int, out: int, cached: int = 0) -> int:
    p = {k: Fraction(str(v)) for k, v in PRICES[model].items() if "per_million" in k}
    cached_price = p.get("cached_input_per_million", p["input_per_million"])
    money = (
        (inp - cached) * p["input_per_million"]
        + cached * cached_price
        + out * p.get("output_per_million", Fraction(0))
    ) / M
    return units(money)


def shown(u: int) -> str:
    return f"{u // M}.{u % M:06d}"


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    with metered_stack(redis_url, {team: {"spend_per_day": 100}}) as s:
        yield s


def test_chat_is_charged_its_real_usage_and_says_so(stack: Stack, team: str) -> None:
    raw = sdk(stack, team).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there, how are you"}]
    )
    done = raw.parse()
    assert done.usage is not None
    cost = token_cost("gpt-4o-mini", done.usage.prompt_tokens, done.usage.completion_tokens)
    assert raw.headers["x-gateway-cost"] == shown(cost)
    limits = quota(stack, team)
    assert limits["spend_per_day"]["used"] == pytest.approx(cost / M)
    assert limits["tokens_per_day"]["used"] == done.usage.total_tokens
    # The caller named no cap: the gateway sent one, so that its estimate is a bound.
    (sent,) = stack.sim_requests("/v1/chat/completions")
    assert sent["json"]["max_completion_tokens"] == 4096


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_answer_new_api_converted_is_charged_its_output_too(
    stack: Stack, team: str, stream: bool
) -> None:
    """new-api's usage writes input_tokens and output_tokens beside the chat names, the output
    left 0 for a converted Claude answer: the output is still charged."""
    client = sdk(stack, team)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello, Claude"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="claude-sonnet-4",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        used = chunks[-1].usage
    else:
        used = client.chat.completions.create(model="claude-sonnet-4", messages=messages).usage
    assert used is not None
    assert used.model_dump()["output_tokens"] == 0  # what the answer says beside the chat names
    assert used.completion_tokens > 0
    cost = token_cost("claude-sonnet-4", used.prompt_tokens, used.completion_tokens)
    limits = quota(stack, team)
    assert limits["spend_per_day"]["used"] == pytest.approx(cost / M)
    assert limits["tokens_per_day"]["used"] == used.total_tokens


def test_a_stream_the_caller_asked_no_usage_of_carries_none(stack: Stack, team: str) -> None:
    chunks = list(
        sdk(stack, team).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "tell me a story about a fox"}],
            stream=True,
        )
    )
    assert chunks
    assert all(c.choices for c in chunks)  # no usage-only chunk
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    (sent,) = stack.sim_requests("/v1/chat/completions")
    assert sent["json"]["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # The simulator's tokens: one per four characters (rounded up), of text it counts.
    assert quota(stack, team)["tokens_per_day"]["used"] > len(text) // 4


def test_a_stream_that_asked_for_usage_gets_it_and_is_charged_it(stack: Stack, team: str) -> None:
    chunks = list(
        sdk(stack, team).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "tell me a story about a fox"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert quota(stack, team)["tokens_per_day"]["used"] == last.usage.total_tokens
    cost = token_cost("gpt-4o-mini", last.usage.prompt_tokens, last.usage.completion_tokens)
    assert quota(stack, team)["spend_per_day"]["used"] == pytest.approx(cost / M)


def test_responses_plain_and_streamed(stack: Stack, team: str) -> None:
    c = sdk(stack, team)
    plain = c.responses.create(model="o4-mini", input="what is a fox")
    assert plain.usage is not None
    streamed = None
    with c.responses.stream(model="o4-mini", input="what is a badger") as events:
        for event in events:
            if event.type == "response.completed":
                streamed = event.response.usage
    assert streamed is not None
    total = plain.usage.total_tokens + streamed.total_tokens
    assert quota(stack, team)["tokens_per_day"]["used"] == total
    cost = token_cost("o4-mini", plain.usage.input_tokens, plain.usage.output_tokens) + token_cost(
        "o4-mini", streamed.input_tokens, streamed.output_tokens
    )
    assert quota(stack, team)["spend_per_day"]["used"] == pytest.approx(cost / M)
    # The model's own cap (max_output_tokens in its price entry) went with each call.
    assert [r["json"]["max_output_tokens"] for r in stack.sim_requests("/v1/responses")] == [
        300,
        300,
    ]


def test_embeddings_images_speech_and_transcription(stack: Stack, team: str) -> None:
    c = sdk(stack, team)
    raw = c.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["a fox", "a badger"], encoding_format="float"
    )
    emb = raw.parse()
    assert raw.headers["x-gateway-cost"] == shown(
        token_cost("text-embedding-3-small", emb.usage.prompt_tokens, 0)
    )
    raw_img = c.images.with_raw_response.generate(
        model="dall-e-3", prompt="a fox", n=1, size="1024x1024", quality="hd"
    )
    assert len(raw_img.parse().data or []) == 1
    assert raw_img.headers["x-gateway-cost"] == "0.080000"
    speech = c.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Hello, fox."
    )
    assert speech.headers["x-gateway-cost"] == shown(units(Fraction("0.000015") * 11))
    assert speech.content
    tr = c.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.wav", b"RIFF" + bytes(4000), "audio/wav")
    )
    assert float(tr.headers["x-gateway-cost"]) > 0


def test_streamed_images_are_charged_what_they_made(stack: Stack, team: str) -> None:
    c = sdk(stack, team)
    events = list(c.images.generate(model="gpt-image-1", prompt="a fox", n=2, stream=True))
    done = [e for e in events if e.type == "image_generation.completed"]
    assert len(done) == 2
    assert quota(stack, team)["spend_per_day"]["used"] == pytest.approx(0.10)


def test_speech_is_charged_what_the_model_reads_and_how_long_it_speaks(
    stack: Stack, team: str
) -> None:
    """``instructions`` are read too, and a ``speed`` below 1 makes more audio (new-api bills
    the audio's length); speech as events is billed by tokens no character price covers."""
    c = sdk(stack, team)
    text, told = "Hello, fox; hello, badger.", "Whisper, slowly."
    raw = c.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, instructions=told, speed=0.5
    )
    charged = units(Fraction("0.00002") * (2 * len(text) + len(told)))
    assert raw.headers["x-gateway-cost"] == shown(charged)
    with pytest.raises(openai.BadRequestError) as err:
        c.audio.speech.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, stream_format="sse"
        )
    assert (err.value.code, err.value.param) == ("unsupported_parameter", "stream_format")
    assert len(stack.sim_requests("/v1/audio/speech")) == 1
    assert quota(stack, team)["spend_per_day"]["used"] == pytest.approx(charged / M)


def test_a_transcription_that_gives_no_duration_is_charged_its_estimate(
    redis_url: str, team: str
) -> None:
    with metered_stack(
        redis_url,
        {team: {"spend_per_day": 100}},
        pricing={"transcription_max_seconds": 600},
    ) as s:
        c = sdk(s, team)
        audio = ("a.wav", b"RIFF" + bytes(4000), "audio/wav")
        text = c.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=audio, response_format="text"
        )
        # whisper bills seconds; a text answer says none: the most a call may last is charged
        assert text.headers["x-gateway-cost"] == shown(units(Fraction("0.0001") * 600))
        # priced by the request alone, the price needs no measure
        flat = c.audio.transcriptions.with_raw_response.create(
            model="gpt-4o-transcribe", file=audio, response_format="text"
        )
        assert flat.headers["x-gateway-cost"] == "0.003000"


def test_unpriced_and_disallowed_models_never_reach_the_upstream(redis_url: str, team: str) -> None:
    limits = {team: {"models": ["gpt-4o*", "tts-*"]}}
    with metered_stack(redis_url, limits) as s:
        c = sdk(s, team)
        with pytest.raises(openai.PermissionDeniedError) as err:
            c.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "x"}])
        assert (err.value.status_code, err.value.code) == (403, "model_not_allowed")
        with pytest.raises(openai.PermissionDeniedError) as err:
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert (err.value.status_code, err.value.code) == (403, "model_not_priced")
        assert s.sim_requests("/v1/chat") == []
        # another team, not restricted, still reaches the model
        other = sdk(s, fresh_team())
        assert other.chat.completions.create(
            model="o4-mini", messages=[{"role": "user", "content": "x"}]
        ).choices


def test_token_limit_refuses_with_openai_headers_and_nothing_upstream(
    redis_url: str, team: str
) -> None:
    with metered_stack(redis_url, {team: {"tokens_per_minute": 2000}}) as s:
        c = sdk(s, team)
        hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=hi, max_tokens=50
        )
        assert raw.headers["x-ratelimit-limit-tokens"] == "2000"
        left = int(raw.headers["x-ratelimit-remaining-tokens"])
        assert 1800 < left < 1950  # the estimate: the body's bytes plus the 50 asked for
        # The simulator counts a token per four characters: this prompt is 300 tokens.
        big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 1200}]
        done = c.chat.completions.create(model="gpt-4o-mini", messages=big, max_tokens=20)
        assert done.usage is not None
        assert done.usage.prompt_tokens >= 300
        # Settled to the real usage (300-odd tokens), not the estimate (1200-odd) ...
        c.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=1500)
        # ... but this one's estimate no longer fits in the minute.
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=1850)
        e = err.value
        assert e.code == "token_quota_exceeded"
        assert e.response.headers["x-ratelimit-limit-tokens"] == "2000"
        assert 1 <= int(e.response.headers["retry-after"]) <= 60
        assert "x-should-retry" not in e.response.headers
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=5000)
        assert err.value.response.headers["x-should-retry"] == "false"
        assert "larger than the limit" in err.value.message
        assert len(s.sim_requests("/v1/chat")) == 3


def test_spend_budget_refuses_what_would_pass_it(redis_url: str, team: str) -> None:
    with metered_stack(redis_url, {team: {"spend_per_day": 0.1}}) as s:
        c = sdk(s, team)
        c.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", quality="hd")
        with pytest.raises(openai.RateLimitError) as err:
            c.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", quality="hd")
        assert err.value.code == "spend_quota_exceeded"
        assert "0.1 USD per day" in err.value.message
        assert len(s.sim_requests("/v1/images")) == 1
        assert quota(s, team)["spend_per_day"]["used"] == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": []}, 400, "missing_required_parameter"),
        ({"model": 7, "messages": []}, 400, "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": [], "n": 0}, 400, "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [], "max_tokens": "9"}, 400, "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": [], "Model": "x"}, 400, "invalid_json"),
        (
            {"model": "gpt-4o-mini", "messages": [], "stream": True, "stream_options": 3},
            400,
            "invalid_type",
        ),
        # Go reads max_token\u017f (a long s) as max_tokens: a second cap we must not miss
        (
            b'{"model":"gpt-4o-mini","messages":[],"max_tokens":5,"max_token\\u017f":99999}',
            400,
            "invalid_json",
        ),
        (
            b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\udc00"}]}',
            400,
            "invalid_json",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [], "tools": [{"type": "web_search"}]},
            400,
            "unsupported_parameter",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [], "web_search_options": {}},
            400,
            "unsupported_parameter",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [], "Service_Tier": "priority"},
            400,
            "unsupported_parameter",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [], "modalities": ["text", "audio"]},
            400,
            "unsupported_parameter",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}],
                    }
                ],
            },
            400,
            "unsupported_parameter",
        ),
    ],
)
def test_bad_fields_the_estimate_reads_are_refused(
    stack: Stack, team: str, body: dict[str, Any] | bytes, status: int, code: str
) -> None:
    r = httpx2.post(
        stack.v1 + "/chat/completions",
        headers={
            "Authorization": f"Bearer {stack.token(team=team)}",
            "content-type": "application/json",
        },
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert stack.sim_requests("/v1/chat") == []
    # a refused call leaves nothing charged: no member can drain the team's budget this way
    limits = quota(stack, team)
    assert (limits["spend_per_day"]["used"], limits["tokens_per_day"]["used"]) == (0, 0)


FORM_B = "multipart/form-data; boundary=B"


def _form_part(disposition: str, value: bytes) -> bytes:
    return f"--B\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        (  # Go reads quality=high (continuations joined, the "; x" part dropped); we read low
            "/images/edits",
            [
                ('form-data; name="model"', b"gpt-image-1"),
                ('form-data; name*0="qual"; name*1="ity"', b"high"),
                ('form-data; name="quality"; x', b"low"),
                ('form-data; name="image"; filename="a.png"', b"PNG"),
            ],
        ),
        (  # the model the team may use for us, another for the upstream
            "/audio/transcriptions",
            [
                ('form-data; name*0="mod"; name*1="el"', b"gpt-4o-transcribe"),
                ('form-data; name="model"; x', b"whisper-1"),
                ('form-data; name="file"; filename="a.mp3"', b"ID3"),
            ],
        ),
    ],
)
def test_a_form_the_upstream_would_read_otherwise_is_refused(
    stack: Stack, team: str, path: str, parts: list[tuple[str, bytes]]
) -> None:
    r = httpx2.post(
        stack.v1 + path,
        headers={
            "Authorization": f"Bearer {stack.token(team=team)}",
            "content-type": "multipart/form-data; boundary=B",
        },
        content=b"".join(_form_part(d, v) for d, v in parts) + b"--B--\r\n",
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_form"), r.text
    assert stack.sim_requests() == []
    assert quota(stack, team)["spend_per_day"]["used"] == 0


def test_bad_tag_is_refused(stack: Stack, team: str) -> None:
    c = sdk(stack, team, default_headers={"x-gateway-tag": "has space"})
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "invalid_tag"
    assert stack.sim_requests("/v1/chat") == []


def extra_route_stack(
    redis_url: str, team: str, server: dict[str, Any], *, per_request: float
) -> Any:
    """A metered stack with ``server``'s extra routes, calls naming no model priced as "-"."""
    priced = {"models": {**PRICES, "-": {"per_request": per_request}}}
    return metered_stack(redis_url, {team: {"spend_per_day": 100}}, server=server, pricing=priced)


def test_an_extra_route_is_priced_like_any_call(redis_url: str, team: str) -> None:
    routes = {"extra_routes": ["GET /v1/dashboard/billing/usage", "POST /v1/rerank"]}
    with metered_stack(redis_url, {team: {"spend_per_day": 100}}, server=routes) as s:
        auth = {"Authorization": f"Bearer {s.token(team=team)}"}
        r = httpx2.get(s.v1 + "/dashboard/billing/usage", headers=auth)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "model_not_priced")
        assert "names no model" in r.json()["error"]["message"]
        r = httpx2.post(s.v1 + "/rerank", headers=auth, json={"model": "rerank-x", "query": "q"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "model_not_priced")
        assert "'rerank-x'" in r.json()["error"]["message"]
        assert s.sim_requests() == []
    with extra_route_stack(redis_url, team, routes, per_request=0.002) as s:
        r = httpx2.get(
            s.v1 + "/dashboard/billing/usage",
            headers={"Authorization": f"Bearer {s.token(team=team)}"},
        )
        # forwarded: the simulator has no such page, and a failed call is refunded
        assert r.status_code == 404
        assert len(s.sim_requests("/v1/dashboard")) == 1
        assert quota(s, team)["spend_per_day"]["used"] == 0


@pytest.mark.parametrize(
    ("content", "ctype", "code"),
    [
        (b'{"query":"q","model":"rerank-big","Model":"rerank-big"}', "application/json", 400),
        (b'{"model":"rerank-big","query":"\xff"}', "application/json", 400),
        (b'["rerank-big"]', "application/json", 400),
        (b'{"model":"rerank-big","query":"q"}', "text/plain", 400),
        (b"model=rerank-big&query=q", "application/x-www-form-urlencoded", 400),
        (_form_part('form-data; name="model"', b"rerank-big") + b"--B--\r\n", FORM_B, 403),
    ],
)
def test_an_extra_routes_body_whose_model_cannot_be_read_is_refused(
    redis_url: str, team: str, content: bytes, ctype: str, code: int
) -> None:
    """Priced as "-" unless it names a model: a body the gateway could not read the model of
    (while the upstream would) is refused, and a form's model is read as the upstream reads
    it (here one without a price)."""
    routes = {"extra_routes": ["POST /v1/rerank"]}
    with extra_route_stack(redis_url, team, routes, per_request=0.001) as s:
        r = httpx2.post(
            s.v1 + "/rerank",
            headers={"Authorization": f"Bearer {s.token(team=team)}", "content-type": ctype},
            content=content,
        )
        want = {
            400: "invalid_json" if "json" in ctype else "unsupported_media_type",
            403: "model_not_priced",
        }[code]
        assert (r.status_code, r.json()["error"]["code"]) == (code, want), r.text
        assert s.sim_requests() == []
        assert quota(s, team)["spend_per_day"]["used"] == 0


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"speed": "1"}, "invalid_type", "speed"),
        ({"speed": 0.2}, "invalid_value", "speed"),
        ({"instructions": ["slowly"]}, "invalid_type", "instructions"),
        ({"stream_format": "sse"}, "unsupported_parameter", "stream_format"),
    ],
)
def test_bad_speech_fields_are_refused_before_anything_is_sent(
    stack: Stack, team: str, fields: dict[str, Any], code: str, param: str
) -> None:
    r = httpx2.post(
        stack.v1 + "/audio/speech",
        headers={"Authorization": f"Bearer {stack.token(team=team)}"},
        json={"model": "tts-1", "voice": "alloy", "input": "Hello, fox.", **fields},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text
    assert r.json()["error"]["param"] == param
    assert stack.sim_requests("/v1/audio") == []
    assert quota(stack, team)["spend_per_day"]["used"] == 0
