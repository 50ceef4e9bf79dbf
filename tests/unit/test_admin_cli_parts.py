"""The admin CLI's pure parts: KIND=VALUE arguments, quoted path segments, aligned tables, the
help texts of every command, and waiting for a job against a scripted client."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import __version__
from gateway.admin.cli import (
    KIND_UNITS,
    AdminClient,
    CliError,
    change_line,
    job_lines,
    jobs_table,
    parse_assignments,
    q,
    run,
    teams_table,
    watch_job,
)
from gateway.admin.key_cli import key_lines
from gateway.admin.tables import number, render, shown, shown_csv
from gateway.cli import build_parser
from gateway.metering import ledger
from gateway.quota.model import KINDS


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
                    "tokens_per_minute": _limit(1200, 40000),
                    "tokens_per_day": _limit(5000, None),
                    "spend_per_day": _limit(0.25, 5, "override"),
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
        "1200/40000",
        "5000/unlimited",
        "0.25/5*",
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


# -- help ------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_argument_and_command_has_a_description() -> None:
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest} has no help"


def test_no_markup_in_any_help() -> None:
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "`" not in text, parser.prog


def test_set_limits_help_lists_every_kind_with_its_unit() -> None:
    (admin,) = [p for p in _parsers(build_parser()) if p.prog == "gateway admin set-limits"]
    text = admin.format_help()
    assert set(KIND_UNITS) == set(KINDS)
    listed = text.split("limit kinds:\n")[1].splitlines()[: len(KINDS)]
    for kind, line in zip(KINDS, listed, strict=True):
        assert line.split(None, 1) == [kind, KIND_UNITS[kind]]
    assert "null or unlimited: no limit of that kind" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"gateway {__version__}\n"


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "3601"])
def test_wait_interval_is_bounded(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["admin", "job", "video_1", "--wait", "--interval", bad])
    assert info.value.code == 2
    assert "--interval" in capsys.readouterr().err


# -- waiting for a job -----------------------------------------------------------------------


class Replies(AdminClient):
    """Answers GETs of one job from a script; the seam is ``call``, so no socket is needed."""

    def __init__(self, *docs: dict[str, Any] | BaseException) -> None:
        super().__init__("http://gateway.invalid", "t")
        self.docs = list(docs)
        self.paths: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.paths.append(f"{method} {path}")
        doc = self.docs.pop(0)
        if isinstance(doc, BaseException):
            raise doc
        return doc


def _job(status: str, progress: int | None) -> dict[str, Any]:
    return {"id": "video_1", "status": status, "progress": progress}


def test_watch_prints_changes_only_and_stops_at_the_end() -> None:
    client = Replies(
        _job("queued", 0),
        _job("queued", 0),
        _job("in_progress", 40),
        _job("in_progress", 40),
        _job("in_progress", 80),
        _job("completed", 100),
    )
    seen: list[tuple[str, Any]] = []
    slept: list[float] = []
    done = watch_job(
        client,
        "video_1",
        interval=0.5,
        on_change=lambda j: seen.append((j["status"], j["progress"])),
        sleep=slept.append,
    )
    assert done == _job("completed", 100)
    assert seen == [("queued", 0), ("in_progress", 40), ("in_progress", 80), ("completed", 100)]
    assert slept == [0.5] * 5
    assert client.paths == ["GET /admin/v1/jobs/video_1"] * 6
    assert client.docs == []


def test_watch_quotes_the_id_and_ends_on_failed() -> None:
    client = Replies(_job("failed", None))
    watch_job(client, "a/../b", interval=1, on_change=lambda j: None, sleep=lambda s: None)
    assert client.paths == ["GET /admin/v1/jobs/a%2F..%2Fb"]


def test_ctrl_c_while_waiting_is_a_clean_exit_naming_the_last_status() -> None:
    client = Replies(_job("in_progress", 10), KeyboardInterrupt())
    with pytest.raises(CliError) as info:
        watch_job(client, "video_1", interval=1, on_change=lambda j: None, sleep=lambda s: None)
    assert (info.value.exit_code, info.value.message) == (
        130,
        "stopped waiting for video_1 (still in_progress)",
    )


def test_change_line() -> None:
    line = change_line(_job("in_progress", 40)).split()
    assert line[1:] == ["video_1", "in_progress", "40%"]
    assert len(line[0]) == len("12:00:00Z")
    assert change_line(_job("queued", None)).split()[1:] == ["video_1", "queued", "-"]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("plain-team_1", "plain-team_1"),
        ("équipe 研究", "équipe 研究"),  # printable in any script: left as it is
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("tab\there", "tab\\there"),
        ("rtl\u202eevil\u2066", "rtl\\u202eevil\\u2066"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("c1\x9bcsi", "c1\\x9bcsi"),
        ("back\\slash\x00", "back\\\\slash\\x00"),  # no escape is ambiguous
        ("back\\x1b", "back\\\\x1b"),
    ],
)
def test_shown_makes_any_value_one_line_of_inert_text(text: str, want: str) -> None:
    assert shown(text) == want
    assert shown(text).isprintable()


def test_tables_and_lines_show_every_value_inert() -> None:
    evil = "x\x1b[2J\ny"
    table = render(["WHO", "N"], [[evil, "1"], ["bob", "2"]], right={1})
    assert table.splitlines() == ["WHO          N", "x\\x1b[2J\\ny  1", "bob          2"]
    lines = job_lines({"id": "video_1", "user": evil, "seconds": 4})
    assert "user          x\\x1b[2J\\ny" in lines.splitlines()
    assert len(lines.splitlines()) == 5  # id, user, seconds, created_at, completed_at
    key = {"id": "k1", "name": evil, "team": "t", "user": "key:n", "state": "active"}
    assert "\x1b" not in key_lines({**key, "expires_at": None})
    assert change_line({"id": evil, "status": "queued", "progress": 0}).split()[1] == shown(evil)
    # The gateway's CSV, as ledger.to_csv writes a hostile subject: every field inert, one
    # line per row (a quoted line break or a CR no longer starts a line that looks like a row).
    users = ("mallory\rceo", "bob\n / alice\x1b[2J")
    rows = [{"user": u, **dict.fromkeys(ledger.MEASURES, 0)} for u in users]
    csv_text = ledger.to_csv(rows, ["user"])
    shown_rows = shown_csv(csv_text).splitlines()
    assert len(shown_rows) == 3
    assert shown_rows[1].startswith("mallory\\rceo,")
    assert shown_rows[2].startswith("bob\\n / alice\\x1b[2J,")
