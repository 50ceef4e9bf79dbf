"""One team's 429s cannot take the upstream key pool offline for the others, however long the
upstream's Retry-After; and an admin enabling a key lifts its cooldown on every replica."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

from tests.conftest import Stack, make_stack
from tests.servers import wait_for


def sdk(stack: Stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=token, max_retries=0)


def test_one_team_cannot_keep_every_key_cooling_with_long_retry_afters(redis_url: str) -> None:
    """A team whose own calls (a saturated model) get 429 with a long Retry-After cools a key
    for up to ten cooldown periods. Its hold on that key lasts as long: were it one period, the
    team would cool a new key each period, and after N periods every key of an N-key pool
    would be cooling and another team would get no key at all."""
    with make_stack(
        redis_url,
        key_ids=("k1", "k2", "k3"),
        upstream={"cooldown_seconds": 1, "health_cache_seconds": 0.1},
    ) as s:
        s.sim_app.state.sim.add_fault(
            kind="status_429", count=-1, path_prefix="/v1/chat", retry_after="3600"
        )
        noisy = sdk(s, s.token(team="noisy"))
        deadline = time.monotonic() + 5  # five cooldown periods of one team's own 429s
        while time.monotonic() < deadline:
            with pytest.raises(openai.RateLimitError):
                noisy.chat.completions.create(
                    model="saturated", messages=[{"role": "user", "content": "x"}]
                )
            if all(s.app.pool.state(k) == "cooling" for k in ("k1", "k2", "k3")):
                break
            time.sleep(0.05)  # pacing the attacker, not waiting for an outcome
        # Another team, asking for something the upstream would serve, must still be served.
        with sdk(s, s.token(team="quiet")) as quiet:
            assert quiet.models.list().data  # was 503 no_upstream_key_available


def test_enabling_a_cooled_key_lifts_the_cooldown_on_every_replica(redis_url: str) -> None:
    """docs/security.md: an admin can re-enable a key, lifting a quarantine or cooldown, on
    every replica at once. A replica that had learnt the cooldown kept it (its refresh took the
    larger of the shared and its own cooling_until), for up to ten cooldowns."""
    with (
        make_stack(
            redis_url, key_ids=("primary", "secondary"), upstream={"health_cache_seconds": 0.1}
        ) as a,
        make_stack(
            redis_url,
            keys=a.keys,
            sim_url=a.sim_url,
            sim_app=a.sim_app,
            upstream={"health_cache_seconds": 0.1},
        ) as b,
    ):
        primary = a.keys["primary"]
        a.sim_app.state.sim.add_fault(kind="status_429", count=1, key=primary, retry_after="60")
        client_a, client_b = sdk(a, a.token()), sdk(b, b.token())
        for _ in range(2):
            assert client_a.models.list().data
        assert a.app.pool.state("primary") == "cooling"

        def b_cooling() -> bool:
            client_b.models.list()
            return bool(b.app.pool.state("primary") == "cooling")

        wait_for(b_cooling, timeout=5, interval=0.05, message="b never saw the cooldown")

        admin = a.token(team="ops", roles=("gateway-admin",))
        r = httpx2.post(
            a.url + "/admin/v1/upstream-keys/primary/enable",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200
        assert r.json()["state"] == "healthy"

        def b_healthy() -> bool:
            client_b.models.list()  # traffic drives b's background refresh
            return bool(b.app.pool.state("primary") == "healthy")

        wait_for(b_healthy, timeout=5, interval=0.05, message="b still cools the enabled key")
