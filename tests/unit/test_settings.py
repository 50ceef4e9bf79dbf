import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import (
    AuthSettings,
    ConfigFileError,
    QuotaSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    SettingsError,
    SettingsErrors,
    TeamSettings,
    UpstreamSettings,
    VideoModel,
    VideoSettings,
    audience_warnings,
    cleartext_warnings,
    interpolate,
    load_settings,
    parse_bool,
    parse_key_list,
    production_problems,
    settings_from_mapping,
    team_connections,
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
        (
            {"upstream": {"max_connections": 8, "max_connections_per_team": 9}},
            "upstream.max_connections_per_team",
        ),
        ({"upstream": {"max_connections_per_team": -1}}, "upstream.max_connections_per_team"),
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


def test_a_teams_share_of_upstream_connections_defaults_to_seven_eighths() -> None:
    def share(up: dict[str, int]) -> int:
        return team_connections(settings_from_mapping({**_doc(), "upstream": up}, {}).upstream)

    assert share({}) == 448
    assert share({"max_connections": 1}) == 1
    assert share({"max_connections": 8, "max_connections_per_team": 3}) == 3


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
        ({"force_private": "maybe"}, "videos.force_private"),
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


# -- one boolean parser ----------------------------------------------------------------------

BOOLEAN_PLACES: list[tuple[Callable[[object], dict[str, object]], Callable[[Settings], object]]] = [
    # (where the flag sits in a document, how to read it back)
    (lambda v: {"quota": {"rate_fail_open": v}}, lambda s: s.quota.rate_fail_open),
    (lambda v: {"quota": {"enabled": v}}, lambda s: s.quota.enabled),
    (lambda v: {"videos": {"force_private": v}}, lambda s: s.videos.force_private),
    (
        lambda v: {"teams": {"t": {"videos_private": v}}},
        lambda s: s.teams["t"].videos_private,
    ),
    (
        lambda v: {"redis": {"url": "redis://127.0.0.1:7000/0", "cluster": v}},
        lambda s: s.redis.cluster,
    ),
]
BOOLEAN_KEYS = [
    "quota.rate_fail_open",
    "quota.enabled",
    "videos.force_private",
    "teams.t.videos_private",
    "redis.cluster",
]


@pytest.mark.parametrize("place", range(len(BOOLEAN_PLACES)))
@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        ("${X:-false}", {}, False),
        ("${X:-false}", {"X": "true"}, True),
        ("${X:-true}", {}, True),
        ("${X}", {"X": "off"}, False),
        ("On", {}, True),
        ("no", {}, False),
        (" YES ", {}, True),
        ("1", {}, True),
        ("0", {}, False),
        (1, {}, True),
        (0, {}, False),
    ],
)
def test_every_boolean_setting_reads_the_same_spellings(
    place: int, value: object, env: dict[str, str], expected: bool
) -> None:
    doc, read = BOOLEAN_PLACES[place]
    s = settings_from_mapping({**_doc(), **doc(value)}, env)
    assert read(s) is expected


@pytest.mark.parametrize("place", range(len(BOOLEAN_PLACES)))
@pytest.mark.parametrize("value", ["maybe", "", "${X:-nope}", 2, 0.5, [True], {"a": 1}])
def test_a_bad_boolean_names_its_key(place: int, value: object) -> None:
    doc, _ = BOOLEAN_PLACES[place]
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({**_doc(), **doc(value)}, {})
    assert info.value.key == BOOLEAN_KEYS[place]
    assert info.value.problem.startswith("must be true or false")


def test_parse_bool_error_shows_the_value() -> None:
    with pytest.raises(SettingsError) as info:
        parse_bool("ture", "quota.enabled")
    assert str(info.value) == (
        "quota.enabled: must be true or false (or yes/no, on/off, 1/0), got 'ture'"
    )


# -- defaults written once, in the dataclasses -----------------------------------------------


def test_an_empty_document_is_the_dataclass_defaults_field_by_field() -> None:
    secret = _secret()
    parsed = settings_from_mapping({"auth": {"hs256_secrets": [secret]}}, {})
    expected = Settings(auth=AuthSettings(hs256_secrets=(secret,)))
    for section in dataclasses.fields(Settings):
        got, want = getattr(parsed, section.name), getattr(expected, section.name)
        if not dataclasses.is_dataclass(want):
            assert got == want, section.name
            continue
        for f in dataclasses.fields(want):
            assert getattr(got, f.name) == getattr(want, f.name), f"{section.name}.{f.name}"
    assert parsed == expected


ONE_MODEL = {"default_model": "m", "models": {"m": {}}}


def test_an_empty_video_model_is_the_video_model_defaults() -> None:
    parsed = settings_from_mapping({**_doc(), "videos": ONE_MODEL}, {})
    assert parsed.videos.models["m"] == VideoModel()


@pytest.mark.parametrize(
    ("cls", "name", "changed", "read"),
    [
        (UpstreamSettings, "connect_timeout", 7.5, lambda s: s.upstream.connect_timeout),
        (UpstreamSettings, "base_url", "https://cn.example", lambda s: s.upstream.base_url),
        (RedisSettings, "data_dir", "elsewhere", lambda s: s.redis.data_dir),
        (AuthSettings, "leeway", 5.0, lambda s: s.auth.leeway),
        (AuthSettings, "admin_role", "root", lambda s: s.auth.admin_role),
        (ServerSettings, "max_body_bytes", 4096, lambda s: s.server.max_body_bytes),
        (ServerSettings, "access_log", "json", lambda s: s.server.access_log),
        (VideoSettings, "force_private", False, lambda s: s.videos.force_private),
        (VideoSettings, "reference_types", ("image/png",), lambda s: s.videos.reference_types),
        (QuotaSettings, "rate_fail_open", False, lambda s: s.quota.rate_fail_open),
        (QuotaSettings, "lease_seconds", 123.0, lambda s: s.quota.lease_seconds),
        (VideoModel, "max_prompt_chars", 99, lambda s: s.videos.models["m"].max_prompt_chars),
        (VideoModel, "max_seconds", 33, lambda s: s.videos.models["m"].max_seconds),
    ],
)
def test_a_default_changed_in_the_dataclass_is_what_a_missing_key_gets(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, changed: Any, read: Any
) -> None:
    # The generated __init__ keeps keyword defaults here: changing one is changing the
    # dataclass's default, and the parser must follow without being told.
    monkeypatch.setitem(cls.__init__.__kwdefaults__, name, changed)  # type: ignore[misc]
    assert getattr(cls(), name) == changed
    s = settings_from_mapping({**_doc(), "videos": ONE_MODEL}, {})
    assert read(s) == changed


# -- every problem at once -------------------------------------------------------------------


def test_every_problem_is_collected_each_naming_its_key() -> None:
    doc = {
        "upstream": {"connect_timeout": "soon", "colour": "blue", "shade": 1},
        "auth": {"hs256_secrets": ["short"], "leeway": -1},
        "server": {"port": 70000, "loop": "trio"},
        "teams": {"a": {"requests_per_minute": -1, "videos_private": "perhaps"}},
        "videos": {"force_private": "maybe"},
        "quota": {"time_zone": "Mars/Olympus", "rate_fail_open": "${X:-nah}"},
        "bogus": 1,
    }
    with pytest.raises(SettingsErrors) as info:
        settings_from_mapping(doc, {})
    assert [e.key for e in info.value.errors] == [
        "upstream.connect_timeout",
        "upstream.colour",
        "upstream.shade",
        "auth.hs256_secrets[0]",
        "auth.leeway",
        "server.port",
        "server.loop",
        "teams.a.requests_per_minute",
        "teams.a.videos_private",
        "videos.force_private",
        "quota.time_zone",
        "quota.rate_fail_open",
        "bogus",
    ]
    # still a SettingsError whose key is the first problem's, and whose text lists them all
    assert info.value.key == "upstream.connect_timeout"
    assert str(info.value).splitlines() == [str(e) for e in info.value.errors]


def test_an_unset_variable_is_one_problem_not_three() -> None:
    doc = {
        "auth": {"hs256_secrets": ["${JWT}"]},
        "upstream": {"keys": [{"id": "a", "secret": "${K}"}]},
    }
    with pytest.raises(SettingsErrors) as info:
        settings_from_mapping(doc, {})
    # in the document's order; the empty values they leave are not reported again
    assert [str(e) for e in info.value.errors] == [
        "auth.hs256_secrets[0]: environment variable JWT is not set",
        "upstream.keys[0].secret: environment variable K is not set",
    ]


def test_every_unset_variable_of_one_value_is_named() -> None:
    with pytest.raises(SettingsError) as info:
        interpolate("redis://${USER_}:${PASS}@${HOST:-x}/0", {}, "redis.url")
    assert info.value.problem == "environment variables USER_, PASS are not set"


def test_a_single_problem_is_a_plain_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({**_doc(), "bogus": 1}, {})
    assert type(info.value) is SettingsError
    assert info.value.errors == (info.value,)


# -- the file: duplicate keys and YAML errors ------------------------------------------------


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "server:\n"
        "  metrics_token: abc\n"
        "auth:\n"
        "  hs256_secrets: ['${S}']\n"
        "  leeway: 1\n"
        "  leeway: 2\n"
        "server:\n"
        "  port: 9000\n",
    )
    with pytest.raises(SettingsErrors) as info:
        load_settings(path, {"S": _secret()})
    assert [str(e) for e in info.value.errors] == [
        "auth.leeway: duplicate key (lines 5 and 6); the second would silently replace the first",
        "server: duplicate key (lines 1 and 7); the second would silently replace the first",
    ]


def test_duplicates_in_lists_and_other_problems_are_reported_together(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "upstream:\n"
        "  keys:\n"
        "    - {id: a, secret: x, id: b}\n"
        "  read_timeout: never\n"
        "auth: {hs256_secrets: ['${S}']}\n",
    )
    with pytest.raises(SettingsErrors) as info:
        load_settings(path, {"S": _secret()})
    assert [e.key for e in info.value.errors] == ["upstream.keys[0].id", "upstream.read_timeout"]
    assert "lines 3 and 3" in info.value.errors[0].problem


def test_merge_keys_and_aliases_are_not_duplicates(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "auth: {hs256_secrets: ['${S}']}\n"
        "videos:\n"
        "  default_model: base\n"
        "  models:\n"
        "    base: &base {sizes: [1280x720], seconds: [4, 8]}\n"
        "    big:\n"
        "      <<: *base\n"
        "      seconds: [8, 12]\n"
        "    same: *base\n",
    )
    s = load_settings(path, {"S": _secret()})
    assert s.videos.models["big"].seconds == (8, 12)
    assert s.videos.models["same"].sizes == ("1280x720",)


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("server:\n  port: 1\n   bad: 2\n", ":3:7", "mapping values are not allowed here"),
        ("auth: {hs256_secrets: [x}\n", ":1:25", "expected ',' or ']', but got '}'"),
        ("a: 1\n\tb: 2\n", ":2:1", "found character '\\t' that cannot start any token"),
        ("a: '\x07'\n", ":1:5", "special characters are not allowed (U+0007)"),
    ],
)
def test_a_yaml_error_is_one_line_with_the_file_line_and_column(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_settings(path, {})
    assert str(info.value) == f"{path}{where}: could not parse YAML: {problem}"


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_settings(tmp_path / "missing.yaml", {})
    assert (
        str(info.value)
        == f"{tmp_path / 'missing.yaml'}: cannot read config: No such file or directory"
    )
    path = tmp_path / "bytes.yaml"
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigFileError) as info:
        load_settings(path, {})
    assert str(info.value) == f"{path}: not UTF-8 text (byte 3)"
    path = _file(tmp_path, "- upstream\n- auth\n")
    with pytest.raises(ConfigFileError) as info:
        load_settings(path, {})
    assert "must be a mapping of sections" in str(info.value)


# -- cleartext warnings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "jwks_url", "warned"),
    [
        ("https://api.crazyrouter.com", None, []),
        ("http://api.crazyrouter.com", None, ["upstream.base_url"]),
        (
            "http://10.0.0.7:3000",
            "http://idp.internal/jwks",
            ["upstream.base_url", "auth.jwks_url"],
        ),
        ("https://api.crazyrouter.com", "http://idp.internal/jwks", ["auth.jwks_url"]),
        ("http://127.0.0.1:8090", "http://localhost:9000/jwks", []),
        ("http://127.8.0.1", "http://[::1]:9000/jwks", []),
        ("http://LOCALHOST.", "http://idp.localhost/jwks", []),
        ("HTTP://[::ffff:10.0.0.1]", None, ["upstream.base_url"]),
    ],
)
def test_cleartext_urls_off_this_machine_are_warned_about(
    base_url: str, jwks_url: str | None, warned: list[str]
) -> None:
    auth: dict[str, object] = {"hs256_secrets": [_secret()]}
    if jwks_url:
        auth.update(jwks_url=jwks_url, algorithms=["HS256", "RS256"])
    s = settings_from_mapping({"upstream": {"base_url": base_url}, "auth": auth}, {})
    warnings = cleartext_warnings(s)
    assert [w.split(":")[0] for w in warnings] == warned
    for w in warnings:
        assert "cleartext http" in w
        assert w.endswith("unencrypted (use https)")


@pytest.mark.parametrize(
    ("auth", "warned"),
    [
        ({"jwks_url": "https://idp.example/jwks", "algorithms": ["RS256"]}, True),
        (
            {"jwks_url": "https://idp.example/jwks", "algorithms": ["RS256"], "audience": "gw"},
            False,
        ),
        ({"hs256_secrets": ["s" * 40]}, False),  # a secret of the gateway's own
    ],
)
def test_an_idp_without_an_audience_is_warned_about(auth: dict[str, object], warned: bool) -> None:
    s = settings_from_mapping({"auth": auth}, {})
    assert [w.split(":")[0] for w in audience_warnings(s)] == (["auth.audience"] if warned else [])


def test_teams_are_typed_and_fall_back_to_default() -> None:
    s = settings_from_mapping(
        {
            "auth": {"hs256_secrets": ["s" * 40]},
            "teams": {
                "default": {"requests_per_minute": 60, "videos_private": False},
                "research": {"concurrent_jobs": 2},
            },
        },
        env={},
    )
    assert s.teams["research"] == TeamSettings(limits={"concurrent_jobs": 2})
    assert s.teams["default"] == TeamSettings(
        limits={"requests_per_minute": 60}, videos_private=False
    )
    # an absent entry gets the default one; every document has a default entry
    assert settings_from_mapping({"auth": {"hs256_secrets": ["s" * 40]}}, env={}).teams == {
        "default": TeamSettings()
    }
