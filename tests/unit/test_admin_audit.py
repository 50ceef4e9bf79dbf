"""Audit entries: flat stream fields that hold who, when, what and the before/after JSON, and
read back into the API's shape (even when a field was written by hand and is not JSON)."""

from __future__ import annotations

from gateway.admin.audit import entry_fields, iso_time, parse_entry
from gateway.auth.principal import Principal

ADMIN = Principal(team="ops", user="root", roles=frozenset({"gateway-admin"}))


def test_entries_round_trip() -> None:
    fields = entry_fields(
        ADMIN,
        "limits.merge",
        "team:search",
        {"overrides": {}},
        {"overrides": {"requests_per_minute": 5, "spend_per_month": None}},
        1_796_083_200.25,
    )
    assert fields == {
        "time": "2026-12-01T00:00:00.250Z",
        "team": "ops",
        "user": "root",
        "action": "limits.merge",
        "target": "team:search",
        "before": '{"overrides":{}}',
        "after": '{"overrides":{"requests_per_minute":5,"spend_per_month":null}}',
    }
    assert all(isinstance(v, str) for v in fields.values())
    assert parse_entry("1-0", fields) == {
        "id": "1-0",
        "object": "admin.audit_entry",
        "time": "2026-12-01T00:00:00.250Z",
        "actor": {"team": "ops", "user": "root"},
        "action": "limits.merge",
        "target": "team:search",
        "before": {"overrides": {}},
        "after": {"overrides": {"requests_per_minute": 5, "spend_per_month": None}},
    }


def test_the_principals_roles_are_not_recorded() -> None:
    fields = entry_fields(ADMIN, "a", "t", None, None, 0)
    assert "gateway-admin" not in str(fields)


def test_hand_written_or_partial_entries_still_read() -> None:
    entry = parse_entry("2-0", {"action": "note", "before": "not json"})
    assert entry["before"] == "not json"
    assert entry["after"] is None
    assert entry["actor"] == {"team": None, "user": None}


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
