"""Keeps the loaded layer of the price table current (``pricing.source: crazyrouter``).

The list is fetched at start-up and every ``pricing.refresh_seconds``; a fetch or a list that
fails leaves the last good table in place (none at all before the first success: unpriced
models are then refused as usual) and is tried again after at most ``RETRY_SECONDS``. The
fetch itself is a callable (the upstream client's), so this module does no I/O of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import GatewayError
from gateway.metering.catalog import CatalogError, parse_catalog
from gateway.metering.prices import PriceTable

log = logging.getLogger("gateway.prices")

RETRY_SECONDS = 60.0  # after a failure, the next attempt comes this soon (or at the interval)
SHOWN_REFUSALS = 5  # refused entries named in one log line


class PriceRefresher:
    def __init__(
        self,
        base: PriceTable,
        fetch: Callable[[], Awaitable[bytes]],
        *,
        group: str,
        interval_seconds: float,
        retry_seconds: float = RETRY_SECONDS,
        on_result: Callable[[str, int], None] = lambda result, loaded: None,
    ) -> None:
        self._table = base
        self._fetch = fetch
        self._group = group
        self._interval = interval_seconds
        self._retry = min(retry_seconds, interval_seconds)
        self._on_result = on_result
        self.loaded_once = False

    def current(self) -> PriceTable:
        """The table to price calls with now: configured entries over the last good list."""
        return self._table

    async def refresh(self) -> bool:
        """Fetch and load the list once; False (the table unchanged) when that failed."""
        try:
            body = await self._fetch()
            # Off the event loop: a large list (hostile or not) took seconds to read and price,
            # and every request would have waited for it.
            catalog = await asyncio.to_thread(parse_catalog, body, group=self._group)
        except TimeoutError:
            self._failed("the upstream did not answer in time")
            return False
        except (GatewayError, CatalogError) as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # a bug must not stop the refreshes or drop the table
            log.exception("price list: unexpected failure")
            self._failed(type(exc).__name__)
            return False
        self._table = self._table.with_loaded(catalog.prices)
        self.loaded_once = True
        if catalog.refused:
            shown = "; ".join(
                f"{k}: {v}" for k, v in list(catalog.refused.items())[:SHOWN_REFUSALS]
            )
            log.warning(
                "price list: %d entries refused (%s%s)",
                len(catalog.refused),
                shown,
                "; ..." if len(catalog.refused) > SHOWN_REFUSALS else "",
            )
        log.info("price list: %d models loaded (group %s)", len(catalog.prices), self._group)
        self._on_result("ok", len(catalog.prices))
        return True

    async def run_forever(self) -> None:
        """Refresh on the interval (sooner after a failure) until cancelled; call ``refresh``
        once first, at start-up."""
        ok = self.loaded_once
        while True:
            await asyncio.sleep(self._interval if ok else self._retry)
            ok = await self.refresh()

    def _failed(self, why: str) -> None:
        kept = self._table.loaded_count
        if self.loaded_once:
            log.warning(
                "price list not refreshed (%s); keeping the last one (%d models)", why, kept
            )
        else:
            log.warning(
                "price list not loaded (%s); models without a pricing.models entry are "
                "unpriced until it loads",
                why,
            )
        self._on_result("error", kept)
