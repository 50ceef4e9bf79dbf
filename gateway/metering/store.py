"""The metering scripts and the ledger's reads against Redis.

Like the quota store, no call is retried: a script whose reply was lost may have run. A lost
reservation reply leaves an estimate charged that nobody settles; it expires with its
reservation record, and the charge stays (the safe side of a budget).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.auth.api_keys import KeyScope
from gateway.errors import StoreUnavailable
from gateway.quota.model import RATE_WINDOW_MS, TOKEN_WINDOW_S
from gateway.quota.rate import RateCall
from gateway.store.batcher import ScriptBatcher
from gateway.store.keys import TEAMS, TeamKeys, reset_mark
from gateway.store.lua import script
from gateway.store.wire import Runs, bulk, encode_args


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    kind: str  # the limit that refused ('' when admitted)
    used: int
    limit: int  # -1: unlimited
    wait_s: int  # refused: seconds until it could fit (-1 never); admitted: -1
    oldest_s: int  # admitted: the oldest second counted in the minute (-1: none)
    # Admitted with a gateway key: the key's minute as above (limit -1: none or unlimited).
    key_limit: int = -1
    key_used: int = 0
    key_oldest_s: int = -1
    # The request rate's reply when the rate check was folded in (kind 'rate': it refused).
    rate: tuple[int, ...] = ()


# A gateway key's metered limits, in the order the reserve script takes them.
KEY_KINDS = ("tokens_per_minute", "spend_per_day", "spend_per_month")


def _key_buckets(k: TeamKeys, key_id: str, day: str, month: str) -> tuple[str, str, str]:
    c = k.key(key_id)
    return (c.tokens_minute, c.spend_day(day), c.spend_month(month))


def _buckets(k: TeamKeys, day: str, month: str) -> tuple[str, str, str, str]:
    """The team's metered buckets, in the order both scripts take them: tokens per second
    (hash), tokens day, spend day, spend month."""
    return (k.tokens_minute, k.tokens_day(day), k.spend_day(day), k.spend_month(month))


def _marks(k: TeamKeys, day: str, month: str) -> tuple[str, str, str, str]:
    """The reset generations of tokens day, spend day, spend month and the tokens hash."""
    return (
        reset_mark(k.tokens_day(day)),
        reset_mark(k.spend_day(day)),
        reset_mark(k.spend_month(month)),
        reset_mark(k.tokens_minute),
    )


def _remember(cache: dict[Any, tuple[str, ...]], key: Any, keys: tuple[str, ...]) -> None:
    if len(cache) >= 4096:  # teams and keys come from credentials: bounded
        cache.clear()
    cache[key] = keys


class ReserveCommand:
    """One team's reservation with its rate check folded in, for one day and month, encoded
    but for what differs between calls (its id, the times, the estimate, the tag, the rate-log
    member): building and encoding the whole call, and parsing the reservation's keys, was
    a quarter of what metering costs a call."""

    __slots__ = ("_call", "_head", "_mid", "_rate", "_submit", "_tags", "_tail")

    def __init__(
        self,
        head: bytes,
        call_prefix: str,
        mid: str,
        tags: str,
        rate: str,
        tail: str,
        submit: Callable[[bytes], asyncio.Future[Any]],
    ) -> None:
        self._head = head
        self._call = call_prefix
        self._mid = mid
        self._tags = tags
        self._rate = rate
        self._tail = tail
        self._submit = submit

    def send(
        self,
        call_id: str,
        *,
        now_s: int,
        tokens: int,
        spend: int,
        tag: str,
        open_ended: bool,
        now_ms: int,
        member: str,
    ) -> asyncio.Future[Any]:
        """Send the reservation (the future holds the raw reply); raises StoreUnavailable at
        once while Redis is known down. The id, tag and member are ASCII (a tag is checked
        for it, ids are made here): their lengths in characters are in bytes."""
        key = self._call + call_id
        a, b, c, ms = str(now_s), str(tokens), str(spend), str(now_ms)
        flags = "rx" if open_ended else "r"
        text = (
            f"${len(key)}\r\n{key}\r\n${len(a)}\r\n{a}\r\n${len(b)}\r\n{b}\r\n"
            f"${len(c)}\r\n{c}\r\n{self._mid}${len(tag)}\r\n{tag}\r\n{self._tags}"
            f"${len(flags)}\r\n{flags}\r\n${len(ms)}\r\n{ms}\r\n{self._rate}"
            f"${len(member)}\r\n{member}\r\n{self._tail}"
        )
        return self._submit(self._head + text.encode())


class MeterStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        client: object = redis
        cluster = isinstance(client, RedisCluster)

        def load(name: str) -> Callable[..., Awaitable[Any]]:
            source = script("gateway.quota", name)
            # redis-py's cluster pipelines refuse EVALSHA: there, each call is its own.
            if cluster:
                return redis.register_script(source)
            # The last key names the call's own reservation; the others repeat.
            return ScriptBatcher(redis, source, varying_keys=1)

        self._reserve = load("meter_reserve")
        self._settle = load("meter_settle")
        self._cancel = load("meter_cancel")
        # With batchers, the arguments that repeat between calls are encoded once.
        self._runs = None if cluster else Runs()
        self._known: set[str] = set()
        # The keys before the call's own, by team, day, month and key: building a dozen names
        # per call was a measurable share of a metered call's CPU.
        self._reserve_keys: dict[
            tuple[str, str, str, tuple[str, ...], str | None], tuple[str, ...]
        ] = {}
        self._settle_keys: dict[tuple[str, str, str, str | None], tuple[str, ...]] = {}

    async def aclose(self) -> None:
        for batcher in (self._reserve, self._settle, self._cancel):
            wire = getattr(batcher, "wire", None)
            if wire is not None:
                await wire.aclose()

    async def reserve(
        self,
        k: TeamKeys,
        call_id: str,
        *,
        now_s: int,
        tokens: int,
        spend: int,
        defaults: Sequence[int],
        day: str,
        month: str,
        ttls: tuple[int, int, int],
        tag: str,
        max_tags: int,
        key: KeyScope | None = None,
        rate: RateCall | None = None,
        open_ended: bool = False,
    ) -> Verdict:
        """Reserve one call's estimate (``open_ended``: its answer may cost more, so a spend
        window already at its limit refuses it even when the estimate is nothing)."""
        flags = ("r" if rate else "") + ("q" if rate and rate.key else "") + ("k" if key else "")
        flags += "x" if open_ended else ""
        fixed: tuple[str | int, ...] = (
            *defaults,
            day,
            month,
            *ttls,
            tag,
            max_tags,
            TOKEN_WINDOW_S,
            flags,
        )
        args: list[str | int] = [now_s, tokens, spend, *fixed]
        # The rate check's arguments: now_ms and the member vary, the rest repeat.
        rate_args: tuple[str | int, ...] = rate.args if rate is not None else ()
        limits: tuple[int, ...] = (
            tuple(key.limit(kind) for kind in KEY_KINDS) if key is not None else ()
        )
        args += [*rate_args, *limits]
        keys = (*self._reserve_head(k, day, month, rate, key), k.metered_call(call_id))
        runs = self._runs
        if runs is None:
            reply = await self._reserve(keys=keys, args=args)
        else:
            parts = [bulk(now_s), bulk(tokens), bulk(spend), runs(fixed)]
            if rate_args:
                now_ms, *defaults_rate, member = rate_args[:5]
                parts += [bulk(int(now_ms)), runs((*defaults_rate,))]
                parts += [encode_args((member,)), runs((*rate_args[5:], *limits))]
            elif limits:
                parts.append(runs(limits))
            encoded = b"".join(parts)
            reply = await self._reserve(keys=keys, args=args, encoded=encoded)
        return await self._verdict(k.team, reply)

    def reserve_command(
        self,
        k: TeamKeys,
        rate: RateCall,
        rate_defaults: Sequence[int],
        *,
        defaults: Sequence[int],
        day: str,
        month: str,
        ttls: tuple[int, int, int],
        max_tags: int,
    ) -> ReserveCommand | None:
        """``reserve``'s call for a team without a gateway key's own limits, with the rate
        check folded in, encoded but for what differs between calls (``ReserveCommand``):
        None when it cannot go on the dedicated connection (TLS, a cluster) or the team's
        name is not ASCII (its keys' lengths in bytes are not their lengths in characters)."""
        batcher = self._reserve
        if not isinstance(batcher, ScriptBatcher) or batcher.wire is None:
            return None
        call_prefix = k.metered_call("")
        if not call_prefix.isascii():
            return None
        head = self._reserve_head(k, day, month, rate, None)
        # now, tokens, spend; 4 defaults, day, month, 3 ttls; tag; max tags, window; flags;
        # the rate's now_ms, 3 defaults, member, window
        mid = encode_args((*defaults, day, month, *ttls)).decode()
        return ReserveCommand(
            batcher.head(head, 22, more_keys=1),
            call_prefix,
            mid,
            encode_args((max_tags, TOKEN_WINDOW_S)).decode(),
            encode_args(tuple(rate_defaults)).decode(),
            encode_args((RATE_WINDOW_MS,)).decode(),
            batcher.submit_command,
        )

    async def reserve_sent(self, team: str, reply: Awaitable[Any]) -> Verdict:
        """``reserve``, for a call a ``ReserveCommand`` sent."""
        return await self._verdict(team, await reply)

    async def _verdict(self, team: str, reply: Any) -> Verdict:
        text, _, rated = _text(reply).partition("|")
        if text == "C":  # given up on before it ran (``cancel``); its caller is long gone
            raise StoreUnavailable()
        reply = text.split(",")
        folded = tuple(map(int, rated.split(","))) if rated else ()
        if team not in self._known:
            # Once per team and process: the admin usage report lists teams from this set.
            await self.redis.sadd(TEAMS, team)
            self._known.add(team)
        if reply[0] == "R":
            return Verdict(False, "rate", 0, -1, -1, -1, rate=folded)
        if reply[0] == "1":
            v = Verdict(True, "", int(reply[2]), int(reply[1]), -1, int(reply[3]), rate=folded)
            if len(reply) == 7:
                v = replace(
                    v, key_limit=int(reply[4]), key_used=int(reply[5]), key_oldest_s=int(reply[6])
                )
            return v
        return Verdict(
            False, reply[1], int(reply[2]), int(reply[3]), int(reply[4]), -1, rate=folded
        )

    async def settle(
        self,
        k: TeamKeys,
        call_id: str,
        *,
        tokens: int,
        spend: int,
        day: str,
        month: str,
        ledger: Mapping[str, int],
        ledger_ttl: int,
        ttls: tuple[int, int],
        key_id: str | None = None,
    ) -> bool:
        """``ttls``: a day's and a month's bucket, for one the settlement starts (a charge
        above an estimate of nothing)."""
        keys = (*self._settle_head(k, day, month, key_id), k.metered_call(call_id))
        args: list[str | int] = [tokens, spend, day, month, ledger_ttl, *ttls]
        runs = self._runs
        if runs is None:
            for name, amount in ledger.items():
                if amount:
                    args += [name, amount]
            return int(await self._settle(keys=keys, args=args)) == 1
        # With a batcher only ``encoded`` is sent: ``args`` names how many there are.
        parts = [bulk(tokens), bulk(spend), runs((day, month, ledger_ttl, *ttls))]
        for name, amount in ledger.items():
            if amount:
                parts += [runs((name,)), bulk(amount)]
                args += [name, amount]
        encoded = b"".join(parts)
        return int(await self._settle(keys=keys, args=args, encoded=encoded)) == 1

    async def cancel(self, k: TeamKeys, call_id: str, *, ttl: int) -> bool:
        """For a reservation whose reply was lost: True when it ran (settle it), False when it
        had not, and now never will."""
        return int(await self._cancel(keys=(k.metered_call(call_id),), args=(ttl,))) == 1

    def _reserve_head(
        self, k: TeamKeys, day: str, month: str, rate: RateCall | None, key: KeyScope | None
    ) -> tuple[str, ...]:
        """The reservation's keys before the call's own (see meter_reserve.lua)."""
        # The rate check's keys are its own (its clock was read apart from this one's, so its
        # day may be another at midnight): part of what the cached tuple is found by.
        cache_key = (k.team, day, month, rate.keys if rate else (), key.id if key else None)
        keys = self._reserve_keys.get(cache_key)
        if keys is None:
            keys = (k.limits, *_buckets(k, day, month), k.tags(day), *_marks(k, day, month))
            if rate is not None:
                keys += rate.keys
            if key is not None:
                keys += _key_buckets(k, key.id, day, month)
            _remember(self._reserve_keys, cache_key, keys)
        return keys

    def _settle_head(
        self, k: TeamKeys, day: str, month: str, key_id: str | None
    ) -> tuple[str, ...]:
        """The settlement's keys before the call's own (see meter_settle.lua)."""
        cache_key = (k.team, day, month, key_id)
        keys = self._settle_keys.get(cache_key)
        if keys is None:
            keys = (*_buckets(k, day, month), k.ledger(day), *_marks(k, day, month))
            if key_id is not None:
                keys += _key_buckets(k, key_id, day, month)
            _remember(self._settle_keys, cache_key, keys)
        return keys

    async def ledger_days(self, k: TeamKeys, days: Sequence[str]) -> list[dict[str, int]]:
        """The team's ledger hash for each day (empty where nothing was spent)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(k.ledger(day))
            replies = await pipe.execute()
        return [{_text(a): int(b) for a, b in r.items()} for r in replies]

    async def reservation(self, k: TeamKeys, call_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(k.metered_call(call_id))
        return {_text(a): _text(b) for a, b in raw.items()}

    async def teams(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers(TEAMS))
