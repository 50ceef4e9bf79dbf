"""A team admin's key changes go to the team's own audit stream "so however often a team
rotates its keys it cannot push anyone else's entries out" (docs/api-keys.md). Every reader
must still find an admin's older entry after one team admin rotated their own key past every
page: GET /admin/v1/audit filtered, or paged on with its cursor, and the console's audit page.
Plain HTTP against a real gateway, simulator and Redis."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import Stack, make_stack

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_OLDER = re.compile(r'<a href="([^"]+)" rel="next">')
SHOWN = "<td><code>limits.merge</code></td>"  # a row, not the action filter's option


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    console = {"session_secret": secrets.token_urlsafe(32)}
    with make_stack(redis_url, console=console) as s:
        yield s


def test_a_team_admins_churn_does_not_hide_an_admins_entry(stack: Stack) -> None:
    admin_token = stack.token("ops", "root", ("gateway-admin",))
    admin = {"Authorization": f"Bearer {admin_token}"}
    lead = {"Authorization": f"Bearer {stack.token('team-a', 'mallory', ('team-admin',))}"}
    # A team of its own: Redis outlives this test's stack, and later tests use team-b.
    team = "audited-" + secrets.token_hex(4)
    r = httpx2.patch(
        f"{stack.url}/admin/v1/teams/{team}/limits", json={"spend_per_day": 0}, headers=admin
    )
    assert r.status_code == 200, r.text
    made = httpx2.post(f"{stack.v1}/gateway/api-keys", json={"name": "ci"}, headers=lead).json()
    with httpx2.Client(base_url=stack.v1, headers=lead) as client:
        for _ in range(1001):
            r = client.post(f"/gateway/api-keys/{made['id']}/rotate", json={"grace_seconds": 0})
            assert r.status_code == 200, r.text

    with httpx2.Client(base_url=stack.url + "/admin/v1", headers=admin) as api:
        newest = api.get("/audit", params={"limit": 1000}).json()
        assert {e["actor"]["user"] for e in newest["data"]} == {"mallory"}  # the churn
        assert newest["has_more"] is True
        # Filtered on the server before the page is cut: the admin's entry is the first.
        mine = api.get("/audit", params={"actor": "ops/root"}).json()
        assert [(e["action"], e["actor"]["user"]) for e in mine["data"]] == [
            ("limits.merge", "root")
        ]
        assert mine["has_more"] is False
        # Or paged on: the next page, from the cursor, reaches it.
        older = api.get("/audit", params={"limit": 1000, "before": newest["next_before"]}).json()
        assert ("limits.merge", "root") in [
            (e["action"], e["actor"]["user"]) for e in older["data"]
        ]
        bad = api.get("/audit", params={"before": "latest"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_cursor"
        assert bad.json()["error"]["param"] == "before"

    with httpx2.Client(base_url=stack.url, follow_redirects=False) as browser:
        form = browser.get("/console/sign-in")
        nonce = _CSRF.search(form.text)
        assert nonce is not None
        r = browser.post("/console/sign-in", data={"csrf": nonce.group(1), "token": admin_token})
        assert r.status_code == 303, r.text
        page = browser.get("/console/audit", params={"actor": "ops/root"})
        assert page.status_code == 200
        assert SHOWN in page.text
        # Unfiltered, the newest page is the churn, and its "older" links lead to the entry.
        url, pages = "/console/audit", 0
        while SHOWN not in (text := browser.get(url).text):
            link = _OLDER.search(text)
            assert link is not None, "no older page, and the admin's entry not yet shown"
            url = link.group(1).replace("&amp;", "&")
            pages += 1
        assert pages >= 1
        assert browser.get("/console/audit?before=x").status_code == 400
