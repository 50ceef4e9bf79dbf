"""The per-request rate check: count one request against its team's sliding-window limit in
one script call, and say the team's room in OpenAI's x-ratelimit-* headers.

Redis unreachable (``StoreUnavailable``): fail open (counted) or closed, by config.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.api_keys import KeyScope
from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.quota import model
from gateway.quota.model import Windows
from gateway.quota.policy import Decision, QuotaPolicy, iso, num, wait_headers
from gateway.quota.store import QuotaStore, RateCommand, rate_reply
from gateway.store.keys import TeamKeys


@dataclass(frozen=True, slots=True)
class RateCall:
    """One request's rate decision before it runs: who, the windows, the script's keys after
    the limits hash, and its arguments (now_ms, default rpm, default video day and month,
    member, window_ms, and a gateway key's rpm)."""

    team: str
    key: KeyScope | None
    windows: Windows
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


_RATE_KINDS = ("requests_per_minute",)
# The configured limits the rate script takes as defaults, in its argument order.
_DEFAULT_KINDS = ("requests_per_minute", "video_seconds_per_day", "video_seconds_per_month")


@functools.lru_cache(maxsize=64)
def _iso_bytes(epoch: float) -> bytes:
    # A window's reset changes once a day; formatting it was ~1 % of a request's CPU.
    return iso(epoch).encode()


class RateLimiter:
    def __init__(self, store: QuotaStore, policy: QuotaPolicy, *, on_decision: Decision) -> None:
        self.store = store
        self.policy = policy
        self._on_decision = on_decision
        # Rate-log members must be unique across replicas and requests, and cheap.
        self._member_prefix = f"{os.getpid()}.{secrets.token_hex(4)}."
        self._seq = itertools.count()
        # A team's check without a gateway key of its own, ready but for the time and the
        # member: its decision (shared: judge only reads who and the windows) and command.
        self._plans: dict[str, tuple[RateCall, RateCommand | None]] = {}

    def prepare(self, team: str, key: KeyScope | None = None) -> RateCall:
        """One request's rate decision, ready for the rate script or for a metered call's
        reservation (which folds it in: one round trip fewer). A gateway key takes part only
        when it has a request limit of its own."""
        if key is not None and not key.limits_any(_RATE_KINDS):
            key = None
        now = self.policy.clock()
        w = self.policy.windows(now)
        args: list[str | int] = [
            int(now * 1000),
            *self.policy.defaults(team, *_DEFAULT_KINDS),
            f"{self._member_prefix}{next(self._seq)}",
            model.RATE_WINDOW_MS,
        ]
        if key is not None:
            args.append(key.limit("requests_per_minute"))
        keys = self.store.rate_keys(TeamKeys(team), w.day, w.month, None if key is None else key.id)
        return RateCall(team, key, w, keys, tuple(args))

    def folded(self, team: str) -> tuple[RateCall, list[int]] | None:
        """For a metered call without a gateway key's own request limit: the team's decision
        (shared, as ``start``'s) and its configured defaults, for a reservation that folds the
        check in and keeps it encoded (``MeterStore.reserve_command``); None when the check
        cannot go on the dedicated connection."""
        now = self.policy.clock()
        w = self.policy.windows(now)
        plan = self._plans.get(team)
        if plan is None or plan[0].windows is not w:
            plan = self._plan(team, w)
        if plan[1] is None:
            return None
        return plan[0], self.policy.defaults(team, *_DEFAULT_KINDS)

    def member(self) -> str:
        """A rate-log member unique across replicas and requests."""
        return f"{self._member_prefix}{next(self._seq)}"

    @staticmethod
    def counts_key(key: KeyScope | None) -> bool:
        """Whether a gateway key takes part in its requests' rate check (a limit of its own)."""
        return key is not None and key.limits_any(_RATE_KINDS)

    async def check(self, team: str, key: KeyScope | None = None) -> list[tuple[bytes, bytes]]:
        """Count one request against the team (and the gateway key it came with, in the same
        decision); raise QuotaExceeded past a limit. Returns x-ratelimit headers."""
        return await self.start(team, key).admitted()

    def start(self, team: str, key: KeyScope | None = None) -> RateCheck:
        """``check``, sent now and judged when awaited (``RateCheck.admitted``)."""
        if key is None or not key.limits_any(_RATE_KINDS):
            now = self.policy.clock()
            w = self.policy.windows(now)
            plan = self._plans.get(team)
            if plan is None or plan[0].windows is not w:
                plan = self._plan(team, w)
            call, command = plan
            if command is not None:
                try:
                    reply = command.send(int(now * 1000), f"{self._member_prefix}{next(self._seq)}")
                except StoreUnavailable as exc:
                    return RateCheck(self, call, exc)
                return RateCheck(self, call, reply)
        call = self.prepare(team, key)
        try:
            reply = self.store.start_rate(TeamKeys(team), call.keys, call.args)
        except StoreUnavailable as exc:
            return RateCheck(self, call, exc)
        return RateCheck(self, call, reply)

    def _plan(self, team: str, w: Windows) -> tuple[RateCall, RateCommand | None]:
        keys = self.store.rate_keys(TeamKeys(team), w.day, w.month, None)
        defaults = self.policy.defaults(team, *_DEFAULT_KINDS)
        plan = (
            RateCall(team, None, w, keys, ()),
            self.store.rate_command(TeamKeys(team), keys, defaults, model.RATE_WINDOW_MS),
        )
        if len(self._plans) >= 4096:  # team names come from credentials: bounded
            self._plans.clear()
        self._plans[team] = plan
        return plan

    def failed_open(self, team: str) -> bool:
        """Redis could not decide: whether to let the request through (counted) by config."""
        if self.policy.settings.rate_fail_open:
            self._on_decision(team, "requests_per_minute", "fail_open")
            return True
        return False

    def judge(self, call: RateCall, r: Sequence[int]) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit headers of an allowed request; raises QuotaExceeded for a refused
        one (the binding limit: the key's when it leaves less room than the team's)."""
        if r[0] == 1 and call.key is None:
            # Allowed, for the team alone: most requests, without a refusal's bookkeeping.
            self._on_decision(call.team, "requests_per_minute", "allowed")
            return self._rate_headers(r[1], r[2], r[4], call.windows, r[5], r[6], r[7], r[8])
        team, key, w = call.team, call.key, call.windows
        allowed, rpm, used, retry_ms, reset_ms, d_lim, d_used, m_lim, m_used = r[:9]
        by_key = False
        if key is not None and len(r) > 9 and (r[9] or rpm < 0 or r[10] - r[11] < rpm - used):
            # The key's room is what binds this caller: show (or refuse with) the key's.
            by_key = True
            rpm, used, retry_ms, reset_ms = r[10], r[11], r[12], r[13]
        headers = self._rate_headers(rpm, used, reset_ms, w, d_lim, d_used, m_lim, m_used)
        if allowed:
            self._on_decision(team, "requests_per_minute", "allowed")
            return headers
        self._on_decision(team, "requests_per_minute", "rejected")
        who = f"API key '{key.name}'" if by_key and key is not None else f"Team '{team}'"
        wait = None if retry_ms < 0 else retry_ms / 1000
        when = "it is 0" if wait is None else f"retry in {math.ceil(wait)} s"
        raise QuotaExceeded(
            f"{who} has reached its limit of {rpm} requests per minute; {when}.",
            code="rate_limit_exceeded",
            headers={
                **wait_headers(wait),
                **{a.decode(): b.decode() for a, b in headers},
            },
        )

    @staticmethod
    def _rate_headers(
        rpm: int,
        used: int,
        reset_ms: int,
        w: Windows,
        d_lim: int,
        d_used: int,
        m_lim: int,
        m_used: int,
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if rpm >= 0:
            out += [
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - used)),
                (b"x-ratelimit-reset-requests", _reset_text(-(-reset_ms // 1000))),
            ]
        if d_lim >= 0 or m_lim >= 0:
            out += _video_headers(d_lim, d_used, m_lim, m_used, w.day_reset, w.month_reset)
        return out


@functools.lru_cache(maxsize=4096)
def _reset_text(seconds: int) -> bytes:
    # Within a one-minute window there are sixty of them.
    return model.duration_text(seconds).encode()


@functools.lru_cache(maxsize=256)
def _video_headers(
    d_lim: int, d_used: int, m_lim: int, m_used: int, day_reset: float, month_reset: float
) -> tuple[tuple[bytes, bytes], ...]:
    """The binding video-seconds window's headers: whichever leaves less room. They change
    only when a video job is charged, so most requests (calls of other kinds) repeat them."""
    windows = [
        (lim, used_, reset)
        for lim, used_, reset in ((d_lim, d_used, day_reset), (m_lim, m_used, month_reset))
        if lim >= 0
    ]
    lim, used_, reset = min(windows, key=lambda x: x[0] - x[1])
    kind = "video_seconds_per_day"
    return (
        (b"x-ratelimit-limit-video-seconds", num(model.shown(kind, lim))),
        (b"x-ratelimit-remaining-video-seconds", num(model.shown(kind, max(0, lim - used_)))),
        (b"x-ratelimit-reset-video-seconds", _iso_bytes(reset)),
    )


class RateCheck:
    """One request's rate decision under way: its script call left when it was started, and
    it is judged when first awaited. A request that has its own work to do before it needs the
    answer (reading and checking its body, building the upstream request) does that work
    during the round trip instead of after it."""

    __slots__ = ("_call", "_error", "_headers", "_limiter", "_reply")

    def __init__(
        self, limiter: RateLimiter, call: RateCall, reply: asyncio.Future[Any] | StoreUnavailable
    ) -> None:
        self._limiter = limiter
        self._call = call
        self._reply = reply
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._error: Exception | None = None

    async def admitted(self) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit headers of an allowed request; raises QuotaExceeded for a refused
        one, or StoreUnavailable when Redis could not decide and the config fails closed.
        Awaiting it again gives the same outcome."""
        if self._headers is None and self._error is None:
            try:
                reply = self._reply
                if isinstance(reply, StoreUnavailable):
                    raise reply
                self._headers = self._limiter.judge(self._call, rate_reply(await reply))
            except StoreUnavailable as exc:
                if self._limiter.failed_open(self._call.team):
                    self._headers = []
                else:
                    self._error = exc
            except QuotaExceeded as exc:
                self._error = exc
        if self._error is not None:
            # Raised again by a second awaiter: without the first one's frames.
            raise self._error.with_traceback(None)
        assert self._headers is not None
        return self._headers

    @property
    def decided(self) -> bool:
        """Whether the answer is already here (Redis known down, or a reply already read):
        then there is no round trip left to overlap."""
        return isinstance(self._reply, StoreUnavailable) or self._reply.done()

    def forget(self) -> None:
        """The request ended without awaiting its decision (its caller left): the decision is
        still counted in the metrics once Redis answers, and never logged as unretrieved."""
        if self._headers is not None or self._error is not None:
            return
        if isinstance(self._reply, StoreUnavailable):
            self._limiter.failed_open(self._call.team)
        else:
            self._reply.add_done_callback(self._judge_unawaited)

    def _judge_unawaited(self, reply: asyncio.Future[Any]) -> None:
        if reply.cancelled():
            return
        exc = reply.exception()  # retrieved: never logged as unretrieved
        if isinstance(exc, StoreUnavailable):
            self._limiter.failed_open(self._call.team)
        elif exc is None:
            with contextlib.suppress(QuotaExceeded):
                self._limiter.judge(self._call, rate_reply(reply.result()))
