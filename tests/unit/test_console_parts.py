"""The console's pure parts: cookie signing, CSRF tokens, numbers and times for people, the
usage chart, form values, and the one tree the bearer-token middleware lets through."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.admin.audit_query import AuditFilter, parse_before
from gateway.auth.middleware import AuthMiddleware
from gateway.auth.verifier import TokenVerifier
from gateway.console import cookies, csrf, format
from gateway.console.chart import MAX_SERIES, nice_top, stacked_by_day
from gateway.console.pages import _limit_field
from gateway.errors import AuthenticationFailed, InvalidRequest
from gateway.settings import AuthSettings
from gateway.web.asgi import Message

SECRET = secrets.token_bytes(32)


# -- cookies -----------------------------------------------------------------------------------


def test_a_signed_value_reads_back_only_with_its_secret_and_purpose() -> None:
    value = cookies.new_id()
    signed = cookies.sign(SECRET, "session", value)
    assert cookies.unsign(SECRET, "session", signed) == value
    assert cookies.unsign(secrets.token_bytes(32), "session", signed) is None
    assert cookies.unsign(SECRET, "sign-in", signed) is None  # not valid for another cookie


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # the signature
        lambda s: ("x" if s[0] != "x" else "y") + s[1:],  # the value
        lambda s: s.split(".")[0],  # no signature
        lambda s: "." + s.split(".")[1],  # no value
        lambda s: "",
        lambda s: s + "." + s,
        lambda s: s + "A" * 300,  # oversized
    ],
)
def test_a_tampered_cookie_is_refused(tamper: Any) -> None:
    signed = cookies.sign(SECRET, "session", cookies.new_id())
    assert cookies.unsign(SECRET, "session", tamper(signed)) is None


def test_ids_are_long_and_fresh() -> None:
    ids = {cookies.new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) >= 43 and "." not in i for i in ids)  # 256 bits, url-safe


def test_reading_a_cookie_header() -> None:
    header = 'a=1; gw_console=abc.def; gw_console_signin="n.s"'
    assert cookies.read(header, "gw_console") == "abc.def"
    assert cookies.read(header, "gw_console_signin") == "n.s"
    assert cookies.read(header, "gw") is None
    assert cookies.read(None, "gw_console") is None


def test_the_cookie_is_http_only_strict_and_scoped_to_the_console() -> None:
    header = cookies.set_header("gw_console", "v.s", max_age=3600, secure=True)
    parts = header.split("; ")
    assert parts[0] == "gw_console=v.s"
    assert {"Path=/console", "Max-Age=3600", "HttpOnly", "SameSite=Strict", "Secure"} <= set(parts)
    plain = cookies.set_header("gw_console", "v.s", max_age=10, secure=False)
    assert "Secure" not in plain.split("; ")
    assert "Max-Age=0" in cookies.clear_header("gw_console", secure=False)


# -- CSRF --------------------------------------------------------------------------------------


def test_csrf_tokens_match_only_themselves() -> None:
    token = csrf.new_token()
    assert csrf.matches(token, token)
    assert not csrf.matches(token, csrf.new_token())
    assert not csrf.matches(token, None)
    assert not csrf.matches(token, "")
    assert not csrf.matches(None, token)
    assert not csrf.matches("", "")


# -- formatting --------------------------------------------------------------------------------


def test_money_has_the_currency_and_keeps_sub_cent_amounts() -> None:
    assert format.money(1234.5, "USD") == "1,234.50 USD"
    assert format.money(0, "EUR") == "0.00 EUR"
    assert format.money(0.000183, "USD") == "0.000183 USD"
    assert format.money(None, "USD") == format.NOTHING


def test_numbers_limits_and_shares() -> None:
    assert format.number(1234567) == "1,234,567"
    assert format.number(12.3456, 3) == "12.346"
    assert format.limit_value("tokens_per_day", 2_000_000, "USD") == "2,000,000"
    assert format.limit_value("spend_per_month", 50, "EUR") == "50.00 EUR"
    assert format.limit_value("video_seconds_per_day", 12.5, "USD") == "12.5 s"
    assert format.limit_value("requests_per_minute", None, "USD") == "unlimited"
    assert format.share(5, 10) == 50.0
    assert format.share(5, None) is None
    assert format.share(0, 0) == 100.0  # a limit of zero is used up
    assert format.percent(0.4) == "<1 %"
    assert format.percent(142.9) == "142 %"


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (10, "just now"),
        (180, "3 min ago"),
        (7200, "2 h ago"),
        (86_400, "1 day ago"),
        (3 * 86_400, "3 days ago"),
        (90 * 86_400, "3 months ago"),
        (-120, "in 2 min"),
    ],
)
def test_relative_times(ago: int, text: str) -> None:
    now = 1_800_000_000.0
    assert format.relative(now - ago, now) == text


def test_absolute_times_name_their_zone() -> None:
    epoch = datetime(2026, 12, 6, 23, 0, tzinfo=UTC).timestamp()
    assert format.absolute(epoch) == "2026-12-06 23:00:00 UTC"
    assert format.absolute(epoch, ZoneInfo("Europe/Berlin")) == "2026-12-07 00:00:00 CET"


# -- the chart ---------------------------------------------------------------------------------


def test_the_chart_stacks_each_day_by_model_under_a_round_scale() -> None:
    days = [date(2026, 12, 1) + timedelta(days=i) for i in range(3)]
    rows = [
        {"day": "2026-12-01", "model": "a", "spend": 1.5},
        {"day": "2026-12-01", "model": "b", "spend": 0.5},
        {"day": "2026-12-03", "model": "a", "spend": 3.0},
        {"day": "2026-12-02", "model": "c", "spend": 0},  # nothing to draw
    ]
    chart = stacked_by_day(rows, days, measure="spend", show=lambda v: f"{v:.2f}")
    assert not chart.empty
    assert [t.label for t in chart.ticks] == ["0.00", "2.50", "5.00"]
    assert [name for _, name in chart.legend] == ["a", "b"]  # largest first
    first = [p for p in chart.pieces if p.title.startswith("2026-12-01")]
    assert len(first) == 2
    # Stacked: the second piece sits on the first, and heights follow the amounts.
    lower, upper = sorted(first, key=lambda p: -p.y)
    assert upper.y + upper.height == pytest.approx(lower.y)
    assert lower.height == pytest.approx(3 * upper.height)
    assert "1.50" in lower.title


def test_models_beyond_the_palette_share_one_colour() -> None:
    days = [date(2026, 12, 1)]
    rows = [{"day": "2026-12-01", "model": f"m{i}", "spend": 10 - i} for i in range(8)]
    chart = stacked_by_day(rows, days, measure="spend", show=str)
    assert chart.legend[-1] == (MAX_SERIES, "other models")
    assert len(chart.pieces) == MAX_SERIES + 1
    assert stacked_by_day([], days, measure="spend", show=str).empty


@pytest.mark.parametrize(
    ("value", "top"), [(0, 1.0), (3, 5.0), (2.2, 2.5), (0.0007, 0.001), (100, 100.0)]
)
def test_nice_top(value: float, top: float) -> None:
    assert nice_top(value) == pytest.approx(top)


# -- form values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("120", 120),
        ("1,000,000", 1_000_000),
        ("2.5", 2.5),
        ("0", 0),
        ("unlimited", None),
        (" Unlimited ", None),
        ("lots", "lots"),  # refused by the admin service, with its own message
    ],
)
def test_limit_fields(raw: str, value: Any) -> None:
    assert _limit_field(raw) == value


def test_audit_filters() -> None:
    entry = {
        "actor": {"team": "ops", "user": "root"},
        "action": "limits.merge",
        "target": "team:search",
        "before": {},
        "after": {},
    }
    assert AuditFilter(actor="ops/ro").matches(entry)
    assert not AuditFilter(actor="alice").matches(entry)
    assert AuditFilter(team="search", action="limits").matches(entry)
    assert not AuditFilter(team="other").matches(entry)
    key = {**entry, "target": "api_key:abc", "after": {"team": "search"}}
    assert AuditFilter(team="search").matches(key)
    assert AuditFilter.of({"actor": " ops/root "}) == AuditFilter(actor="ops/root")
    with pytest.raises(InvalidRequest) as info:
        AuditFilter.of({"team": "t" * 201})
    assert info.value.param == "team"


@pytest.mark.parametrize("bad", ["", "abc", "1-", "-1", "1-0 ", "+", "(1-0", "1" * 21 + "-0"])
def test_a_bad_audit_cursor_is_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_before(bad)
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "invalid_cursor",
        "before",
    )
    assert parse_before("1765000000000-3") == "1765000000000-3"
    assert parse_before(None) is None


# -- the bearer-token middleware's one exception -----------------------------------------------


async def _status(path: str) -> int:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "principal" not in scope
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    verifier = TokenVerifier(AuthSettings(hs256_secrets=(secrets.token_urlsafe(32),)))
    mw = AuthMiddleware(app, verifier, own_auth_prefix="/console")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    try:
        await mw(scope, receive, send)
    except AuthenticationFailed:
        return 401
    return int(sent[0]["status"])


@pytest.mark.parametrize("path", ["/console", "/console/", "/console/teams/x", "/console/sign-in"])
async def test_the_console_tree_skips_the_bearer_token(path: str) -> None:
    assert await _status(path) == 204


@pytest.mark.parametrize(
    "path", ["/consoles", "/console.json", "/consolex/teams", "/v1/console", "/admin/v1/teams"]
)
async def test_nothing_else_does(path: str) -> None:
    assert await _status(path) == 401
