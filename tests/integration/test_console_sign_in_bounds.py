"""One valid token buys neither unbounded console sessions nor console traffic outside its
team's request rate: each sign-in and each signed-in request counts like an API call, and one
person holds at most ``MAX_SESSIONS`` sessions. Plain HTTP against a real gateway, simulator
and Redis."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx2
import pytest
import redis as redis_sync

from gateway.console.sessions import MAX_SESSIONS
from gateway.store.keys import TeamKeys
from tests.conftest import Stack, make_stack

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
RPM = 5


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    console = {"session_secret": secrets.token_urlsafe(32)}
    teams = {"default": {}, "team-a": {"requests_per_minute": RPM}, "team-b": {}}
    with make_stack(redis_url, teams=teams, console=console) as s:
        yield s


def _sessions(redis_url: str) -> int:
    r = redis_sync.Redis.from_url(redis_url)
    try:
        return sum(1 for _ in r.scan_iter("gw:console:session:*", count=1000))
    finally:
        r.close()


def _sign_in_again_and_again(stack: Stack, token: str, times: int) -> list[int]:
    """Sign in ``times`` times with one sign-in form, never sending back the session cookie
    (so no sign-in replaces the one before it)."""
    with httpx2.Client(base_url=stack.url, follow_redirects=False) as form:
        page = form.get("/console/sign-in")
        nonce_cookie = page.headers["set-cookie"].split(";", 1)[0]
        found = _CSRF.search(page.text)
        assert found is not None
    statuses = []
    with httpx2.Client(base_url=stack.url, follow_redirects=False) as http:
        for _ in range(times):
            r = http.post(
                "/console/sign-in",
                content=f"csrf={found.group(1)}&token={token}".encode(),
                headers={
                    "cookie": nonce_cookie,
                    "content-type": "application/x-www-form-urlencoded",
                },
            )
            statuses.append(r.status_code)
            http.cookies.clear()
    return statuses


def test_sign_ins_count_against_the_request_rate(stack: Stack, redis_url: str) -> None:
    statuses = _sign_in_again_and_again(stack, stack.token(team="team-a", user="mallory"), 200)
    assert statuses.count(303) == RPM
    assert set(statuses[RPM:]) == {429}  # the sign-in form again, saying why
    assert _sessions(redis_url) == RPM


def test_one_person_holds_a_bounded_number_of_sessions(stack: Stack, redis_url: str) -> None:
    statuses = _sign_in_again_and_again(stack, stack.token(team="team-b", user="bob"), 30)
    assert statuses == [303] * 30  # team-b's rate is the default, far above 30
    assert _sessions(redis_url) == MAX_SESSIONS  # the oldest ten were ended
    r = redis_sync.Redis.from_url(redis_url)
    try:
        index = TeamKeys("team-b").console_sessions("bob")
        assert r.zcard(index) == MAX_SESSIONS
        assert r.ttl(index) > 0
    finally:
        r.close()


def test_console_pages_count_against_the_request_rate(stack: Stack) -> None:
    token = stack.token(team="team-a", user="mallory")
    with httpx2.Client(base_url=stack.url, follow_redirects=False) as client:
        page = client.get("/console/sign-in")
        found = _CSRF.search(page.text)
        assert found is not None
        r = client.post("/console/sign-in", data={"csrf": found.group(1), "token": token})
        assert r.status_code == 303, r.text
        answers = [client.get("/console") for _ in range(30)]
    served = [a.status_code for a in answers]
    # The sign-in was the first of the team's RPM requests this minute.
    assert served == [200] * (RPM - 1) + [429] * (31 - RPM)
    refused = answers[-1]
    assert "requests per minute" in refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-security-policy"].startswith("default-src 'self'")
