"""Console sign-in through OpenID Connect, the parts without a network: the ``console.oidc``
settings, PKCE, the authorization URL, how the client authenticates at the token endpoint,
and discovery's checks and cache (a fake IdP behind the HTTP seam, a pinned clock)."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.oidc_provider import DISCOVERY_RETRY_S, OidcProvider, code_challenge
from gateway.errors import AuthenticationFailed
from gateway.settings import (
    AuthSettings,
    OidcSettings,
    SettingsError,
    settings_from_mapping,
)

ISSUER = "https://idp.example.com/realms/staff"


def _doc(**oidc: Any) -> dict[str, Any]:
    return {
        "auth": {
            "hs256_secrets": [secrets.token_urlsafe(32)],
            "algorithms": ["HS256", "RS256"],
            "jwks_url": ISSUER + "/keys",
        },
        "console": {"oidc": {"issuer": ISSUER, "client_id": "gw", **oidc}},
    }


# -- settings ----------------------------------------------------------------------------------


def test_the_oidc_section_and_its_defaults(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(24)
    (tmp_path / "secret").write_text(secret + "\n")
    oidc = settings_from_mapping(_doc(client_secret_file=str(tmp_path / "secret")), {}).console.oidc
    assert oidc is not None
    assert oidc.client_secret == secret
    assert secret not in repr(oidc)
    assert oidc.scopes == ("openid", "profile")
    assert oidc.timeout_seconds == 5.0
    assert oidc.callback_url("https://gw.example/") == "https://gw.example/console/oidc/callback"
    assert oidc.name == "idp.example.com"  # the button's words, unless display_name says
    public = settings_from_mapping(
        _doc(
            scopes="openid profile email",
            redirect_url="https://gw.example/console/oidc/callback",
            display_name="Staff login",
        ),
        {},
    ).console.oidc
    assert public is not None
    assert public.client_secret is None  # a public client: PKCE alone
    assert public.scopes == ("openid", "profile", "email")
    assert public.callback_url("http://127.0.0.1:8080") == public.redirect_url
    assert public.name == "Staff login"


def test_no_oidc_section_is_token_sign_in_only() -> None:
    doc = _doc()
    value: dict[str, Any] | None
    for value in (None, {}):
        doc["console"]["oidc"] = value
        assert settings_from_mapping(doc, {}).console.oidc is None


def test_loopback_http_is_allowed_for_tests_and_development() -> None:
    oidc = settings_from_mapping(_doc(issuer="http://localhost:9000"), {}).console.oidc
    assert oidc is not None
    assert oidc.issuer == "http://localhost:9000"


@pytest.mark.parametrize(
    ("oidc", "key", "words"),
    [
        ({"issuer": "http://idp.example.com"}, "console.oidc.issuer", "https"),
        ({"issuer": "ftp://idp.example.com"}, "console.oidc.issuer", "http(s) URL"),
        ({"issuer": ISSUER + "?tenant=1"}, "console.oidc.issuer", "query"),
        ({"issuer": "https://u:p@idp.example.com"}, "console.oidc.issuer", "credentials"),
        ({"client_id": None}, "console.oidc.client_id", "must be a string"),
        ({"scopes": ["profile"]}, "console.oidc.scopes", "openid"),
        ({"scopes": ['openid "x"']}, "console.oidc.scopes", "not a valid scope"),
        ({"redirect_url": "https://gw.example/cb"}, "console.oidc.redirect_url", "callback"),
        (
            {"redirect_url": "http://gw.example/console/oidc/callback"},
            "console.oidc.redirect_url",
            "https",
        ),
        ({"timeout_seconds": 0}, "console.oidc.timeout_seconds", ">="),
        ({"display_name": "x" * 61}, "console.oidc.display_name", "60"),
        ({"client_secret_file": "/nonexistent/x"}, "console.oidc.client_secret_file", "cannot"),
        ({"clientid": "gw"}, "console.oidc.clientid", "unknown setting"),
    ],
)
def test_a_bad_oidc_setting_names_its_key(oidc: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_from_mapping(_doc(**oidc), {})
    found = [e for e in raised.value.errors if e.key == key]
    assert found, [str(e) for e in raised.value.errors]
    assert words in found[0].problem


def test_the_issuer_and_client_id_are_required() -> None:
    doc = _doc()
    doc["console"]["oidc"] = {"scopes": ["openid"]}
    with pytest.raises(SettingsError) as raised:
        settings_from_mapping(doc, {})
    assert {e.key for e in raised.value.errors} == {
        "console.oidc.issuer",
        "console.oidc.client_id",
    }


def test_id_tokens_need_an_asymmetric_algorithm_in_auth() -> None:
    doc = _doc()
    doc["auth"] = {"hs256_secrets": [secrets.token_urlsafe(32)]}  # HS256 only
    with pytest.raises(SettingsError) as raised:
        settings_from_mapping(doc, {})
    assert raised.value.key == "auth.algorithms"
    assert "console.oidc" in raised.value.problem


# -- PKCE and the authorization request --------------------------------------------------------


def test_the_s256_challenge_is_rfc_7636s() -> None:
    # RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class FakeIdp:
    """The HTTP seam: a discovery document (or a failure) and a token endpoint that records
    what it was sent."""

    def __init__(self, **discovery: Any) -> None:
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/auth",
            "token_endpoint": ISSUER + "/token",
            "jwks_uri": ISSUER + "/certs",
            **discovery,
        }
        self.fail = False
        self.fetches: list[str] = []
        self.posts: list[tuple[str, dict[str, str], dict[str, str]]] = []

    async def fetch(self, url: str) -> bytes:
        self.fetches.append(url)
        if self.fail:
            raise OSError("connection refused")
        return json.dumps(self.discovery).encode()

    async def post_form(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        self.posts.append((url, dict(form), dict(headers)))
        return 200, json.dumps({"id_token": "a.b.c", "access_token": "x"}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(idp: FakeIdp, secret: str | None = None, clock: Clock | None = None) -> OidcProvider:
    settings = OidcSettings(issuer=ISSUER, client_id="gw console", client_secret=secret)
    return OidcProvider(
        settings,
        AuthSettings(algorithms=("HS256", "RS256"), hs256_secrets=("s" * 32,)),
        idp,
        redirect_url="https://gw.example/console/oidc/callback",
        monotonic=clock or Clock(),
    )


async def test_the_authorization_url_asks_for_a_code_with_pkce() -> None:
    idp = FakeIdp(authorization_endpoint=ISSUER + "/auth?kc_idp_hint=corp")
    p = provider(idp)
    url = p.authorization_url(await p.metadata(), state="st", nonce="no", verifier="v" * 43)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == ISSUER + "/auth"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q == {
        "kc_idp_hint": "corp",  # the endpoint's own query is kept
        "response_type": "code",
        "client_id": "gw console",
        "redirect_uri": "https://gw.example/console/oidc/callback",
        "scope": "openid profile",
        "state": "st",
        "nonce": "no",
        "code_challenge": code_challenge("v" * 43),
        "code_challenge_method": "S256",
    }


# -- the code exchange: how the client proves itself --------------------------------------------


async def test_a_public_client_sends_its_id_and_the_verifier_only() -> None:
    idp = FakeIdp()
    p = provider(idp)
    assert await p.exchange(await p.metadata(), "the-code", "v" * 43) == "a.b.c"
    ((url, form, headers),) = idp.posts
    assert url == ISSUER + "/token"
    assert form == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": "https://gw.example/console/oidc/callback",
        "code_verifier": "v" * 43,
        "client_id": "gw console",
    }
    assert "authorization" not in headers


async def test_a_confidential_client_uses_basic_auth_form_encoded() -> None:
    idp = FakeIdp()
    p = provider(idp, secret="s3cret:+/")
    await p.exchange(await p.metadata(), "c", "v" * 43)
    ((_, form, headers),) = idp.posts
    assert "client_secret" not in form
    assert "client_id" not in form
    pair = base64.b64decode(headers["authorization"].removeprefix("Basic ")).decode()
    assert pair == "gw+console:s3cret%3A%2B%2F"  # RFC 6749 2.3.1


async def test_client_secret_post_when_the_idp_takes_only_that() -> None:
    idp = FakeIdp(token_endpoint_auth_methods_supported=["client_secret_post"])
    p = provider(idp, secret="s3cret")
    await p.exchange(await p.metadata(), "c", "v" * 43)
    ((_, form, headers),) = idp.posts
    assert form["client_id"] == "gw console"
    assert form["client_secret"] == "s3cret"
    assert "authorization" not in headers


# -- discovery ---------------------------------------------------------------------------------


async def test_discovery_is_fetched_once_and_cached() -> None:
    idp = FakeIdp()
    p = provider(idp)
    first = await p.metadata()
    assert await p.metadata() is first
    assert idp.fetches == [ISSUER + "/.well-known/openid-configuration"]


@pytest.mark.parametrize(
    "bad",
    [
        {"issuer": "https://evil.example"},  # another provider's document
        {"issuer": ISSUER + "/"},  # not exactly the configured issuer
        {"authorization_endpoint": "http://idp.example.com/auth"},  # cleartext off-machine
        {"token_endpoint": None},
        {"jwks_uri": "https://idp.example.com/certs#x"},
    ],
)
async def test_an_unusable_discovery_document_makes_sign_in_unavailable(
    bad: dict[str, Any],
) -> None:
    p = provider(FakeIdp(**bad))
    with pytest.raises(AuthenticationFailed) as refused:
        await p.metadata()
    assert refused.value.reason == "oidc_unavailable"


async def test_a_down_idp_is_asked_again_only_after_a_pause() -> None:
    idp, clock = FakeIdp(), Clock()
    idp.fail = True
    p = provider(idp, clock=clock)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await p.metadata()
    assert len(idp.fetches) == 1  # a click storm is not a request storm
    idp.fail = False
    clock.now += DISCOVERY_RETRY_S
    await p.metadata()
    assert len(idp.fetches) == 2


async def test_the_last_good_document_outlives_an_outage() -> None:
    idp, clock = FakeIdp(), Clock()
    p = provider(idp, clock=clock)
    good = await p.metadata()
    idp.fail = True
    clock.now += 2 * 3600  # stale: refetched, fails, the old one serves
    assert await p.metadata() == good
    assert len(idp.fetches) == 2
