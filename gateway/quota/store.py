"""The quota scripts and plain reads against Redis. No retries: a script whose reply was lost
may have run, and running it again could charge twice (reservations are keyed by job id, so a
replay of the same reservation is harmless, but a rate count is not)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis

from gateway.quota import scripts
from gateway.quota.keys import TEAMS, TeamKeys


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class QuotaStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._rate = redis.register_script(scripts.RATE)
        self._reserve = redis.register_script(scripts.RESERVE)
        self._settle = redis.register_script(scripts.SETTLE)
        self._renew = redis.register_script(scripts.RENEW)
        self._mark = redis.register_script(scripts.MARK)

    async def rate(
        self,
        k: TeamKeys,
        *,
        now_ms: int,
        member: str,
        defaults: Sequence[int],
        day: str,
        month: str,
        window_ms: int,
        count: bool = True,
    ) -> list[int]:
        keys = [k.limits, k.rate, k.video_day(day), k.video_month(month)]
        args = [now_ms, *defaults, member, window_ms, "1" if count else "0"]
        return [int(x) for x in cast(list[Any], await self._rate(keys=keys, args=args))]

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
    ) -> tuple[bool, str, int, int]:
        keys = [
            k.limits,
            k.slots,
            k.video_day(day),
            k.video_month(month),
            k.spend_month(month),
            k.reservation(job_id),
            k.open,
        ]
        args: list[str | int] = [now_ms, job_id, video_units, spend_units, lease_ms]
        args += [*defaults, day, month, *ttls]
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
        self, k: TeamKeys, job_id: str, outcome: str, *, now_ms: int, day: str, month: str
    ) -> bool:
        keys = [
            k.reservation(job_id),
            k.slots,
            k.video_day(day),
            k.video_month(month),
            k.spend_month(month),
            k.open,
        ]
        reply = await self._settle(keys=keys, args=[job_id, outcome, now_ms, day, month])
        return int(cast(int, reply)) == 1

    async def mark_unknown(self, k: TeamKeys, job_id: str) -> None:
        # HSETNX-like: only on a reservation that exists (a plain HSET would create one).
        await self._mark(keys=[k.reservation(job_id)], args=["outcome", "unknown"])

    async def renew(self, k: TeamKeys, job_id: str, expires_ms: int) -> None:
        await self._renew(keys=[k.slots], args=[job_id, expires_ms])

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
            rate, slots, vd, vm, sp = await pipe.execute()
        return {
            "requests_per_minute": _int(rate),
            "concurrent_jobs": _int(slots),
            "video_seconds_per_day": _int(vd),
            "video_seconds_per_month": _int(vm),
            "spend_per_month": _int(sp),
        }

    async def overrides(self, k: TeamKeys) -> dict[str, int]:
        raw = await self.redis.hgetall(k.limits)
        return {_text(a): int(b) for a, b in raw.items()}

    async def set_overrides(
        self, k: TeamKeys, stored: Mapping[str, int], remove: Sequence[str]
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            if remove:
                pipe.hdel(k.limits, *remove)
            if stored:
                pipe.hset(k.limits, mapping={a: b for a, b in stored.items()})
            pipe.sadd(TEAMS, k.team)
            await pipe.execute()
