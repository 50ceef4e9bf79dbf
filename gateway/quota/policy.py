"""What every quota decision shares: the configured limits and prices, the calendar windows
in the configured time zone, and how answers say when to retry (pure: no I/O)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.quota import model
from gateway.quota.model import Cost, Limit, Windows
from gateway.settings import QuotaSettings, TeamSettings, VideoSettings

RETRY_CAP_S = 120.0  # longer waits: tell the SDK not to retry at all
Decision = Callable[[str, str, str], None]  # team, kind, result


@functools.lru_cache(maxsize=64)  # the same few reset times on every answer of a day
def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_headers(wait_s: float | None) -> dict[str, str]:
    """retry-after with the real wait; past the cap (or never), no retry at all."""
    if wait_s is None or wait_s > RETRY_CAP_S:
        return {"x-should-retry": "false"}
    # Rounded first: a wait of 8.146 s is 8146.000000000001 ms in floating point, not 8147.
    ms = max(1, math.ceil(round(wait_s * 1000, 6)))
    return {"retry-after": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)}


def num(v: int | float) -> bytes:
    return (str(int(v)) if v == int(v) else f"{v:g}").encode()


class QuotaPolicy:
    def __init__(
        self,
        settings: QuotaSettings,
        *,
        teams: Mapping[str, TeamSettings],
        videos: VideoSettings,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.teams = teams
        self._limits = {name: t.limits for name, t in teams.items()}
        self.videos = videos
        self.clock = clock
        self.tz = ZoneInfo(settings.time_zone)
        self._window_cache: tuple[float, Windows] | None = None
        self._stored_defaults: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def windows(self, now: float) -> Windows:
        # The calendar arithmetic was ~12 % of a rate check; the answer only changes at midnight.
        cached = self._window_cache
        if cached is not None and cached[0] <= now < cached[1].day_reset:
            return cached[1]
        w = Windows.at(now, self.tz)
        self._window_cache = (now, w)
        return w

    def config_limits(self, team: str) -> dict[str, Limit]:
        return model.effective_limits(team, self._limits, {})

    def defaults(self, team: str, *kinds: str) -> list[int]:
        """The configured limits of ``kinds`` as the scripts store them (an override in Redis
        wins inside the script)."""
        # Called on every request's rate check; the config never changes while we run.
        key = (team, kinds)
        cached = self._stored_defaults.get(key)
        if cached is None:
            limits = self.config_limits(team)
            cached = [model.stored_limit(k, limits[k]) for k in kinds]
            if len(self._stored_defaults) < 10_000:  # team names come from tokens: bounded
                self._stored_defaults[key] = cached
        return cached

    def cost(self, model_name: str, seconds: int, size: str) -> Cost:
        m = self.videos.model(model_name)
        if m is None:
            return model.job_cost(seconds, size)
        return model.job_cost(
            seconds,
            size,
            weight=m.weight,
            price_per_second=m.price_per_second,
            size_multipliers=m.size_multipliers,
        )
