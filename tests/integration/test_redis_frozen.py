"""Redis trouble answers 503, fast (hardening, item 6).

A frozen Redis (SIGSTOP: connections stay open, nothing answers) is the hard case: a refused
connection fails at once, a frozen one waits out every timeout. The first call that sees it
trips the breaker; after that every route that needs Redis answers 503 with retry-after in
well under 50 ms, rate checks fail open (or closed) at once, and every request is answered —
also with a database number and a password, whose connection setup used to hang.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from gateway.dev.embedded_redis import RedisProcess
from tests.conftest import Stack, make_stack
from tests.servers import wait_for

LIMITS = {"requests_per_minute": 10_000, "concurrent_jobs": 10}
WAIT = 2.0  # the Redis socket timeout in these tests: what a call that waits for Redis costs
FAST = WAIT / 4  # a call that knows Redis is down answers well inside this


@pytest.fixture(params=["db0", "db3-password"])
def frozen_redis(request: pytest.FixtureRequest) -> Iterator[tuple[RedisProcess, str]]:
    password = secrets.token_hex(16)
    if request.param == "db0":
        proc = RedisProcess().start()
        url = proc.url
    else:
        proc = RedisProcess(extra_args=("--requirepass", password)).start()
        url = f"redis://:{password}@127.0.0.1:{proc.port}/3"
    try:
        yield proc, url
    finally:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGCONT)
        proc.stop()


def timed(fn: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def get(stack: Stack, path: str, token: str) -> httpx2.Response:
    return httpx2.get(stack.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_frozen_redis_answers_503_fast_on_every_route(
    frozen_redis: tuple[RedisProcess, str], fail_open: bool
) -> None:
    proc, url = frozen_redis
    teams = {"default": {}, "team-a": LIMITS}
    # A long socket timeout makes "waited for Redis" (2 s) and "knew it was down" (a few ms on
    # an idle machine; figures in docs/operations.md) impossible to confuse even on
    # a loaded CI machine.
    with make_stack(
        url,
        teams=teams,
        quota={"rate_fail_open": fail_open},
        redis={"socket_timeout": WAIT, "connect_timeout": WAIT, "pool_timeout": WAIT},
    ) as s:
        client = openai.OpenAI(base_url=s.v1, api_key=s.token(), max_retries=0)
        video = client.videos.create(prompt="before the freeze")
        admin = s.token(team="ops", roles=("gateway-admin",))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGSTOP)

        # The first call waits out one socket timeout, then the breaker knows.
        first, _ = timed(lambda: get(s, "/v1/gateway/quota", s.token()))
        assert first < WAIT + 1

        checks = {
            "/v1/gateway/quota": s.token(),
            f"/v1/videos/{video.id}": s.token(),
            "/v1/videos": s.token(),
            "/admin/v1/teams": admin,
            "/admin/v1/audit": admin,
        }
        for path, token in checks.items():
            seconds, r = timed(lambda p=path, t=token: get(s, p, t))
            assert seconds < FAST, path
            assert r.status_code == 503, path
            assert r.json()["error"]["code"] == "service_unavailable"
            assert r.headers["retry-after"] == "1"
            assert r.headers["x-request-id"]
        seconds, r = timed(
            lambda: httpx2.post(
                s.v1 + "/videos",
                json={"prompt": "during the freeze"},
                headers={"Authorization": f"Bearer {s.token()}"},
            )
        )
        assert (r.status_code, seconds < FAST) == (503, True)

        # Rate-checked pass-through: through at once when failing open, else a fast 503.
        seconds, r = timed(lambda: get(s, "/v1/models", s.token()))
        assert seconds < FAST
        assert r.status_code == (200 if fail_open else 503)

        # Many callers at once: every one is answered, none hangs on a stuck connection.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            started = time.monotonic()
            statuses = list(
                pool.map(lambda _: get(s, "/v1/videos", s.token()).status_code, range(64))
            )
        assert statuses == [503] * 64
        assert time.monotonic() - started < 4 * WAIT  # no caller waited on Redis

        ready = httpx2.get(s.url + "/readyz")
        assert ready.status_code == (200 if fail_open else 503)

        proc.proc.send_signal(signal.SIGCONT)

        def back() -> bool:
            return get(s, "/v1/gateway/quota", s.token()).status_code == 200

        wait_for(back, timeout=5)
        assert client.videos.retrieve(video.id).id == video.id
        assert httpx2.get(s.url + "/readyz").status_code == 200
        metrics = httpx2.get(s.url + "/metrics").text
        assert "gateway_redis_breaker_open 0.0" in metrics
        assert 'gateway_errors_total{code="service_unavailable"}' in metrics
        client.close()
