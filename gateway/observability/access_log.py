"""One access-log line per request: JSON for log pipelines, or a readable line on a terminal.

Inner layers add what only they know (the upstream key and status, the quota outcome) to the
request's record through a context variable, so nothing has to be threaded through every call.
Tokens, keys and raw paths never appear: the route is a template, the key is an id.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO

FLUSH_SECONDS = 0.05


@dataclass
class RequestRecord:
    upstream_key: str | None = None
    upstream_status: int | None = None
    quota: str | None = None
    reason: str | None = None  # why the request was refused ("auth: expired"), never a token


# Per request (each request runs in its own context); set by the observing middleware.
CURRENT: ContextVar[RequestRecord | None] = ContextVar("gateway_request_record", default=None)


def note_upstream(key: str, status: int) -> None:
    record = CURRENT.get()
    if record is not None:
        record.upstream_key, record.upstream_status = key, status


def note_reason(reason: str) -> None:
    record = CURRENT.get()
    if record is not None:
        record.reason = reason


def note_quota(result: str) -> None:
    record = CURRENT.get()
    if record is not None and record.quota in (None, "allowed"):
        record.quota = result


class AccessLog:
    """Writes straight to its stream, whole lines per write (atomic on a pipe shared by several
    workers), flushed within 50 ms so a container's log shows each request as it ends."""

    def __init__(self, mode: str, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "text" if self.stream.isatty() else "json"
        self.mode = mode
        self._pending: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def write(
        self,
        *,
        request_id: str | None,
        team: str | None,
        user: str | None,
        method: str,
        route: str,
        status: int,
        seconds: float,
        bytes_sent: int,
        record: RequestRecord,
    ) -> None:
        now = time.time()
        if self.mode == "json":
            line = json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                    + f".{int(now * 1000) % 1000:03d}Z",
                    "request_id": request_id,
                    "team": team,
                    "user": user,
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "upstream_key": record.upstream_key,
                    "upstream_status": record.upstream_status,
                    "bytes": bytes_sent,
                    "quota": record.quota,
                    "reason": record.reason,
                },
                separators=(",", ":"),
            )
        else:
            upstream = (
                f" upstream={record.upstream_key}:{record.upstream_status}"
                if record.upstream_key
                else ""
            )
            line = (
                f"{time.strftime('%H:%M:%S', time.localtime(now))} {status} {method} {route} "
                f"{seconds * 1000:.1f}ms {bytes_sent}B team={team or '-'} user={_plain(user)}"
                f"{upstream} quota={record.quota or '-'} id={request_id or '-'}"
                + (f" reason={record.reason!r}" if record.reason else "")
            )
        # Lines leave in one write every FLUSH_SECONDS (one syscall for many requests instead
        # of one each); each line is still whole, and none waits longer than that.
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a direct call): write at once
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail the request


def _plain(user: str | None) -> str:
    # A token's subject is the IdP's to choose: quoted when it could break the line or its
    # fields (a newline would forge a log line of its own).
    if not user:
        return "-"
    return user if user.isprintable() and " " not in user else repr(user)
