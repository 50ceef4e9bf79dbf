"""Helpers for metering tests that compare every view of what a team was charged.

The gateway runs on a pinned clock, so that a run crossing midnight cannot split one day's
charges over two days (the quota's day buckets and the ledger's days would then disagree for
a reason that is not a bug). Amounts are compared in the unit Redis stores, millionths of the
currency, and every expectation is computed here from prices and usage, never read back from
the gateway.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.app import create_app
from gateway.auth.tokens import mint_token
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.clock import Clock
from tests.conftest import Stack, gateway_config
from tests.servers import run_server

M = 1_000_000  # stored units per unit of the currency


def units(money: Fraction) -> int:
    """Money as stored units, rounded up once (the gateway's rule for a call's cost)."""
    return math.ceil(money * M)


def shown(u: int) -> str:
    """Stored units as ``x-gateway-cost`` writes them: six decimals."""
    return f"{u // M}.{u % M:06d}"


def stored(value: float | int | str) -> int:
    """A currency amount (from a JSON report, or a header) as stored units; it must be a whole
    number of them (a report may not invent a fraction of a unit)."""
    exact = Fraction(str(value)) * M
    assert exact.denominator == 1, f"{value!r} is not a whole number of millionths"
    return int(exact)


def summed(value: float) -> int:
    """A Prometheus counter of currency (a float sum of per-call amounts) as stored units: the
    float error of a few additions is far below half a unit, so rounding is exact."""
    scaled = value * M
    assert abs(scaled - round(scaled)) < 1e-3, value
    return round(scaled)


def token_cost(price: Mapping[str, Any], inp: int, out: int, cached: int = 0) -> int:
    """A token call's cost from its price entry (as configured, decimals as written)."""
    p = {k: Fraction(str(v)) for k, v in price.items() if k.endswith("_per_million")}
    full = p.get("input_per_million", Fraction(0))
    cached_price = p.get("cached_input_per_million", full)
    money = (
        (inp - cached) * full + cached * cached_price + out * p.get("output_per_million", 0)
    ) / M
    return units(money)


def pinned_clock() -> Clock:
    """Now, to the second, and staying there."""
    return Clock(float(int(datetime.now(UTC).timestamp())))


def day_of(clock: Clock) -> str:
    return datetime.fromtimestamp(clock(), UTC).date().isoformat()


@contextlib.contextmanager
def pinned_stack(
    redis_url: str,
    clock: Clock,
    *,
    sim: SimConfig | None = None,
    sim_url: str | None = None,
    **sections: Any,
) -> Iterator[Stack]:
    """``make_stack`` with the gateway on ``clock``; ``sim_url``: an upstream of the test's own
    (then ``Stack.sim_app`` is None)."""
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    jwt_secret = secrets.token_urlsafe(48)
    with contextlib.ExitStack() as stack:
        sim_app = None
        if sim_url is None:
            sim_app = create_sim_app(replace(sim or SimConfig(), keys=tuple(keys.values())))
            sim_url = stack.enter_context(run_server(sim_app, server_header=False))
        settings = gateway_config(sim_url, redis_url, jwt_secret, keys, **sections)
        app = create_app(settings, clock=clock)
        url = stack.enter_context(run_server(app, server_header=False))
        yield Stack(url, sim_url, sim_app, app, settings, jwt_secret, keys)


def token(stack: Stack, clock: Clock, *, team: str, user: str, roles: tuple[str, ...] = ()) -> str:
    """A token issued at the gateway's (pinned) now."""
    return mint_token(stack.jwt_secret, team=team, user=user, roles=roles, now=clock())


def get_json(url: str, bearer: str, **params: str) -> dict[str, Any]:
    r = httpx2.get(url, params=params, headers={"Authorization": f"Bearer {bearer}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert isinstance(doc, dict)
    return doc


def samples(stack: Stack, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` on the gateway's ``/metrics``, by its label set."""
    r = httpx2.get(stack.url + "/metrics")
    assert r.status_code == 200
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (0 when there is none yet)."""
    want = set(labels.items())
    return sum(v for k, v in samples(stack, name).items() if want <= k)


def chat_answer(doc: Mapping[str, Any], usage: Mapping[str, int]) -> Response:
    """A hand-written upstream's answer to the chat call ``doc``: one JSON completion with
    ``usage``, or, for ``stream``, one content chunk and the usage-only chunk, then [DONE]."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": doc["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": usage,
    }
    if not doc.get("stream"):
        return JSONResponse(answer)

    async def events() -> Any:
        chunk = {**answer, "object": "chat.completion.chunk", "usage": None}
        chunk["choices"] = [{"index": 0, "delta": {"content": "hi"}}]
        yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
