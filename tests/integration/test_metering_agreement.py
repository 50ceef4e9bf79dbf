"""Every view of what a team spent agrees, to the stored unit, with what the calls cost.

A mixed workload goes through the official SDK (chat plain and streamed, with and without
``include_usage``; responses plain and streamed; embeddings; an image; speech), made by two
users of one team, some calls tagged. Each call's cost is computed here from the prices below
and the usage the simulator reported (or, for the stream whose usage the caller did not ask
for, from the simulator's documented token rule, checked against the stream that did ask).
Then these must all say the same:

* the ``x-gateway-cost`` of each answer read whole, and their sum with the streams' costs;
* ``GET /v1/gateway/usage`` (the team's own ledger) by user and model, and by tag;
* ``GET /admin/v1/usage`` for the team, by team, user and model;
* ``GET /v1/gateway/quota``: spend per day and per month, tokens per day;
* ``gateway_spend_total{team,model,kind}`` and ``gateway_tokens_total{team,model,type}``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.clock import Clock
from tests.conftest import Stack
from tests.metering_views import (
    day_of,
    get_json,
    pinned_clock,
    pinned_stack,
    samples,
    shown,
    stored,
    summed,
    token,
    token_cost,
    units,
)

PRICES: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {
        "input_per_million": 0.15,
        "cached_input_per_million": 0.075,
        "output_per_million": 0.6,
    },
    "o4-mini": {
        "input_per_million": 1.1,
        "cached_input_per_million": 0.275,
        "output_per_million": 4.4,
        "max_output_tokens": 300,
    },
    "text-embedding-3-small": {"input_per_million": 0.02},
    "dall-e-3": {"per_image": {"1024x1024/hd": 0.08, "*": 0.04}},
    "tts-1": {"per_character": 0.000015},
}
TAG = "nightly-eval"
# Long enough for the simulator's prompt cache (1024 tokens and more): sent twice, the second
# call reads most of it from the cache and is charged the cached price for that part.
LONG = "Summarise the history of foxes in Europe, region by region. " * 75


def sim_tokens(text: str) -> int:
    """The simulator's documented rule: a token per four characters, rounded up."""
    return -(-len(text) // 4)


@dataclass(frozen=True)
class Charged:
    """One call as this test predicts the gateway charges it."""

    user: str
    model: str
    kind: str
    tag: str
    cost: int  # stored units
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    images: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def chat_charge(user: str, tag: str, inp: int, out: int, cached: int) -> Charged:
    cost = token_cost(PRICES["gpt-4o-mini"], inp, out, cached)
    return Charged(user, "gpt-4o-mini", "chat", tag, cost, inp, cached, out)


@pytest.fixture
def clock() -> Clock:
    return pinned_clock()


@pytest.fixture
def team() -> str:
    return "agree-" + secrets.token_hex(4)


@pytest.fixture
def stack(redis_url: str, clock: Clock, team: str) -> Iterator[Stack]:
    limits = {
        "spend_per_day": 100,
        "spend_per_month": 1000,
        "tokens_per_day": 10_000_000,
        "tokens_per_minute": 1_000_000,
    }
    with pinned_stack(
        redis_url,
        clock,
        teams={"default": {}, team: limits},
        pricing={"models": PRICES},
    ) as s:
        yield s


@dataclass
class Workload:
    charged: list[Charged]  # every call, as predicted
    headers: list[int]  # the x-gateway-cost of each answer read whole, in stored units
    streams: list[int]  # what each streamed call should have been charged


def run_workload(stack: Stack, clock: Clock, team: str) -> Workload:
    """The calls, each checked as it returns."""
    clients: dict[str, openai.OpenAI] = {
        user: openai.OpenAI(
            base_url=stack.v1,
            api_key=token(stack, clock, team=team, user=user),
            max_retries=0,
            _strict_response_validation=True,
        )
        for user in ("alice", "bob")
    }
    alice, bob = clients["alice"], clients["bob"]
    tagged = {"x-gateway-tag": TAG}
    done = Workload([], [], [])

    def header_of(raw: Any, expected: Charged) -> None:
        assert raw.headers["x-gateway-cost"] == shown(expected.cost)
        done.headers.append(stored(raw.headers["x-gateway-cost"]))
        done.charged.append(expected)

    def streamed_call(expected: Charged) -> None:
        done.streams.append(expected.cost)
        done.charged.append(expected)

    try:
        # Chat, plain: alice first, then bob the same prompt, which the cache now holds.
        long: list[ChatCompletionMessageParam] = [{"role": "user", "content": LONG}]
        for user, client in (("alice", alice), ("bob", bob)):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=long, max_completion_tokens=50
            )
            u = raw.parse().usage
            assert u is not None
            cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
            header_of(raw, chat_charge(user, "", u.prompt_tokens, u.completion_tokens, cached or 0))
        first, second = done.charged
        assert first.cached_tokens == 0
        assert 0 < second.cached_tokens < second.input_tokens  # the cached price ran

        # Chat, streamed with include_usage (bob, tagged): the usage reaches the caller.
        fox = "Tell me a short story about a fox and a badger."
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": fox}]
        chunks = list(
            bob.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=tagged,
            )
        )
        last = chunks[-1].usage
        assert last is not None
        assert chunks[-1].choices == []
        pieces = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        # The rule the next stream's cost is predicted by is the simulator's own report here.
        assert (last.prompt_tokens, last.completion_tokens) == (sim_tokens(fox), pieces)
        details = last.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details else 0
        streamed_call(chat_charge("bob", TAG, last.prompt_tokens, last.completion_tokens, cached))

        # Chat, streamed without include_usage (alice): the caller sees no usage, so its
        # cost is what the simulator's rule gives for the prompt and the pieces received.
        badger = "Now tell me what the badger said to the fox at the end of it all."
        messages = [{"role": "user", "content": badger}]
        chunks = list(
            alice.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        )
        assert all(c.usage is None and c.choices for c in chunks)
        pieces = sum(1 for c in chunks if c.choices[0].delta.content)
        assert pieces > 0
        streamed_call(chat_charge("alice", "", sim_tokens(badger), pieces, 0))

        # Responses, plain (alice, tagged) and streamed (bob).
        raw_resp = alice.responses.with_raw_response.create(
            model="o4-mini", input="What is a fox?", extra_headers=tagged
        )
        ru = raw_resp.parse().usage
        assert ru is not None
        cost = token_cost(
            PRICES["o4-mini"],
            ru.input_tokens,
            ru.output_tokens,
            ru.input_tokens_details.cached_tokens,
        )
        header_of(
            raw_resp,
            Charged(
                "alice",
                "o4-mini",
                "responses",
                TAG,
                cost,
                ru.input_tokens,
                ru.input_tokens_details.cached_tokens,
                ru.output_tokens,
            ),
        )
        streamed = None
        with bob.responses.stream(model="o4-mini", input="What is a badger?") as events:
            for event in events:
                if event.type == "response.completed":
                    streamed = event.response.usage
        assert streamed is not None
        cached = streamed.input_tokens_details.cached_tokens
        cost = token_cost(PRICES["o4-mini"], streamed.input_tokens, streamed.output_tokens, cached)
        streamed_call(
            Charged(
                "bob",
                "o4-mini",
                "responses",
                "",
                cost,
                streamed.input_tokens,
                cached,
                streamed.output_tokens,
            )
        )

        # Embeddings (alice): input tokens only.
        raw_emb = alice.embeddings.with_raw_response.create(
            model="text-embedding-3-small",
            input=["a fox", "a badger", "a sett"],
            encoding_format="float",
        )
        eu = raw_emb.parse().usage
        cost = token_cost(PRICES["text-embedding-3-small"], eu.prompt_tokens, 0)
        header_of(
            raw_emb,
            Charged("alice", "text-embedding-3-small", "embeddings", "", cost, eu.prompt_tokens),
        )

        # An image (bob, tagged): the price of the size and quality asked for.
        raw_img = bob.images.with_raw_response.generate(
            model="dall-e-3",
            prompt="a fox",
            size="1024x1024",
            quality="hd",
            extra_headers=tagged,
        )
        made = len(raw_img.parse().data or [])
        assert made == 1
        per_image = Fraction(str(PRICES["dall-e-3"]["per_image"]["1024x1024/hd"]))
        header_of(
            raw_img, Charged("bob", "dall-e-3", "images", TAG, units(made * per_image), images=made)
        )

        # Speech (alice, tagged): the characters of its input.
        text = "Hello, fox. Hello, badger."
        raw_speech = alice.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input=text, extra_headers=tagged
        )
        assert raw_speech.content
        per_char = Fraction(str(PRICES["tts-1"]["per_character"]))
        header_of(raw_speech, Charged("alice", "tts-1", "speech", TAG, units(len(text) * per_char)))
    finally:
        for client in clients.values():
            client.close()
    return done


MEASURES = ("requests", "input_tokens", "cached_tokens", "output_tokens", "images", "spend")


def expected_rows(
    charged: list[Charged], group_by: tuple[str, ...]
) -> dict[tuple[str, ...], dict[str, int]]:
    rows: dict[tuple[str, ...], dict[str, int]] = {}
    for c in charged:
        fields = {"user": c.user, "model": c.model, "tag": c.tag}
        row = rows.setdefault(tuple(fields[g] for g in group_by), dict.fromkeys(MEASURES, 0))
        row["requests"] += 1
        row["input_tokens"] += c.input_tokens
        row["cached_tokens"] += c.cached_tokens
        row["output_tokens"] += c.output_tokens
        row["images"] += c.images
        row["spend"] += c.cost
    return rows


def reported_rows(
    doc: dict[str, Any], group_by: tuple[str, ...]
) -> dict[tuple[str, ...], dict[str, int]]:
    """A usage report's rows, in stored units; the measures nothing here uses must be 0."""
    assert doc["group_by"] == list(group_by)
    out: dict[tuple[str, ...], dict[str, int]] = {}
    for row in doc["data"]:
        assert (row["audio_seconds"], row["video_seconds"]) == (0, 0), row
        key = tuple(row[g] for g in group_by)
        assert key not in out, key
        out[key] = {m: stored(row[m]) if m == "spend" else row[m] for m in MEASURES}
    return out


def test_every_view_of_a_mixed_workload_agrees_to_the_unit(
    stack: Stack, clock: Clock, team: str
) -> None:
    work = run_workload(stack, clock, team)
    charged = work.charged
    assert (len(work.headers), len(work.streams)) == (6, 3)
    total = sum(work.headers) + sum(work.streams)
    assert total == sum(c.cost for c in charged)
    day = day_of(clock)
    alice = token(stack, clock, team=team, user="alice")

    # The team's own ledger, by user and model, and by tag.
    for group_by in (("user", "model"), ("tag",), ("user", "model", "tag")):
        doc = get_json(
            stack.v1 + "/gateway/usage",
            alice,
            format="json",
            group_by=",".join(group_by),
            **{"from": day, "to": day},
        )
        assert reported_rows(doc, group_by) == expected_rows(charged, group_by), group_by
        assert stored(doc["total"]["spend"]) == total
        assert doc["total"]["requests"] == len(charged)

    # The admin's report of the same team (a token of another team, with the admin role).
    admin = token(
        stack,
        clock,
        team="ops-" + secrets.token_hex(3),
        user="root",
        roles=(stack.settings.auth.admin_role,),
    )
    doc = get_json(
        stack.url + "/admin/v1/usage",
        admin,
        team=team,
        group_by="team,user,model",
        **{"from": day, "to": day},
    )
    want = {(team, *k): v for k, v in expected_rows(charged, ("user", "model")).items()}
    assert reported_rows(doc, ("team", "user", "model")) == want
    assert stored(doc["total"]["spend"]) == total

    # The quota's day and month buckets.
    limits = get_json(stack.v1 + "/gateway/quota", alice)["limits"]
    assert stored(limits["spend_per_day"]["used"]) == total
    assert stored(limits["spend_per_month"]["used"]) == total
    token_kinds = ("chat", "responses", "embeddings")
    assert limits["tokens_per_day"]["used"] == sum(
        c.tokens for c in charged if c.kind in token_kinds
    )

    # The Prometheus counters, every series of this team.
    mine = ("team", team)
    spend = {
        (dict(k)["model"], dict(k)["kind"]): summed(v)
        for k, v in samples(stack, "gateway_spend_total").items()
        if mine in k
    }
    want_spend: dict[tuple[str, str], int] = {}
    for c in charged:
        want_spend[(c.model, c.kind)] = want_spend.get((c.model, c.kind), 0) + c.cost
    assert spend == want_spend
    tokens = {
        (dict(k)["model"], dict(k)["type"]): v
        for k, v in samples(stack, "gateway_tokens_total").items()
        if mine in k
    }
    want_tokens: dict[tuple[str, str], float] = {}
    for c in charged:
        for kind, n in (
            ("input", c.input_tokens),
            ("cached", c.cached_tokens),
            ("output", c.output_tokens),
        ):
            if n:
                want_tokens[(c.model, kind)] = want_tokens.get((c.model, kind), 0) + n
    assert tokens == want_tokens
    # Nothing here ran without usage.
    assert sum(samples(stack, "gateway_usage_estimated_total").values()) == 0
