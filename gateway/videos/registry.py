"""The video job registry in Redis: the gateway's own ids, who owns them, and their last state.

    gw:job:{<id>}          hash: the job record (upstream id and key id never leave the gateway)
    gw:job:{<id>}:poll     a short lock: at most one upstream status call per job per interval
    gw:{team:<t>}:videos   sorted set of the team's visible jobs, scored by creation time (ms)

Ids are opaque (``video_`` + 32 hex digits) and checked for shape before any look-up.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, cast

from redis.asyncio import Redis

from gateway.store import keys
from gateway.store.lua import script

_ID = re.compile(r"^video_[0-9a-f]{32}$")
TERMINAL = ("completed", "failed")


def new_video_id() -> str:
    return "video_" + secrets.token_hex(16)


def valid_video_id(video_id: str) -> bool:
    return _ID.match(video_id) is not None


def job_key(video_id: str) -> str:
    return keys.job(video_id)


def team_index_key(team: str) -> str:
    return keys.TeamKeys(team).videos


@dataclass
class Job:
    id: str
    team: str
    user: str
    upstream_id: str
    key_id: str
    model: str
    size: str
    seconds: int
    prompt: str | None
    created_at: int  # seconds, as the SDK shows it
    created_ms: int
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    remixed_from: str | None = None
    deleted: bool = False

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self) -> dict[Any, Any]:  # redis-py's stubs want loose key types
        out: dict[Any, Any] = {}
        for k, v in asdict(self).items():
            if v is None:
                continue
            out[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Job:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.type in ("int", "int | None"):
                kwargs[f.name] = int(value)
            elif f.type == "bool":
                kwargs[f.name] = value == "1"
            else:
                kwargs[f.name] = value
        return cls(**kwargs)


class JobRegistry:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._update = redis.register_script(script("gateway.videos", "job_update"))

    async def add(self, job: Job) -> None:
        # The record first, then the index: a crash in between leaves an unlisted record,
        # never a listed id without a record.
        await self._redis.hset(job_key(job.id), mapping=job.to_hash())
        await self._redis.zadd(team_index_key(job.team), {job.id: job.created_ms})

    async def get(self, video_id: str) -> Job | None:
        if not valid_video_id(video_id):
            return None
        raw = await self._redis.hgetall(job_key(video_id))
        return Job.from_hash(raw) if raw else None

    async def owned(self, video_id: str, team: str) -> Job | None:
        """The job if this team owns it and has not deleted it; else None (never say which)."""
        job = await self.get(video_id)
        if job is None or job.team != team or job.deleted:
            return None
        return job

    async def update(self, job: Job, **changes: Any) -> Job:
        """Write ``changes`` and answer the job as it now stands. A job whose stored record
        has already ended is left as it is and answered as stored: a poll in flight while
        another caller, or the deadline, ended the job (and settled its charge) must act on
        that end, never write another over it (a refunded job shown completed and served)."""
        wanted = replace(job, **changes)
        mapping = {k: v for k, v in wanted.to_hash().items() if k in changes}
        removed = [k for k, v in changes.items() if v is None]
        args = [len(mapping), *(x for kv in mapping.items() for x in kv), *removed]
        reply = await self._update(keys=[job_key(job.id)], args=args)
        if reply == 1:
            for k, v in changes.items():
                setattr(job, k, v)
            return job
        flat = cast(list[bytes], reply)
        return Job.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))

    async def delete(self, job: Job) -> None:
        await self._redis.hset(job_key(job.id), "deleted", "1")
        await self._redis.zrem(team_index_key(job.team), job.id)
        job.deleted = True

    async def first_to_see_the_end(self, video_id: str) -> bool:
        """True for exactly one caller, across replicas: who reports a job's end."""
        return bool(await self._redis.hsetnx(job_key(video_id), "end_reported", "1"))

    async def claim_poll(self, video_id: str, interval_ms: int) -> bool:
        """True for exactly one caller per job per interval, across replicas."""
        if interval_ms <= 0:
            return True
        return bool(await self._redis.set(keys.job_poll(video_id), "1", nx=True, px=interval_ms))

    async def page(
        self, team: str, *, after: str | None, limit: int, descending: bool
    ) -> tuple[list[Job], bool]:
        """One page of the team's jobs after ``after`` (exclusive), and whether more follow."""
        index = team_index_key(team)
        start = 0
        if after is not None:
            rank = await (self._redis.zrevrank if descending else self._redis.zrank)(index, after)
            if rank is None:
                return [], False
            start = int(cast(int, rank)) + 1
        rng = self._redis.zrevrange if descending else self._redis.zrange
        ids = [bytes(i).decode() for i in cast(list[bytes], await rng(index, start, start + limit))]
        more = len(ids) > limit
        async with self._redis.pipeline(transaction=False) as pipe:
            for vid in ids[:limit]:
                pipe.hgetall(job_key(vid))
            rows = await pipe.execute()
        jobs = [Job.from_hash(r) for r in rows if r]
        return [j for j in jobs if not j.deleted], more
