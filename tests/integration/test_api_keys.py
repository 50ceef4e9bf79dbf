"""Gateway API keys as their users meet them: an admin (or a team admin) issues a key, a
service uses it through the official SDK, and the key's scope, limits, expiry, rotation and
revocation hold, on real sockets with a real Redis and the simulator upstream. Every bad key
gets the same 401, and nothing a refused call sends reaches the upstream."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
import pytest
import redis as redis_sync
import redis.asyncio as redis_async

from gateway.admin import api_keys
from gateway.auth import api_keys as api_keys_model
from gateway.auth.key_store import KeyStore
from gateway.sim.config import SimConfig
from gateway.store import keys
from tests.conftest import Stack, make_stack
from tests.servers import wait_for

ADMIN = "gateway-admin"
TEAM_ADMIN = "team-admin"
KEY_FORMAT = re.compile(r"gwk_[0-9a-f]{16}_[0-9a-f]{48}")
PRICES = {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


def fresh_team() -> str:
    return "k-" + secrets.token_hex(4)


@pytest.fixture
def team() -> str:
    return fresh_team()


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    with make_stack(
        redis_url,
        teams={"default": {}, team: {"requests_per_minute": 1000}},
        pricing={"models": PRICES},
    ) as s:
        yield s


def admin_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token(team='ops', user='root', roles=(ADMIN,))}"}


def create_key(stack: Stack, team: str, **doc: Any) -> dict[str, Any]:
    r = httpx2.post(
        f"{stack.url}/admin/v1/teams/{team}/api-keys",
        json={"name": "pipeline", **doc},
        headers=admin_headers(stack),
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(stack: Stack, token: str, **kw: Any) -> httpx2.Response:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 16, **kw}
    return httpx2.post(stack.v1 + "/chat/completions", json=body, headers=bearer(token))


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=key, max_retries=0)


def test_a_created_key_works_with_the_sdk_and_is_shown_once(stack: Stack, team: str) -> None:
    made = create_key(stack, team, expires_in_days=30, models=["gpt-4o*"])
    key = made["key"]
    assert KEY_FORMAT.fullmatch(key)
    assert made["prefix"] == f"gwk_{made['id']}_"
    assert key.startswith(made["prefix"])
    assert made["team"] == team
    assert made["state"] == "active"
    assert made["user"] == "key:pipeline"
    assert made["expires_at"] - made["created_at"] == pytest.approx(30 * 86_400, abs=2)
    with sdk(stack, key) as client:
        done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        streamed = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        )
    assert done.choices
    assert streamed
    # The upstream saw the pooled key, never the gateway key.
    sent = stack.sim_requests("/v1/chat/completions")
    assert len(sent) == 2
    assert all(key not in repr(r) for r in sent)
    # The listing, an admin's and the team's, never carries the secret again.
    listing = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}/api-keys", headers=admin_headers(stack)
    )
    assert listing.status_code == 200
    (shown,) = listing.json()["data"]
    assert "key" not in shown
    assert key not in listing.text
    assert key[-48:] not in listing.text
    assert shown["id"] == made["id"]
    assert shown["last_used_at"] is not None
    audit = httpx2.get(f"{stack.url}/admin/v1/audit", headers=admin_headers(stack))
    assert "api_key.create" in audit.text
    assert key[-48:] not in audit.text
    # Redis holds the keyed hash, never the key.
    r = redis_sync.Redis.from_url(stack.settings.redis.url, decode_responses=True)
    try:
        stored = r.hgetall(f"gw:apikey:{{{made['id']}}}")
    finally:
        r.close()
    pepper = stack.settings.auth.api_key_pepper
    assert pepper is not None
    want = hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert stored["digest"] == want
    assert all(key[-48:] not in v for v in stored.values())
    # The calls were made as key:pipeline of the team.
    usage = httpx2.get(
        stack.v1 + "/gateway/usage", params={"group_by": "user"}, headers=bearer(key)
    ).json()
    assert [row["user"] for row in usage["data"]] == ["key:pipeline"]
    assert usage["data"][0]["requests"] == 2


BAD_KEYS = {
    "malformed": "gwk_notakey",
    "wrong_prefix": "gwx_" + "0" * 16 + "_" + "0" * 48,
    "unknown": "gwk_" + secrets.token_hex(8) + "_" + secrets.token_hex(24),
}


def test_every_bad_key_gets_the_same_401_and_nothing_upstream(stack: Stack, team: str) -> None:
    good = create_key(stack, team)
    revoked = create_key(stack, team, name="gone")
    r = httpx2.delete(
        f"{stack.url}/admin/v1/api-keys/{revoked['id']}", headers=admin_headers(stack)
    )
    assert r.status_code == 200
    assert r.json()["state"] == "revoked"
    # The right id with a wrong secret is as unknown as a made-up key.
    forged = good["prefix"] + secrets.token_hex(24)
    answers = [chat(stack, k) for k in (*BAD_KEYS.values(), forged, revoked["key"])]
    bodies = {(a.status_code, a.text) for a in answers}
    assert len(bodies) == 1
    ((status, text),) = bodies
    assert status == 401
    assert httpx2.Response(401, text=text).json()["error"]["code"] == "invalid_api_key"
    assert stack.sim_requests("/v1/chat") == []
    assert chat(stack, good["key"]).status_code == 200
    for reason in ("key_malformed", "key_unknown", "key_revoked"):
        assert stack.metric("gateway_auth_failures_total", reason=reason) >= 1


def test_an_expired_key_is_refused_to_the_second(stack: Stack, team: str) -> None:
    made = create_key(stack, team, expires_in_days=2 / 86_400)  # two seconds
    assert chat(stack, made["key"]).status_code == 200
    wait_for(lambda: chat(stack, made["key"]).status_code == 401, timeout=5)
    listing = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}/api-keys", headers=admin_headers(stack)
    ).json()
    assert listing["data"][0]["state"] == "expired"
    assert stack.metric("gateway_auth_failures_total", reason="key_expired") >= 1


def test_rotation_keeps_the_old_secret_for_its_grace_only(stack: Stack, team: str) -> None:
    made = create_key(stack, team)
    r = httpx2.post(
        f"{stack.url}/admin/v1/api-keys/{made['id']}/rotate",
        json={"grace_seconds": 3600},
        headers=admin_headers(stack),
    )
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["id"] == made["id"]
    assert rotated["key"] != made["key"]
    assert rotated["previous_key_valid_until"] is not None
    assert chat(stack, rotated["key"]).status_code == 200
    assert chat(stack, made["key"]).status_code == 200  # within the grace
    # A second rotation without grace: both earlier secrets stop working.
    again = httpx2.post(
        f"{stack.url}/admin/v1/api-keys/{made['id']}/rotate",
        json={"grace_seconds": 0},
        headers=admin_headers(stack),
    ).json()
    # Each within the replica's one-second cache of what it last read.
    for old in (rotated["key"], made["key"]):
        wait_for(lambda old=old: chat(stack, old).status_code == 401, timeout=1.5)
    assert chat(stack, again["key"]).status_code == 200


def test_a_revoked_key_is_refused_within_a_second(stack: Stack, team: str) -> None:
    made = create_key(stack, team)
    assert chat(stack, made["key"]).status_code == 200  # now cached in the replica
    r = httpx2.delete(f"{stack.url}/admin/v1/api-keys/{made['id']}", headers=admin_headers(stack))
    assert r.status_code == 200
    wait_for(lambda: chat(stack, made["key"]).status_code == 401, timeout=1.0)
    # Revoked stays revoked; the name is free again for a new key.
    assert create_key(stack, team)["name"] == "pipeline"


def test_a_key_limited_to_models_never_reaches_others(stack: Stack, team: str) -> None:
    made = create_key(stack, team, models=["gpt-4o-mini"])
    r = chat(stack, made["key"], model="gpt-4o")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"
    assert "API key 'pipeline'" in r.json()["error"]["message"]
    assert stack.sim_requests("/v1/chat") == []
    assert chat(stack, made["key"]).status_code == 200


def test_a_keys_request_limit_binds_the_key_not_its_team(stack: Stack, team: str) -> None:
    made = create_key(stack, team, limits={"requests_per_minute": 2})
    assert [chat(stack, made["key"]).status_code for _ in range(2)] == [200, 200]
    r = chat(stack, made["key"])
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "API key 'pipeline'" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert len(stack.sim_requests("/v1/chat")) == 2
    # The team and its other callers go on.
    assert chat(stack, stack.token(team=team)).status_code == 200


def test_a_keys_token_and_spend_limits_refuse_before_the_upstream(stack: Stack, team: str) -> None:
    tokens = create_key(stack, team, name="tok", limits={"tokens_per_minute": 10})
    r = chat(stack, tokens["key"])
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "token_quota_exceeded"
    assert "API key 'tok'" in err["message"]
    assert r.headers["x-should-retry"] == "false"  # the call can never fit that key
    spend = create_key(stack, team, name="cash", limits={"spend_per_day": 0.000001})
    r = chat(stack, spend["key"])
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "spend_quota_exceeded"
    assert "API key 'cash'" in r.json()["error"]["message"]
    assert stack.sim_requests("/v1/chat") == []


def test_a_keys_counters_settle_to_what_its_calls_really_cost(stack: Stack, team: str) -> None:
    made = create_key(stack, team, limits={"spend_per_day": 1, "tokens_per_minute": 100_000})
    costs, tokens = [], []
    for i in range(5):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * i}]}
        r = httpx2.post(stack.v1 + "/chat/completions", json=body, headers=bearer(made["key"]))
        assert r.status_code == 200
        # Admitted on the estimate, counted against the key's own minute.
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100_000
        costs.append(round(float(r.headers["x-gateway-cost"]) * 1_000_000))
        tokens.append(r.json()["usage"]["total_tokens"])
    # Settled: the key's day and minute hold exactly the calls' real usage (not their
    # estimates), as the team's do (only the key called).
    day = datetime.now(UTC).strftime("%Y%m%d")
    prefix = f"gw:{{team:{team}}}"
    r_ = redis_sync.Redis.from_url(stack.settings.redis.url, decode_responses=True)
    try:
        team_spend = int(r_.get(f"{prefix}:spend:d:{day}") or 0)
        key_spend = int(r_.get(f"{prefix}:key:{made['id']}:spend:d:{day}") or 0)
        team_tpm = sum(map(int, r_.hgetall(f"{prefix}:tpm").values()))
        key_tpm = sum(map(int, r_.hgetall(f"{prefix}:key:{made['id']}:tpm").values()))
    finally:
        r_.close()
    assert key_spend == team_spend == sum(costs)
    assert key_tpm == team_tpm == sum(tokens)


def test_a_key_body_of_many_tiny_values_is_refused_before_it_is_parsed(
    stack: Stack, team: str
) -> None:
    """A team admin's body is parsed on the event loop every team shares: one of more values
    than any key needs is a 400 before it is, on the team's route and the admin API alike."""
    body = b'{"name": "ci", "models": [' + b"{}," * 100_000 + b"{}]}"
    lead = bearer(stack.token(team=team, user="lead", roles=(TEAM_ADMIN,)))
    for url, who in (
        (stack.v1 + "/gateway/api-keys", lead),
        (f"{stack.url}/admin/v1/teams/{team}/api-keys", admin_headers(stack)),
    ):
        r = httpx2.post(url, content=body, headers={**who, "content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "request_too_complex"), r.text
    assert httpx2.get(stack.v1 + "/gateway/api-keys", headers=lead).json()["data"] == []


def test_a_team_admin_manages_only_its_own_teams_keys(stack: Stack, team: str) -> None:
    lead = bearer(stack.token(team=team, user="lead", roles=(TEAM_ADMIN,)))
    r = httpx2.post(stack.v1 + "/gateway/api-keys", json={"name": "ci"}, headers=lead)
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["team"] == team
    assert mine["created_by"] == f"{team}/lead"
    assert chat(stack, mine["key"]).status_code == 200
    other = create_key(stack, "other-team")
    listing = httpx2.get(stack.v1 + "/gateway/api-keys", headers=lead).json()
    assert [k["id"] for k in listing["data"]] == [mine["id"]]
    for method, path in (
        ("DELETE", f"/gateway/api-keys/{other['id']}"),
        ("POST", f"/gateway/api-keys/{other['id']}/rotate"),
    ):
        r = httpx2.request(method, stack.v1 + path, headers=lead)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert chat(stack, other["key"]).status_code == 200  # untouched
    r = httpx2.post(
        stack.v1 + "/gateway/api-keys", json={"name": "x", "roles": [ADMIN]}, headers=lead
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "roles"
    # A team member without the role, and a key, cannot manage keys.
    for who in (bearer(stack.token(team=team)), bearer(mine["key"])):
        r = httpx2.get(stack.v1 + "/gateway/api-keys", headers=who)
        assert r.status_code == 403
    r = httpx2.delete(stack.v1 + f"/gateway/api-keys/{mine['id']}", headers=lead)
    assert r.status_code == 200
    assert r.json()["state"] == "revoked"
    # The team's own entries sit in its own stream; an admin reads them in the one log.
    audit = httpx2.get(f"{stack.url}/admin/v1/audit", headers=admin_headers(stack))
    assert [(e["action"], e["actor"]["user"]) for e in audit.json()["data"]] == [
        ("api_key.revoke", "lead"),
        ("api_key.create", "root"),
        ("api_key.create", "lead"),
    ]


def test_a_key_reaches_admin_routes_only_with_the_admin_role(stack: Stack, team: str) -> None:
    plain = create_key(stack, team, name="plain")
    r = httpx2.get(stack.url + "/admin/v1/teams", headers=bearer(plain["key"]))
    assert r.status_code == 403
    ops = create_key(stack, "ops", name="automation", roles=[ADMIN])
    r = httpx2.get(stack.url + "/admin/v1/teams", headers=bearer(ops["key"]))
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("doc", "param", "code"),
    [
        ({}, "name", "missing_required_parameter"),
        ({"name": ""}, "name", "invalid_value"),
        ({"name": "a b"}, "name", "invalid_value"),
        ({"name": "x" * 65}, "name", "invalid_value"),
        ({"name": "n", "colour": "red"}, "colour", "unknown_parameter"),
        ({"name": "n", "expires_in_days": 0}, "expires_in_days", "invalid_value"),
        ({"name": "n", "expires_in_days": -1}, "expires_in_days", "invalid_value"),
        ({"name": "n", "expires_in_days": 10**400}, "expires_in_days", "invalid_value"),
        ({"name": "n", "expires_in_days": "7"}, "expires_in_days", "invalid_value"),
        ({"name": "n", "expires_in_days": True}, "expires_in_days", "invalid_value"),
        ({"name": "n", "models": []}, "models", "invalid_value"),
        ({"name": "n", "models": "gpt-4o"}, "models", "invalid_value"),
        ({"name": "n", "models": ["has space"]}, "models", "invalid_value"),
        ({"name": "n", "limits": []}, "limits", "invalid_value"),
        ({"name": "n", "limits": {"videos": 1}}, "limits.videos", "unknown_parameter"),
        (
            {"name": "n", "limits": {"tokens_per_day": 1}},
            "limits.tokens_per_day",
            "unknown_parameter",
        ),
        (
            {"name": "n", "limits": {"requests_per_minute": -1}},
            "limits.requests_per_minute",
            "invalid_value",
        ),
        (
            {"name": "n", "limits": {"requests_per_minute": 1.5}},
            "limits.requests_per_minute",
            "invalid_value",
        ),
        (
            {"name": "n", "limits": {"spend_per_day": 10**400}},
            "limits.spend_per_day",
            "invalid_value",
        ),
        (
            {"name": "n", "limits": {"spend_per_month": 4e-7}},  # stored as 0 (found by review)
            "limits.spend_per_month",
            "invalid_value",
        ),
        ({"name": "n", "roles": ["root"]}, "roles", "invalid_value"),
    ],
)
def test_bad_create_bodies_get_400s(
    stack: Stack, team: str, doc: dict[str, Any], param: str, code: str
) -> None:
    r = httpx2.post(
        f"{stack.url}/admin/v1/teams/{team}/api-keys", json=doc, headers=admin_headers(stack)
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == code
    listing = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}/api-keys", headers=admin_headers(stack)
    )
    assert listing.json()["data"] == []


def test_other_bad_admin_inputs(stack: Stack, team: str) -> None:
    h = admin_headers(stack)
    create_key(stack, team)
    r = httpx2.post(
        f"{stack.url}/admin/v1/teams/{team}/api-keys", json={"name": "pipeline"}, headers=h
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "name_taken"
    r = httpx2.post(f"{stack.url}/admin/v1/teams/{team}/api-keys", content=b"[1]", headers=h)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx2.post(f"{stack.url}/admin/v1/teams/default/api-keys", json={"name": "x"}, headers=h)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "team"
    for bad in ("nope", "0" * 16, "../" + "0" * 13):
        r = httpx2.delete(f"{stack.url}/admin/v1/api-keys/{bad}", headers=h)
        assert r.status_code in (400, 404), r.text
    made = create_key(stack, team, name="twice")
    httpx2.delete(f"{stack.url}/admin/v1/api-keys/{made['id']}", headers=h)
    r = httpx2.post(f"{stack.url}/admin/v1/api-keys/{made['id']}/rotate", headers=h)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "key_not_active"
    r = httpx2.post(
        f"{stack.url}/admin/v1/api-keys/{made['id']}/rotate", json={"grace_seconds": -1}, headers=h
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "grace_seconds"


def test_without_a_pepper_keys_are_off(redis_url: str, team: str) -> None:
    with make_stack(redis_url, auth={"api_key_pepper": None}) as stack:
        r = httpx2.post(
            f"{stack.url}/admin/v1/teams/{team}/api-keys",
            json={"name": "x"},
            headers=admin_headers(stack),
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "api_keys_disabled"
        r = chat(stack, BAD_KEYS["unknown"])
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert stack.metric("gateway_auth_failures_total", reason="key_disabled") == 1


VIDEOS = {
    "default_model": "sora-2",
    "models": {
        "sora-2": {"sizes": ["1280x720"], "seconds": [4, 8], "price_per_second": 0.25},
        "sora-2-pro": {"sizes": ["1280x720"], "seconds": [4], "price_per_second": 0.5},
    },
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
}


@pytest.fixture
def vstack(redis_url: str, team: str) -> Iterator[Stack]:
    # Jobs that take a while: the first one is still running when the second is asked for.
    with make_stack(
        redis_url,
        sim=SimConfig(job_seconds=30),
        teams={"default": {}, team: {"concurrent_jobs": 10}},
        videos=VIDEOS,
    ) as s:
        yield s


def video(stack: Stack, token: str, **doc: Any) -> httpx2.Response:
    body = {"prompt": "a lighthouse", "seconds": "4", "size": "1280x720", **doc}
    return httpx2.post(stack.v1 + "/videos", json=body, headers=bearer(token))


def test_a_keys_video_jobs_are_held_to_its_own_limits(vstack: Stack, team: str) -> None:
    made = create_key(
        vstack, team, limits={"concurrent_jobs": 1, "spend_per_day": 2}, models=["sora-2"]
    )
    first = video(vstack, made["key"])
    assert first.status_code == 200, first.text
    second = video(vstack, made["key"])
    assert second.status_code == 429
    err = second.json()["error"]
    assert err["code"] == "concurrency_limit_exceeded"
    assert "API key 'pipeline'" in err["message"]
    # A model outside the key's scope never reaches the upstream.
    r = video(vstack, made["key"], model="sora-2-pro")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "model_not_allowed"
    assert len(vstack.sim_requests("/v1/videos")) == 1
    # The team's other callers are not held to the key's limit.
    assert video(vstack, vstack.token(team=team)).status_code == 200
    # The job completes (the simulator's clock for it jumps ahead): the key's slot is free,
    # its spend (4 s x 0.25 = 1) stays charged, so a job of 8 s (2) no longer fits the key's
    # 2 a day, and one more of 4 s fits exactly.
    vid = first.json()["id"]
    for job in vstack.sim_app.state.sim.jobs.values():
        job.started -= 3600
    r = httpx2.get(vstack.v1 + f"/videos/{vid}", headers=bearer(made["key"]))
    assert r.json()["status"] == "completed"
    r = video(vstack, made["key"], seconds="8")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "spend_quota_exceeded"
    assert "API key 'pipeline'" in r.json()["error"]["message"]
    assert video(vstack, made["key"]).status_code == 200  # 1 more fits exactly


def test_the_video_flow_through_the_sdk_with_a_key(redis_url: str, team: str) -> None:
    with make_stack(
        redis_url, sim=SimConfig(job_seconds=0.3, content_bytes=5000), videos=VIDEOS
    ) as s:
        made = create_key(s, team)
        with openai.OpenAI(base_url=s.v1, api_key=made["key"], max_retries=0) as client:
            done = client.videos.create_and_poll(prompt="a key's video", poll_interval_ms=50)
            assert done.status == "completed"
            assert len(client.videos.download_content(done.id).read()) == 5000
            assert [v.id for v in client.videos.list()] == [done.id]
        # The team's other callers see it (one team), made by the key's user.
        lead = s.token(team=team)
        listed = httpx2.get(s.v1 + "/videos", headers=bearer(lead)).json()["data"]
        assert [v["id"] for v in listed] == [done.id]
        jobs = httpx2.get(f"{s.url}/admin/v1/teams/{team}/jobs", headers=admin_headers(s))
        assert jobs.json()["data"][0]["user"] == "key:pipeline"


def test_a_key_keeps_counters_only_for_the_limits_it_has(stack: Stack, team: str) -> None:
    plain = create_key(stack, team, name="plain")
    rated = create_key(stack, team, name="rated", limits={"requests_per_minute": 100})
    for made in (plain, rated):
        assert chat(stack, made["key"]).status_code == 200
    r = redis_sync.Redis.from_url(stack.settings.redis.url, decode_responses=True)
    try:
        own = sorted(r.scan_iter(match=f"gw:{{team:{team}}}:key:*"))
    finally:
        r.close()
    # A key without limits costs what a JWT costs; one with a request limit keeps its log only.
    assert own == [f"gw:{{team:{team}}}:key:{rated['id']}:rate"]


@pytest.mark.parametrize("action", ["rotate", "revoke"])
def test_a_team_admin_cannot_take_over_a_key_that_has_roles(
    stack: Stack, team: str, action: str
) -> None:
    """Rotating a key hands over its secret, and with it the key's roles: a team admin who
    could rotate their team's gateway-admin key would be a gateway admin."""
    bot = create_key(stack, team, name="deploy-bot", roles=[ADMIN])
    lead = bearer(stack.token(team=team, user="lead", roles=(TEAM_ADMIN,)))
    base = f"{stack.v1}/gateway/api-keys/{bot['id']}"
    if action == "rotate":
        r = httpx2.post(base + "/rotate", json={"grace_seconds": 0}, headers=lead)
    else:
        r = httpx2.delete(base, headers=lead)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), r.text
    assert "key" not in r.json()
    # The key is untouched: it still works, with its roles.
    assert httpx2.get(f"{stack.url}/admin/v1/teams", headers=bearer(bot["key"])).status_code == 200
    # A gateway admin still manages it.
    r = httpx2.post(
        f"{stack.url}/admin/v1/api-keys/{bot['id']}/rotate",
        json={"grace_seconds": 0},
        headers=admin_headers(stack),
    )
    assert r.status_code == 200, r.text


def test_a_key_with_its_own_scope_cannot_manage_keys(stack: Stack, team: str) -> None:
    """A team-admin key limited to some models could otherwise make one without the limit."""
    scoped = create_key(
        stack,
        team,
        name="scoped-lead",
        roles=[TEAM_ADMIN],
        models=["gpt-4o-mini"],
        limits={"requests_per_minute": 1000},
    )
    other = create_key(stack, team, name="plain")
    base = f"{stack.v1}/gateway/api-keys"
    for r in (
        httpx2.post(base, json={"name": "free"}, headers=bearer(scoped["key"])),
        httpx2.post(f"{base}/{other['id']}/rotate", json={}, headers=bearer(scoped["key"])),
    ):
        assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), r.text
    names = [k["name"] for k in httpx2.get(base, headers=bearer(scoped["key"])).json()["data"]]
    assert "free" not in names
    unscoped = create_key(stack, team, name="open-lead", roles=[TEAM_ADMIN])
    r = httpx2.post(base, json={"name": "made-by-a-key"}, headers=bearer(unscoped["key"]))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("sections", "doc", "param"),
    [
        ({"pricing": {"enabled": False}}, {"models": ["gpt-4o-mini"]}, "models"),
        (
            {"pricing": {"enabled": False}},
            {"limits": {"tokens_per_minute": 10}},
            "limits.tokens_per_minute",
        ),
        ({"pricing": {"enabled": False}}, {"limits": {"spend_per_day": 1}}, "limits.spend_per_day"),
        (
            {"quota": {"enabled": False}},
            {"limits": {"requests_per_minute": 5}},
            "limits.requests_per_minute",
        ),
        ({"quota": {"enabled": False}}, {"models": ["gpt-4o-mini"]}, "models"),
    ],
)
def test_a_key_cannot_promise_a_scope_the_gateway_would_not_check(
    redis_url: str, team: str, sections: dict[str, Any], doc: dict[str, Any], param: str
) -> None:
    """Without metering a key's models and token or spend limits are never checked, without
    quotas its request and job limits: such a key is refused, not issued as if it held."""
    with make_stack(redis_url, teams={"default": {}, team: {}}, **sections) as s:
        r = httpx2.post(
            f"{s.url}/admin/v1/teams/{team}/api-keys",
            json={"name": "scoped", **doc},
            headers=admin_headers(s),
        )
        assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (
            400,
            "invalid_value",
            param,
        ), r.text
        assert "would not be enforced" in r.json()["error"]["message"]
        plain = httpx2.post(
            f"{s.url}/admin/v1/teams/{team}/api-keys",
            json={"name": "plain"},
            headers=admin_headers(s),
        )
        assert plain.status_code == 201, plain.text


def test_the_cap_counts_keys_not_revoked_and_revoked_ones_make_room(
    stack: Stack, team: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap once counted every key a team was ever issued: after it, revoking freed
    nothing and the team could never have a key again. Now it counts keys that are not
    revoked, and a create past it forgets the oldest revoked records, so a team that creates
    and revokes for ever holds at most the cap's worth of records."""
    monkeypatch.setattr(api_keys, "MAX_KEYS_PER_TEAM", 3)
    made = [create_key(stack, team, name=f"k{i}") for i in range(3)]
    over = httpx2.post(
        f"{stack.url}/admin/v1/teams/{team}/api-keys",
        json={"name": "k3"},
        headers=admin_headers(stack),
    )
    assert (over.status_code, over.json()["error"]["code"]) == (400, "too_many_keys")
    for old in made[:2]:
        gone = httpx2.delete(
            f"{stack.url}/admin/v1/api-keys/{old['id']}", headers=admin_headers(stack)
        )
        assert gone.status_code == 200
    more = [create_key(stack, team, name=f"n{i}") for i in range(2)]
    listed = httpx2.get(f"{stack.url}/admin/v1/teams/{team}/api-keys", headers=admin_headers(stack))
    states = {k["name"]: k["state"] for k in listed.json()["data"]}
    assert states == {"k2": "active", "n0": "active", "n1": "active"}  # k0, k1 forgotten
    for forgotten in made[:2]:
        assert chat(stack, forgotten["key"]).status_code == 401
    assert all(chat(stack, k["key"]).status_code == 200 for k in [made[2], *more])


async def test_noting_a_use_never_brings_a_forgotten_key_back(redis_url: str) -> None:
    """A replica notes a key's use (``last_used``) while it still has the key cached; the key
    may have been revoked and forgotten on another replica meanwhile. The note once wrote
    the record's hash anew, holding only ``last_used``, kept for ever."""
    r = redis_async.Redis.from_url(redis_url)
    try:
        store = KeyStore(r)
        gone = "k" + secrets.token_hex(8)
        await store.touch(gone, 1.5)
        assert await r.exists(keys.api_key(gone)) == 0
        record = api_keys_model.KeyRecord.from_fields(
            "k" + secrets.token_hex(8),
            {
                "team": fresh_team(),
                "name": "n",
                "digest": "d",
                "created": "1.0",
                "state": api_keys_model.ACTIVE,
            },
        )
        await store.create(record)
        await store.touch(record.id, 2.5)
        assert (await store.get(record.id)) is not None
        assert await r.hget(keys.api_key(record.id), "last_used") == b"2.5"
    finally:
        await r.aclose()
