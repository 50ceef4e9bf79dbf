"""Shared fixtures: a real Redis server process, the simulator and the gateway on sockets."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx2
import pytest
import redis as redis_sync

from gateway.app import create_app
from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from gateway.settings import Settings, settings_from_mapping
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.servers import run_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of the test's own, which it may freeze (SIGSTOP): thawed, then stopped."""
    proc = RedisProcess().start()
    try:
        yield proc
    finally:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGCONT)
        proc.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@dataclass
class Stack:
    """A gateway in front of a simulator, both on loopback sockets, sharing a real Redis."""

    url: str  # the gateway's base URL, without /v1
    sim_url: str
    sim_app: Any
    app: Any
    settings: Settings
    jwt_secret: str = field(repr=False)
    keys: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def sim_keys(self) -> tuple[str, ...]:
        return tuple(self.keys.values())

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def token(self, team: str = "team-a", user: str = "alice", roles: tuple[str, ...] = ()) -> str:
        return mint_token(self.jwt_secret, team=team, user=user, roles=list(roles))

    def sim_requests(self, prefix: str = "/v1") -> list[dict[str, Any]]:
        return [r for r in self.sim_app.state.sim.requests if r["path"].startswith(prefix)]

    def clear_sim(self) -> None:
        self.sim_app.state.sim.requests.clear()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``, from /metrics."""
        text = httpx2.get(self.url + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
            if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                total += float(m.group(2))
        return total


def gateway_config(
    sim_url: str, redis_url: str, jwt_secret: str, keys: dict[str, str], **sections: Any
) -> Settings:
    doc: dict[str, Any] = {
        "upstream": {
            "base_url": sim_url,
            "keys": [{"id": k, "secret": v} for k, v in keys.items()],
            "connect_timeout": 2,
            "read_timeout": 10,
            **sections.pop("upstream", {}),
        },
        "redis": {"url": redis_url, **sections.pop("redis", {})},
        "auth": {
            "hs256_secrets": [jwt_secret],
            # Gateway API keys are on in every test gateway; a test's own pepper wins.
            "api_key_pepper": secrets.token_urlsafe(32),
            **sections.pop("auth", {}),
        },
        "server": sections.pop("server", {}),
        "teams": sections.pop("teams", {"default": {}, "team-a": {}, "team-b": {}}),
        "videos": sections.pop("videos", {}),
        # Every app runs a reconciler; in tests it stays out of the way (one shared Redis, many
        # stacks) unless a test asks for it.
        "quota": {"reconcile_interval_seconds": 3600, **sections.pop("quota", {})},
        # Tests that are not about metering call models without a price.
        "pricing": sections.pop("pricing", {"unpriced": "allow"}),
        "console": sections.pop("console", {}),
    }
    return settings_from_mapping(doc, env={})


@contextlib.contextmanager
def make_stack(
    redis_url: str,
    *,
    key_ids: tuple[str, ...] = ("primary",),
    sim: SimConfig | None = None,
    sim_url: str | None = None,
    sim_app: Any = None,
    keys: dict[str, str] | None = None,
    gateway_port: int | None = None,
    **sections: Any,
) -> Iterator[Stack]:
    keys = keys or {k: f"sk-{k}-{secrets.token_hex(12)}" for k in key_ids}
    jwt_secret = secrets.token_urlsafe(48)
    with contextlib.ExitStack() as stack:
        if sim_url is None:
            sim_app = create_sim_app(replace(sim or SimConfig(), keys=tuple(keys.values())))
            sim_url = stack.enter_context(run_server(sim_app, server_header=False))
        settings = gateway_config(sim_url, redis_url, jwt_secret, keys, **sections)
        app = create_app(settings)
        url = stack.enter_context(run_server(app, server_header=False, port=gateway_port))
        yield Stack(url, sim_url, sim_app, app, settings, jwt_secret, keys)


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    with make_stack(redis_url, key_ids=("primary", "secondary")) as s:
        yield s
