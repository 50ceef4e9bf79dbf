"""Console sessions in a real Redis: what a sign-in stored is what every page reads back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Principal
from gateway.console.sessions import SessionStore
from gateway.settings import RedisSettings
from gateway.store import keys
from gateway.store.client import close_redis, make_redis
from tests.clock import Clock


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = make_redis(RedisSettings(url=redis_url))
    yield r
    await close_redis(r)


@pytest.mark.parametrize(
    "roles", [frozenset(), frozenset({"team-admin"}), frozenset({"a", "b\nc", "gateway-admin "})]
)
async def test_a_sessions_roles_read_back_exactly(redis: Redis, roles: frozenset[str]) -> None:
    """Roles are stored as a list, not a line each: a role holding a line break cannot come
    back as two (one of them gateway-admin)."""
    store = SessionStore(redis, clock=Clock(time.time()))  # Redis expires it by its own clock
    made = await store.create(Principal(team="t", user="u", roles=roles), lifetime_s=60)
    found = await store.get(made.id)
    assert found is not None
    assert found.principal.roles == roles


async def test_a_session_stored_before_roles_were_a_list_still_reads(redis: Redis) -> None:
    store = SessionStore(redis, clock=Clock(time.time()))  # Redis expires it by its own clock
    made = await store.create(Principal(team="t", user="u", roles=frozenset()), lifetime_s=60)
    await redis.hset(keys.console_session(made.id), "roles", "a\nteam-admin")
    found = await store.get(made.id)
    assert found is not None
    assert found.principal.roles == frozenset({"a", "team-admin"})
