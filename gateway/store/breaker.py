"""A circuit breaker in front of Redis.

Without it, every request that needs Redis waits out a socket timeout while Redis is frozen
(a paused process, a dead host that drops packets): a rate check and a create each waited
0.5 s, and a create answered after 1.0-1.2 s. Once one call has seen Redis fail, the breaker
opens and calls fail at once with ``StoreUnavailable``; one background probe per interval
asks Redis for a PING, and the first answer closes the breaker again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import StoreKnownDown

log = logging.getLogger("gateway.store")


class Breaker:
    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        probe_interval: float = 0.25,
        on_change: Callable[[bool], None] = lambda is_open: None,
        on_error: Callable[[str], None] = lambda op: None,
    ) -> None:
        self._probe = probe
        self._interval = probe_interval
        self._on_change = on_change
        self._on_error = on_error
        self.is_open = False
        self._probing: asyncio.Task[None] | None = None
        self._on_back: list[Callable[[], None]] = []

    def when_back(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time a probe finds Redis back (on the event loop)."""
        self._on_back.append(callback)

    def check(self) -> None:
        """Raise StoreUnavailable at once while Redis is known to be down."""
        if self.is_open:
            raise StoreKnownDown()

    def failed(self, op: str) -> None:
        """A call could not reach Redis: open, and start probing for its return."""
        self._on_error(op)
        if self.is_open:
            return
        self.is_open = True
        log.warning("Redis is unreachable; failing fast until a probe reaches it")
        # The probe first: a failing callback must never leave the breaker open for good.
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to probe with
            self._probing = asyncio.get_running_loop().create_task(self._probe_until_back())
        self._on_change(True)

    async def _probe_until_back(self) -> None:
        while self.is_open:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except Exception:  # noqa: S112 (any failure means: still down, probe again)
                continue
            self.is_open = False
            log.warning("Redis is reachable again")
            self._on_change(False)
            for callback in self._on_back:
                try:
                    callback()
                except Exception:
                    log.exception("a callback for Redis's return failed")

    async def close(self) -> None:
        if self._probing is not None and not self._probing.done():
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
