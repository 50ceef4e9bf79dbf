"""Answers a forwarded call can get that are not a readable answer: a 200 whose body breaks off
(the call ran upstream, and was billed: the SDK must not send it again) and a 101 or a redirect
(nothing the caller can use ran: a clean 502, nothing charged). The official SDK and httpx
against the gateway, an upstream of the test's own on a real socket, and a real Redis."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import Stack, make_stack
from tests.rawupstream import raw_upstream, response

PRICES = {"models": {"m": {"input_per_million": 1000, "output_per_million": 1000}}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "y"}], "max_tokens": 10}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()


def _cut(req: dict[str, Any]) -> tuple[bytes, bool]:
    return response(200, ANSWER[: len(ANSWER) // 2], length=len(ANSWER)), True


def _spent(stack: Stack, team: str) -> float:
    auth = {"Authorization": f"Bearer {stack.token(team=team)}"}
    doc = httpx2.get(stack.v1 + "/gateway/quota", headers=auth).json()
    return float(doc["limits"]["spend_per_day"]["used"])


@pytest.mark.parametrize("metered", [True, False])
def test_a_200_cut_mid_body_is_never_sent_again(redis_url: str, metered: bool) -> None:
    team = "cut-" + secrets.token_hex(3)
    teams = {"default": {}, team: {"spend_per_day": 1000}}
    pricing = PRICES if metered else {"enabled": False}
    with (
        raw_upstream(_cut) as (url, seen),
        make_stack(redis_url, sim_url=url, teams=teams, pricing=pricing) as s,
    ):
        client = openai.OpenAI(base_url=s.v1, api_key=s.token(team=team), max_retries=2)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "y"}], max_tokens=10
            )
        headers = err.value.response.headers
        assert (err.value.status_code, headers.get("x-should-retry")) == (502, "false")
        assert headers.get("x-request-id")
        assert seen.paths("/v1/chat/completions") == 1
        if metered:  # it ran: charged its estimate (9 + 10 tokens of bytes at most)
            assert _spent(s, team) > 0


ODD = {
    101: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    302: response(302, b"", headers={"location": "http://10.1.2.3/elsewhere"}),
    307: response(307, b"", headers={"location": "http://10.1.2.3/elsewhere"}),
    304: response(304, b""),
}


@pytest.mark.parametrize("status", sorted(ODD))
def test_an_interim_or_redirect_status_is_a_502_and_charges_nothing(
    redis_url: str, status: int
) -> None:
    team = "odd-" + secrets.token_hex(3)
    teams = {"default": {}, team: {"spend_per_day": 1000}}
    with (
        raw_upstream(lambda req: (ODD[status], True)) as (url, seen),
        make_stack(redis_url, sim_url=url, teams=teams, pricing=PRICES) as s,
    ):
        auth = {"Authorization": f"Bearer {s.token(team=team)}"}
        r = httpx2.post(s.v1 + "/chat/completions", headers=auth, json=CHAT, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_unavailable")
        assert r.headers.get("x-request-id")
        assert "10.1.2.3" not in r.text
        assert seen.paths("/v1/chat/completions") == 1
        assert _spent(s, team) == 0


def test_a_304_to_a_conditional_get_is_passed_on(redis_url: str) -> None:
    with (
        raw_upstream(lambda req: (response(304, b"", headers={"etag": '"e1"'}), False)) as (
            url,
            seen,
        ),
        make_stack(redis_url, sim_url=url) as s,
    ):
        r = httpx2.get(
            s.v1 + "/models",
            headers={"Authorization": f"Bearer {s.token()}", "If-None-Match": '"e1"'},
        )
        assert (r.status_code, r.headers.get("etag")) == (304, '"e1"')
        assert seen.requests[-1]["headers"]["if-none-match"] == '"e1"'
