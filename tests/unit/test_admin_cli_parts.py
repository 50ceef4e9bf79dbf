"""The admin CLI's pure parts: KIND=VALUE arguments, quoted path segments, aligned tables."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest

from gateway.admin.cli import (
    AdminClient,
    CliError,
    jobs_table,
    parse_assignments,
    q,
    run,
    teams_table,
)
from gateway.admin.tables import number, render
from gateway.cli import build_parser


def test_assignments() -> None:
    assert parse_assignments(
        ["requests_per_minute=60", "video_seconds_per_day=7.5", "spend_per_month=unlimited"]
    ) == {"requests_per_minute": 60, "video_seconds_per_day": 7.5, "spend_per_month": None}
    assert parse_assignments(["a=null", "b=None", "c=UNLIMITED", "a=1"]) == {
        "a": 1,
        "b": None,
        "c": None,
    }
    # the server judges kinds and ranges; the CLI only turns text into JSON
    assert parse_assignments(["rpm=-1"]) == {"rpm": -1}


@pytest.mark.parametrize("bad", ["rpm", "=5", "rpm=", "rpm=five", "rpm=1,5"])
def test_bad_assignments_are_usage_errors(bad: str) -> None:
    with pytest.raises(CliError) as info:
        parse_assignments([bad])
    assert info.value.exit_code == 2


def test_path_segments_cannot_change_the_path() -> None:
    assert q("../audit") == "..%2Faudit"
    assert q("a b?c#d") == "a%20b%3Fc%23d"


def test_only_http_urls() -> None:
    for url in ["file:///etc/passwd", "ftp://x", "localhost:8080", "http://"]:
        with pytest.raises(CliError) as info:
            AdminClient(url, "t")
        assert info.value.exit_code == 2
    assert AdminClient("https://gw.example/", "t").url == "https://gw.example"


def test_render_aligns_columns_and_strips_trailing_space() -> None:
    out = render(["NAME", "N", "NOTE"], [["a", "1", ""], ["long-name", "100", "x"]], right={1})
    assert out.splitlines() == [
        "NAME         N  NOTE",
        "a            1",
        "long-name  100  x",
    ]


def test_numbers() -> None:
    assert [number(v) for v in (None, 0, 5, 5.0, 0.25)] == ["unlimited", "0", "5", "5", "0.25"]
    assert number(None, none="-") == "-"


def _limit(used: Any, limit: Any, source: str = "config") -> dict[str, Any]:
    return {"used": used, "limit": limit, "source": source}


def test_teams_table() -> None:
    doc = {
        "data": [
            {
                "team": "search",
                "configured": True,
                "limits": {
                    "requests_per_minute": _limit(3, 60, "override"),
                    "concurrent_jobs": _limit(1, None),
                    "video_seconds_per_day": _limit(8, 120),
                    "video_seconds_per_month": _limit(8.5, None),
                    "spend_per_month": _limit(0.8, 50),
                },
            }
        ]
    }
    lines = teams_table(doc).splitlines()
    assert lines[1].split() == [
        "search",
        "yes",
        "3/60*",
        "1/unlimited",
        "8/120",
        "8.5/unlimited",
        "0.8/50",
    ]
    assert teams_table({"data": []}) == "no teams yet"


def test_jobs_table_tells_how_to_get_the_next_page() -> None:
    job = {
        "id": "video_1",
        "status": "completed",
        "model": "sora-2",
        "seconds": 4,
        "size": "1280x720",
        "user": "u",
        "upstream_key_id": "primary",
        "created_at": 0,
    }
    out = jobs_table({"data": [job], "has_more": True, "last_id": "video_1"})
    assert out.splitlines()[1].split()[-1] == "1970-01-01T00:00:00Z"
    assert out.splitlines()[-1] == "more: --after video_1"
    assert jobs_table({"data": [], "has_more": False}) == "no jobs"


def test_options_go_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    a = parser.parse_args(["admin", "--json", "--url", "http://x", "teams"])
    b = parser.parse_args(["admin", "teams", "--json", "--url", "http://x"])
    for args in (a, b):
        assert (args.json, args.url, args.command, args.admin_command) == (
            True,
            "http://x",
            "admin",
            "teams",
        )
    c = parser.parse_args(["admin", "keys"])
    assert (c.action, c.key_id) == (None, None)
    assert not hasattr(c, "json")


def test_no_token_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["admin", "teams"])
    assert isinstance(args, argparse.Namespace)
    assert run(args, out, err) == 2
    assert out.getvalue() == ""
    assert "GATEWAY_ADMIN_TOKEN" in err.getvalue()
