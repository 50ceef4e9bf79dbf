"""``pricing.source: crazyrouter`` end to end: the gateway loads the simulator's
``GET /api/pricing`` (new-api's shape) at start and on its interval, charges a model that only
the list prices, keeps config entries over it, and keeps the last good list when a refresh
fails. Real sockets, a real Redis, the official SDK."""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Any

import openai
import pytest

from gateway.app import Gateway, create_app
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.conftest import Stack, gateway_config
from tests.servers import run_server, wait_for

M = 1_000_000
REFRESH_S = 0.2  # below the settings' minimum of 60: set on the parsed settings, for tests only
CONFIGURED = {"gpt-4o": {"input_per_million": 10, "output_per_million": 20}}


@contextlib.contextmanager
def list_stack(redis_url: str, team: str, *, upstream_down: bool = False) -> Iterator[Stack]:
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    jwt_secret = secrets.token_urlsafe(48)
    sim_app = create_sim_app(SimConfig(keys=tuple(keys.values())))
    if upstream_down:  # before the gateway starts: its first load fails
        sim_app.state.sim.add_fault(kind="status_503", path_prefix="/api/pricing", count=-1)
    with run_server(sim_app, server_header=False) as sim_url:
        settings = gateway_config(
            sim_url,
            redis_url,
            jwt_secret,
            keys,
            teams={"default": {}, team: {"spend_per_day": 100}},
            pricing={"source": "crazyrouter", "unpriced": "refuse", "models": CONFIGURED},
        )
        settings = replace(settings, pricing=replace(settings.pricing, refresh_seconds=REFRESH_S))
        app = create_app(settings)
        with run_server(app, server_header=False) as url:
            yield Stack(url, sim_url, sim_app, app, settings, jwt_secret, keys)


@pytest.fixture
def team() -> str:
    return "p-" + secrets.token_hex(4)


def refreshes(app: Gateway, result: str) -> float:
    got = app.metrics.registry.get_sample_value("gateway_price_refresh_total", {"result": result})
    return got or 0.0


def chat(stack: Stack, team: str, model: str) -> tuple[str, int, int]:
    """The x-gateway-cost header of one chat call, and the usage it reported."""
    with openai.OpenAI(base_url=stack.v1, api_key=stack.token(team=team), max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "what does this cost?"}]
        )
    usage = raw.parse().usage
    assert usage is not None
    return raw.headers["x-gateway-cost"], usage.prompt_tokens, usage.completion_tokens


def shown(inp: int, out: int, per_million_in: Fraction, per_million_out: Fraction) -> str:
    units = math.ceil((inp * per_million_in + out * per_million_out) / M * M)
    return f"{units // M}.{units % M:06d}"


def test_the_list_prices_unconfigured_models_and_a_failed_refresh_keeps_it(
    redis_url: str, team: str
) -> None:
    with list_stack(redis_url, team) as stack:
        sim: Any = stack.sim_app.state.sim
        app: Gateway = stack.app
        # gpt-4o-mini has no pricing.models entry: new-api's ratio 0.075 (x $2), completion 4.
        cost, inp, out = chat(stack, team, "gpt-4o-mini")
        assert cost == shown(inp, out, Fraction("0.15"), Fraction("0.6"))
        # gpt-4o is in both: the config entry wins over the list's $2.50 / $10.
        cost, inp, out = chat(stack, team, "gpt-4o")
        assert cost == shown(inp, out, Fraction(10), Fraction(20))
        assert app.metrics.registry.get_sample_value("gateway_prices_loaded") == len(sim.prices)

        # The list changes upstream: a refresh picks the change up.
        sim.prices["gpt-4o-mini"]["model_ratio"] = 0.15
        wait_for(
            lambda: (
                getattr(app.prices().lookup("gpt-4o-mini"), "input_per_million", 0)
                == Fraction("0.3")
            ),
            message="the changed list loaded",
        )
        # Then every refresh fails: the last good list stays in use.
        sim.add_fault(kind="status_500", path_prefix="/api/pricing", count=-1)
        failed = refreshes(app, "error")
        wait_for(lambda: refreshes(app, "error") >= failed + 2, message="two failed refreshes")
        cost, inp, out = chat(stack, team, "gpt-4o-mini")
        assert cost == shown(inp, out, Fraction("0.3"), Fraction("1.2"))
        assert app.metrics.registry.get_sample_value("gateway_prices_loaded") == len(sim.prices)

        # The list is public: none of the pool's keys is ever sent for it.
        fetched = stack.sim_requests("/api/pricing")
        assert fetched
        assert all("authorization" not in r["headers"] for r in fetched)


def test_a_first_load_failure_does_not_stop_the_gateway(redis_url: str, team: str) -> None:
    with list_stack(redis_url, team, upstream_down=True) as stack:
        sim: Any = stack.sim_app.state.sim
        app: Gateway = stack.app
        assert refreshes(app, "error") >= 1
        # Until a load succeeds, a model only the list prices is unpriced, refused as usual...
        with (
            openai.OpenAI(
                base_url=stack.v1, api_key=stack.token(team=team), max_retries=0
            ) as client,
            pytest.raises(openai.PermissionDeniedError) as err,
        ):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.code == "model_not_priced"
        assert not stack.sim_requests("/v1/chat")
        # ...and configured models are served all along.
        cost, inp, out = chat(stack, team, "gpt-4o")
        assert cost == shown(inp, out, Fraction(10), Fraction(20))

        sim.faults.clear()
        wait_for(lambda: refreshes(app, "ok") >= 1, message="the list loaded")
        cost, inp, out = chat(stack, team, "gpt-4o-mini")
        assert cost == shown(inp, out, Fraction("0.15"), Fraction("0.6"))
