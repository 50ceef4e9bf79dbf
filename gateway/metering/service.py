"""Metering a forwarded call: admit it on its estimate, then settle it to its real usage.

``admit`` checks the team may call the model, that the model has a price, and reserves the
estimate against every window the call touches in one script (tokens per minute and day,
spend per day and month); ``settle`` charges the real usage (or the estimate when none came)
exactly once, the difference going back to the buckets the estimate went to, and writes the
ledger in the same script.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Protocol

from gateway.auth.api_keys import KeyScope
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    QuotaExceeded,
    StoreKnownDown,
    StoreUnavailable,
)
from gateway.metering import kinds, ledger
from gateway.metering.estimate import Estimate, estimate, model_of
from gateway.metering.prices import UNIT_OF, ModelPrice, PriceTable, Usage, allowed
from gateway.metering.store import KEY_KINDS, MeterStore, ReserveCommand, Verdict
from gateway.quota import model
from gateway.quota.model import Windows
from gateway.quota.policy import QuotaPolicy, iso, wait_headers
from gateway.quota.rate import RateCall, RateLimiter
from gateway.settings import PricingSettings
from gateway.store.keys import TeamKeys

log = logging.getLogger("gateway.metering")

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
CALL_TTL_S = 6 * 3600  # longer than any answer streams; an unsettled estimate stays charged
_KINDS = ("tokens_per_minute", "tokens_per_day", "spend_per_day", "spend_per_month")
# Kinds whose estimate is their exact cost: nothing in the answer can change it.
_EXACT = frozenset({kinds.SPEECH, kinds.REQUEST})
_IMAGE_KINDS = frozenset({kinds.IMAGES, kinds.IMAGE_UPLOAD})
# Reservations whose reply was lost, held until Redis is seen again (then each is settled or
# forbidden): a bound on what a long outage can make one replica hold.
UNSURE_MAX = 10_000
# A drain that Redis interrupted tries again after this, doubling up to the most.
DRAIN_RETRY_MIN_S = 0.5
DRAIN_RETRY_MAX_S = 30.0
SHUTDOWN_DRAIN_S = 2.0  # what shutting down waits for the last try


class MeterEvents(Protocol):
    def decision(self, team: str, kind: str, result: str) -> None: ...
    def charged(self, team: str, model: str, kind: str, usage: Usage, spend_units: int) -> None: ...
    def estimated(self, kind: str) -> None: ...
    def unpriced(self, model: str) -> None: ...


class NoEvents:
    def decision(self, team: str, kind: str, result: str) -> None:
        pass

    def charged(self, team: str, model: str, kind: str, usage: Usage, spend_units: int) -> None:
        pass

    def estimated(self, kind: str) -> None:
        pass

    def unpriced(self, model: str) -> None:
        pass


@dataclass
class Admission:
    """One admitted call, until it settles."""

    team: str
    user: str
    kind: str
    tag: str
    call_id: str
    day: str
    month: str
    estimate: Estimate
    price: ModelPrice | None
    reserved_tokens: int
    reserved_units: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False
    cost_units: int = 0
    # Admitted without Redis (pricing.store_down: allow): priced and counted, never stored.
    offline: bool = False
    upstream_key: str | None = None  # the pooled key that served it, once known
    key_id: str | None = None  # the gateway API key it was made with, charged alongside
    # Offline because the reservation's reply was lost (Redis froze after it was sent): it
    # may still run, so the settlement is kept for when Redis is back.
    unsure: bool = False

    @property
    def model(self) -> str:
        return self.estimate.model

    def cost(self, usage: Usage) -> int:
        if self.price is None:
            return 0
        return self.price.cost_units(usage, size=self.estimate.size, quality=self.estimate.quality)


@dataclass(frozen=True, slots=True)
class _Settlement:
    """What one call came to, for its reservation (nothing: refunded); also kept, until
    Redis takes it, for a reservation whose reply was lost and for a settlement Redis did not
    confirm (its reply lost, or never sent while Redis was known down)."""

    team: str
    call_id: str
    day: str
    month: str
    key_id: str | None
    tokens: int = 0
    spend: int = 0
    ledger: Mapping[str, int] = field(default_factory=dict)
    # Whether the reservation is known to have run (only its settlement is unconfirmed):
    # then it is written again as it is, with no mark forbidding a late reservation.
    reserved: bool = False


class Meter:
    def __init__(
        self,
        store: MeterStore,
        policy: QuotaPolicy,
        pricing: PricingSettings,
        *,
        team_models: Callable[[str], tuple[str, ...] | None],
        prices: Callable[[], PriceTable],
        events: MeterEvents | None = None,
        on_key_charged: Callable[[str | None, int], None] = lambda key, units: None,
        rate: RateLimiter | None = None,
    ) -> None:
        self.store = store
        # The request rate check, folded into the reservation (one round trip fewer); the
        # rate-limit middleware leaves metered calls to it.
        self.rate = rate
        self.policy = policy
        self.pricing = pricing
        self.team_models = team_models
        self.prices = prices
        self.events: MeterEvents = events or NoEvents()
        self.on_key_charged = on_key_charged  # for the reconciliation with the upstream's bill
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}.{secrets.token_hex(4)}."
        self._unsure: collections.deque[_Settlement] = collections.deque()
        self._draining: asyncio.Task[None] | None = None
        self._retry = DRAIN_RETRY_MIN_S / 2  # the wait before the next retry, halved
        self._retrying: asyncio.TimerHandle | None = None
        self._closed = False
        # Each team's reservation kept encoded, for the day it was made for (``_planned``).
        self._plans: dict[str, tuple[Windows, tuple[RateCall, ReserveCommand] | None]] = {}

    def tag_of(self, raw: bytes | None) -> str:
        if raw is None:
            return ""
        tag = raw.decode("latin-1")
        if not TAG.fullmatch(tag):
            raise InvalidRequest(
                "x-gateway-tag must be 1 to 64 letters, digits or '_.:/-', starting with a "
                "letter or digit.",
                code="invalid_tag",
                param="x-gateway-tag",
            )
        return tag

    def price_for(
        self, team: str, kind: str, doc: Mapping[str, Any], key: KeyScope | None = None
    ) -> tuple[str, ModelPrice | None]:
        name = model_of(kind, doc)
        if not allowed(name, self.team_models(team)):
            raise PermissionDenied(
                f"Team '{team}' may not use the model '{name}'.",
                code="model_not_allowed",
                param="model",
            )
        if key is not None and not allowed(name, key.models):
            raise PermissionDenied(
                f"API key '{key.name}' may not use the model '{name}'.",
                code="model_not_allowed",
                param="model",
            )
        price = self.prices().lookup(name)
        missing = ""  # the unit a price it has lacks: it would charge this call nothing
        if price is not None and not price.measures(kind):
            missing, price = UNIT_OF.get(kind, "tokens"), None
        if price is None and kind != kinds.MODERATIONS:
            if self.pricing.unpriced != "allow":
                what = (
                    "A call to this route names no model and the route has no price ('-')"
                    if name == "-"
                    else f"The model '{name}' has no price for what this route consumes ({missing})"
                    if missing
                    else f"The model '{name}' has no price configured"
                )
                raise PermissionDenied(
                    f"{what}, so the gateway cannot meter it; ask the gateway's operators to "
                    "add one.",
                    code="model_not_priced",
                    param="model",
                )
            self.events.unpriced(name)
        return name, price

    async def count_request(self, team: str, key: KeyScope | None) -> None:
        """Count a metered call refused before its reservation against the request rate
        (raises the rate's 429 when over it)."""
        if self.rate is not None:
            await self.rate.check(team, key)

    async def admit(
        self,
        team: str,
        user: str,
        kind: str,
        doc: Mapping[str, Any],
        body: bytes,
        tag: str,
        *,
        key: KeyScope | None = None,
    ) -> Admission:
        """Count the request and reserve the call's estimate against the team (and the
        gateway key it came with) in one decision, or raise (403 model, 429 rate or quota,
        400 bad field)."""
        try:
            _, price = self.price_for(team, kind, doc, key)
            est = estimate(
                kind,
                doc,
                body,
                price,
                default_cap=self.pricing.default_max_output_tokens,
                media_tokens=self.pricing.image_input_tokens,
                max_audio_seconds=self.pricing.transcription_max_seconds,
            )
            units = (
                price.estimate_units(est.bound, size=est.size, quality=est.quality) if price else 0
            )
            tokens = est.bound.tokens if kind in kinds.TOKEN_KINDS else 0
            _meterable(tokens, units)
        except GatewayError:
            await self.count_request(team, key)
            raise
        now = self.policy.clock()
        w = self.policy.windows(now)
        call_id = f"{self._prefix}{next(self._ids)}"
        # A key without token or spend limits of its own keeps no counters for them.
        counted = key if key is not None and key.limits_any(KEY_KINDS) else None
        key_id = None if counted is None else counted.id
        rate: RateCall | None = None
        planned = None
        if self.rate is not None:
            if counted is None and not self.rate.counts_key(key):
                planned = self._planned(team, w)
            if planned is None:
                rate = self.rate.prepare(team, key)
        # A route added in config is charged the usage its answer reports too (tokens, audio
        # seconds), which no estimate bounds.
        open_ended = kind == kinds.REQUEST and price is not None and price.prices_usage
        try:
            if planned is not None:
                assert self.rate is not None
                rate, command = planned
                sent = command.send(
                    call_id,
                    now_s=int(now),
                    tokens=tokens,
                    spend=units,
                    tag=tag,
                    open_ended=open_ended,
                    now_ms=int(now * 1000),
                    member=self.rate.member(),
                )
                verdict = await self.store.reserve_sent(team, sent)
            else:
                verdict = await self._reserve(
                    team, call_id, w, now, tokens, units, tag, counted, rate, open_ended
                )
        except StoreUnavailable as exc:
            # Sent, and then Redis went quiet: the script may run yet, once Redis thaws.
            unsure = not isinstance(exc, StoreKnownDown)
            refused = self.rate is not None and not self.rate.failed_open(team)
            if refused or self.pricing.store_down != "allow":
                if unsure:  # nothing is sent upstream: whatever it reserved goes back
                    self._defer(_Settlement(team, call_id, w.day, w.month, key_id))
                raise
            self.events.decision(team, "metered", "fail_open")
            verdict = Verdict(True, "", 0, -1, -1, -1)
            offline = True
        else:
            offline = unsure = False
            if self._unsure:
                self._drain_soon()
        headers = _token_headers(verdict, now) if verdict.admitted else []
        if rate is not None and verdict.rate:
            assert self.rate is not None
            headers += self.rate.judge(rate, verdict.rate)  # raises when the rate refused
        if not verdict.admitted:
            self.events.decision(team, _family(verdict.kind), "rejected")
            raise self._rejection(team, key, verdict, tokens, units, now)
        self.events.decision(team, "metered", "allowed")
        return Admission(
            team=team,
            user=user,
            kind=kind,
            tag=tag,
            call_id=call_id,
            day=w.day,
            month=w.month,
            estimate=est,
            price=price,
            reserved_tokens=tokens,
            reserved_units=units,
            headers=headers,
            offline=offline,
            key_id=key_id,
            unsure=unsure,
        )

    async def _reserve(
        self,
        team: str,
        call_id: str,
        w: Windows,
        now: float,
        tokens: int,
        units: int,
        tag: str,
        counted: KeyScope | None,
        rate: RateCall | None,
        open_ended: bool,
    ) -> Verdict:
        """The reservation built whole: with a gateway key's own limits, or off the dedicated
        connection."""
        return await self.store.reserve(
            TeamKeys(team),
            call_id,
            now_s=int(now),
            tokens=tokens,
            spend=units,
            defaults=self.policy.defaults(team, *_KINDS),
            day=w.day,
            month=w.month,
            ttls=(model.DAY_TTL_S, model.MONTH_TTL_S, CALL_TTL_S),
            tag=tag,
            max_tags=self.pricing.max_tags_per_day,
            key=counted,
            rate=rate,
            open_ended=open_ended,
        )

    def _planned(self, team: str, w: Windows) -> tuple[RateCall, ReserveCommand] | None:
        """The team's reservation kept encoded for today (``MeterStore.reserve_command``), or
        None: then the call's reservation is built whole."""
        found = self._plans.get(team)
        if found is not None and found[0] is w:
            return found[1]
        assert self.rate is not None
        folded = self.rate.folded(team)
        planned = None
        if folded is not None and folded[0].windows is w:  # not at midnight between clocks
            call, rate_defaults = folded
            command = self.store.reserve_command(
                TeamKeys(team),
                call,
                rate_defaults,
                defaults=self.policy.defaults(team, *_KINDS),
                day=w.day,
                month=w.month,
                ttls=(model.DAY_TTL_S, model.MONTH_TTL_S, CALL_TTL_S),
                max_tags=self.pricing.max_tags_per_day,
            )
            planned = None if command is None else (call, command)
        if len(self._plans) >= 4096:  # team names come from credentials: bounded
            self._plans.clear()
        self._plans[team] = (w, planned)
        return planned

    async def settle(self, adm: Admission, usage: Usage | None, *, failed: bool = False) -> int:
        """Charge what the call consumed (None: the estimate, counted) exactly once; answers
        the charge in stored units. A failed call (the upstream refused it) is refunded."""
        if adm.settled:
            return adm.cost_units
        adm.settled = True
        if failed:
            used, cost, entries = Usage(requests=0), 0, {}
        else:
            if usage is None:
                usage = _unmeasured(adm)
                if usage is adm.estimate.bound and adm.kind not in _EXACT:
                    self.events.estimated(adm.kind)
            usage = _billed(adm, usage)
            used = usage
            cost = adm.cost(usage) if adm.price is not None else 0
            entries = ledger.entries(adm.user, adm.model, adm.tag, usage, cost)
        adm.cost_units = cost
        if not failed:
            self.on_key_charged(adm.upstream_key, cost)
        tokens = used.tokens if adm.kind in kinds.TOKEN_KINDS else 0
        done = _Settlement(
            adm.team, adm.call_id, adm.day, adm.month, adm.key_id, tokens, cost, entries
        )
        if adm.offline:  # nothing was reserved: the metrics still count what it cost
            if not failed:
                self.events.charged(adm.team, adm.model, adm.kind, used, cost)
            if adm.unsure:  # if the reservation runs after all, it settles to this
                self._defer(done)
                self._drain_soon()  # Redis may be back already: nothing else may come to drain
            return cost
        try:
            await self._write(done)
        except StoreUnavailable:
            # Sent and unanswered (Redis may run it yet, once it thaws) or never sent (known
            # down): written again once Redis answers. Settling is idempotent (the first one
            # deletes the reservation), so the call comes to this charge exactly once.
            self._defer(replace(done, reserved=True))
            self._drain_soon()
        if not failed:
            self.events.charged(adm.team, adm.model, adm.kind, used, cost)
        return cost

    async def _write(self, s: _Settlement) -> None:
        await self.store.settle(
            TeamKeys(s.team),
            s.call_id,
            tokens=s.tokens,
            spend=s.spend,
            day=s.day,
            month=s.month,
            ledger=s.ledger,
            ledger_ttl=self.pricing.ledger_retention_days * 86_400,
            ttls=(model.DAY_TTL_S, model.MONTH_TTL_S),
            key_id=s.key_id,
        )

    def _defer(self, item: _Settlement) -> None:
        if len(self._unsure) >= UNSURE_MAX:
            # Kept charged, as any reservation nobody settles: the safe side of a budget.
            log.warning("too many reservations with a lost reply; the oldest stays charged")
            self._unsure.popleft()
        self._unsure.append(item)

    def redis_back(self) -> None:
        """Redis answers again (its breaker closed): settle what its outage left unsure."""
        if self._unsure:
            self._drain_soon()

    def _drain_soon(self) -> None:
        if self._closed:  # a call that outlived shutdown: its estimate stays charged
            return
        if self._draining is None or self._draining.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    def _retry_drain(self) -> None:
        self._retrying = None
        self._drain_soon()

    async def _drain(self) -> None:
        """Settle (or forbid) each reservation whose reply was lost, and write each settlement
        Redis did not confirm, now that Redis answers again. A new outage stops it; Redis's
        return, the next reservation it takes, or a retry after a wait (doubling, up to
        DRAIN_RETRY_MAX_S) starts it over, so a quiet replica settles its calls too."""
        while self._unsure:
            item = self._unsure[0]
            try:
                if item.reserved or await self.store.cancel(
                    TeamKeys(item.team), item.call_id, ttl=CALL_TTL_S
                ):
                    await self._write(item)
            except StoreUnavailable:
                if self._retrying is None and not self._closed:
                    self._retry = min(DRAIN_RETRY_MAX_S, self._retry * 2)
                    self._retrying = asyncio.get_running_loop().call_later(
                        self._retry, self._retry_drain
                    )
                return
            except Exception:
                log.exception("settling a reservation whose reply was lost failed")
            if self._unsure and self._unsure[0] is item:
                self._unsure.popleft()
        self._retry = DRAIN_RETRY_MIN_S / 2

    async def aclose(self) -> None:
        """Shutting down: what is still unsure gets one last try (bounded), then nothing
        more starts; what Redis did not take keeps its estimate charged."""
        if self._retrying is not None:
            self._retrying.cancel()
            self._retrying = None
        if self._unsure:
            self._drain_soon()
        self._closed = True
        if self._draining is not None and not self._draining.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._draining, SHUTDOWN_DRAIN_S)

    def _rejection(
        self, team: str, key: KeyScope | None, v: Verdict, tokens: int, units: int, now: float
    ) -> GatewayError:
        w = self.policy.windows(now)
        who = f"Team '{team}'"
        if v.kind.startswith("key:") and key is not None:
            who = f"API key '{key.name}'"
            v = replace(v, kind=v.kind[4:])
        if v.kind == "tags":
            return InvalidRequest(
                f"Team '{team}' has used {v.limit} distinct x-gateway-tag values today, the "
                "most a day may have; reuse one of them.",
                code="too_many_tags",
                param="x-gateway-tag",
            )
        never = v.wait_s < 0
        if v.kind == "tokens_per_minute":
            wait: float | None = None if never else float(v.wait_s)
            what = (
                f"its limit of {v.limit} tokens per minute ({v.used} used, this call may use "
                f"up to {tokens})"
            )
            when = "the call is larger than the limit" if never else f"retry in {v.wait_s} s"
            headers = {
                "x-ratelimit-limit-tokens": str(v.limit),
                "x-ratelimit-remaining-tokens": str(max(0, v.limit - v.used)),
                "x-ratelimit-reset-tokens": model.duration_text(v.wait_s if not never else 60),
            }
        else:
            reset = w.day_reset if v.kind.endswith("_day") else w.month_reset
            wait = None if never else reset - now
            window = "day" if v.kind.endswith("_day") else "month"
            if v.kind.startswith("spend"):
                cur = self.policy.settings.currency
                what = (
                    f"its spend limit of {model.shown(v.kind, v.limit)} {cur} per {window} "
                    f"({model.shown(v.kind, v.used)} {cur} used, this call may cost up to "
                    f"{model.shown(v.kind, units)} {cur})"
                )
            else:
                what = (
                    f"its limit of {v.limit} tokens per {window} ({v.used} used, this call "
                    f"may use up to {tokens})"
                )
            when = "the call is larger than the limit" if never else f"it resets at {iso(reset)}"
            headers = {}
        code = "token_quota_exceeded" if v.kind.startswith("tokens") else "spend_quota_exceeded"
        return QuotaExceeded(
            f"{who} would exceed {what}; {when}.",
            code=code,
            headers={**headers, **wait_headers(wait)},
        )


def _unmeasured(adm: Admission) -> Usage:
    """What a call is charged when its answer did not say what it consumed: the estimate,
    except for a transcription priced by the request alone (whisper's text, srt and vtt
    answers give no duration), whose price needs no measure."""
    p = adm.price
    if (
        adm.kind == kinds.TRANSCRIPTION
        and p is not None
        and p.per_request > 0
        and p.cost_units(adm.estimate.bound) == p.cost_units(Usage())
    ):
        return Usage()
    return adm.estimate.bound


# What one call may reserve: Redis's scripts count in doubles, exact to 2**53 and printed
# whole below 1e14; past these a reservation broke mid-script (a 500, with a charge left).
MAX_CALL_TOKENS = 10**12
MAX_CALL_UNITS = 10**13


def _meterable(tokens: int, units: int) -> None:
    if tokens > MAX_CALL_TOKENS or units > MAX_CALL_UNITS:
        raise InvalidRequest(
            f"This call could use up to {tokens} tokens and cost up to "
            f"{units // model.SPEND_UNITS} in the gateway's currency, more than one call may "
            "reserve; lower max_tokens, n or best_of, or split the input.",
            code="estimate_too_large",
        )


def _billed(adm: Admission, usage: Usage) -> Usage:
    """The usage a call is charged for, from what its answer reports: as new-api bills it,
    and within what the upload could hold."""
    bound = adm.estimate.bound
    if adm.kind in _IMAGE_KINDS and usage.images < bound.images:
        # new-api bills the images asked for (n), whether or not each came back.
        return usage._replace(images=bound.images)
    if adm.kind != kinds.TRANSCRIPTION:
        return usage
    if usage.audio_seconds > bound.audio_seconds:
        # More audio than the upload can hold (see the estimate): charged the bound, so
        # that no answer takes a team past a budget its reservation fitted in.
        usage = usage._replace(audio_seconds=bound.audio_seconds)
    price = adm.price
    if usage.audio_seconds and not usage.tokens and price and not price.per_audio_second:
        if not (price.input_per_million or price.cached_price or price.output_per_million):
            return _unmeasured(adm)
        # Seconds (whisper's answer) for a price in tokens (Crazyrouter's list prices whisper
        # by a token ratio): new-api bills them as prompt tokens, a thousand a minute of the
        # audio's whole seconds (its countAudioTokens), rounded half up.
        tokens = math.floor(math.ceil(usage.audio_seconds) * Fraction(1000, 60) + Fraction(1, 2))
        billed = usage._replace(input_tokens=tokens)
        return billed if adm.cost(billed) <= adm.cost(bound) else bound
    return usage


def _family(kind: str) -> str:
    return "tokens" if kind.startswith("tokens") else "spend" if kind.startswith("spend") else kind


def _token_headers(v: Verdict, now: float) -> list[tuple[bytes, bytes]]:
    if v.key_limit >= 0 and (v.limit < 0 or v.key_limit - v.key_used < v.limit - v.used):
        # The key's minute leaves less room: that is what binds this caller.
        v = replace(v, limit=v.key_limit, used=v.key_used, oldest_s=v.key_oldest_s)
    if v.limit < 0:
        return []
    reset = 0 if v.oldest_s < 0 else max(0, v.oldest_s + model.TOKEN_WINDOW_S - math.floor(now))
    return [
        (b"x-ratelimit-limit-tokens", b"%d" % v.limit),
        (b"x-ratelimit-remaining-tokens", b"%d" % max(0, v.limit - v.used)),
        (b"x-ratelimit-reset-tokens", _reset_text(reset)),
    ]


@functools.lru_cache(maxsize=256)
def _reset_text(seconds: int) -> bytes:
    # Within a one-minute window there are sixty of them.
    return model.duration_text(seconds).encode()
