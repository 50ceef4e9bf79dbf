"""The console as people use it, in headless Chromium: sign in with a token, or with one click
through the company IdP (OpenID Connect); change a team's limit in a form and see the next SDK
call meet it; make an API key in the page, use it, revoke it there; watch a finished video
through the gateway; and a team member kept to their own team (404) and to forms of their own
session (403). Each main page is screenshotted."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.browser.conftest import ADMIN, TEAM_ADMIN, Console, ConsoleStack
from tests.servers import wait_for

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
KEY = re.compile(r"gwk_[0-9a-f]{16}_[0-9a-f]{48}")


@pytest.fixture
def console(driver: webdriver.Chrome, console_stack: ConsoleStack) -> Iterator[Console]:
    driver.set_window_size(1280, 900)
    yield Console(driver, console_stack)
    driver.delete_all_cookies()


def admin_token(cs: ConsoleStack) -> str:
    return cs.stack.token(team="ops", user="root", roles=(ADMIN,))


def sdk(cs: ConsoleStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=cs.stack.v1, api_key=key, max_retries=0)


def chat(cs: ConsoleStack, key: str) -> None:
    with sdk(cs, key) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_sign_in_with_a_token_then_every_main_page(console: Console) -> None:
    cs = console.cs
    chat(cs, cs.stack.token(team="team-a", user="alice"))  # something to show
    console.open("/console/teams")
    assert console.driver.current_url.endswith("/console/sign-in")  # no session: sign in
    console.shot("sign-in")
    console.sign_in(admin_token(cs))
    assert console.h1() == "Overview"
    assert "team-a" in console.text()
    assert "gpt-4o-mini" in console.text()  # top models
    console.shot("overview")
    pages = {
        "teams": ("/console/teams", "Teams"),
        "team": ("/console/teams/team-a", "Team team-a"),
        "jobs": ("/console/jobs", "Video jobs"),
        "keys": ("/console/keys", "Upstream keys"),
        "audit": ("/console/audit", "Audit log"),
    }
    served_in: dict[str, float] = {}
    for name, (path, title) in pages.items():
        console.open(path)
        assert console.h1() == title, name
        console.shot(name)
        served_in[name] = console.driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return n.responseEnd - n.requestStart"
        )
    print("console pages served in (ms):", served_in)  # shown with -s
    # The pages keep to their own Content-Security-Policy: nothing was blocked.
    blocked = [
        e["message"]
        for e in console.browser_log()
        if "Content Security Policy" in e["message"] or "Refused to" in e["message"]
    ]
    assert blocked == []
    # Generous for a shared CI machine; on a quiet one these take a few milliseconds.
    assert max(served_in.values()) < 1000, served_in
    console.open("/console/teams/team-a")
    assert console.driver.find_elements(By.CSS_SELECTOR, "figure.chart svg rect")  # the chart
    # 375 px wide: nothing but the tables' own scrollers may be wider than the screen.
    console.driver.set_window_size(375, 800)
    for path in ("/console", "/console/teams/team-a"):
        console.open(path)
        wide = console.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert wide <= 0, (path, wide)
    console.shot("team-375px")
    # The browser holds nothing but the signed session cookie, which script cannot read.
    (cookie,) = console.driver.get_cookies()
    assert cookie["name"] == "gw_console"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert console.driver.execute_script("return document.cookie") == ""
    # Signing out ends the session on the server too: the old cookie opens nothing.
    old = cookie["value"]
    console.submit("form.who button")
    assert console.driver.current_url.endswith("/console/sign-in")
    r = httpx2.get(cs.url + "/console", cookies={"gw_console": old})
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in"


def test_sign_in_through_the_idp_with_one_click(console: Console) -> None:
    cs = console.cs
    cs.idp.reset(sub="olga", team="team-b", roles=[])
    cs.idp.login_page = True
    try:
        console.driver.delete_all_cookies()
        console.open("/console/sign-in")
        button = console.driver.find_element(By.ID, "oidc-sign-in")
        assert button.text == "Sign in with Test IdP"
        console.shot("sign-in-oidc")
        button.click()
        # At the IdP, another site: the way back starts there, so the browser sends only
        # Lax cookies with it (the binding), and a Strict session cookie set on that answer
        # comes along only from the console's own "signed in" page onwards.
        wait_for(lambda: console.driver.current_url.startswith(cs.idp.issuer), timeout=10)
        console.click_when_there("continue")
        wait_for(lambda: console.driver.current_url.endswith("/console"), timeout=10)
        console.arrive("Overview")
        assert "olga · team-b" in console.text()
        assert "team member" in console.driver.page_source  # not an admin
        # The browser keeps the session alone: the sign-in form's nonce and the binding to
        # the IdP's answer are gone (every path and site, not only this page's).
        every = console.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        assert {c["name"] for c in every} == {"gw_console"}
        console.open("/console/teams/team-b")
        assert console.h1() == "Team team-b"
        console.open("/console/teams/team-a")
        assert console.h1().endswith("Not found")  # a member of team-b only
        assert len(cs.idp.token_requests) == 1
    finally:
        cs.idp.reset()


def test_pages_carry_the_security_headers(console_stack: ConsoleStack) -> None:
    r = httpx2.get(console_stack.url + "/console/sign-in")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"
    # A bad token signs nobody in, and says so.
    nonce = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert nonce is not None
    bad = httpx2.post(
        console_stack.url + "/console/sign-in",
        data={"csrf": nonce.group(1), "token": "not-a-token"},
        cookies=dict(r.cookies),
    )
    assert bad.status_code == 401
    assert "not accepted" in bad.text
    assert "gw_console=" not in bad.headers.get("set-cookie", "").replace("gw_console_signin", "")


def test_a_limit_set_in_the_page_binds_the_next_sdk_call(console: Console) -> None:
    cs = console.cs
    member = cs.stack.token(team="team-b", user="bob")
    chat(cs, member)  # allowed as configured
    console.sign_in(admin_token(cs))
    console.open("/console/teams/team-b")
    field = console.driver.find_element(By.NAME, "spend_per_day")
    field.clear()
    field.send_keys("0")
    console.submit("#limits-form button[type=submit]")
    assert "Limits of team team-b saved." in console.text()  # after the redirect
    with pytest.raises(openai.RateLimitError) as refused:
        chat(cs, member)
    assert refused.value.code == "spend_quota_exceeded"
    # Cleared in the page, the config's limits apply again at once.
    console.submit("form[action$='/limits/clear'] button")
    assert "the config's limits apply" in console.text()
    chat(cs, member)
    console.open("/console/audit?team=team-b")
    audit = console.text()
    assert "limits.replace" in audit
    assert "limits.clear" in audit
    assert "ops/root" in audit  # audited as the signed-in admin


def test_an_api_key_made_in_the_page_works_until_revoked_there(console: Console) -> None:
    cs = console.cs
    console.sign_in(cs.stack.token(team="team-a", user="tess", roles=(TEAM_ADMIN,)))
    console.open("/console/teams/team-a")
    console.driver.find_element(By.ID, "k-name").send_keys("nightly")
    console.submit("#create-key button[type=submit]")
    secret = console.driver.find_element(By.ID, "new-key").text
    assert KEY.fullmatch(secret)
    assert console.driver.find_element(By.CSS_SELECTOR, "button[data-copy]").is_displayed()
    console.shot("key-created")
    chat(cs, secret)  # the key works with the SDK
    console.open("/console/teams/team-a")
    assert secret not in console.driver.page_source  # shown once, never again
    assert secret[-48:] not in console.driver.page_source
    console.follow("Revoke")
    assert "cannot be undone" in console.text()  # the confirmation says what happens
    console.submit("form button.danger")
    assert "API key 'nightly' revoked." in console.text()

    def refused() -> bool:
        try:
            chat(cs, secret)
        except openai.AuthenticationError:
            return True
        return False

    wait_for(refused, timeout=2, interval=0.1)


def test_a_session_made_with_a_key_ends_when_the_key_is_revoked(console: Console) -> None:
    cs = console.cs
    headers = {"Authorization": f"Bearer {admin_token(cs)}"}
    made = httpx2.post(
        f"{cs.url}/admin/v1/teams/team-a/api-keys", json={"name": "console"}, headers=headers
    ).json()
    console.sign_in(made["key"])
    assert "team-a" in console.text()
    httpx2.delete(f"{cs.url}/admin/v1/api-keys/{made['id']}", headers=headers)
    console.open("/console")
    assert console.driver.current_url.endswith("/console/sign-in")


def test_a_finished_video_plays_through_the_gateway(console: Console) -> None:
    cs = console.cs
    with sdk(cs, cs.stack.token(team="team-a", user="alice")) as client:
        video = client.videos.create_and_poll(
            model="sora-2", prompt="a red ball", seconds="4", size="1280x720", poll_interval_ms=100
        )
    assert video.status == "completed"
    console.sign_in(cs.stack.token(team="team-a", user="alice"))
    console.open(f"/console/jobs/{video.id}")
    player = console.driver.find_element(By.ID, "player")
    assert player.get_attribute("src") == f"{cs.url}/console/jobs/{video.id}/content"
    state = console.driver.execute_async_script(
        """
        const [video, done] = [arguments[0], arguments[arguments.length - 1]];
        const report = () => done({
            ready: video.readyState, duration: video.duration, width: video.videoWidth,
            error: video.error && video.error.code});
        if (video.readyState >= 2) { report(); return; }
        video.addEventListener("loadeddata", report);
        video.addEventListener("error", report);
        video.load();
        """,
        player,
    )
    assert state["error"] is None, state
    assert state["ready"] >= 2, state  # HAVE_CURRENT_DATA: a frame is decoded
    assert 1.0 < state["duration"] < 1.5, state
    assert state["width"] == 160, state
    console.shot("job")
    # The bytes came from the upstream, fetched by the gateway with the pooled key.
    served = [auth for _, auth in cs.upstream.served]
    assert served
    assert all(a == f"Bearer {cs.stack.keys['primary']}" for a in served)
    loaded = console.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert f"{cs.url}/console/jobs/{video.id}/content" in loaded


def test_content_that_is_not_media_is_never_shown_as_a_console_page(console: Console) -> None:
    """An upstream (or its CDN) answering a job's content as HTML must not get a page on the
    console's origin, where its script could act with the session: it is an attachment."""
    cs = console.cs
    with sdk(cs, cs.stack.token(team="team-a", user="alice")) as client:
        video = client.videos.create_and_poll(
            model="sora-2", prompt="a page", seconds="4", size="1280x720", poll_interval_ms=100
        )
    console.sign_in(cs.stack.token(team="team-a", user="alice"))
    fetch = """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => done([r.status, r.headers.get("content-disposition")]));
    """
    url = f"/console/jobs/{video.id}/content"
    cs.upstream.content_type = b"text/html"
    try:
        status, disposition = console.driver.execute_async_script(fetch, url)
    finally:
        cs.upstream.content_type = b"video/webm"
    assert status == 200
    assert disposition == f'attachment; filename="{video.id}.bin"'
    assert console.driver.execute_async_script(fetch, url) == [200, None]  # media: in place


# A page that renames itself when its script runs: on the console's origin, with the session.
INERT = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox allow-same-origin"
PAGE = b"<!doctype html><title>inert</title><script>document.title = 'ran'</script>"


@contextlib.contextmanager
def upstream_content(cs: ConsoleStack, body: bytes, *content_types: bytes) -> Iterator[None]:
    """The upstream answers content with ``body`` and these Content-Type headers, in order."""
    up = cs.upstream
    old = (up.clip, up.content_type, up.more_headers)
    up.clip, up.content_type = body, content_types[0]
    up.more_headers = [(b"content-type", t) for t in content_types[1:]]
    try:
        yield
    finally:
        up.clip, up.content_type, up.more_headers = old


def finished_video(cs: ConsoleStack) -> str:
    with sdk(cs, cs.stack.token(team="team-a", user="alice")) as client:
        video = client.videos.create_and_poll(
            model="sora-2", prompt="p", seconds="4", size="1280x720", poll_interval_ms=100
        )
    assert video.status == "completed"
    return video.id


@pytest.mark.parametrize(
    "content_types",
    [
        (b"video/webm, text/html",),
        (b"video/webm,text/html;charset=utf-8",),
        (b"video/webm", b"text/html"),  # Chromium joins the two and reads the last
    ],
    ids=["list", "list-no-space", "two-headers"],
)
def test_content_naming_html_anywhere_is_an_inert_attachment(
    console: Console, content_types: tuple[bytes, ...]
) -> None:
    """A first-type check would take these for video and show them in place; the browser
    renders the last type, HTML, on the console's origin."""
    cs = console.cs
    video_id = finished_video(cs)
    console.sign_in(cs.stack.token(team="team-a", user="alice"))
    url = f"/console/jobs/{video_id}/content"
    with upstream_content(cs, PAGE, *content_types):
        console.open(url)
        title = console.driver.title
        cookie = console.driver.get_cookie("gw_console")
        assert cookie is not None
        r = httpx2.get(cs.url + url, cookies={"gw_console": cookie["value"]})
    assert title != "ran"
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == ["application/octet-stream"]
    assert r.headers["content-disposition"] == f'attachment; filename="{video_id}.bin"'
    assert r.headers["content-security-policy"] == INERT
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_media_is_sent_in_place_as_the_gateways_own_type(console: Console) -> None:
    """The upstream's parameters never reach the browser, and the answer stays inert should a
    browser open it as a document; the job page's player is not bound by that policy (the
    playing test above), nor is the video opened on its own."""
    cs = console.cs
    video_id = finished_video(cs)
    console.sign_in(cs.stack.token(team="team-a", user="alice"))
    url = f"/console/jobs/{video_id}/content"
    cookie = console.driver.get_cookie("gw_console")
    assert cookie is not None
    with upstream_content(cs, cs.upstream.clip, b"Video/WebM; codecs=vp8"):
        r = httpx2.get(cs.url + url, cookies={"gw_console": cookie["value"]})
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == ["video/webm"]
    assert "content-disposition" not in r.headers
    assert r.headers["content-security-policy"] == INERT
    console.open(url)
    player = console.driver.find_element(By.TAG_NAME, "video")  # the browser's own player page

    def settled() -> dict[str, Any] | None:
        # NETWORK_NO_SOURCE (3): nothing will load; a policy that blocks it fires no event.
        state: dict[str, Any] = {
            k: player.get_property(k) for k in ("readyState", "networkState", "error")
        }
        return state if state["readyState"] >= 2 or state["networkState"] == 3 else None

    state = WebDriverWait(console.driver, 10).until(lambda d: settled())
    assert state is not None
    assert state["error"] is None, state
    assert state["readyState"] >= 2, state  # HAVE_CURRENT_DATA: a frame is decoded


def test_a_member_sees_only_their_team(console: Console) -> None:
    cs = console.cs
    with sdk(cs, cs.stack.token(team="team-b", user="bob")) as client:
        other = client.videos.create(model="sora-2", prompt="b", seconds="4", size="1280x720")
    console.sign_in(cs.stack.token(team="team-a", user="alice"))
    nav = console.driver.find_element(By.TAG_NAME, "nav").text
    assert "Upstream keys" not in nav
    assert "Audit" not in nav
    for path in (
        "/console/teams/team-b",
        "/console/teams/team-b/usage.csv",
        f"/console/jobs/{other.id}",
        f"/console/jobs/{other.id}/content",
        "/console/jobs?team=team-b",
        "/console/keys",
        "/console/audit",
        "/console/teams/team-a/reset?window=day",  # an admin's action, on their own team
    ):
        console.open(path)
        assert console.h1().startswith("404"), path
        assert console.status_of(path) == 404, path
    console.shot("member-404")
    assert console.status_of("/console/teams/team-a") == 200
    # A form posted without the session's CSRF token is refused, and changes nothing.
    console.open("/console/teams/team-a")
    console.driver.execute_script(
        "document.querySelector('form.who input[name=csrf]').value = 'forged'"
    )
    console.submit("form.who button")
    assert console.h1().startswith("403")
    console.open("/console/teams/team-a")  # still signed in: the sign-out did not happen
    assert console.h1() == "Team team-a"
    console.driver.execute_script("document.querySelector('form.who input[name=csrf]').remove()")
    console.submit("form.who button")
    assert console.h1().startswith("403")
