"""Reconciliation with the upstream's bill: per pooled key, what Crazyrouter says it billed
(new-api's GET /api/usage/token, served by the simulator, which bills each answer by its own
price list) against what the gateway charged for the calls that key served. Real sockets, a
real Redis, the official SDK for the traffic, the admin API and the CLI for the reading."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import Stack, make_stack
from tests.integration.test_admin_cli import run_cli

SPEND_UNIT = 1e-6  # the gateway's stored unit; new-api's quota unit is 2e-6 USD


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    team = "b-" + secrets.token_hex(4)
    with make_stack(
        redis_url,
        key_ids=("primary", "secondary"),
        teams={"default": {}, team: {"spend_per_day": 100}},
        # The gateway prices by the same list the simulator bills by: no drift but rounding.
        pricing={"source": "crazyrouter", "unpriced": "refuse"},
    ) as s:
        yield s


def admin(stack: Stack) -> dict[str, str]:
    token = stack.token(team="ops", user="root", roles=("gateway-admin",))
    return {"Authorization": f"Bearer {token}"}


def reconcile(stack: Stack) -> dict[str, dict[str, Any]]:
    r = httpx2.post(stack.url + "/admin/v1/reconcile", headers=admin(stack), timeout=30)
    assert r.status_code == 200, r.text
    return {row["key"]: row for row in r.json()["data"]}


def billed(stack: Stack, key_id: str) -> int:
    """What the simulator billed this key, in new-api's quota units."""
    return int(stack.sim_app.state.sim.billed.get(stack.keys[key_id], 0))


def traffic(stack: Stack) -> int:
    c = openai.OpenAI(base_url=stack.v1, api_key=stack.token(team="bill"), max_retries=0)
    with c:
        for i in range(6):
            c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i} " * 40}]
            )
        for _ in c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "a stream"}], stream=True
        ):
            pass
        c.responses.create(model="o4-mini", input="plan a trip " * 30)
        c.embeddings.create(model="text-embedding-3-small", input=["a fox", "a badger"])
    return 9


def test_the_gateway_and_the_upstream_agree_and_unmetered_spend_shows_as_drift(
    stack: Stack,
) -> None:
    first = reconcile(stack)
    assert set(first) == {"primary", "secondary"}
    assert all(row["drift"] == 0 and row["error"] is None for row in first.values())

    calls = traffic(stack)
    after = reconcile(stack)
    charged = sum(row["gateway_spend"] for row in after.values())
    upstream = sum(row["upstream_spend"] for row in after.values())
    assert charged > 0
    assert upstream == pytest.approx(sum(billed(stack, k) for k in stack.keys) * 2 * SPEND_UNIT)
    for row in after.values():
        # Each side rounds each call once, to its own unit: that much, and no more, apart.
        assert abs(row["drift"]) <= calls * 2 * SPEND_UNIT, row

    # A call made with a pooled key outside the gateway: billed upstream, charged nowhere.
    before = billed(stack, "primary")
    direct = httpx2.post(
        stack.sim_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.keys['primary']}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 40_000}]},
    )
    assert direct.status_code == 200
    unmetered = (billed(stack, "primary") - before) * 2 * SPEND_UNIT
    assert unmetered > 0.01
    last = reconcile(stack)
    assert last["primary"]["drift"] - after["primary"]["drift"] == pytest.approx(unmetered)
    assert last["secondary"]["drift"] == after["secondary"]["drift"]
    drift = stack.app.metrics.registry.get_sample_value(
        "gateway_upstream_spend_drift", {"key": "primary"}
    )
    assert drift == pytest.approx(last["primary"]["drift"])

    # The CLI prints the same reading as a table.
    done = run_cli("reconcile", url=stack.url, token=admin(stack)["Authorization"][7:])
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("primary"))
    assert f"{last['primary']['drift']:.6f}".rstrip("0") in line


def test_a_bill_that_cannot_be_read_is_reported_not_guessed(stack: Stack) -> None:
    reconcile(stack)
    stack.sim_app.state.sim.add_fault(kind="status_503", path_prefix="/api/usage/token", count=1)
    rows = reconcile(stack)
    failed = [row for row in rows.values() if row["error"]]
    assert len(failed) == 1
    assert (failed[0]["upstream_spend"], failed[0]["drift"]) == (None, None)
    assert "could not be read" in failed[0]["error"]
    assert (
        stack.app.metrics.registry.get_sample_value(
            "gateway_upstream_reconcile_total", {"result": "error"}
        )
        == 1
    )


def test_reconciliation_is_for_admins_only(stack: Stack) -> None:
    r = httpx2.post(
        stack.url + "/admin/v1/reconcile",
        headers={"Authorization": f"Bearer {stack.token(team='bill')}"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied")
    assert stack.sim_requests("/api/usage") == []
    # and the upstream's own billing pages are not a route callers can reach
    r = httpx2.get(
        stack.v1.removesuffix("/v1") + "/api/usage/token",
        headers={"Authorization": f"Bearer {stack.token(team='bill')}"},
    )
    assert r.status_code == 404
    assert stack.sim_requests("/api/usage") == []
