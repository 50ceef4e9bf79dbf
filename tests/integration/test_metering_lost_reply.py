"""A metered call whose reservation is sent to a Redis that then freezes (SIGSTOP): the gateway
gives up after its socket timeout and refuses the call (or forwards it unmetered), but Redis
runs the reservation once it thaws. Once Redis answers again, that reservation is refunded (the
call never ran) or settled to what the call cost, never left charged with its estimate. A
real Redis process, the simulator and the gateway on sockets."""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import httpx2
import pytest

from gateway.dev.embedded_redis import RedisProcess
from tests.conftest import Stack, make_stack

PRICES = {"models": {"m": {"input_per_million": 1000, "output_per_million": 1000}}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def _spent(stack: Stack) -> Decimal:
    auth = {"Authorization": f"Bearer {stack.token()}"}
    r = httpx2.get(stack.v1 + "/gateway/quota", headers=auth)
    assert r.status_code == 200, r.text
    return Decimal(str(r.json()["limits"]["spend_per_day"]["used"]))


def _call(stack: Stack) -> httpx2.Response:
    auth = {"Authorization": f"Bearer {stack.token()}"}
    return httpx2.post(stack.v1 + "/chat/completions", json=CHAT, headers=auth, timeout=10)


@pytest.mark.parametrize("then", ["a call", "nothing"])
@pytest.mark.parametrize("store_down", ["refuse", "allow"])
def test_a_reservation_whose_reply_was_lost_is_settled_once_redis_is_back(
    own_redis: RedisProcess, store_down: str, then: str
) -> None:
    """Settled when the breaker's probe finds Redis back, or at the next reservation."""
    pricing = {**PRICES, "store_down": store_down}
    with make_stack(
        own_redis.url,
        teams={"default": {}, "team-a": {"spend_per_day": 1000}},
        pricing=pricing,
        redis={"socket_timeout": 0.5, "connect_timeout": 0.5},
    ) as s:
        first = _call(s)
        assert first.status_code == 200, first.text
        before = _spent(s)
        assert before == Decimal(first.headers["x-gateway-cost"])
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        lost = _call(s)
        if store_down == "refuse":
            assert (lost.status_code, lost.json()["error"]["code"]) == (503, "service_unavailable")
            assert len(s.sim_requests("/v1/chat/completions")) == 1
            owed = Decimal(0)
        else:  # forwarded unmetered: what it cost is known, and owed once Redis is back
            assert lost.status_code == 200, lost.text
            owed = Decimal(lost.headers["x-gateway-cost"])
        own_redis.proc.send_signal(signal.SIGCONT)
        auth = {"Authorization": f"Bearer {s.token()}"}
        deadline = time.monotonic() + 10
        while httpx2.get(s.v1 + "/gateway/quota", headers=auth).status_code != 200:
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.05)
        want = before + owed
        if then == "a call":  # reserved in Redis again
            again = _call(s)
            assert again.status_code == 200, again.text
            want += Decimal(again.headers["x-gateway-cost"])
        deadline = time.monotonic() + 10
        while (got := _spent(s)) != want:
            assert time.monotonic() < deadline, f"spent {got}, want {want}"
            time.sleep(0.05)
        # And nothing lands after it (the late reservation is not charged on top): a later
        # call adds exactly its own cost.
        last = _call(s)
        assert last.status_code == 200, last.text
        assert _spent(s) == want + Decimal(last.headers["x-gateway-cost"])
