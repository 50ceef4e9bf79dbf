"""`gateway serve --host/--port` reaches the workers, and a public base URL that was only
derived from the listener follows it (one configured explicitly does not)."""

from __future__ import annotations

import pytest

from gateway.settings import Settings, listening_on, settings_from_mapping
from gateway.web import factory

SECRET = "s" * 40


def load(server: dict[str, object]) -> Settings:
    return settings_from_mapping({"auth": {"hs256_secrets": [SECRET]}, "server": server}, env={})


def test_a_derived_public_url_follows_the_command_line() -> None:
    s = listening_on(load({"host": "0.0.0.0", "port": 8080}), None, 9123)
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9123)
    assert s.server.public_base_url == "http://127.0.0.1:9123"


def test_a_configured_public_url_stays() -> None:
    conf = load({"port": 8080, "public_base_url": "https://gw.example.com/ai"})
    s = listening_on(conf, "127.0.0.2", 9123)
    assert s.server.public_base_url == "https://gw.example.com/ai"
    assert s.server.host == "127.0.0.2"


def test_the_factory_applies_what_serve_exported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    seen: dict[str, Settings] = {}
    monkeypatch.setattr(
        factory, "create_app", lambda settings, **kw: seen.setdefault("s", settings)
    )
    monkeypatch.setattr(factory, "load_settings", lambda path: load({"port": 8080}))
    monkeypatch.setenv(factory.LISTEN_PORT_ENV, "9555")
    monkeypatch.delenv(factory.LISTEN_HOST_ENV, raising=False)
    factory.app_from_env()
    assert seen["s"].server.public_base_url == "http://127.0.0.1:9555"
