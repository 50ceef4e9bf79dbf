"""What an admin sends, validated before anything touches Redis: team names, limit
documents, reset windows and page sizes, each rejection naming its code and param."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.admin.inputs import (
    MAX_BODY_VALUES,
    RESET_WINDOWS,
    check_team,
    json_object,
    page_size,
    parse_limits,
    parse_window,
    well_formed_team,
)
from gateway.errors import InvalidRequest
from gateway.quota.model import KINDS


def rejected(fn: Any, *args: Any, **kw: Any) -> tuple[int, str, str | None]:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kw)
    return info.value.status, info.value.code, info.value.param


@pytest.mark.parametrize("name", ["a", "team-a", "Team_1.prod", "9", "a" * 64, "a..b"])
def test_good_team_names(name: str) -> None:
    assert check_team(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-a", ".a", "_a", "a" * 65, "a b", "a\n", "\na", "a:b", "a{b", "a}b", "a/b", "é", "a*"],
)
def test_bad_team_names(name: str) -> None:
    assert rejected(check_team, name) == (400, "invalid_value", "team")


def test_default_is_the_configs_fallback_not_a_team() -> None:
    assert rejected(check_team, "default") == (400, "invalid_value", "team")
    assert not well_formed_team("default")
    assert well_formed_team("Default")  # names are case-sensitive, as in the config


def test_json_object_takes_objects_only() -> None:
    assert json_object(b' {"a": 1} ') == {"a": 1}
    for raw in [b"", b"  ", b"null", b"[]", b'"x"', b"1", b"{", b"\xff", b"{'a': 1}"]:
        assert rejected(json_object, raw) == (400, "invalid_json", None), raw


def test_json_object_refuses_more_values_than_an_admin_body_has_before_parsing() -> None:
    models = [f"m-{i}" for i in range(MAX_BODY_VALUES - 2)]
    assert json_object(json.dumps({"models": models}).encode()) == {"models": models}
    assert rejected(json_object, b"[" + b"{}," * MAX_BODY_VALUES + b"{}]") == (
        400,
        "request_too_complex",
        None,
    )


def test_limits_in_readable_units_with_null_for_unlimited() -> None:
    doc = {
        "requests_per_minute": 60,
        "concurrent_jobs": 2.0,
        "video_seconds_per_day": 10.5,
        "video_seconds_per_month": None,
        "spend_per_month": 0,
    }
    assert parse_limits(doc) == {**doc, "concurrent_jobs": 2}
    assert parse_limits({}) == {}


@pytest.mark.parametrize(
    ("doc", "code", "param"),
    [
        ({"rpm": 1}, "unknown_parameter", "rpm"),
        ({"requests_per_minute": 1, "teams": 2}, "unknown_parameter", "teams"),
        ({"requests_per_minute": -1}, "invalid_value", "requests_per_minute"),
        ({"requests_per_minute": 1.5}, "invalid_value", "requests_per_minute"),
        ({"concurrent_jobs": "2"}, "invalid_value", "concurrent_jobs"),
        ({"concurrent_jobs": True}, "invalid_value", "concurrent_jobs"),
        ({"spend_per_month": float("nan")}, "invalid_value", "spend_per_month"),
        ({"spend_per_month": float("inf")}, "invalid_value", "spend_per_month"),
        ({"video_seconds_per_day": [1]}, "invalid_value", "video_seconds_per_day"),
        ({"video_seconds_per_day": {}}, "invalid_value", "video_seconds_per_day"),
    ],
)
def test_bad_limits_name_their_key(doc: dict[str, Any], code: str, param: str) -> None:
    assert rejected(parse_limits, doc) == (400, code, param)


def test_every_limit_kind_is_accepted() -> None:
    assert set(parse_limits(dict.fromkeys(KINDS, 1))) == set(KINDS)


def test_windows() -> None:
    for w in RESET_WINDOWS:
        assert parse_window({"window": w}) == w
    assert rejected(parse_window, {}) == (400, "missing_required_parameter", "window")
    for bad in ["week", "", "Day", None, 1, ["day"]]:
        assert rejected(parse_window, {"window": bad}) == (400, "invalid_value", "window")
    assert rejected(parse_window, {"window": "day", "x": 1}) == (400, "unknown_parameter", "x")


def test_page_sizes() -> None:
    assert page_size(None, default=20, maximum=100) == 20
    assert page_size("1", default=20, maximum=100) == 1
    assert page_size("100", default=20, maximum=100) == 100
    for bad in ["0", "101", "-1", "ten", "", " 5", "5_0", "1e2", "٣", "9999999"]:
        assert rejected(page_size, bad, default=20, maximum=100) == (
            400,
            "invalid_value",
            "limit",
        ), bad
