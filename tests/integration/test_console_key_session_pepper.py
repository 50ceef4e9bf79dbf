"""A console session made with a gateway key "ends as soon as the key no longer
authenticates" (docs/console.md). Changing the pepper (auth.api_key_pepper: every key stops
authenticating), or removing it (keys off), must end such sessions too, though the digest kept
with the session and the one in the key's record, both made under the old pepper, still match.
Plain HTTP against a real gateway started twice (the pepper is config), a simulator and Redis."""

from __future__ import annotations

import re
import secrets

import httpx2
import pytest

from tests.conftest import make_stack

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _csrf(client: httpx2.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.mark.parametrize(
    "new_pepper", [secrets.token_urlsafe(32), None], ids=["new-pepper", "no-pepper"]
)
def test_a_key_session_ends_when_the_pepper_no_longer_admits_the_key(
    redis_url: str, new_pepper: str | None
) -> None:
    team = "pep-" + secrets.token_hex(4)
    console = {"session_secret": secrets.token_urlsafe(32)}
    teams: dict[str, dict[str, object]] = {"default": {}, team: {}}
    with make_stack(redis_url, teams=teams, console=console) as before:
        admin = before.token(team="ops", user="root", roles=("gateway-admin",))
        made = httpx2.post(
            f"{before.url}/admin/v1/teams/{team}/api-keys",
            json={"name": "lead", "roles": ["team-admin"]},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()
        client = httpx2.Client(base_url=before.url, follow_redirects=False)
        r = client.post(
            "/console/sign-in",
            data={"csrf": _csrf(client, "/console/sign-in"), "token": made["key"]},
        )
        assert r.status_code == 303, r.text
        session = client.cookies["gw_console"]
        client.close()
    auth = {"api_key_pepper": new_pepper} if new_pepper else {"api_key_pepper": None}
    with make_stack(redis_url, teams=teams, console=console, auth=auth) as after:
        api = httpx2.get(f"{after.v1}/models", headers={"Authorization": f"Bearer {made['key']}"})
        assert api.status_code == 401  # the API no longer admits the key
        with httpx2.Client(
            base_url=after.url, follow_redirects=False, cookies={"gw_console": session}
        ) as client:
            page = client.get(f"/console/teams/{team}")
            assert (page.status_code, page.headers.get("location")) == (
                303,
                "/console/sign-in",
            ), "the key's console session still stands"


def test_a_key_the_api_refuses_cannot_mint_a_working_key_through_its_session(
    redis_url: str,
) -> None:
    """The impact: after the pepper changed (say, after it leaked), the old team-admin key is
    refused by the API, yet its console session still creates a key that works."""
    team = "pep-" + secrets.token_hex(4)
    console = {"session_secret": secrets.token_urlsafe(32)}
    teams: dict[str, dict[str, object]] = {"default": {}, team: {}}
    with make_stack(redis_url, teams=teams, console=console) as before:
        admin = before.token(team="ops", user="root", roles=("gateway-admin",))
        made = httpx2.post(
            f"{before.url}/admin/v1/teams/{team}/api-keys",
            json={"name": "lead", "roles": ["team-admin"]},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()
        with httpx2.Client(base_url=before.url, follow_redirects=False) as client:
            r = client.post(
                "/console/sign-in",
                data={"csrf": _csrf(client, "/console/sign-in"), "token": made["key"]},
            )
            assert r.status_code == 303, r.text
            session = client.cookies["gw_console"]
    auth = {"api_key_pepper": secrets.token_urlsafe(32)}
    with make_stack(redis_url, teams=teams, console=console, auth=auth) as after:
        old = httpx2.get(f"{after.v1}/models", headers={"Authorization": f"Bearer {made['key']}"})
        assert old.status_code == 401
        page = f"/console/teams/{team}"
        with httpx2.Client(
            base_url=after.url, follow_redirects=False, cookies={"gw_console": session}
        ) as client:
            r = client.get(page)
            if r.status_code == 200:
                r = client.post(
                    page + "/api-keys", data={"csrf": _csrf(client, page), "name": "fresh"}
                )
        minted = re.search(r"gwk_[0-9a-f]{16}_[0-9a-f]{48}", r.text)
        assert minted is None, "a key the API refuses minted a working key: " + str(
            httpx2.get(
                f"{after.v1}/models", headers={"Authorization": f"Bearer {minted.group(0)}"}
            ).status_code
        )
