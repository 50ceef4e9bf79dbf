"""The quota scripts and plain reads against Redis. No retries: a script whose reply was lost
may have run, and running it again could charge twice (reservations are keyed by job id, so a
replay of the same reservation is harmless, but a rate count is not)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.auth.api_keys import KeyScope
from gateway.quota.model import MONTH_TTL_S, TOKEN_WINDOW_S
from gateway.store.batcher import ScriptBatcher
from gateway.store.keys import TEAMS, TeamKeys, reset_mark
from gateway.store.lua import script
from gateway.store.wire import encode_args


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def rate_reply(reply: Any) -> list[int]:
    """The rate script's reply as its numbers."""
    # int() reads ASCII digits from bytes as well: the wire's reply needs no decoding.
    return list(map(int, reply.split(b"," if isinstance(reply, bytes) else ",")))


class RateCommand:
    """One team's rate-check command, encoded but for the two arguments that differ from
    request to request (the time and the log member): building and encoding the whole of it
    was a third of what a check costs the gateway."""

    __slots__ = ("_head", "_mid", "_submit", "_tail")

    def __init__(
        self, head: bytes, mid: str, tail: str, submit: Callable[[bytes], asyncio.Future[Any]]
    ) -> None:
        self._head = head
        self._mid = mid
        self._tail = tail
        self._submit = submit

    def send(self, now_ms: int, member: str) -> asyncio.Future[Any]:
        """Send this check for ``now_ms`` and ``member`` as ``QuotaStore.start_rate`` sends
        its call (the future holds the raw reply); raises StoreUnavailable at once while
        Redis is known down."""
        ms = str(now_ms)
        # The member is ASCII (pid, hex, counter): a length in characters is one in bytes.
        text = f"${len(ms)}\r\n{ms}\r\n{self._mid}${len(member)}\r\n{member}\r\n{self._tail}"
        return self._submit(self._head + text.encode())


# A gateway key's video limits, in the order the reserve script takes them.
_KEY_VIDEO_KINDS = ("concurrent_jobs", "spend_per_day", "spend_per_month")


def _key_counters(k: TeamKeys, key_id: str, day: str, month: str) -> list[str]:
    c = k.key(key_id)
    return [c.slots, c.spend_day(day), c.spend_month(month)]


class QuotaStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        client: object = redis
        # redis-py's cluster pipelines refuse EVALSHA: on a cluster, each check is its own call.
        self._rate: Callable[..., Awaitable[Any]] = redis.register_script(
            script("gateway.quota", "rate")
        )
        self._rate_batcher = (
            None
            if isinstance(client, RedisCluster)
            else ScriptBatcher(redis, script("gateway.quota", "rate"))
        )
        self._reserve = redis.register_script(script("gateway.quota", "reserve"))
        self._settle = redis.register_script(script("gateway.quota", "settle"))
        self._renew = redis.register_script(script("gateway.quota", "renew"))
        self._mark = redis.register_script(script("gateway.quota", "mark"))
        self._rate_keys: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self._rate_tasks: set[asyncio.Future[Any]] = set()

    async def aclose(self) -> None:
        """Close this store's dedicated rate-check connection (the client has its owner)."""
        if self._rate_batcher is not None and self._rate_batcher.wire is not None:
            await self._rate_batcher.wire.aclose()

    def rate_keys(self, k: TeamKeys, day: str, month: str, key_id: str | None) -> tuple[str, ...]:
        """The rate decision's keys after the limits hash: rate log, video-seconds day and
        month buckets, and a gateway key's rate log."""
        keys = self._rate_keys.get((k.team, day, month))
        if keys is None:  # three formatted names per request were a measurable share
            if len(self._rate_keys) >= 4096:
                self._rate_keys.clear()
            keys = (k.rate, k.video_day(day), k.video_month(month))
            self._rate_keys[(k.team, day, month)] = keys
        return keys if key_id is None else (*keys, k.key(key_id).rate)

    def rate_command(
        self, k: TeamKeys, keys: Sequence[str], defaults: Sequence[int], window_ms: int
    ) -> RateCommand | None:
        """The rate script's call for ``rate_keys`` (no gateway key), counting one request,
        with the time and member left to fill in (``RateCommand.send``): None when the check cannot
        go on the dedicated connection (TLS, a cluster), and ``start_rate`` takes it."""
        batcher = self._rate_batcher
        if batcher is None or batcher.wire is None:
            return None
        d_rpm, d_day, d_month = defaults
        return RateCommand(
            batcher.head((k.limits, *keys), 7),
            encode_args((d_rpm, d_day, d_month)).decode(),
            encode_args((window_ms, "1")).decode(),  # 1: count this request
            batcher.submit_command,
        )

    def start_rate(
        self, k: TeamKeys, keys: Sequence[str], args: Sequence[str | int]
    ) -> asyncio.Future[Any]:
        """The rate script's call for ``rate_keys`` and the arguments now_ms, default rpm,
        default video day, default video month, member, window_ms (and a key's rpm). Sent
        before this returns when the rate connection is idle, else with this loop turn's other
        checks; its future holds the raw reply for ``rate_reply``. Raises StoreUnavailable at
        once while Redis is known down."""
        full_keys = (k.limits, *keys)
        argv = [*args[:6], "1", *args[6:]]  # 1: count this request
        if self._rate_batcher is not None:
            return self._rate_batcher.submit(full_keys, argv)
        task = asyncio.ensure_future(self._rate(keys=full_keys, args=argv))
        self._rate_tasks.add(task)  # held until done, even by a caller that stopped waiting
        task.add_done_callback(self._rate_tasks.discard)
        return task

    async def reserve(
        self,
        k: TeamKeys,
        job_id: str,
        *,
        now_ms: int,
        video_units: int,
        spend_units: int,
        lease_ms: int,
        defaults: Sequence[int],
        day: str,
        month: str,
        ttls: tuple[int, int, int],
        ledger_prefix: str = "",
        raw_seconds_units: int = 0,
        key: KeyScope | None = None,
    ) -> tuple[bool, str, int, int]:
        keys = [
            k.limits,
            k.slots,
            k.video_day(day),
            k.video_month(month),
            k.spend_month(month),
            k.reservation(job_id),
            k.open,
            reset_mark(k.video_day(day)),
            reset_mark(k.video_month(month)),
            reset_mark(k.spend_month(month)),
            k.spend_day(day),
            reset_mark(k.spend_day(day)),
        ]
        # defaults: concurrent, video day, video month, spend month, spend day
        args: list[str | int] = [now_ms, job_id, video_units, spend_units, lease_ms]
        args += [*defaults[:4], day, month, *ttls, defaults[4], ledger_prefix, raw_seconds_units]
        if key is not None and key.limits_any(_KEY_VIDEO_KINDS):
            keys += _key_counters(k, key.id, day, month)
            args += [key.id, *(key.limit(kind) for kind in _KEY_VIDEO_KINDS)]
        reply = cast(list[Any], await self._reserve(keys=keys, args=args))
        kind = _text(reply[1])
        if reply[0] == 1:
            await self.redis.sadd(TEAMS, k.team)
            return True, kind, 0, 0
        return False, kind, int(reply[2]), int(reply[3])

    async def reservation(self, k: TeamKeys, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(k.reservation(job_id))
        return {_text(a): _text(b) for a, b in raw.items()}

    async def settle(
        self,
        k: TeamKeys,
        job_id: str,
        outcome: str,
        *,
        now_ms: int,
        day: str,
        month: str,
        ledger_ttl: int = 400 * 86_400,
        key_id: str | None = None,
    ) -> bool:
        buckets = [k.video_day(day), k.video_month(month), k.spend_month(month)]
        keys = [
            k.reservation(job_id),
            k.slots,
            *buckets,
            k.open,
            *(reset_mark(b) for b in buckets),
            k.spend_day(day),
            reset_mark(k.spend_day(day)),
            k.ledger(day),
        ]
        if key_id:
            keys += _key_counters(k, key_id, day, month)
        reply = await self._settle(
            keys=keys, args=[job_id, outcome, now_ms, day, month, ledger_ttl]
        )
        return int(cast(int, reply)) == 1

    async def open_count(self, k: TeamKeys) -> int:
        return int(await self.redis.zcard(k.open))

    async def mark_unknown(self, k: TeamKeys, job_id: str) -> None:
        # HSETNX-like: only on a reservation that exists (a plain HSET would create one).
        await self._mark(keys=[k.reservation(job_id)], args=["outcome", "unknown"])

    async def mark_sent(self, k: TeamKeys, job_id: str) -> None:
        await self._mark(keys=[k.reservation(job_id)], args=["outcome", "sent"])

    async def renew(self, k: TeamKeys, job_id: str, expires_ms: int, now_ms: int) -> None:
        keys = [k.slots, k.open]
        # A job made with a gateway key holds a slot of that key's too (rare: read it here).
        key_id = await self.redis.hget(k.reservation(job_id), "kid")
        if key_id:
            keys.append(k.key(_text(key_id)).slots)
        await self._renew(keys=keys, args=[job_id, expires_ms, now_ms])

    async def slot_holders(self, k: TeamKeys) -> list[str]:
        return [_text(m) for m in await self.redis.zrange(k.slots, 0, -1)]

    async def is_open(self, k: TeamKeys, job_ids: Sequence[str]) -> list[bool]:
        scores = await self.redis.zmscore(k.open, list(job_ids)) if job_ids else []
        return [s is not None for s in scores]

    async def drop_slots(self, k: TeamKeys, job_ids: Sequence[str]) -> int:
        return int(await self.redis.zrem(k.slots, *job_ids)) if job_ids else 0

    async def drop_open(self, k: TeamKeys, job_ids: Sequence[str]) -> int:
        return int(await self.redis.zrem(k.open, *job_ids)) if job_ids else 0

    async def open_jobs(self, k: TeamKeys, older_than_ms: int, limit: int) -> list[str]:
        ids = await self.redis.zrangebyscore(k.open, "-inf", older_than_ms, start=0, num=limit)
        return [_text(i) for i in ids]

    async def teams(self) -> list[str]:
        members = await self.redis.smembers(TEAMS)
        return sorted(_text(m) for m in members)

    async def usage(
        self, k: TeamKeys, *, now_ms: int, day: str, month: str, window_ms: int
    ) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(k.rate, now_ms - window_ms + 1, "+inf")
            pipe.zcount(k.slots, now_ms + 1, "+inf")
            pipe.get(k.video_day(day))
            pipe.get(k.video_month(month))
            pipe.get(k.spend_month(month))
            pipe.zrangebyscore(k.rate, now_ms - window_ms + 1, "+inf", 0, 1, withscores=True)
            pipe.hgetall(k.tokens_minute)
            pipe.get(k.tokens_day(day))
            pipe.get(k.spend_day(day))
            rate, slots, vd, vm, sp, oldest, tpm, td, sd = await pipe.execute()
        since = now_ms // 1000 - TOKEN_WINDOW_S
        seconds = {int(a): int(b) for a, b in tpm.items() if int(a) > since}
        return {
            "tokens_reset_ms": (min(seconds) + TOKEN_WINDOW_S) * 1000 if seconds else 0,
            "tokens_per_minute": sum(seconds.values()),
            "tokens_per_day": _int(td),
            "spend_per_day": _int(sd),
            # When the oldest request in the window leaves it (0: the window is empty).
            "rate_reset_ms": int(oldest[0][1]) + window_ms if oldest else 0,
            "requests_per_minute": _int(rate),
            "concurrent_jobs": _int(slots),
            "video_seconds_per_day": _int(vd),
            "video_seconds_per_month": _int(vm),
            "spend_per_month": _int(sp),
        }

    async def overrides(self, k: TeamKeys) -> dict[str, int]:
        raw = await self.redis.hgetall(k.limits)
        return {_text(a): int(b) for a, b in raw.items()}

    # -- administration (the admin API) ---------------------------------------------------------

    async def write_overrides(
        self, k: TeamKeys, stored: Mapping[str, int], *, replace: bool
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Merge (or, with ``replace``, swap in) overrides; answers (before, after).

        Both snapshots come from the same MULTI as the write, so the audit log shows exactly
        what this change replaced even when two admins race."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.limits)
            if replace:
                pipe.delete(k.limits)
            if stored:
                pipe.hset(k.limits, mapping={a: b for a, b in stored.items()})
            pipe.hgetall(k.limits)
            replies = await pipe.execute()
        # A separate call: gw:teams lives in another Cluster slot than the team's keys. Only
        # teams left with overrides: clearing a mistyped name must not list it forever.
        if replies[-1]:
            await self.redis.sadd(TEAMS, k.team)
        return self._parse_overrides(replies[0]), self._parse_overrides(replies[-1])

    async def reset_counters(
        self,
        k: TeamKeys,
        *,
        rate_since_ms: int | None,
        buckets: Sequence[str],
        hashes: Mapping[str, int] | None = None,
    ) -> tuple[int, list[int]]:
        """Delete the rate log (when ``rate_since_ms`` is given) and the ``buckets`` in one
        MULTI; answers what they held (requests since then, each bucket's value; a bucket in
        ``hashes`` is per-second counts, of which the seconds after the one it maps to count).

        Each bucket also starts a new reset generation: a job reserved before the reset and
        refunded after it must not take its refund out of what later jobs were charged."""
        hashes = hashes or {}
        async with self.redis.pipeline(transaction=True) as pipe:
            if rate_since_ms is not None:
                pipe.zcount(k.rate, rate_since_ms, "+inf")
                pipe.delete(k.rate)
            for b in buckets:
                if b in hashes:  # per-second counts: what it held is the live seconds' sum
                    pipe.hgetall(b)
                else:
                    pipe.get(b)
            if buckets:
                pipe.delete(*buckets)
            for b in buckets:
                # A new generation: reservations from before it are no longer refunded here.
                pipe.incr(reset_mark(b))
                pipe.expire(reset_mark(b), MONTH_TTL_S)
            replies = await pipe.execute()
        rate = 0
        if rate_since_ms is not None:
            rate = _int(replies[0])
            replies = replies[2:]
        held = [
            sum(int(v) for s, v in value.items() if int(s) > hashes[b])
            if b in hashes
            else _int(value)
            for b, value in zip(buckets, replies[: len(buckets)], strict=True)
        ]
        return rate, held

    async def teams_with_overrides(self, scan_count: int = 1000) -> list[str]:
        """Teams whose limits hash exists, however it was written (the admin API also adds
        them to gw:teams, but a hand-made override must still be listed)."""
        # Derived from TeamKeys so that a change of key layout cannot leave this behind.
        blank = TeamKeys("").limits  # gw:{team:}:limits
        prefix, suffix = blank[: blank.index("}")], blank[blank.index("}") :]
        out: set[str] = set()
        async for key in self.redis.scan_iter(match=f"{prefix}*{suffix}", count=scan_count):
            name = _text(key)
            if name.startswith(prefix) and name.endswith(suffix):
                out.add(name[len(prefix) : -len(suffix)])
        return sorted(out)

    @staticmethod
    def _parse_overrides(raw: Mapping[Any, Any]) -> dict[str, int]:
        return {_text(a): int(b) for a, b in raw.items()}
