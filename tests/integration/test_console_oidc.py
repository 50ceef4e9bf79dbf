"""Console sign-in through an OpenID Connect provider (tests/oidc_provider.py), both on
loopback sockets with a real Redis, the redirects followed by hand as a browser would.

A full sign-in ends in a working console session for the IdP's person, with their team and
roles. Every bad path (a tampered, replayed or foreign state, an IdP's refusal, a wrong PKCE
verifier, and ID tokens with the wrong nonce, audience or issuer, expired, unsigned, forged
with HS256 or without a team) ends on the sign-in page with a plain message, no session and
one count in ``gateway_auth_failures_total`` under its reason.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx2
import pytest
import redis as redis_sync

from gateway.console import cookies
from gateway.console.routes import OIDC_PROBLEMS
from gateway.dev.embedded_redis import RedisProcess
from tests.conftest import Stack, make_stack
from tests.oidc_provider import TestIdp, serve
from tests.servers import free_port

CLIENT_ID = "gateway-console"
ADMIN = "gateway-admin"


@dataclass
class OidcStack:
    stack: Stack
    idp: TestIdp

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="module")
def oidc_stack(redis_server: RedisProcess) -> Iterator[OidcStack]:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    idp = TestIdp(client_id=CLIENT_ID, client_secret=secrets.token_urlsafe(32))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The redirect URL is left to its default, <server.public_base_url>/console/oidc/callback.
    idp.redirect_uri = base + "/console/oidc/callback"
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve(idp))
        s = stack.enter_context(
            make_stack(
                redis_server.url,
                server={"public_base_url": base},
                gateway_port=port,
                auth={"algorithms": ["HS256", "RS256"], "jwks_url": idp.issuer + "/jwks"},
                console={
                    "session_secret": secrets.token_urlsafe(32),
                    "oidc": {
                        "issuer": idp.issuer,
                        "client_id": CLIENT_ID,
                        "client_secret": idp.client_secret,
                        "display_name": "Test IdP",
                    },
                },
            )
        )
        yield OidcStack(s, idp)


@pytest.fixture
def oidc(oidc_stack: OidcStack) -> Iterator[OidcStack]:
    oidc_stack.idp.reset()
    yield oidc_stack
    oidc_stack.idp.reset()


def browser() -> httpx2.Client:
    """A client that keeps cookies and follows nothing by itself."""
    return httpx2.Client(follow_redirects=False, timeout=10)


def with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def sign_in(
    os: OidcStack,
    client: httpx2.Client,
    *,
    at_idp: Callable[[str], str] = lambda url: url,
    back: Callable[[str], str] = lambda url: url,
) -> httpx2.Response:
    """Click "Sign in with ...", let the IdP answer, come back; the callback's answer.
    ``at_idp`` and ``back`` may rewrite the URL of each hop, as an attacker could."""
    page = client.get(os.url + "/console/sign-in")
    assert 'href="/console/oidc/start"' in page.text
    assert "Sign in with Test IdP" in page.text
    start = client.get(os.url + "/console/oidc/start")
    assert start.status_code == 303
    # The binding cookie: Lax, since the IdP's redirect back is another site's navigation.
    binding = start.headers["set-cookie"]
    assert binding.startswith("gw_console_oidc=")
    assert {"Path=/console/oidc", "HttpOnly", "SameSite=Lax"} <= set(binding.split("; "))
    to_idp = start.headers["location"]
    assert to_idp.startswith(os.idp.issuer + "/authorize?")  # the discovered endpoint only
    answer = client.get(at_idp(to_idp))
    assert answer.status_code == 302, answer.text
    callback = answer.headers["location"]
    assert callback.startswith(os.url + "/console/oidc/callback?")
    return client.get(back(callback))


def refused_for(os: OidcStack, response: httpx2.Response, client: httpx2.Client) -> str:
    """That the callback landed on the sign-in page, signed nobody in, and said why: the
    message shown."""
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/console/sign-in?problem=")
    assert "gw_console=" not in response.headers.get("set-cookie", "")
    page = client.get(os.url + location)
    assert page.status_code == 200
    (shown,) = re.findall(r'role="alert">([^<]+)<', page.text)
    message = html.unescape(shown)
    assert message in OIDC_PROBLEMS.values()
    # No session: the console sends this browser back to sign in.
    console = client.get(os.url + "/console")
    assert console.status_code == 303
    assert console.headers["location"] == "/console/sign-in"
    return str(message)


def failures(os: OidcStack, reason: str) -> float:
    return os.stack.metric("gateway_auth_failures_total", reason=reason)


def test_signing_in_through_the_idp_opens_a_console_session(oidc: OidcStack) -> None:
    oidc.idp.reset(sub="ida", team="team-b", roles=["team-admin"])
    started = time.monotonic()
    with browser() as client:
        done = sign_in(oidc, client)
        took = time.monotonic() - started
        assert done.status_code == 200
        # A page that moves on to the console by itself (see routes.oidc_callback for why).
        assert '<meta http-equiv="refresh" content="0; url=/console">' in done.text
        cookies = done.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("gw_console="))
        assert "HttpOnly" in session
        assert "SameSite=Strict" in session
        assert any(c.startswith("gw_console_oidc=;") for c in cookies)  # the binding cleared
        page = client.get(oidc.url + "/console")
        assert page.status_code == 200
        assert "ida · team-b" in page.text  # the IdP's person, as a member of their team
        # Their team's page is theirs; another team's is not (the roles came along too).
        assert client.get(oidc.url + "/console/teams/team-b").status_code == 200
        assert client.get(oidc.url + "/console/teams/team-a").status_code == 404
        assert 'id="create-key"' in client.get(oidc.url + "/console/teams/team-b").text
    # The code went to the token endpoint with the client's secret (Basic) and a verifier.
    (exchange,) = oidc.idp.token_requests
    assert exchange["grant_type"] == "authorization_code"
    assert len(exchange["code_verifier"]) >= 43
    assert "client_secret" not in exchange
    assert took < 2, took  # discovery, keys, exchange and session on loopback


def test_an_admin_at_the_idp_is_an_admin_in_the_console(oidc: OidcStack) -> None:
    oidc.idp.reset(sub="root", team="ops", roles=[ADMIN])
    with browser() as client:
        assert sign_in(oidc, client).status_code == 200
        assert client.get(oidc.url + "/console/keys").status_code == 200


def test_the_session_ends_with_the_id_token(oidc: OidcStack) -> None:
    oidc.idp.reset()
    oidc.idp.extra_claims = {"exp": int(time.time()) + 300}
    with browser() as client:
        done = sign_in(oidc, client)
        session = next(c for c in done.headers.get_list("set-cookie") if "gw_console=" in c)
        max_age = int(re.findall(r"Max-Age=(\d+)", session)[0])
        assert 290 <= max_age <= 300  # the ID token's exp, not console.session_hours


def test_a_replayed_callback_signs_nobody_in(oidc: OidcStack) -> None:
    with browser() as client:
        captured: list[str] = []

        def keep(url: str) -> str:
            captured.append(url)
            return url

        assert sign_in(oidc, client, back=keep).status_code == 200
    before = failures(oidc, "oidc_state")
    with browser() as client:
        # The same browser's binding would not help either: the state was used.
        message = refused_for(oidc, client.get(captured[0]), client)
    assert "already used" in message
    assert failures(oidc, "oidc_state") == before + 1


def test_starting_sign_ins_stores_nothing_until_one_succeeds(
    oidc: OidcStack, redis_server: RedisProcess
) -> None:
    """The start page answers anyone: asked a hundred times, it grows Redis by nothing."""
    r = redis_sync.Redis.from_url(redis_server.url)
    try:
        before = len(r.keys("gw:console:oidc:*"))
        with browser() as client:
            for _ in range(100):
                assert client.get(oidc.url + "/console/oidc/start").status_code == 303
        assert len(r.keys("gw:console:oidc:*")) == before
        with browser() as client:
            assert sign_in(oidc, client).status_code == 200
        assert len(r.keys("gw:console:oidc:*")) == before + 1  # the state, marked used
    finally:
        r.close()


def test_a_callback_after_its_ten_minutes_signs_nobody_in(oidc: OidcStack) -> None:
    """The lapse time signed into the browser's cookie counts, not how long it kept it."""
    secret = oidc.stack.settings.console.session_secret
    assert secret is not None

    def lapsed(url: str) -> str:
        value = cookies.unsign(secret.encode(), "console-oidc", client.cookies["gw_console_oidc"])
        assert value is not None
        state, nonce, verifier, _ = value.split("~")
        past = f"{state}~{nonce}~{verifier}~{int(time.time()) - 1}"
        client.cookies.set(
            "gw_console_oidc",
            cookies.sign(secret.encode(), "console-oidc", past),
            path="/console/oidc",
        )
        return url

    before = failures(oidc, "oidc_state")
    with browser() as client:
        refused_for(oidc, sign_in(oidc, client, back=lapsed), client)
    assert failures(oidc, "oidc_state") == before + 1


def test_a_callback_in_another_browser_signs_nobody_in(oidc: OidcStack) -> None:
    """Login CSRF: a callback URL made in the attacker's browser, opened in the victim's."""
    with browser() as attacker:
        start = attacker.get(oidc.url + "/console/oidc/start")
        callback = attacker.get(start.headers["location"]).headers["location"]
    before = failures(oidc, "oidc_state")
    with browser() as victim:
        refused_for(oidc, victim.get(callback), victim)
    assert failures(oidc, "oidc_state") == before + 1


@dataclass(frozen=True)
class BadPath:
    reason: str  # the metric's label
    problem: str  # words of the message shown
    idp: Callable[[TestIdp], None] = lambda idp: None
    at_idp: Callable[[str], str] = lambda url: url
    back: Callable[[str], str] = lambda url: url


def _set(**knobs: object) -> Callable[[TestIdp], None]:
    def apply(idp: TestIdp) -> None:
        for name, value in knobs.items():
            setattr(idp, name, value)

    return apply


def _expires_in(seconds: int) -> Callable[[TestIdp], None]:
    def apply(idp: TestIdp) -> None:  # when the test runs, not when the module was read
        idp.extra_claims = {"exp": int(time.time()) + seconds}

    return apply


BAD_PATHS = {
    "tampered state": BadPath(
        "oidc_state", "already used", back=lambda u: with_param(u, "state", "A" * 43)
    ),
    "state cut off": BadPath(
        "oidc_state", "already used", back=lambda u: with_param(u, "state", "")
    ),
    "idp says access_denied": BadPath(
        "oidc_denied", "did not sign you in", _set(deny="access_denied")
    ),
    "wrong PKCE verifier": BadPath(
        "oidc_exchange",
        "not accepted",
        # The challenge swapped on the way to the IdP: the gateway's verifier no longer fits.
        at_idp=lambda u: with_param(u, "code_challenge", "x" * 43),
    ),
    "wrong nonce": BadPath(
        "bad_nonce", "not accepted", at_idp=lambda u: with_param(u, "nonce", "n" * 43)
    ),
    "wrong audience": BadPath(
        "bad_audience", "not accepted", _set(extra_claims={"aud": "another-client"})
    ),
    "another party authorized": BadPath(
        "bad_audience", "not accepted", _set(extra_claims={"aud": [CLIENT_ID, "x"], "azp": "x"})
    ),
    "several audiences, no azp": BadPath(
        "bad_audience", "not accepted", _set(extra_claims={"aud": [CLIENT_ID, "x"]})
    ),
    "wrong issuer in the token": BadPath(
        "bad_issuer", "not accepted", _set(extra_claims={"iss": "https://idp.example"})
    ),
    "wrong issuer in the answer": BadPath(
        "bad_issuer", "not accepted", back=lambda u: with_param(u, "iss", "https://idp.example")
    ),
    "expired token": BadPath("expired", "not accepted", _expires_in(-3600)),
    "no exp": BadPath("missing_claim", "not accepted", _set(drop_claims={"exp"})),
    "alg none": BadPath("bad_algorithm", "not accepted", _set(forge="none")),
    "HS256 keyed with the public key": BadPath(
        "bad_algorithm", "not accepted", _set(forge="hs256")
    ),
    "no team claim": BadPath("no_team", "names no team", _set(drop_claims={"team"})),
    "expiring within a minute": BadPath("expires_soon", "expires within a minute", _expires_in(20)),
}


@pytest.mark.parametrize("case", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_a_bad_sign_in_lands_on_the_sign_in_page_and_is_counted(
    oidc: OidcStack, case: BadPath
) -> None:
    case.idp(oidc.idp)
    before = failures(oidc, case.reason)
    with browser() as client:
        response = sign_in(oidc, client, at_idp=case.at_idp, back=case.back)
        message = refused_for(oidc, response, client)
        assert case.problem in message
        # Nothing of the IdP's answer is echoed (the code, the state, a token).
        assert "code=" not in response.headers["location"]
    assert failures(oidc, case.reason) == before + 1


def test_an_unreachable_idp_says_so_on_the_sign_in_page(redis_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    oidc = {"issuer": dead, "client_id": CLIENT_ID, "timeout_seconds": 2}
    with (
        make_stack(
            redis_url,
            auth={"algorithms": ["HS256", "RS256"], "jwks_url": dead + "/jwks"},
            console={"session_secret": secrets.token_urlsafe(32), "oidc": oidc},
        ) as s,
        browser() as client,
    ):
        page = client.get(s.url + "/console/sign-in")
        assert "Sign in with 127.0.0.1" in page.text  # the issuer's host names the button
        start = client.get(s.url + "/console/oidc/start")
        assert start.status_code == 303
        assert start.headers["location"] == "/console/sign-in?problem=unavailable"
        shown = client.get(s.url + start.headers["location"]).text
        assert "not possible right now" in shown
        assert s.metric("gateway_auth_failures_total", reason="oidc_unavailable") == 1
        # The token form still works beside it.
        assert 'name="token"' in shown


def test_the_client_secret_and_the_id_token_appear_in_no_output(
    oidc: OidcStack, caplog: pytest.LogCaptureFixture
) -> None:
    # Pages, headers, the metrics scrape and every log record of a sign-in and a refused one
    # (the access log's fields are a fixed list: team, user, route, status, reason).
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    oidc.idp.reset(sub="ida", team="team-b", roles=[])
    with browser() as client:
        done = sign_in(oidc, client)
        outputs += [done.text, str(done.headers)]
        page = client.get(oidc.url + "/console")
        outputs += [page.text, str(page.headers)]
    with browser() as client:  # and a refused one: the token carries another nonce
        refused = sign_in(oidc, client, at_idp=lambda u: with_param(u, "nonce", "n" * 43))
        outputs += [str(refused.headers), client.get(oidc.url + refused.headers["location"]).text]
    outputs.append(httpx2.get(oidc.url + "/metrics").text)
    outputs += [r.getMessage() for r in caplog.records]
    assert "gateway_auth_failures_total" in outputs[-1 - len(caplog.records)]
    blob = "\n".join(outputs)
    secret = oidc.idp.client_secret
    assert secret is not None
    assert secret not in blob
    assert secret[-16:] not in blob
    assert len(oidc.idp.issued) == 2
    for token in oidc.idp.issued:
        assert token.split(".")[2] not in blob  # no ID token's signature, anywhere
