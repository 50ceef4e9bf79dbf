import secrets

import pytest

from gateway.settings import (
    SettingsError,
    interpolate,
    load_settings,
    parse_key_list,
    production_problems,
    settings_from_mapping,
)


def _secret() -> str:
    return secrets.token_urlsafe(40)


def _doc(**auth: object) -> dict[str, object]:
    return {"auth": {"hs256_secrets": [_secret()], **auth}}


def test_interpolation_with_default_and_value() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env, "k") == "x1y"
    assert interpolate("${B:-fallback}", env, "k") == "fallback"
    assert interpolate("${EMPTY:-d}", env, "k") == "d"


def test_interpolation_missing_variable_names_key() -> None:
    with pytest.raises(SettingsError) as info:
        interpolate("${NOPE}", {}, "upstream.keys[0].secret")
    assert info.value.key == "upstream.keys[0].secret"
    assert "NOPE" in str(info.value)


def test_keys_from_config_and_env_reference() -> None:
    key = "sk-" + secrets.token_hex(8)
    doc = {
        "upstream": {"keys": [{"id": "primary", "secret": "${K1}"}]},
        **_doc(),
    }
    s = settings_from_mapping(doc, {"K1": key})
    assert [k.id for k in s.upstream.keys] == ["primary"]
    assert s.upstream.keys[0].secret == key
    assert key not in repr(s)


def test_shortcut_env_replaces_keys() -> None:
    s = settings_from_mapping(_doc(), {"CRAZYROUTER_API_KEYS": "a:sk-aaaa,b:sk-bbbb"})
    assert [(k.id, k.secret) for k in s.upstream.keys] == [("a", "sk-aaaa"), ("b", "sk-bbbb")]


def test_plain_comma_list_gets_generated_ids() -> None:
    assert [k.id for k in parse_key_list("sk-one, sk-two")] == ["key1", "key2"]


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"upstream": {"base_url": "ftp://x"}}, "upstream.base_url"),
        ({"upstream": {"keys": [{"id": "bad id!", "secret": "s"}]}}, "upstream.keys[0].id"),
        ({"upstream": {"keys": [{"id": "a", "secret": ""}]}}, "upstream.keys[0].secret"),
        (
            {"upstream": {"keys": [{"id": "a", "secret": "x"}, {"id": "a", "secret": "y"}]}},
            "upstream.keys",
        ),
        ({"upstream": {"connect_timeout": "soon"}}, "upstream.connect_timeout"),
        ({"upstream": {"colour": "blue"}}, "upstream.colour"),
        ({"redis": {"url": "http://x"}}, "redis.url"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"allowed_path_prefixes": ["v1"]}}, "server.allowed_path_prefixes"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_validation_names_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({**_doc(), **doc}, {})
    assert info.value.key == key


def test_short_hs256_secret_rejected() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"auth": {"hs256_secrets": ["short"]}}, {})
    assert info.value.key == "auth.hs256_secrets[0]"
    assert "32 bytes" in info.value.problem


def test_algorithm_must_be_supported_and_have_keys() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(_doc(algorithms=["none"]), {})
    assert info.value.key == "auth.algorithms"
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(_doc(algorithms=["RS256"]), {})
    assert info.value.key == "auth.public_keys"


def test_production_problems_name_missing_settings() -> None:
    s = settings_from_mapping(_doc(), {})
    problems = production_problems(s)
    assert any(p.startswith("upstream.keys") for p in problems)
    assert any(p.startswith("redis.url") for p in problems)
    ok = settings_from_mapping(
        {**_doc(), "redis": {"url": "redis://127.0.0.1:6379/0"}},
        {"CRAZYROUTER_API_KEYS": "p:sk-x"},
    )
    assert production_problems(ok) == []


def test_example_configs_load(tmp_path: object) -> None:
    env = {
        "GATEWAY_JWT_SECRET": _secret(),
        "CRAZYROUTER_KEY_PRIMARY": "sk-" + secrets.token_hex(8),
        "CRAZYROUTER_KEY_SECONDARY": "sk-" + secrets.token_hex(8),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    example = load_settings("config/gateway.example.yaml", env)
    assert [k.id for k in example.upstream.keys] == ["primary", "secondary"]
    dev = load_settings("config/dev.yaml", {"GATEWAY_JWT_SECRET": env["GATEWAY_JWT_SECRET"]})
    assert dev.redis.embedded
    assert dev.upstream.keys == ()


def test_secret_file(tmp_path: pytest.TempPathFactory) -> None:
    p = tmp_path / "k"  # type: ignore[operator]
    p.write_text("sk-fromfile\n")
    s = settings_from_mapping(
        {**_doc(), "upstream": {"keys": [{"id": "f", "secret_file": str(p)}]}}, {}
    )
    assert s.upstream.keys[0].secret == "sk-fromfile"


@pytest.mark.parametrize(
    ("videos", "key"),
    [
        ({"aliases": {"sora": "nope"}, "models": {"sora-2": {}}}, "videos.aliases.sora"),
        ({"default_model": "x", "models": {"sora-2": {}}}, "videos.default_model"),
        (
            {"models": {"sora-2": {"seconds": [4, 8], "default_seconds": 5}}},
            "videos.models.sora-2.default_seconds",
        ),
        ({"models": {"sora-2": {"sizes": ["big"]}}}, "videos.models.sora-2.sizes"),
        ({"models": {"sora-2": {"seconds": ["4"]}}}, "videos.models.sora-2.seconds"),
        ({"force_private": "yes"}, "videos.force_private"),
        ({"models": {"sora-2": {"fps": 30}}}, "videos.models.sora-2.fps"),
    ],
)
def test_video_settings_validation(videos: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({**_doc(), "videos": videos}, {})
    assert info.value.key == key


def test_model_agnostic_without_a_table() -> None:
    videos = settings_from_mapping(_doc(), {}).videos
    assert videos.model("anything-new") is not None
    assert videos.resolve_model(None) == "sora-2"
