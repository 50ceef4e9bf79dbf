"""The text access log: one line per request whatever the token's subject holds."""

from __future__ import annotations

import io

import pytest

from gateway.observability.access_log import AccessLog, RequestRecord


def _line(user: str | None) -> list[str]:
    out = io.StringIO()
    log = AccessLog("text", stream=out)
    log.write(
        request_id="req_1",
        team="t",
        user=user,
        method="GET",
        route="/v1/models",
        status=200,
        seconds=0.001,
        bytes_sent=10,
        record=RequestRecord(),
    )  # no running loop: written at once
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        ("alice", "user=alice "),
        (None, "user=- "),
        ("eve\n12:00:00 200 GET /admin", "user='eve\\n12:00:00 200 GET /admin' "),
        ("eve team=ops", "user='eve team=ops' "),
        ("e\x1b[2Jve", "user='e\\x1b[2Jve' "),
    ],
)
def test_a_subject_cannot_break_the_line_or_forge_a_field(user: str | None, shown: str) -> None:
    (line,) = _line(user)
    assert shown in line
