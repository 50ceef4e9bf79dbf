"""Which audit entries a reader asks for: a filter (actor, team, action) and a ``before``
cursor, both applied while the streams are read, before a page is cut, so that however many
entries one team writes, an admin's older entry is still found by a filter or by paging on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # a Redis stream id: <ms>-<seq>
MAX_FILTER_CHARS = 200


@dataclass(frozen=True)
class AuditFilter:
    """``actor``: part of "team/user", any case; ``team``: the team acted on or acting;
    ``action``: a prefix ("limits" matches every limits change). Empty matches anything."""

    actor: str = ""
    team: str = ""
    action: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> AuditFilter:
        fields = {}
        for name in ("actor", "team", "action"):
            value = (params.get(name) or "").strip()
            if len(value) > MAX_FILTER_CHARS:
                raise InvalidRequest(
                    f"{name} is longer than {MAX_FILTER_CHARS} characters.",
                    code="invalid_value",
                    param=name,
                )
            fields[name] = value
        return cls(**fields)

    def matches(self, entry: Mapping[str, Any]) -> bool:
        who = entry.get("actor") or {}
        if self.actor and self.actor.lower() not in f"{who.get('team')}/{who.get('user')}".lower():
            return False
        if self.action and not str(entry.get("action") or "").startswith(self.action):
            return False
        if self.team:
            sides = [entry.get("before"), entry.get("after")]
            teams = {who.get("team")} | {s.get("team") for s in sides if isinstance(s, dict)}
            if entry.get("target") != f"team:{self.team}" and self.team not in teams:
                return False
        return True


def parse_before(value: str | None) -> str | None:
    """The ``before`` cursor: an entry id from an earlier page (its ``next_before``)."""
    if value is None:
        return None
    if not _ENTRY_ID.fullmatch(value):
        raise InvalidRequest(
            "before must be an audit entry id (like 1765000000000-0), as the previous page's "
            "next_before gave it.",
            code="invalid_cursor",
            param="before",
        )
    return value
