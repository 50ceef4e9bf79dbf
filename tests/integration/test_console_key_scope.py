"""A console session made with a gateway key acts as that key does on the API: a team-admin key
with models or limits of its own may not manage keys there either (docs/api-keys.md), or it
could mint a key without them. Plain HTTP against a real gateway, simulator and Redis."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import Stack, make_stack

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def team() -> str:
    return "scope-" + secrets.token_hex(4)


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    console = {"session_secret": secrets.token_urlsafe(32)}
    with make_stack(redis_url, teams={"default": {}, team: {}}, console=console) as s:
        yield s


def _key(stack: Stack, team: str, **doc: Any) -> dict[str, Any]:
    admin = stack.token(team="ops", user="root", roles=("gateway-admin",))
    r = httpx2.post(
        f"{stack.url}/admin/v1/teams/{team}/api-keys",
        json=doc,
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _csrf(client: httpx2.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@contextlib.contextmanager
def _signed_in(stack: Stack, token: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=stack.url, follow_redirects=False) as client:
        r = client.post(
            "/console/sign-in", data={"csrf": _csrf(client, "/console/sign-in"), "token": token}
        )
        assert r.status_code == 303, r.text
        yield client


def _names(stack: Stack, team: str) -> list[str]:
    admin = stack.token(team="ops", user="root", roles=("gateway-admin",))
    r = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}/api-keys",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200, r.text
    return sorted(k["name"] for k in r.json()["data"])


def test_a_scoped_key_manages_no_keys_in_the_console_either(stack: Stack, team: str) -> None:
    scoped = _key(
        stack,
        team,
        name="scoped-lead",
        roles=["team-admin"],
        models=["gpt-4o-mini"],
        limits={"requests_per_minute": 100},  # a limit of its own, not one this test meets
    )
    sibling = _key(stack, team, name="sibling")
    r = httpx2.post(
        f"{stack.v1}/gateway/api-keys",
        json={"name": "free"},
        headers={"Authorization": f"Bearer {scoped['key']}"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), r.text

    page = f"/console/teams/{team}"
    with _signed_in(stack, scoped["key"]) as client:
        r = client.post(page + "/api-keys", data={"csrf": _csrf(client, page), "name": "free"})
        assert (r.status_code, "cannot manage keys" in r.text) == (403, True), r.text
        for action in ("rotate", "revoke"):
            r = client.post(
                f"{page}/api-keys/{sibling['id']}/{action}",
                data={"csrf": _csrf(client, page), "grace_hours": "0"},
            )
            assert (r.status_code, "cannot manage keys" in r.text) == (403, True), r.text
    assert _names(stack, team) == ["scoped-lead", "sibling"]
    r = httpx2.get(f"{stack.v1}/models", headers={"Authorization": f"Bearer {sibling['key']}"})
    assert r.status_code == 200, "the sibling's secret still works: nothing was rotated"


def test_a_team_admin_key_without_a_scope_still_manages_keys_in_the_console(
    stack: Stack, team: str
) -> None:
    lead = _key(stack, team, name="lead", roles=["team-admin"])
    page = f"/console/teams/{team}"
    with _signed_in(stack, lead["key"]) as client:
        r = client.post(page + "/api-keys", data={"csrf": _csrf(client, page), "name": "made"})
        assert r.status_code == 201, r.text
    assert _names(stack, team) == ["lead", "made"]
