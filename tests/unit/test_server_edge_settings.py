"""The server settings of the HTTP edge: head and body deadlines, and the public base URL that
every URL in an answer starts with."""

from __future__ import annotations

import secrets

import pytest

from gateway.settings import ServerSettings, SettingsError, settings_from_mapping
from gateway.web.protocol import HeadLimits


def server(**section: object) -> ServerSettings:
    doc = {"auth": {"hs256_secrets": [secrets.token_urlsafe(40)]}, "server": section}
    return settings_from_mapping(doc, env={}).server


def test_defaults() -> None:
    s = server()
    assert (s.header_timeout_seconds, s.body_timeout_seconds) == (10.0, 120.0)
    assert s.public_base_url == "http://127.0.0.1:8080"
    assert HeadLimits.of(s) == HeadLimits(
        max_header_bytes=16 * 1024, header_timeout_seconds=10.0, body_timeout_seconds=120.0
    )


def test_deadlines_are_read_and_bound_the_protocol() -> None:
    s = server(header_timeout_seconds=1, body_timeout_seconds="2.5", max_header_bytes=4096)
    assert HeadLimits.of(s) == HeadLimits(
        max_header_bytes=4096, header_timeout_seconds=1.0, body_timeout_seconds=2.5
    )


@pytest.mark.parametrize("key", ["header_timeout_seconds", "body_timeout_seconds"])
@pytest.mark.parametrize("value", [0, -1, "soon", True])
def test_bad_deadlines_name_the_key(key: str, value: object) -> None:
    with pytest.raises(SettingsError) as err:
        server(**{key: value})
    assert err.value.key == f"server.{key}"


@pytest.mark.parametrize(
    ("host", "port", "derived"),
    [
        ("127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("0.0.0.0", 9000, "http://127.0.0.1:9000"),
        ("::", 9000, "http://[::1]:9000"),
        ("fd00::1", 80, "http://[fd00::1]:80"),
        ("gw.internal", 8080, "http://gw.internal:8080"),
    ],
)
def test_unset_public_base_url_is_the_listener(host: str, port: int, derived: str) -> None:
    assert server(host=host, port=port).public_base_url == derived


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("https://gateway.example.com", "https://gateway.example.com"),
        ("https://gateway.example.com/", "https://gateway.example.com"),
        ("https://example.com/ai/gateway/", "https://example.com/ai/gateway"),
        ("http://[2001:db8::1]:8443", "http://[2001:db8::1]:8443"),
    ],
)
def test_public_base_url_is_kept_without_its_trailing_slash(given: str, stored: str) -> None:
    assert server(public_base_url=given).public_base_url == stored


@pytest.mark.parametrize(
    "given",
    [
        "gateway.example.com",
        "/v1",
        "ftp://gateway.example.com",
        "https://",
        "https://gateway.example.com/?a=1",
        "https://gateway.example.com/?",
        "https://gateway.example.com/#top",
        "https://user:pw@gateway.example.com",
        "https://gateway.example.com:99999",
        "https://gateway.example.com:port",
        "https://gateway.example.com/a b",
        "https://gateway.example.com\n",
        "https://gateway.example.com/\x00",
    ],
)
def test_bad_public_base_url_names_the_key(given: str) -> None:
    with pytest.raises(SettingsError) as err:
        server(public_base_url=given)
    assert err.value.key == "server.public_base_url"


@pytest.mark.parametrize(
    "spec",
    [
        "POST /v1/videos",
        "GET /v1/videos/{id}",
        "GET /v1/gateway",
        "GET /v1/gateway/quota",  # the gateway's own routes are never forwarded
        "POST /v1/gateway/api-keys",
        "GET /v1/{kind}",  # would stand for /v1/videos and /v1/gateway too
        "POST /v1/{a}/{b}",
        "POST v1/rerank",
        "FETCH /v1/rerank",
        "GET /v1/x/../admin",
        "GET /v1//x",
        "GET /v1/x{id}",
    ],
)
def test_extra_routes_the_gateway_cannot_forward_name_the_key(spec: str) -> None:
    with pytest.raises(SettingsError) as err:
        server(extra_routes=[spec])
    assert err.value.key == "server.extra_routes"


def test_extra_routes_beside_the_gateways_own_are_forwarded() -> None:
    routes = server(extra_routes=["POST /v1/rerank", "GET /v1/gateways/{id}"]).extra_routes
    assert [(r.method, r.template) for r in routes] == [
        ("POST", "/v1/rerank"),
        ("GET", "/v1/gateways/{id}"),
    ]
