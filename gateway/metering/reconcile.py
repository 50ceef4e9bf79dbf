"""Reconciliation with the upstream's bill: what the gateway charged for the calls each pooled
key served, against what Crazyrouter says it billed that key.

Each replica adds what it charges per key in memory and flushes the sums to Redis every few
seconds (one INCRBY per key), so that the request path gains no round trip. A reconciliation
reads, per key, new-api's ``GET /api/usage/token`` (``total_used``, in quota units: 500,000 a
US dollar by default) and the gateway's counter; the first reading of a key is its baseline,
and the drift is what the upstream billed since then minus what the gateway charged since
then. A positive drift is spend the gateway did not meter (a call made with the key outside
the gateway, a route billed differently, prices that disagree); what a replica had not yet
flushed (a few seconds' worth) shows as drift until the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from redis.asyncio import Redis

from gateway.errors import GatewayError, StoreUnavailable
from gateway.quota.model import SPEND_UNITS
from gateway.store.keys import upstream_key_bill, upstream_key_charged

log = logging.getLogger("gateway.metering")

FLUSH_SECONDS = 5.0


class SpendByKey:
    """What this replica charged per upstream key, until it is flushed to Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: dict[str, int] = {}

    def add(self, key_id: str | None, units: int) -> None:
        if key_id and units > 0:
            self._pending[key_id] = self._pending.get(key_id, 0) + units

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id, units in pending.items():
                    pipe.incrby(upstream_key_charged(key_id), units)
                replies = await pipe.execute(raise_on_error=False)
        except Exception:
            # Kept for the next flush: an INCRBY that failed did not count (one that succeeded
            # before a lost reply would count twice, which only overstates our side).
            for key_id, units in pending.items():
                self.add(key_id, units)
            raise
        # Redis refused some (a counter past 64 bits): only those are kept, never counting
        # the others again at every flush.
        failed = [
            (k, u)
            for (k, u), r in zip(pending.items(), replies, strict=True)
            if isinstance(r, Exception)
        ]
        for key_id, units in failed:
            self.add(key_id, units)
        if failed:
            raise RuntimeError(f"Redis refused the spend of {len(failed)} upstream key(s)")

    async def run_forever(self, every: float = FLUSH_SECONDS) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.flush()
            except Exception:
                log.warning("could not flush the per-key spend; kept for the next flush")


def billed_quota(body: bytes) -> int:
    """``total_used`` of new-api's token usage answer, or ValueError for any other shape."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    used = data.get("total_used") if isinstance(data, dict) else None
    if isinstance(used, bool) or not isinstance(used, int) or used < 0:
        raise ValueError("no total_used")
    return used


@dataclass(frozen=True)
class KeyBill:
    key: str
    upstream_units: int | None  # billed since the baseline; None: the upstream did not say
    gateway_units: int  # charged since the baseline
    error: str = ""

    @property
    def drift_units(self) -> int | None:
        if self.upstream_units is None:
            return None
        return self.upstream_units - self.gateway_units

    def as_json(self) -> dict[str, Any]:
        drift = self.drift_units
        return {
            "key": self.key,
            "upstream_spend": _money(self.upstream_units),
            "gateway_spend": _money(self.gateway_units),
            "drift": _money(drift),
            "error": self.error or None,
        }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _money(units: int | None) -> float | None:
    return None if units is None else units / SPEND_UNITS


class BillReconciler:
    """Compares, per pooled key, the upstream's bill with the gateway's charges."""

    def __init__(
        self,
        redis: Redis,
        spend: SpendByKey,
        *,
        keys: Callable[[], Iterable[str]],
        fetch_usage: Callable[[str], Awaitable[bytes]],
        quota_per_unit: int,
        on_drift: Callable[[str, float], None] = lambda key, drift: None,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.redis = redis
        self.spend = spend
        self.keys = keys
        self.fetch_usage = fetch_usage
        self.quota_per_unit = quota_per_unit
        self.on_drift = on_drift
        self.on_result = on_result

    def _units(self, quota: int) -> int:
        return round(Fraction(quota * SPEND_UNITS, self.quota_per_unit))

    async def run(self) -> list[KeyBill]:
        """One reconciliation of every pooled key (raises StoreUnavailable without Redis)."""
        try:
            await self.spend.flush()
        except Exception:
            raise StoreUnavailable("could not flush the per-key spend") from None
        out = []
        for key_id in self.keys():
            out.append(await self._key(key_id))
        return out

    async def _key(self, key_id: str) -> KeyBill:
        try:
            upstream: int | None = self._units(billed_quota(await self.fetch_usage(key_id)))
            error = ""
        except (GatewayError, ValueError, TimeoutError) as exc:
            upstream, error = None, f"the upstream's usage could not be read: {exc}"
            log.warning("reconciliation of key %s: %s", key_id, error)
        try:
            charged = int(await self.redis.get(upstream_key_charged(key_id)) or 0)
            base_key = upstream_key_bill(key_id)
            if upstream is not None:
                # The first reading is the baseline: spend before the gateway counted is not
                # drift. hsetnx keeps one baseline whatever replica gets there first.
                await self.redis.hsetnx(base_key, "upstream", upstream)
                await self.redis.hsetnx(base_key, "gateway", charged)
            raw = await self.redis.hgetall(base_key)
        except Exception:
            raise StoreUnavailable("could not read the per-key spend") from None
        base = {_text(k): int(v) for k, v in raw.items()}
        up0, gw0 = base.get("upstream", 0), base.get("gateway", 0)
        bill = KeyBill(
            key=key_id,
            upstream_units=None if upstream is None else upstream - up0,
            gateway_units=charged - gw0,
            error=error,
        )
        self.on_result("error" if upstream is None else "ok")
        if bill.drift_units is not None:
            self.on_drift(key_id, bill.drift_units / SPEND_UNITS)
        return bill

    async def run_forever(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.run()
            except StoreUnavailable:
                log.warning("reconciliation with the upstream's bill failed: Redis unavailable")
