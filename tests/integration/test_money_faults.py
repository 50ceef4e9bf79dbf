"""Faults on the money paths, on real processes: a settlement whose reply Redis lost (it
froze after the reservation), a call forwarded while its reservation's reply was lost, a day
and month boundary, an admin reset and a Redis restart between a call's reservation and its
settlement. A real Redis, the gateway on a socket on a pinned clock, and
an upstream of the test's own that acts (freezes Redis, moves the clock, resets the team's
usage) while it holds the call, then answers it with a known usage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
import redis as redis_sync
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dev.embedded_redis import RedisProcess
from tests.clock import Clock
from tests.conftest import Stack
from tests.metering_views import (
    chat_answer,
    get_json,
    metric,
    pinned_clock,
    pinned_stack,
    shown,
    stored,
    summed,
    token,
    token_cost,
)
from tests.servers import run_server, wait_for

MODEL = "gpt-4o-mini"
PRICE = {"input_per_million": 150, "output_per_million": 600}
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
REAL = token_cost(PRICE, 9, 12)  # 8,550 stored units: what one call really costs
ACT = "act now"  # the prompt on which the upstream acts before it answers


class Upstream:
    """Answers chat calls with USAGE, plain or streamed; on a call whose prompt is ACT it
    first runs ``act`` (the reservation has run by then; the settlement has not)."""

    def __init__(self) -> None:
        self.act: Callable[[], Any] = lambda: None
        self.acted = 0

    async def chat(self, request: Request) -> Response:
        doc = await request.json()
        if doc["messages"][0]["content"] == ACT:
            self.act()
            self.acted += 1
        return chat_answer(doc, USAGE)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


@contextlib.contextmanager
def metered_stack(
    redis_url: str,
    clock: Clock,
    upstream: Any,
    team: str,
    limits: dict[str, int],
    *,
    pricing: dict[str, Any] | None = None,
    **sections: Any,
) -> Iterator[Stack]:
    """A gateway on ``clock`` pricing MODEL at PRICE, ``team`` with ``limits``, in front of
    ``upstream`` (an ASGI app) on a real socket."""
    with (
        run_server(upstream) as up_url,
        pinned_stack(
            redis_url,
            clock,
            sim_url=up_url,
            teams={"default": {}, team: limits},
            pricing={"models": {MODEL: PRICE}, **(pricing or {})},
            **sections,
        ) as s,
    ):
        yield s


def chat(s: Stack, bearer: str, content: str, *, stream: bool = False) -> tuple[int, str, str]:
    """(status, x-gateway-cost or '', body) of one chat call."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 50,
    }
    auth = {"Authorization": f"Bearer {bearer}"}
    if stream:
        body["stream"] = True
        with httpx2.stream(
            "POST", s.v1 + "/chat/completions", json=body, headers=auth, timeout=20
        ) as r:
            text = r.read().decode()
            return r.status_code, r.headers.get("x-gateway-cost", ""), text
    r = httpx2.post(s.v1 + "/chat/completions", json=body, headers=auth, timeout=20)
    return r.status_code, r.headers.get("x-gateway-cost", ""), r.text


def views(s: Stack, bearer: str, team: str, day: str) -> dict[str, int]:
    """Every view of the team's spend, in stored units."""
    usage = get_json(s.v1 + "/gateway/usage", bearer, **{"from": day, "to": day})
    quota = get_json(s.v1 + "/gateway/quota", bearer)["limits"]
    return {
        "ledger": stored(usage["total"]["spend"]),
        "spend_per_day": stored(quota["spend_per_day"]["used"]),
        "spend_per_month": stored(quota["spend_per_month"]["used"]),
        "gateway_spend_total": summed(metric(s, "gateway_spend_total", team=team)),
    }


def tokens(s: Stack, bearer: str, team: str, day: str) -> dict[str, int]:
    """Every view of the team's tokens."""
    total = get_json(s.v1 + "/gateway/usage", bearer, **{"from": day, "to": day})["total"]
    quota = get_json(s.v1 + "/gateway/quota", bearer)["limits"]
    counted = metric(s, "gateway_tokens_total", team=team, type="input") + metric(
        s, "gateway_tokens_total", team=team, type="output"
    )
    return {
        "ledger": total["input_tokens"] + total["output_tokens"],
        "tokens_per_day": quota["tokens_per_day"]["used"],
        "gateway_tokens_total": int(counted),
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_settlement_whose_reply_was_lost_leaves_every_view_agreeing(
    own_redis: RedisProcess, stream: bool
) -> None:
    """Redis freezes after a call's reservation ran, while the upstream runs the call: the
    settlement is sent and its reply lost (the gateway gives up after its socket timeout).
    Redis runs that settlement when it thaws (or the gateway writes it again once Redis
    answers: settling is idempotent), so the ledger, the budgets and the metrics all hold
    the real cost, and the caller was told that cost, not the estimate."""
    team = "lost-settle-" + secrets.token_hex(4)
    clock = pinned_clock()
    day = datetime.fromtimestamp(clock(), UTC).date().isoformat()
    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    up = Upstream()
    up.act = lambda: os.kill(pid, signal.SIGSTOP)
    with metered_stack(
        own_redis.url,
        clock,
        up.app(),
        team,
        {"spend_per_day": 1000},
        redis={"socket_timeout": 0.5, "connect_timeout": 0.5},
    ) as s:
        bearer = token(s, clock, team=team, user="carol")
        # A first call loads the scripts (a script Redis has not seen is not run: NOSCRIPT).
        status, cost, _ = chat(s, bearer, "hi", stream=stream)
        assert status == 200
        assert cost == ("" if stream else shown(REAL))
        wait_for(lambda: views(s, bearer, team, day)["gateway_spend_total"] == REAL)
        status, cost, text = chat(s, bearer, ACT, stream=stream)
        assert status == 200, text
        assert cost == ("" if stream else shown(REAL))
        assert up.acted == 1
        own_redis.proc.send_signal(signal.SIGCONT)
        auth = {"Authorization": f"Bearer {bearer}"}
        wait_for(
            lambda: httpx2.get(s.v1 + "/gateway/quota", headers=auth).status_code == 200,
            message="Redis did not come back",
        )
        # Redis ran the lost settlement as it thawed: two calls at their real cost.
        r = redis_sync.Redis.from_url(own_redis.url)
        assert r.keys(f"gw:{{team:{team}}}:call:*") == []  # no reservation left open
        r.close()
        seen: dict[str, int] = {}
        counted: dict[str, int] = {}

        def agree() -> bool:
            seen.update(views(s, bearer, team, day))
            counted.update(tokens(s, bearer, team, day))
            return set(seen.values()) == {2 * REAL} and set(counted.values()) == {2 * 21}

        try:
            wait_for(agree, timeout=5)
        except TimeoutError:
            pytest.fail(
                f"the views disagree: spend {seen} (each should be {2 * REAL}), "
                f"tokens {counted} (each should be {2 * 21})"
            )


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_call_that_settles_after_midnight_corrects_the_day_and_month_it_was_charged_to(
    redis_url: str,
) -> None:
    """Reserved at 23:59:59 on the last day of a month, settled at 00:00:01: the correction
    goes to the old day and month, the ledger records the old day, nothing lands in the new
    windows."""
    team = "midnight-" + secrets.token_hex(4)
    clock = Clock(_at("2026-12-31T23:59:59"))
    up = Upstream()
    up.act = lambda: clock.advance(2)
    with metered_stack(
        redis_url, clock, up.app(), team, {"spend_per_day": 1000, "spend_per_month": 1000}
    ) as s:
        bearer = token(s, clock, team=team, user="carol")
        status, cost, text = chat(s, bearer, ACT)
        assert (status, cost) == (200, shown(REAL)), text
        assert clock() == _at("2027-01-01T00:00:01")
        bearer = token(s, clock, team=team, user="carol")
        assert views(s, bearer, team, "2026-12-31") == {
            "ledger": REAL,
            "spend_per_day": 0,  # the new day and month: nothing of the old call
            "spend_per_month": 0,
            "gateway_spend_total": REAL,
        }
        assert views(s, bearer, team, "2027-01-01")["ledger"] == 0
        r = redis_sync.Redis.from_url(redis_url)
        p = f"gw:{{team:{team}}}"
        assert int(r.get(f"{p}:spend:d:20261231") or 0) == REAL
        assert int(r.get(f"{p}:spend:m:202612") or 0) == REAL
        assert r.get(f"{p}:spend:d:20270101") is None
        assert r.get(f"{p}:spend:m:202701") is None
        r.close()


@pytest.mark.parametrize("window", ["day", "month", "all"])
def test_a_reset_between_reservation_and_settlement_refunds_nothing_into_the_new_window(
    redis_url: str, window: str
) -> None:
    """An admin resets the team's usage while a call is upstream. Its settlement must not
    take the refund out of what is charged after the reset (nor go below zero), and a call
    after the reset is charged exactly its cost."""
    team = "reset-" + secrets.token_hex(4)
    clock = pinned_clock()
    day = datetime.fromtimestamp(clock(), UTC).date().isoformat()
    up = Upstream()
    with metered_stack(
        redis_url, clock, up.app(), team, {"spend_per_day": 1000, "spend_per_month": 1000}
    ) as s:
        bearer = token(s, clock, team=team, user="carol")
        admin = token(s, clock, team="ops", user="root", roles=("gateway-admin",))

        def reset() -> None:
            r = httpx2.post(
                f"{s.url}/admin/v1/teams/{team}/usage/reset",
                json={"window": window},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 200, r.text

        up.act = reset
        status, cost, text = chat(s, bearer, ACT)
        assert (status, cost) == (200, shown(REAL)), text
        got = views(s, bearer, team, day)
        want_day = 0 if window in ("day", "all") else REAL
        want_month = 0 if window in ("month", "all") else REAL
        assert (got["spend_per_day"], got["spend_per_month"]) == (want_day, want_month)
        assert (got["ledger"], got["gateway_spend_total"]) == (REAL, REAL)
        status, cost, _ = chat(s, bearer, "hi")
        assert (status, cost) == (200, shown(REAL))
        got = views(s, bearer, team, day)
        assert (got["spend_per_day"], got["spend_per_month"]) == (
            want_day + REAL,
            want_month + REAL,
        )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_redis_restart_between_reservation_and_settlement_settles_once(
    tmp_path: Any, stream: bool
) -> None:
    """Redis (persistent, as in production) restarts while a call is upstream: its
    reservation survives, and the settlement after the restart charges the real cost once."""
    team = "restart-" + secrets.token_hex(4)
    clock = pinned_clock()
    day = datetime.fromtimestamp(clock(), UTC).date().isoformat()
    proc = RedisProcess(data_dir=tmp_path / "redis").start()
    up = Upstream()

    def restart() -> None:
        proc.stop()
        proc.start()

    up.act = restart
    try:
        with metered_stack(proc.url, clock, up.app(), team, {"spend_per_day": 1000}) as s:
            bearer = token(s, clock, team=team, user="carol")
            status, _, text = chat(s, bearer, "hi", stream=stream)
            assert status == 200, text
            status, _, text = chat(s, bearer, ACT, stream=stream)
            assert status == 200, text
            assert up.acted == 1
            seen: dict[str, int] = {}

            def agree() -> bool:
                try:
                    seen.update(views(s, bearer, team, day))
                except AssertionError:
                    return False  # a 503 while the breaker is open
                return set(seen.values()) == {2 * REAL}

            try:
                wait_for(agree, timeout=5)
            except TimeoutError:
                pytest.fail(f"the views disagree: {seen}; each should be {2 * REAL}")
    finally:
        proc.stop()


def test_a_call_forwarded_while_its_reservation_reply_was_lost_is_settled_without_more_traffic(
    own_redis: RedisProcess,
) -> None:
    """store_down: allow. Redis freezes; a call's reservation is sent and its reply lost, so
    the call goes upstream unmetered. Redis thaws (and runs the reservation: the estimate is
    charged) while the call is still upstream; then the call ends. Its settlement, kept for
    when Redis is back, must then reach Redis: the budget, the ledger and the metrics show
    the call's real cost, without waiting for some later call of the same replica."""
    team = "unsure-" + secrets.token_hex(4)
    clock = pinned_clock()
    day = datetime.fromtimestamp(clock(), UTC).date().isoformat()
    assert own_redis.proc is not None
    release = threading.Event()
    arrived = threading.Event()

    async def chat_handler(request: Request) -> Response:
        doc = await request.json()
        if doc["messages"][0]["content"] == ACT:
            arrived.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
        return chat_answer(doc, USAGE)

    app = Starlette(routes=[Route("/v1/chat/completions", chat_handler, methods=["POST"])])
    with metered_stack(
        own_redis.url,
        clock,
        app,
        team,
        {"spend_per_day": 1000},
        pricing={"store_down": "allow"},
        redis={"socket_timeout": 0.5, "connect_timeout": 0.5},
    ) as s:
        bearer = token(s, clock, team=team, user="carol")
        status, cost, _ = chat(s, bearer, "hi")  # loads the scripts
        assert (status, cost) == (200, shown(REAL))
        own_redis.proc.send_signal(signal.SIGSTOP)
        result: list[tuple[int, str, str]] = []
        caller = threading.Thread(target=lambda: result.append(chat(s, bearer, ACT)))
        caller.start()
        try:
            assert arrived.wait(10), "the call never reached the upstream"
            own_redis.proc.send_signal(signal.SIGCONT)
            auth = {"Authorization": f"Bearer {bearer}"}
            wait_for(
                lambda: httpx2.get(s.v1 + "/gateway/quota", headers=auth).status_code == 200,
                message="Redis did not come back",
            )
        finally:
            release.set()
            caller.join(20)
        ((status, cost, text),) = result
        assert (status, cost) == (200, shown(REAL)), text
        seen: dict[str, int] = {}

        def agree() -> bool:
            seen.update(views(s, bearer, team, day))
            return set(seen.values()) == {2 * REAL}

        try:
            wait_for(agree, timeout=5)
        except TimeoutError:
            pytest.fail(f"the views disagree: {seen}; each should be {2 * REAL}")
