"""Every error is rendered once, counted and traceable (hardening, items 11 and 12).

401, 413, 429, 431, upstream errors and 500s all reach ``gateway_errors_total`` by code, every
answer (a 500 included) carries ``x-request-id``, and the access log line of a refused request
names the reason, never the token. Readiness means "this replica can serve".
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest
import redis as redis_sync

from gateway.app import create_app
from gateway.auth.tokens import mint_token
from gateway.settings import Settings
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from gateway.web.protocol import HeadLimits
from tests.conftest import gateway_config
from tests.rawhttp import raw_request
from tests.servers import run_server, wait_for


@dataclass
class Live:
    url: str
    sim: object
    settings: Settings
    secret: str
    log: io.StringIO

    def token(self, team: str = "team-a", **kw: object) -> str:
        return mint_token(self.secret, team=team, user="alice", **kw)  # type: ignore[arg-type]

    def get(self, path: str, token: str | None = None) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.get(self.url + path, headers=headers)

    def errors(self) -> dict[str, float]:
        text = httpx2.get(self.url + "/metrics").text
        return {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^gateway_errors_total\{code="([^"]+)"\} (\S+)$', text, re.M)
        }

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines() if line]


@pytest.fixture
def live(redis_url: str) -> Iterator[Live]:
    keys = {"primary": "sk-primary-" + "a1" * 12}
    sim_app = create_sim_app(SimConfig(keys=tuple(keys.values())))
    secret = "s" * 48
    with run_server(sim_app, server_header=False) as sim_url:
        settings = gateway_config(
            sim_url,
            redis_url,
            secret,
            keys,
            server={"access_log": "json", "max_body_bytes": 4096, "max_header_bytes": 2048},
            teams={"default": {}, "team-a": {}, "limited": {"requests_per_minute": 1}},
        )
        log = io.StringIO()
        with run_server(create_app(settings, log_stream=log), server_header=False) as url:
            yield Live(url, sim_app.state.sim, settings, secret, log)


def test_every_error_is_counted_by_code_and_carries_a_request_id(live: Live) -> None:
    before = live.errors()
    answers = [
        live.get("/v1/models"),  # 401: no token
        live.get("/v1/models", live.token(ttl_seconds=-120)),  # 401: expired
        live.get("/v1/models", live.token(team="limited")),  # allowed
        live.get("/v1/models", live.token(team="limited")),  # 429
        live.get("/v1/files", live.token()),  # 404 unsupported_endpoint
        httpx2.post(
            live.url + "/v1/chat/completions",
            content=b"x" * 5000,
            headers={"Authorization": f"Bearer {live.token()}", "Content-Type": "application/json"},
        ),  # 413
        httpx2.get(
            live.url + "/v1/models",
            headers={"Authorization": f"Bearer {live.token()}", "X-Big": "a" * 3000},
        ),  # 431
    ]
    live.sim.add_fault(kind="status_500", count=1, path_prefix="/v1/chat")  # type: ignore[attr-defined]
    answers.append(
        httpx2.post(
            live.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {live.token()}"},
        )
    )  # upstream 500
    assert [a.status_code for a in answers] == [401, 401, 200, 429, 404, 413, 431, 500]
    assert all(a.headers.get("x-request-id") for a in answers)

    def counted() -> bool:
        after = live.errors()
        grown = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        return grown == {
            "invalid_api_key": 2,
            "rate_limit_exceeded": 1,
            "unsupported_endpoint": 1,
            "request_too_large": 1,
            "request_header_fields_too_large": 1,
            "internal_error": 1,  # the upstream's own code, kept as the caller sees it
        }

    try:
        wait_for(counted, timeout=5)
    except TimeoutError:
        after = live.errors()
        raise AssertionError({c: after.get(c, 0) - before.get(c, 0) for c in after}) from None


def test_a_500_is_rendered_counted_and_traceable(live: Live, redis_url: str) -> None:
    # A team whose limits hash has been overwritten by hand with the wrong type: a Redis
    # error no code path expects, so the gateway's own 500.
    client = redis_sync.Redis.from_url(redis_url)
    client.set("gw:{team:broken}:limits", "not a hash")
    client.close()
    r = live.get("/v1/gateway/quota", live.token(team="broken"))
    assert r.status_code == 500
    assert r.json()["error"] == {
        "message": "The gateway failed to handle the request.",
        "type": "api_error",
        "param": None,
        "code": "internal_error",
    }
    rid = r.headers["x-request-id"]
    assert rid
    wait_for(lambda: live.errors().get("internal_error") == 1, timeout=5)
    wait_for(lambda: any(line.get("request_id") == rid for line in live.log_lines()), timeout=5)
    line = next(x for x in live.log_lines() if x["request_id"] == rid)
    assert (line["status"], line["reason"]) == (500, "internal_error")


def test_access_log_names_the_reason_never_the_token(live: Live) -> None:
    expired = live.token(ttl_seconds=-120)
    live.get("/v1/models", expired)
    live.get("/v1/models", live.token(team="limited"))
    live.get("/v1/models", live.token(team="limited"))
    bad_sig = live.token()[:-4] + "AAAA"
    live.get("/v1/models", bad_sig)

    def reasons() -> list[object]:
        return [line.get("reason") for line in live.log_lines()]

    wait_for(lambda: len(reasons()) == 4, timeout=5)
    assert reasons() == ["auth: expired", None, "quota: rate", "auth: bad_signature"]
    text = live.log.getvalue()
    for secret in (expired, bad_sig, live.secret):
        assert secret not in text


def test_readiness_ignores_the_key_pool(live: Live) -> None:
    admin = live.token(team="ops", roles=["gateway-admin"])
    r = httpx2.post(
        live.url + "/admin/v1/upstream-keys/primary/disable",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200
    ready = live.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "upstream_keys": "none usable"}
    # and the caller gets the gateway's clear 503, not an ingress error
    r = live.get("/v1/models", live.token())
    assert (r.status_code, r.json()["error"]["code"]) == (503, "no_upstream_key_available")


def test_what_the_server_refuses_itself_is_shaped_counted_and_logged(redis_url: str) -> None:
    """Bytes that are not HTTP (a raw 0xff in the query, a Content-Length of "abc") got
    uvicorn's plain-text 400, and those and a head over the server's bound never reached the
    app: no metric, no log line. Now they answer the OpenAI shape and are counted and logged
    like any other answer."""
    keys = {"primary": "sk-primary-" + "b2" * 12}
    sim_app = create_sim_app(SimConfig(keys=tuple(keys.values())))
    with run_server(sim_app, server_header=False) as sim_url:
        settings = gateway_config(sim_url, redis_url, "s" * 48, keys, server={"access_log": "json"})
        log = io.StringIO()
        app = create_app(settings, log_stream=log)
        limits = HeadLimits(max_header_bytes=4096)
        with run_server(app, server_header=False, head_limits=limits) as url:
            live = Live(url, sim_app.state.sim, settings, "s" * 48, log)
            before = live.errors()
            answers = [
                raw_request(url, "GET /v1/models?q=\xff HTTP/1.1\nHost: gw"),
                raw_request(
                    url, "POST /v1/chat/completions HTTP/1.1\nHost: gw\nContent-Length: abc"
                ),
                raw_request(url, "GET /v1/models HTTP/1.1\nHost: gw\nX-Big: " + "a" * 8000),
                # A malformed chunk in the body of a request the app is already reading: it
                # waited for a response the app could never give (the connection hung).
                raw_request(
                    url,
                    "POST /v1/chat/completions HTTP/1.1\nHost: gw\n"
                    f"Authorization: Bearer {live.token()}\nContent-Type: application/json\n"
                    "Transfer-Encoding: chunked",
                    b'5\r\n{"a":\r\nzz\r\n',
                    timeout=5,
                ),
            ]
            assert [a.status for a in answers] == [400, 400, 431, 400]
            assert live.sim.requests_for("/") == []  # type: ignore[attr-defined]  # none upstream
            for a in answers:
                assert a.headers["content-type"] == "application/json"
                assert set(a.json()["error"]) == {"message", "type", "param", "code"}
            assert [a.json()["error"]["code"] for a in answers] == [
                "invalid_request",
                "invalid_request",
                "request_header_fields_too_large",
                "invalid_request",
            ]

            def counted() -> bool:
                after = live.errors()
                grown = {c: after.get(c, 0) - before.get(c, 0) for c in after}
                return {k: v for k, v in grown.items() if v} == {
                    "invalid_request": 3,
                    "request_header_fields_too_large": 1,
                }

            wait_for(counted, timeout=5)
            wait_for(lambda: len(live.log_lines()) >= 4, timeout=5)
            lines = [ln for ln in live.log_lines() if ln["route"] == "-"]
            assert [(ln["status"], ln["reason"]) for ln in lines] == [
                (400, "invalid_request"),
                (400, "invalid_request"),
                (431, "request_header_fields_too_large"),
                (400, "invalid_request"),
            ]
