"""The admin API on a real socket with a real Redis: the admin role, every endpoint's answer,
every bad input's exact status and code, limits that bind the next request, resets that clear
only their window, key switches the pool obeys, and an audit log without secrets."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis as redis_sync

from gateway.admin import audit
from gateway.admin.api_keys import KeyAdmin
from gateway.admin.audit import AUDIT_MAXLEN, TEAM_AUDIT_MAXLEN, AuditLog
from gateway.admin.audit_query import AuditFilter
from gateway.admin.service import AdminService
from gateway.auth.key_store import KeyStore
from gateway.auth.principal import Principal
from gateway.errors import ServiceUnavailable
from gateway.quota.model import Windows
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import (
    AuthSettings,
    QuotaSettings,
    RedisSettings,
    Settings,
    VideoSettings,
    team_table,
)
from gateway.sim.config import SimConfig
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import AUDIT_STREAM, AUDIT_TEAMS, TEAMS, TeamKeys
from gateway.upstream.keypool import KeyPool
from gateway.videos.registry import JobRegistry, new_video_id
from tests.conftest import Stack, make_stack
from tests.servers import free_port

ADMIN_ROLE = "gateway-admin"
VIDEOS = {
    "models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4, 8, 12], "price_per_second": 0.25}},
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def fresh(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"  # the Redis server is shared by the session


@dataclass
class Admin:
    """A stack, an admin token, and every admin answer seen (for the secret check)."""

    stack: Stack
    team: str  # a configured team with its own limits
    token: str
    seen: list[str] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,  # default: the admin's
        anonymous: bool = False,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.stack.url + path, data=data, method=method)
        if not anonymous:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, headers, text = r.status, str(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            status, headers, text = e.code, str(e.headers), e.read().decode()
            e.close()
        self.seen.append(headers + text)
        return status, json.loads(text) if text else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.call(method, path, body)
        assert status == 200, doc
        return doc

    def error(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, str, str | None]:
        status, doc = self.call(method, path, body, **kw)
        return status, doc["error"]["code"], doc["error"]["param"]

    def as_team(self, team: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.call(method, path, body, token=self.stack.token(team=team, user="u"))

    def redis(self) -> redis_sync.Redis:
        return redis_sync.Redis.from_url(self.stack.settings.redis.url, decode_responses=True)


@pytest.fixture
def admin(redis_url: str) -> Iterator[Admin]:
    team = fresh("cfg")
    with make_stack(
        redis_url,
        key_ids=("primary", "secondary"),
        sim=SimConfig(job_seconds=30, content_bytes=100),
        teams={"default": {}, team: {"requests_per_minute": 50, "video_seconds_per_day": 100}},
        videos=VIDEOS,
    ) as stack:
        token = stack.token(team=fresh("ops"), user="root", roles=(ADMIN_ROLE,))
        yield Admin(stack, team, token)


def create_job(a: Admin, team: str, prompt: str = "a cat SIMNEVER") -> str:
    body = {"model": "sora-2", "prompt": prompt, "seconds": "4", "size": "1280x720"}
    status, doc = a.as_team(team, "POST", "/v1/videos", body)
    assert status == 200, doc
    return str(doc["id"])


EVERY_ENDPOINT = [
    ("GET", "/admin/v1/teams", None),
    ("GET", "/admin/v1/teams/x", None),
    ("PUT", "/admin/v1/teams/x/limits", {"requests_per_minute": 1}),
    ("PATCH", "/admin/v1/teams/x/limits", {"requests_per_minute": 1}),
    ("DELETE", "/admin/v1/teams/x/limits", None),
    ("POST", "/admin/v1/teams/x/usage/reset", {"window": "all"}),
    ("GET", "/admin/v1/teams/x/jobs", None),
    ("GET", "/admin/v1/jobs/video_" + "0" * 32, None),
    ("GET", "/admin/v1/upstream-keys", None),
    ("POST", "/admin/v1/upstream-keys/primary/enable", None),
    ("POST", "/admin/v1/upstream-keys/primary/disable", None),
    ("GET", "/admin/v1/audit", None),
]


def test_no_token_is_401_and_no_admin_role_is_403_on_every_endpoint(admin: Admin) -> None:
    others = [
        admin.stack.token(team="x", user="bob"),  # the target team itself, without the role
        admin.stack.token(team=fresh(), user="eve", roles=("admin", "Gateway-Admin")),
    ]
    for method, path, body in EVERY_ENDPOINT:
        status, doc = admin.call(method, path, body, anonymous=True)
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key"), path
        for token in others:
            status, doc = admin.call(method, path, body, token=token)
            assert status == 403, (method, path)
            assert doc["error"] == {
                "message": "This endpoint needs the gateway admin role.",
                "type": "permission_error",
                "param": None,
                "code": "permission_denied",
            }
    r = admin.redis()
    assert r.exists(TeamKeys("x").limits, AUDIT_STREAM) == 0
    assert admin.stack.app.pool.state("primary") == "healthy"


def test_teams_lists_configured_reserving_and_overridden_teams(admin: Admin) -> None:
    reserving, hand_made, patched = fresh("res"), fresh("hand"), fresh("patch")
    create_job(admin, reserving)
    r = admin.redis()
    r.hset(TeamKeys(hand_made).limits, "requests_per_minute", 7)  # an operator's redis-cli
    r.sadd(TEAMS, "bad name", "default")  # not addressable, so not listed (and no 400)
    admin.ok("PATCH", f"/admin/v1/teams/{patched}/limits", {"concurrent_jobs": 3})

    doc = admin.ok("GET", "/admin/v1/teams")
    assert doc["object"] == "list"
    by_name = {t["team"]: t for t in doc["data"]}
    assert set(by_name) == {admin.team, reserving, hand_made, patched}  # never "default"
    assert [t["team"] for t in doc["data"]] == sorted(by_name)
    for name, view in by_name.items():
        assert view == admin.ok("GET", f"/admin/v1/teams/{name}")

    cfg = by_name[admin.team]
    assert cfg["configured"] is True
    assert cfg["overrides"] == {}
    assert cfg["limits"]["requests_per_minute"]["limit"] == 50
    assert cfg["limits"]["requests_per_minute"]["source"] == "config"
    assert cfg["limits"]["concurrent_jobs"]["limit"] is None  # default: unlimited
    res = by_name[reserving]
    assert res["configured"] is False
    assert res["limits"]["concurrent_jobs"]["used"] == 1
    assert res["limits"]["video_seconds_per_day"]["used"] == 4
    assert res["limits"]["spend_per_month"]["used"] == 1  # 4 s at 0.25 per second
    assert by_name[hand_made]["overrides"] == {"requests_per_minute": 7}
    assert by_name[patched]["limits"]["concurrent_jobs"] == {
        **by_name[patched]["limits"]["concurrent_jobs"],
        "limit": 3,
        "source": "override",
    }


def test_show_counts_the_teams_own_requests_not_the_admins(admin: Admin) -> None:
    for _ in range(3):
        assert admin.as_team(admin.team, "POST", "/v1/chat/completions", CHAT)[0] == 200
    view = admin.ok("GET", f"/admin/v1/teams/{admin.team}")
    rpm = view["limits"]["requests_per_minute"]
    assert (rpm["limit"], rpm["used"], rpm["remaining"], rpm["source"]) == (50, 3, 47, "config")
    assert view["currency"] == "USD"
    assert view["time_zone"] == "UTC"
    unknown = admin.ok("GET", "/admin/v1/teams/nobody.yet")
    assert unknown["configured"] is False
    assert all(v["used"] == 0 for v in unknown["limits"].values())


def test_patch_merges_put_replaces_delete_restores_the_config(admin: Admin) -> None:
    t = admin.team
    path = f"/admin/v1/teams/{t}/limits"
    r = admin.redis()
    view = admin.ok("PATCH", path, {"requests_per_minute": 5})
    view = admin.ok("PATCH", path, {"video_seconds_per_day": 10.5, "spend_per_month": None})
    assert view["overrides"] == {
        "requests_per_minute": 5,
        "video_seconds_per_day": 10.5,
        "spend_per_month": None,
    }
    # Stored exactly as the Lua scripts read them: thousandths of seconds, -1 unlimited.
    assert r.hgetall(TeamKeys(t).limits) == {
        "requests_per_minute": "5",
        "video_seconds_per_day": "10500",
        "spend_per_month": "-1",
    }
    assert view["limits"]["video_seconds_per_day"]["limit"] == 10.5
    assert view["limits"]["spend_per_month"]["limit"] is None

    view = admin.ok("PUT", path, {"concurrent_jobs": 2, "video_seconds_per_month": 0})
    assert view["overrides"] == {"concurrent_jobs": 2, "video_seconds_per_month": 0}
    assert r.hgetall(TeamKeys(t).limits) == {"concurrent_jobs": "2", "video_seconds_per_month": "0"}
    limits = view["limits"]
    assert (limits["requests_per_minute"]["limit"], limits["requests_per_minute"]["source"]) == (
        50,
        "config",
    )
    assert (limits["video_seconds_per_day"]["limit"], limits["concurrent_jobs"]["source"]) == (
        100,
        "override",
    )

    view = admin.ok("DELETE", path)
    assert view["overrides"] == {}
    assert {k: (v["limit"], v["source"]) for k, v in view["limits"].items()} == {
        "requests_per_minute": (50, "config"),
        "concurrent_jobs": (None, "config"),
        "video_seconds_per_day": (100, "config"),
        "video_seconds_per_month": (None, "config"),
        "spend_per_month": (None, "config"),
        "tokens_per_minute": (None, "config"),
        "tokens_per_day": (None, "config"),
        "spend_per_day": (None, "config"),
    }
    assert r.exists(TeamKeys(t).limits) == 0
    # An empty PUT also clears; an empty PATCH changes nothing.
    admin.ok("PATCH", path, {"requests_per_minute": 9})
    assert admin.ok("PATCH", path, {})["overrides"] == {"requests_per_minute": 9}
    assert admin.ok("PUT", path, {})["overrides"] == {}


def test_a_new_limit_binds_the_next_request_and_delete_lifts_it(admin: Admin) -> None:
    t = fresh()  # not configured: the default is unlimited
    admin.ok("PATCH", f"/admin/v1/teams/{t}/limits", {"requests_per_minute": 2})
    assert [admin.as_team(t, "GET", "/v1/models")[0] for _ in range(2)] == [200, 200]
    admin.stack.clear_sim()
    status, doc = admin.as_team(t, "GET", "/v1/models")
    assert status == 429
    assert doc["error"]["code"] == "rate_limit_exceeded"
    assert admin.stack.sim_requests() == []
    admin.ok("DELETE", f"/admin/v1/teams/{t}/limits")
    assert admin.as_team(t, "GET", "/v1/models")[0] == 200
    # and a limit of 0 video seconds stops a create before it reaches the upstream
    admin.ok("PUT", f"/admin/v1/teams/{t}/limits", {"video_seconds_per_day": 0})
    status, doc = admin.as_team(
        t, "POST", "/v1/videos", {"model": "sora-2", "prompt": "p", "seconds": "4"}
    )
    assert (status, doc["error"]["code"]) == (429, "video_seconds_quota_exceeded")
    assert admin.stack.sim_requests("/v1/videos") == []


def test_usage_reset_zeroes_its_window_only_and_keeps_running_jobs(admin: Admin) -> None:
    t = admin.team  # configured with a rate limit: unlimited teams keep no rate log
    job = create_job(admin, t)  # holds a concurrency slot and a reservation while it runs
    for _ in range(2):
        assert admin.as_team(t, "GET", "/v1/models")[0] == 200
    k = TeamKeys(t)
    w = Windows.at(time.time(), ZoneInfo("UTC"))
    r = admin.redis()

    def used() -> dict[str, Any]:
        view = admin.ok("GET", f"/admin/v1/teams/{t}")
        return {kind: v["used"] for kind, v in view["limits"].items()}

    assert used() == {
        "requests_per_minute": 3,
        "concurrent_jobs": 1,
        "video_seconds_per_day": 4,
        "video_seconds_per_month": 4,
        "spend_per_month": 1,
        "tokens_per_minute": 0,
        "tokens_per_day": 0,
        "spend_per_day": 1,  # the video's charge counts against the day's spend too
    }
    reservation = r.hgetall(k.reservation(job))
    reset = f"/admin/v1/teams/{t}/usage/reset"

    view = admin.ok("POST", reset, {"window": "minute"})
    assert view["limits"]["requests_per_minute"]["used"] == 0
    assert used()["video_seconds_per_day"] == 4
    assert r.exists(k.rate) == 0

    admin.ok("POST", reset, {"window": "day"})
    assert r.exists(k.video_day(w.day)) == 0
    assert r.get(k.video_month(w.month)) == "4000"
    assert r.get(k.spend_month(w.month)) == "1000000"
    assert r.exists(k.spend_day(w.day)) == 0

    admin.as_team(t, "GET", "/v1/models")
    admin.ok("POST", reset, {"window": "month"})
    assert r.exists(k.video_month(w.month), k.spend_month(w.month)) == 0
    assert used()["requests_per_minute"] == 1  # the minute was not touched this time

    admin.ok("POST", reset, {"window": "all"})
    assert used() == {
        "requests_per_minute": 0,
        "concurrent_jobs": 1,
        "video_seconds_per_day": 0,
        "video_seconds_per_month": 0,
        "spend_per_month": 0,
        "tokens_per_minute": 0,
        "tokens_per_day": 0,
        "spend_per_day": 0,
    }
    assert r.zrange(k.slots, 0, -1) == [job]
    assert r.hgetall(k.reservation(job)) == reservation

    entries = admin.ok("GET", "/admin/v1/audit")["data"]
    assert [(e["action"], e["before"]["window"]) for e in entries] == [
        ("usage.reset", "all"),
        ("usage.reset", "month"),
        ("usage.reset", "day"),
        ("usage.reset", "minute"),
    ]
    day = {"video_seconds_per_day": 4, "tokens_per_day": 0, "spend_per_day": 1}
    assert entries[2]["before"]["used"] == day
    assert entries[2]["after"]["used"] == dict.fromkeys(day, 0)
    assert entries[1]["before"]["used"] == {"video_seconds_per_month": 4, "spend_per_month": 1}
    assert entries[3]["before"]["used"] == {"requests_per_minute": 3, "tokens_per_minute": 0}


def test_team_jobs_pages_newest_first_and_any_job_can_be_shown(admin: Admin) -> None:
    t, other = fresh(), fresh()
    ids = [create_job(admin, t) for _ in range(3)]
    foreign = create_job(admin, other)
    r = admin.redis()
    # newest first; two creates in the same millisecond tie, and Redis orders ties by id
    ids.sort(key=lambda i: (int(r.hget(f"gw:job:{{{i}}}", "created_ms") or 0), i), reverse=True)
    page = admin.ok("GET", f"/admin/v1/teams/{t}/jobs?limit=2")
    assert [j["id"] for j in page["data"]] == ids[:2]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[0], ids[1], True)
    rest = admin.ok("GET", f"/admin/v1/teams/{t}/jobs?limit=2&after={ids[1]}")
    assert [j["id"] for j in rest["data"]] == [ids[2]]
    assert rest["has_more"] is False

    view = page["data"][0]
    stored = r.hgetall(f"gw:job:{{{ids[0]}}}")
    assert view == {
        "id": ids[0],
        "object": "admin.video_job",
        "team": t,
        "user": "u",
        "model": "sora-2",
        "size": "1280x720",
        "seconds": 4,
        "status": view["status"],
        "progress": view["progress"],
        "created_at": int(stored["created_at"]),
        "completed_at": None,
        "upstream_key_id": stored["key_id"],
        "upstream_id": stored["upstream_id"],
        "remixed_from": None,
        "deleted": False,
        "error": None,
    }
    assert view["status"] in ("queued", "in_progress")
    assert view["upstream_key_id"] in ("primary", "secondary")

    one = admin.ok("GET", f"/admin/v1/jobs/{foreign}")
    assert (one["team"], one["id"]) == (other, foreign)
    assert one["quota"]["state"] == "reserved"
    assert (one["quota"]["video_seconds"], one["quota"]["spend"]) == (4, 1)
    assert admin.ok("GET", f"/admin/v1/teams/{fresh()}/jobs") == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    # another team's id is no cursor for this one
    code = admin.error("GET", f"/admin/v1/teams/{t}/jobs?after={foreign}")
    assert code == (404, "not_found", "after")


BAD_INPUTS = [
    # team names: the settings' rule, checked whole (a trailing newline is not a name)
    ("GET", "/admin/v1/teams/bad%20name", None, None, 400, "invalid_value", "team"),
    ("GET", "/admin/v1/teams/-lead", None, None, 400, "invalid_value", "team"),
    ("GET", "/admin/v1/teams/" + "a" * 65, None, None, 400, "invalid_value", "team"),
    # a control character in any path is refused before routing, like the pass-through does
    ("GET", "/admin/v1/teams/a%0A", None, None, 400, "invalid_path", None),
    ("GET", "/admin/v1/teams/a%7Bb%7D", None, None, 400, "invalid_value", "team"),
    ("PATCH", "/admin/v1/teams/default/limits", {}, None, 400, "invalid_value", "team"),
    ("PATCH", "/admin/v1/teams/a:b/limits", {}, None, 400, "invalid_value", "team"),
    ("GET", "/admin/v1/teams/%C3%A9quipe/jobs", None, None, 400, "invalid_value", "team"),
    # limit documents
    ("PATCH", "/admin/v1/teams/T/limits", {"rpm": 5}, None, 400, "unknown_parameter", "rpm"),
    (
        "PUT",
        "/admin/v1/teams/T/limits",
        {"requests_per_minute": 5, "default": 1},
        None,
        400,
        "unknown_parameter",
        "default",
    ),
    (
        "PATCH",
        "/admin/v1/teams/T/limits",
        {"requests_per_minute": -1},
        None,
        400,
        "invalid_value",
        "requests_per_minute",
    ),
    (
        "PATCH",
        "/admin/v1/teams/T/limits",
        {"video_seconds_per_day": "10"},
        None,
        400,
        "invalid_value",
        "video_seconds_per_day",
    ),
    (
        "PATCH",
        "/admin/v1/teams/T/limits",
        {"concurrent_jobs": 1.5},
        None,
        400,
        "invalid_value",
        "concurrent_jobs",
    ),
    (
        "PUT",
        "/admin/v1/teams/T/limits",
        {"spend_per_month": True},
        None,
        400,
        "invalid_value",
        "spend_per_month",
    ),
    (
        "PUT",
        "/admin/v1/teams/T/limits",
        None,
        b'{"spend_per_month": NaN}',
        400,
        "invalid_value",
        "spend_per_month",
    ),
    (
        "PUT",
        "/admin/v1/teams/T/limits",
        None,
        b'{"spend_per_month": 1e999}',
        400,
        "invalid_value",
        "spend_per_month",
    ),
    # a positive amount stored as 0 would refuse everything (found by review)
    (
        "PATCH",
        "/admin/v1/teams/T/limits",
        {"spend_per_day": 4e-7},
        None,
        400,
        "invalid_value",
        "spend_per_day",
    ),
    (
        "PUT",
        "/admin/v1/teams/T/limits",
        {"video_seconds_per_day": 0.0004},
        None,
        400,
        "invalid_value",
        "video_seconds_per_day",
    ),
    ("PUT", "/admin/v1/teams/T/limits", None, b"{not json", 400, "invalid_json", None),
    ("PATCH", "/admin/v1/teams/T/limits", [1, 2], None, 400, "invalid_json", None),
    ("PATCH", "/admin/v1/teams/T/limits", "x", None, 400, "invalid_json", None),
    ("PUT", "/admin/v1/teams/T/limits", None, b"", 400, "invalid_json", None),
    ("PUT", "/admin/v1/teams/T/limits", None, b"\xff\xfe", 400, "invalid_json", None),
    # resets
    (
        "POST",
        "/admin/v1/teams/T/usage/reset",
        {"window": "week"},
        None,
        400,
        "invalid_value",
        "window",
    ),
    (
        "POST",
        "/admin/v1/teams/T/usage/reset",
        {"window": None},
        None,
        400,
        "invalid_value",
        "window",
    ),
    (
        "POST",
        "/admin/v1/teams/T/usage/reset",
        {},
        None,
        400,
        "missing_required_parameter",
        "window",
    ),
    (
        "POST",
        "/admin/v1/teams/T/usage/reset",
        {"window": "day", "team": "x"},
        None,
        400,
        "unknown_parameter",
        "team",
    ),
    ("POST", "/admin/v1/teams/T/usage/reset", None, b"day", 400, "invalid_json", None),
    # pages and ids
    ("GET", "/admin/v1/teams/T/jobs?limit=0", None, None, 400, "invalid_value", "limit"),
    ("GET", "/admin/v1/teams/T/jobs?limit=101", None, None, 400, "invalid_value", "limit"),
    ("GET", "/admin/v1/teams/T/jobs?limit=ten", None, None, 400, "invalid_value", "limit"),
    ("GET", "/admin/v1/teams/T/jobs?after=nope", None, None, 404, "not_found", "after"),
    ("GET", "/admin/v1/jobs/nope", None, None, 404, "not_found", None),
    ("GET", "/admin/v1/jobs/video_" + "0" * 32, None, None, 404, "not_found", None),
    ("GET", "/admin/v1/jobs/VIDEO_" + "0" * 32, None, None, 404, "not_found", None),
    ("POST", "/admin/v1/upstream-keys/nope/enable", None, None, 404, "not_found", None),
    ("POST", "/admin/v1/upstream-keys/PRIMARY/disable", None, None, 404, "not_found", None),
    ("GET", "/admin/v1/audit?limit=0", None, None, 400, "invalid_value", "limit"),
    ("GET", "/admin/v1/audit?limit=1001", None, None, 400, "invalid_value", "limit"),
    ("GET", "/admin/v1/audit?limit=-1", None, None, 400, "invalid_value", "limit"),
]


def test_every_bad_input_has_its_status_and_code_and_changes_nothing(admin: Admin) -> None:
    team = fresh()
    for method, path, body, raw, status, code, param in BAD_INPUTS:
        path = path.replace("/T/", f"/{team}/")
        got = admin.error(method, path, body, raw=raw)
        assert got == (status, code, param), (method, path, body, raw)
    r = admin.redis()
    assert r.exists(TeamKeys(team).limits, AUDIT_STREAM) == 0
    assert team not in r.smembers(TEAMS)
    assert admin.stack.app.pool.state("primary") == "healthy"


def test_a_disabled_key_serves_nothing_and_enable_lifts_a_quarantine(admin: Admin) -> None:
    keys = admin.ok("GET", "/admin/v1/upstream-keys")
    assert keys == {
        "object": "list",
        "data": [
            {"id": "primary", "object": "admin.upstream_key", "state": "healthy", "in_flight": 0},
            {"id": "secondary", "object": "admin.upstream_key", "state": "healthy", "in_flight": 0},
        ],
    }
    view = admin.ok("POST", "/admin/v1/upstream-keys/primary/disable")
    assert view["state"] == "disabled"
    # shared with every replica through Redis
    assert admin.redis().hget("gw:pool:{primary}", "disabled") == "1"
    admin.stack.clear_sim()
    for _ in range(6):
        assert admin.as_team(fresh(), "POST", "/v1/chat/completions", CHAT)[0] == 200
    used = {r["key"] for r in admin.stack.sim_requests()}
    assert used == {admin.stack.keys["secondary"]}

    admin.ok("POST", "/admin/v1/upstream-keys/primary/enable")
    # The upstream refuses secondary (its probe too): it is quarantined, the request moves on.
    sim = admin.stack.sim_app.state.sim
    sim.key_states[admin.stack.keys["secondary"]] = "disabled"
    for _ in range(4):
        assert admin.as_team(fresh(), "POST", "/v1/chat/completions", CHAT)[0] == 200
    states = {k["id"]: k["state"] for k in admin.ok("GET", "/admin/v1/upstream-keys")["data"]}
    assert states == {"primary": "healthy", "secondary": "quarantined"}
    del sim.key_states[admin.stack.keys["secondary"]]  # fixed upstream; an admin lifts it
    assert admin.ok("POST", "/admin/v1/upstream-keys/secondary/enable")["state"] == "healthy"
    admin.stack.clear_sim()
    for _ in range(4):
        assert admin.as_team(fresh(), "POST", "/v1/chat/completions", CHAT)[0] == 200
    assert {r["key"] for r in admin.stack.sim_requests()} == set(admin.stack.keys.values())

    entries = admin.ok("GET", "/admin/v1/audit?limit=10")["data"]
    assert [(e["action"], e["target"], e["before"], e["after"]) for e in entries] == [
        (
            "upstream_key.enable",
            "upstream_key:secondary",
            {"state": "quarantined"},
            {"state": "healthy"},
        ),
        (
            "upstream_key.enable",
            "upstream_key:primary",
            {"state": "disabled"},
            {"state": "healthy"},
        ),
        (
            "upstream_key.disable",
            "upstream_key:primary",
            {"state": "healthy"},
            {"state": "disabled"},
        ),
    ]


def test_the_audit_log_says_who_did_what_and_holds_no_secret(admin: Admin) -> None:
    t = fresh()
    admin.ok("PATCH", f"/admin/v1/teams/{t}/limits", {"requests_per_minute": 5})
    admin.ok("PUT", f"/admin/v1/teams/{t}/limits", {"concurrent_jobs": None})
    admin.ok("DELETE", f"/admin/v1/teams/{t}/limits")
    admin.ok("POST", f"/admin/v1/teams/{t}/usage/reset", {"window": "minute"})
    admin.ok("POST", "/admin/v1/upstream-keys/secondary/disable")
    create_job(admin, t)

    doc = admin.ok("GET", "/admin/v1/audit")
    assert doc["has_more"] is False
    entries = doc["data"]
    assert [e["action"] for e in entries] == [
        "upstream_key.disable",
        "usage.reset",
        "limits.clear",
        "limits.replace",
        "limits.merge",
    ]
    assert [e["before"] for e in entries[2:]] == [
        {"overrides": {"concurrent_jobs": None}},
        {"overrides": {"requests_per_minute": 5}},
        {"overrides": {}},
    ]
    assert [e["after"] for e in entries[2:]] == [
        {"overrides": {}},
        {"overrides": {"concurrent_jobs": None}},
        {"overrides": {"requests_per_minute": 5}},
    ]
    admin_team = entries[0]["actor"]["team"]
    assert admin_team.startswith("ops-")
    for e in entries:
        assert e["object"] == "admin.audit_entry"
        assert e["actor"] == {"team": admin_team, "user": "root"}
        assert e["target"] in (f"team:{t}", "upstream_key:secondary")
        assert e["time"].endswith("Z")
        assert abs(time.time() - _epoch(e["time"])) < 60
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
    newest_two = admin.ok("GET", "/admin/v1/audit?limit=2")
    assert [e["id"] for e in newest_two["data"]] == ids[:2]
    assert newest_two["has_more"] is True

    # Every admin answer of this test (and the raw stream) is free of tokens and key secrets.
    admin.ok("GET", "/admin/v1/teams")
    admin.ok("GET", f"/admin/v1/teams/{t}/jobs")
    admin.ok("GET", "/admin/v1/upstream-keys")
    job = admin.ok("GET", f"/admin/v1/teams/{t}/jobs")["data"][0]["id"]
    admin.ok("GET", f"/admin/v1/jobs/{job}")
    raw_stream = json.dumps(admin.redis().xrange(AUDIT_STREAM))
    forbidden = [
        admin.token,
        admin.stack.jwt_secret,
        *admin.stack.keys.values(),
        admin.stack.token(team=t, user="u"),
    ]
    for text in [*admin.seen, raw_stream]:
        for secret in forbidden:
            assert secret not in text
    # a JWT would start like this whatever its claims
    assert all("eyJ" not in text for text in admin.seen)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- Redis trouble: admin fails closed -----------------------------------------------------------


def _service(
    redis_url: str,
    audit_url: str | None = None,
    *,
    maxlen: int = AUDIT_MAXLEN,
    team_maxlen: int = TEAM_AUDIT_MAXLEN,
) -> tuple[AdminService, list[Any]]:
    settings = Settings()
    clients = [make_redis(RedisSettings(url=redis_url))]
    if audit_url is not None:
        clients.append(make_redis(RedisSettings(url=audit_url)))
    quota = QuotaService(
        QuotaStore(clients[0]),
        QuotaSettings(),
        teams=team_table({}),
        videos=VideoSettings(),
        clock=time.time,
    )
    svc = AdminService(
        redis=clients[0],
        quota=quota,
        registry=JobRegistry(clients[0]),
        pool=KeyPool([], None, clock=time.time),
        settings=settings,
        clock=time.time,
        audit=AuditLog(clients[-1], clock=time.time, maxlen=maxlen, team_maxlen=team_maxlen),
    )
    return svc, clients


async def _close(clients: list[Any]) -> None:
    for c in clients:
        await close_redis(c)


ROOT = Principal(team="ops", user="root", roles=frozenset({ADMIN_ROLE}))


async def test_redis_down_is_a_503_within_a_bounded_time() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    svc, clients = _service(dead)
    try:
        calls = [
            svc.teams(),
            svc.team("a"),
            svc.set_limits(ROOT, "a", {"requests_per_minute": 1}, replace=False),
            svc.clear_limits(ROOT, "a"),
            svc.reset_usage(ROOT, "a", {"window": "all"}),
            svc.team_jobs("a", limit=None, after=None),
            svc.job(new_video_id()),
            svc.audit_log(limit=None),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                await call
            assert info.value.status == 503
            assert time.monotonic() - started < 3
    finally:
        await _close(clients)


async def test_an_unwritable_audit_log_says_the_change_was_applied(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc, clients = _service(redis_url, audit_url=f"redis://127.0.0.1:{free_port()}/0")
    team = fresh()
    try:
        with (
            caplog.at_level(logging.ERROR, "gateway.admin"),
            pytest.raises(ServiceUnavailable) as info,
        ):
            await svc.set_limits(ROOT, team, {"requests_per_minute": 3}, replace=True)
        assert "applied" in info.value.message
        assert (await svc.team(team))["overrides"] == {"requests_per_minute": 3}
        logged = [r.getMessage() for r in caplog.records if r.name == "gateway.admin"]
        assert len(logged) == 1
        assert '"action": "limits.replace"' in logged[0]
        assert f'"target": "team:{team}"' in logged[0]
    finally:
        await _close(clients)


async def test_the_audit_stream_is_capped(redis_url: str) -> None:
    r = make_redis(RedisSettings(url=redis_url))
    stream = "gw:audit-test-" + secrets.token_hex(4)
    log = AuditLog(r, clock=time.time, stream=stream, maxlen=50)
    try:
        for i in range(400):
            await log.record(ROOT, "limits.merge", f"team:t{i}", before={}, after={})
        # approximate trimming drops whole stream nodes (100 entries each by default)
        assert 50 <= await r.xlen(stream) <= 150
        page = await log.page(3)
        assert [e["target"] for e in page.entries] == ["team:t399", "team:t398", "team:t397"]
        assert page.more is True
    finally:
        await r.delete(stream)
        await _close([r])


async def test_audit_pages_filter_before_the_cut_and_go_on_from_a_cursor(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paging by ``before`` walks the merged streams without a gap or a repeat, entries of two
    streams that share an id stay on one page, and a filter that matches little stops its scan
    early, saying where to go on."""
    r = make_redis(RedisSettings(url=redis_url))
    log = AuditLog(r, clock=time.time)
    churn = TeamKeys("churn").audit
    await r.sadd(AUDIT_TEAMS, "churn")

    async def add(stream: str, entry_id: str, user: str) -> None:
        team = "ops" if stream == AUDIT_STREAM else "churn"
        fields: dict[Any, Any] = {"team": team, "user": user, "action": "a", "target": "t"}
        await r.xadd(stream, fields, id=entry_id)

    try:
        await add(AUDIT_STREAM, "1-0", "root")  # the oldest: under everything else
        for ms in range(2, 40):
            await add(churn, f"{ms}-0", "lead")
        await add(AUDIT_STREAM, "20-0", "root")  # one id in two streams
        every: list[str] = []
        before = None
        while True:
            page = await log.page(3, before=before)
            every += [e["id"] for e in page.entries]
            if not page.more:
                break
            before = page.next_before
            assert before == page.entries[-1]["id"]
        assert len(every) == 40
        assert every.count("20-0") == 2
        times = [int(i.split("-")[0]) for i in every]
        assert times == sorted(times, reverse=True)

        admins = AuditFilter(actor="ops/root")
        page = await log.page(1, keep=admins)
        assert [e["id"] for e in page.entries] == ["20-0"]
        assert (page.more, page.next_before) == (True, "20-0")
        page = await log.page(1, before="20-0", keep=admins)
        assert [(e["id"], e["actor"]["user"]) for e in page.entries] == [("1-0", "root")]
        assert page.more is False

        monkeypatch.setattr(audit, "SCAN_MAX", 10)
        found, before, pages = [], None, 0
        while True:
            page = await log.page(5, before=before, keep=admins)
            found += [e["id"] for e in page.entries]
            pages += 1
            if not page.more:
                break
            before = page.next_before
        assert found == ["20-0", "1-0"]
        assert pages >= 4  # 40 entries read at most 10 (and an id's ties) a page
    finally:
        await _close([r])


async def test_a_team_rotating_its_own_key_cannot_push_an_admins_entry_out(
    redis_url: str,
) -> None:
    """All entries once shared one capped stream, so a team admin rotating its own key past
    the cap pushed every gateway admin's entry out of the log (found by review). A team's own
    key management now has its own stream, capped on its own, and the log reads them all."""
    svc, clients = _service(redis_url, maxlen=50, team_maxlen=50)
    r = clients[0]
    team = fresh()
    keys = KeyAdmin(
        KeyStore(r),
        AuthSettings(),
        digest=lambda token: hashlib.sha256(token.encode()).hexdigest(),
        audit=svc.audited,
        clock=time.time,
    )
    lead = Principal(team=team, user="lead", roles=frozenset({"team-admin"}))
    try:
        await svc.set_limits(ROOT, fresh(), {"requests_per_minute": 5}, replace=False)
        made = await keys.create(lead, team, {"name": "ci"}, may_grant_roles=False)
        for _ in range(400):
            await keys.rotate(lead, made["id"], {}, team=team)

        doc = await svc.audit_log(limit="1000")
        seen = [(e["action"], e["actor"]["user"]) for e in doc["data"]]
        assert seen[0] == ("api_key.rotate", "lead")
        assert seen[-1] == ("limits.merge", "root")  # the oldest entry, still there
        assert doc["has_more"] is False
        ids = [tuple(map(int, e["id"].split("-"))) for e in doc["data"]]
        assert ids == sorted(ids, reverse=True)  # one log, newest first
        # approximate trimming drops whole stream nodes (100 entries each by default)
        assert 50 <= await r.xlen(TeamKeys(team).audit) <= 150
        assert await r.xlen(AUDIT_STREAM) == 1

        # A gateway admin's key change is the admin's entry, in the shared stream.
        await keys.rotate(ROOT, made["id"], {}, team=None)
        assert await r.xlen(AUDIT_STREAM) == 2
        newest = await svc.audit_log(limit="2")
        assert [(e["action"], e["actor"]["user"]) for e in newest["data"]] == [
            ("api_key.rotate", "root"),
            ("api_key.rotate", "lead"),
        ]
        assert newest["has_more"] is True
    finally:
        await _close(clients)
