"""Redis answers, but refuses what the gateway asks: a failover left the gateway on a replica
(READONLY), or it is at maxmemory (OOM). For the gateway that is Redis down, exactly as when
it is unreachable: a rate check fails open or closed by config (never a 500), the refusal is
counted in ``gateway_redis_errors_total``, and a metered call whose settlement Redis refuses
still answers whole, its estimate left charged."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
import redis as redis_sync
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dev.embedded_redis import RedisProcess
from gateway.store.client import store_down
from tests.conftest import make_stack
from tests.metering_views import chat_answer
from tests.servers import run_server

PRICES = {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def read_only(r: redis_sync.Redis) -> Callable[[], Any]:
    r.replicaof("127.0.0.1", 1)  # a replica of nothing: writes refused
    return lambda: r.replicaof("NO", "ONE")


def out_of_memory(r: redis_sync.Redis) -> Callable[[], Any]:
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    return lambda: r.config_set("maxmemory", "0")


REFUSALS = {"readonly": read_only, "oom": out_of_memory}


def errors_counted(url: str) -> float:
    text = httpx2.get(url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_redis_errors_total{")
    )


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("fail_open", [True, False])
def test_a_rate_check_redis_refuses_fails_open_or_closed_never_500(
    own_redis: RedisProcess, refusal: str, fail_open: bool
) -> None:
    team = "rr-" + secrets.token_hex(4)
    r = redis_sync.Redis.from_url(own_redis.url)
    with make_stack(
        own_redis.url,
        teams={"default": {}, team: {"requests_per_minute": 1000}},
        quota={"rate_fail_open": fail_open},
    ) as s:
        auth = {"Authorization": f"Bearer {s.token(team=team)}"}
        assert httpx2.get(s.v1 + "/models", headers=auth).status_code == 200
        before = errors_counted(s.url)
        undo = REFUSALS[refusal](r)
        try:
            for _ in range(3):
                got = httpx2.get(s.v1 + "/models", headers=auth)
                if fail_open:
                    assert got.status_code == 200
                else:
                    assert got.status_code == 503, got.text
                    assert got.json()["error"]["code"] == "service_unavailable"
                    assert got.headers["retry-after"] == "1"
            assert errors_counted(s.url) > before
        finally:
            undo()
        r.close()


class Upstream:
    """Answers a chat call (JSON or a stream with usage) after making Redis refuse writes: the
    reservation went through, the settlement will not."""

    def __init__(self, refuse: Callable[[], Any]) -> None:
        self.refuse = refuse
        self.undo: list[Callable[[], Any]] = []

    async def chat(self, request: Request) -> Response:
        doc = await request.json()
        self.undo.append(self.refuse())
        return chat_answer(doc, USAGE)


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("stream", [False, True])
def test_a_settlement_redis_refuses_still_answers_whole(
    own_redis: RedisProcess, refusal: str, stream: bool
) -> None:
    team = "rs-" + secrets.token_hex(4)
    r = redis_sync.Redis.from_url(own_redis.url)
    upstream = Upstream(lambda: REFUSALS[refusal](r))
    app = Starlette(routes=[Route("/v1/chat/completions", upstream.chat, methods=["POST"])])
    try:
        with (
            run_server(app) as sim_url,
            make_stack(
                own_redis.url,
                sim_url=sim_url,
                teams={"default": {}, team: {"spend_per_day": 100}},
                pricing={"models": PRICES},
            ) as s,
        ):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            auth = {"Authorization": f"Bearer {s.token(team=team)}"}
            if stream:
                with httpx2.stream(
                    "POST", s.v1 + "/chat/completions", headers=auth, json={**body, "stream": True}
                ) as got:
                    assert got.status_code == 200
                    text = got.read().decode()
                assert text.rstrip().endswith("data: [DONE]")
                assert '"usage"' not in text  # the caller did not ask for it
            else:
                got = httpx2.post(s.v1 + "/chat/completions", headers=auth, json=body)
                assert got.status_code == 200, got.text
                assert got.json()["choices"][0]["message"]["content"] == "hi"
                # Not the real cost (9 and 12 tokens): the estimate, which stays charged.
                real = (9 * 0.15 + 12 * 0.6) / 1_000_000
                assert float(got.headers["x-gateway-cost"]) > real
            assert upstream.undo  # the upstream was reached, and Redis refused after it
    finally:
        for undo in upstream.undo:
            undo()
        r.close()


@pytest.mark.parametrize(
    "text",
    [
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_refusals_redis_answers_by_code_are_redis_down_alone_or_in_a_pipeline(text: str) -> None:
    """READONLY and OOM have classes of their own; these come as plain ResponseErrors, and
    redis-py rewrites a pipeline's as "Command # 1 (...) of pipeline caused error: ..."."""
    assert store_down(ResponseError(text))
    assert store_down(ResponseError(f"Command # 1 (SET a b) of pipeline caused error: {text}"))
    # A script's own error, or a wrong type, stays a bug (a 500), also from a pipeline.
    for bug in ("WRONGTYPE Operation against a key holding the wrong kind of value", "ERR x"):
        assert not store_down(ResponseError(bug))
        assert not store_down(ResponseError(f"Command # 2 (GET k) of pipeline caused error: {bug}"))


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("action", ["disable", "enable"])
def test_an_admin_decision_on_a_key_redis_refuses_is_503_and_changes_nothing(
    own_redis: RedisProcess, refusal: str, action: str
) -> None:
    """A decision Redis does not take would hold on one replica only (and its refreshes would
    undo it): the admin is told 503, and the key keeps the state it had."""
    r = redis_sync.Redis.from_url(own_redis.url)
    with make_stack(own_redis.url, key_ids=("primary", "secondary")) as s:
        admin = {"Authorization": f"Bearer {s.token(team='ops', roles=('gateway-admin',))}"}
        if action == "enable":
            got = httpx2.post(s.url + "/admin/v1/upstream-keys/primary/disable", headers=admin)
            assert got.status_code == 200, got.text
        before = s.app.pool.state("primary")
        undo = REFUSALS[refusal](r)
        try:
            got = httpx2.post(s.url + f"/admin/v1/upstream-keys/primary/{action}", headers=admin)
            assert got.status_code == 503, got.text
            assert got.json()["error"]["code"] == "service_unavailable"
            assert got.headers["retry-after"] == "1"
            assert s.app.pool.state("primary") == before
        finally:
            undo()
        listed = httpx2.get(s.url + "/admin/v1/upstream-keys", headers=admin)
        assert {k["id"]: k["state"] for k in listed.json()["data"]}["primary"] == before
    r.close()
