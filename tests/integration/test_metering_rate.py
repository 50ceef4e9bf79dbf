"""A metered call counts its request against the team's request rate inside its reservation
(one Redis round trip instead of two): each call counts exactly once, a call refused before
its reservation (a bad body, a model without a price) counts too, and over the rate the
answer is the rate's 429 with nothing sent upstream."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import Stack, make_stack

PRICES = {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}
RPM = 3


@pytest.fixture
def team() -> str:
    return "r-" + secrets.token_hex(4)


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    teams = {"default": {}, team: {"requests_per_minute": RPM, "tokens_per_minute": 10**6}}
    with make_stack(redis_url, teams=teams, pricing={"models": PRICES}) as s:
        yield s


def chat(stack: Stack, team: str, **doc: Any) -> httpx2.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **doc}
    headers = {"Authorization": f"Bearer {stack.token(team=team)}"}
    return httpx2.post(stack.v1 + "/chat/completions", json=body, headers=headers)


def test_each_metered_call_counts_once_with_both_headers(stack: Stack, team: str) -> None:
    answers = [chat(stack, team) for _ in range(RPM)]
    assert [a.status_code for a in answers] == [200] * RPM
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == str(RPM) for a in answers)
    assert all(a.headers["x-ratelimit-limit-tokens"] == "1000000" for a in answers)
    over = chat(stack, team)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(over.headers["retry-after-ms"]) > 0
    assert len(stack.sim_requests("/v1/chat")) == RPM
    # The refused call reserved nothing: the minute holds the three calls' real tokens only
    # (read as an admin: the team's own reads count against its rate too).
    admin = stack.token(team="ops", roles=("gateway-admin",))
    quota = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}", headers={"Authorization": f"Bearer {admin}"}
    ).json()["limits"]
    assert quota["requests_per_minute"]["used"] == RPM
    assert quota["tokens_per_minute"]["used"] == sum(
        a.json()["usage"]["total_tokens"] for a in answers
    )


def test_calls_refused_before_their_reservation_count_too(stack: Stack, team: str) -> None:
    bad = chat(stack, team, n="two")
    assert bad.status_code == 400
    unpriced = chat(stack, team, model="gpt-4o")
    assert unpriced.status_code == 403
    assert unpriced.json()["error"]["code"] == "model_not_priced"
    assert chat(stack, team).status_code == 200
    # Three requests in the minute: the next is over the rate, whatever its body says.
    for doc in ({}, {"n": "two"}, {"model": "gpt-4o"}):
        r = chat(stack, team, **doc)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.sim_requests("/v1/chat")) == 1
