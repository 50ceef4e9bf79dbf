"""RateLimitMiddleware around a recording app, with a stub in place of the quota service."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.api_keys import KeyScope
from gateway.auth.principal import Principal
from gateway.errors import QuotaExceeded
from gateway.quota.middleware import RateLimitMiddleware
from gateway.web.asgi import Message, Receive, Scope, Send

RATE_HEADERS = [(b"x-ratelimit-limit-requests", b"60"), (b"x-ratelimit-remaining-requests", b"59")]
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
BODY = {"type": "http.response.body", "body": b"ok"}


class StubRate:
    """The rate limiter: ``check`` answers ``headers`` or raises ``error``; remembers who asked."""

    def __init__(self, headers: list[tuple[bytes, bytes]], error: Exception | None) -> None:
        self.headers = headers
        self.error = error
        self.teams: list[str] = []

    async def check(self, team: str, key: KeyScope | None = None) -> list[tuple[bytes, bytes]]:
        self.teams.append(team)
        if self.error is not None:
            raise self.error
        return list(self.headers)


class StubQuota:
    """The part of QuotaService the middleware uses."""

    def __init__(self, headers: list[tuple[bytes, bytes]], error: Exception | None = None) -> None:
        self.rate = StubRate(headers, error)


class App:
    """Answers START then BODY, and keeps the ``send`` it was handed."""

    def __init__(self) -> None:
        self.calls: list[Send] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(send)
        await send(dict(START))
        await send(dict(BODY))


def http_scope(path: str = "/v1/models", principal: Principal | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "headers": []}
    if principal is not None:
        scope["principal"] = principal
    return scope


ALICE = Principal(team="team-a", user="alice", roles=frozenset())


async def receive() -> Message:
    raise AssertionError("the middleware never reads the request")


def middleware(app: App, quota: StubQuota) -> RateLimitMiddleware:
    return RateLimitMiddleware(app, quota=quota, public_paths={"/healthz"})  # type: ignore[arg-type]


async def test_the_rate_headers_are_appended_to_the_start_message() -> None:
    app, quota, sent = App(), StubQuota(RATE_HEADERS), []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(app, quota)(http_scope(principal=ALICE), receive, send)
    assert quota.rate.teams == ["team-a"]
    assert sent == [
        {**START, "headers": [(b"content-type", b"text/plain"), *RATE_HEADERS]},
        BODY,
    ]


async def test_a_start_message_without_headers_gets_only_the_rate_headers() -> None:
    quota, sent = StubQuota(RATE_HEADERS), []

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        sent.append(message)

    mw = RateLimitMiddleware(bare, quota=quota, public_paths=())  # type: ignore[arg-type]
    await mw(http_scope(principal=ALICE), receive, send)
    assert sent[0] == {"type": "http.response.start", "status": 204, "headers": RATE_HEADERS}


async def test_quota_exceeded_propagates_and_the_app_is_never_called() -> None:
    refusal = QuotaExceeded("Team 'team-a' is over its limit.", headers={"retry-after": "3"})
    app, quota, sent = App(), StubQuota(RATE_HEADERS, error=refusal), []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(QuotaExceeded) as err:
        await middleware(app, quota)(http_scope(principal=ALICE), receive, send)
    assert err.value is refusal  # rendered once, by the error middleware outside
    assert app.calls == []
    assert sent == []


@pytest.mark.parametrize(
    "scope",
    [
        http_scope(),  # nobody authenticated: nothing to count against
        http_scope("/healthz", principal=ALICE),  # a public path is never counted
        {"type": "lifespan", "principal": ALICE},
    ],
)
async def test_without_a_principal_or_on_a_public_path_the_request_is_untouched(
    scope: dict[str, Any],
) -> None:
    app, quota = App(), StubQuota(RATE_HEADERS)

    async def send(message: Message) -> None:
        pass

    await middleware(app, quota)(scope, receive, send)
    assert quota.rate.teams == []
    assert app.calls == [send]  # the server's own send, not a wrapper


async def test_no_rate_headers_means_the_send_is_not_wrapped() -> None:
    app, quota = App(), StubQuota([])

    async def send(message: Message) -> None:
        pass

    await middleware(app, quota)(http_scope(principal=ALICE), receive, send)
    assert quota.rate.teams == ["team-a"]
    assert app.calls == [send]
