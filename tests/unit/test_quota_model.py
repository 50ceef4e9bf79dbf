"""Quota arithmetic: limit validation and precedence, calendar windows, costs, header text."""

from __future__ import annotations

import math
import secrets
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.quota import model
from gateway.quota.model import LimitError, Windows
from gateway.quota.policy import RETRY_CAP_S, wait_headers
from gateway.settings import Settings, SettingsError, TeamSettings, settings_from_mapping

UTC = ZoneInfo("UTC")


def load(**doc: Any) -> Settings:
    return settings_from_mapping(
        {"auth": {"hs256_secrets": [secrets.token_hex(32)]}, **doc}, env={}
    )


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("requests_per_minute", 100, 100),
        ("requests_per_minute", 100.0, 100),
        ("requests_per_minute", None, None),
        ("requests_per_minute", 0, 0),
        ("video_seconds_per_day", 12.5, 12.5),
        ("spend_per_month", 250, 250),
        # the smallest amounts counted, and 0 (refuse everything) said as 0
        ("video_seconds_per_day", 0.001, 0.001),
        ("spend_per_day", 0.000001, 0.000001),
        ("spend_per_day", 0.0, 0),
    ],
)
def test_good_limits(kind: str, value: Any, expected: Any) -> None:
    assert model.parse_limit(kind, value) == expected


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("requests_per_hour", 1, "unknown limit"),
        ("requests_per_minute", -1, "must be a finite number >= 0"),
        ("requests_per_minute", 1.5, "must be a whole number"),
        ("concurrent_jobs", True, "must be a number or null (unlimited)"),
        ("spend_per_month", "10", "must be a number or null (unlimited)"),
        ("spend_per_month", float("inf"), "must be a finite number >= 0"),
        ("video_seconds_per_day", float("nan"), "must be a finite number >= 0"),
        # Positive amounts that would be stored as 0, which refuses everything (found by review)
        (
            "video_seconds_per_day",
            0.0004,
            "rounds to 0 in steps of 0.001, which would refuse everything (write 0 if that is "
            "meant)",
        ),
        (
            "spend_per_day",
            4e-7,
            "rounds to 0 in steps of 0.000001, which would refuse everything (write 0 if that "
            "is meant)",
        ),
    ],
)
def test_bad_limits_name_the_limit(kind: str, value: Any, problem: str) -> None:
    with pytest.raises(LimitError) as err:
        model.parse_limit(kind, value)
    assert (err.value.key, err.value.problem) == (kind, problem)


def test_precedence_override_then_team_then_default() -> None:
    config: dict[str, dict[str, int | None]] = {
        "default": {"requests_per_minute": 60, "concurrent_jobs": 2},
        "research": {"concurrent_jobs": 10, "spend_per_month": None},
    }
    research = model.effective_limits("research", config, {"requests_per_minute": 5})
    assert research == {
        "requests_per_minute": 5,
        "concurrent_jobs": 10,
        "video_seconds_per_day": None,
        "video_seconds_per_month": None,
        "spend_per_month": None,
        "tokens_per_minute": None,
        "tokens_per_day": None,
        "spend_per_day": None,
    }
    other = model.effective_limits("unlisted", config, {})
    assert (other["requests_per_minute"], other["concurrent_jobs"]) == (60, 2)


def test_stored_units_round_trip() -> None:
    assert model.stored_limit("video_seconds_per_day", 12.5) == 12_500
    assert model.stored_limit("spend_per_month", 0.25) == 250_000
    assert model.stored_limit("requests_per_minute", None) == -1
    assert model.shown("video_seconds_per_day", 12_500) == 12.5
    assert model.shown("spend_per_month", 3_000_000) == 3
    assert model.shown("concurrent_jobs", 4) == 4


def test_windows_are_calendar_days_and_months() -> None:
    w = Windows.at(ts("2026-01-31T23:59:59"), UTC)
    assert (w.day, w.month) == ("20260131", "202601")
    assert w.day_reset == ts("2026-02-01T00:00:00")
    assert w.month_reset == ts("2026-02-01T00:00:00")
    dec = Windows.at(ts("2026-12-15T12:00:00"), UTC)
    assert dec.month_reset == ts("2027-01-01T00:00:00")
    # February is a month, not 30 days.
    feb = Windows.at(ts("2026-02-01T00:00:01"), UTC)
    assert feb.month_reset - ts("2026-02-01T00:00:00") == 28 * 86_400


def test_windows_follow_the_configured_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 23:30 UTC on Dec 31 is already Jan 1 in Berlin.
    w = Windows.at(ts("2026-12-31T23:30:00"), berlin)
    assert (w.day, w.month) == ("20270101", "202701")
    assert w.day_reset == ts("2027-01-02T00:00:00", "Europe/Berlin")
    # The day DST starts has 23 hours.
    spring = Windows.at(ts("2026-03-29T01:00:00", "Europe/Berlin"), berlin)
    assert spring.day_reset - ts("2026-03-29T00:00:00", "Europe/Berlin") == 23 * 3600


def test_job_cost_weights_prices_and_size_multipliers() -> None:
    c = model.job_cost(
        8, "1920x1080", weight=1.5, price_per_second=0.1, size_multipliers={"1920x1080": 2}
    )
    assert (c.seconds, c.video_units, c.spend_units) == (8, 12_000, 1_600_000)
    assert (c.video_seconds, c.spend) == (12, 1.6)
    plain = model.job_cost(4, "1280x720")
    assert (plain.video_units, plain.spend_units) == (4_000, 0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.2, "1s"), (59, "59s"), (60, "1m0s"), (3725, "1h2m5s")]
)
def test_duration_text(seconds: float, text: str) -> None:
    assert model.duration_text(seconds) == text


def test_team_limits_are_validated_at_load() -> None:
    with pytest.raises(SettingsError) as err:
        load(teams={"research": {"requests_per_hour": 5}})
    assert err.value.key == "teams.research.requests_per_hour"
    with pytest.raises(SettingsError) as err:
        load(teams={"research": {"concurrent_jobs": -2}})
    assert err.value.key == "teams.research.concurrent_jobs"
    with pytest.raises(SettingsError) as err:
        load(teams={"research": {"spend_per_day": 4e-7}})  # stored as 0: refuses everything
    assert err.value.key == "teams.research.spend_per_day"
    with pytest.raises(SettingsError) as err:
        load(teams={"bad team": {}})
    assert err.value.key == "teams.bad team"


def test_quota_section_is_validated() -> None:
    with pytest.raises(SettingsError) as err:
        load(quota={"time_zone": "Mars/Olympus"})
    assert err.value.key == "quota.time_zone"
    with pytest.raises(SettingsError) as err:
        load(quota={"rate_fail_open": "maybe"})
    assert err.value.key == "quota.rate_fail_open"
    s = load(quota={"time_zone": "Europe/Berlin", "currency": "EUR"}, teams={"a": {}})
    assert (s.quota.time_zone, s.quota.currency) == ("Europe/Berlin", "EUR")
    assert s.teams["a"] == TeamSettings()


def test_price_table_is_validated() -> None:
    videos = {"models": {"m": {"sizes": ["1280x720"], "size_multipliers": {"640x480": 2}}}}
    with pytest.raises(SettingsError) as err:
        load(videos=videos)
    assert err.value.key == "videos.models.m.size_multipliers.640x480"


def test_a_wait_of_whole_milliseconds_is_told_as_those() -> None:
    # 8146 ms arrives as 8.146 s, which is 8146.000000000001 ms again in floating point:
    # every whole millisecond up to the cap, checked.
    wrong = [
        ms
        for ms in range(1, int(RETRY_CAP_S * 1000) + 1)
        if wait_headers(ms / 1000)
        != {"retry-after": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)}
    ]
    assert wrong == []


def test_waits_past_the_cap_or_never_are_not_worth_retrying() -> None:
    assert wait_headers(None) == wait_headers(RETRY_CAP_S + 0.001) == {"x-should-retry": "false"}
    assert wait_headers(0.0)["retry-after-ms"] == "1"
