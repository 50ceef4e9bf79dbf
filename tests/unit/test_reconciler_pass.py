"""One reconciler pass over every team: a team whose jobs cannot be reconciled (an upstream
answer nothing foresaw) is logged and skipped, and the teams after it are still reconciled;
Redis gone ends the pass."""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis.asyncio import Redis

from gateway.errors import StoreUnavailable
from gateway.videos.reconciler import Reconciler, Report


class Teams:
    async def teams_seen(self) -> list[str]:
        return ["a", "bad", "c"]


def reconciler(fail: BaseException, seen: list[str]) -> Reconciler:
    r = Reconciler(
        Redis(),
        cast(Any, None),
        cast(Any, Teams()),
        cast(Any, None),
        interval_seconds=1,
        idle_seconds=1,
        orphan_seconds=1,
        clock=lambda: 1_790_000_000.0,
    )

    async def team(name: str, now_ms: int, report: Report) -> None:
        if name == "bad":
            raise fail
        seen.append(name)
        report.settled += 1

    r._team = team  # type: ignore[method-assign, assignment]
    return r


async def test_a_team_that_fails_is_skipped_and_the_others_reconciled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    report = await reconciler(OverflowError("cannot convert float infinity"), seen).run_once()
    assert seen == ["a", "c"]
    assert (report.settled, report.failed_teams) == (2, 1)
    assert "skipped team 'bad'" in caplog.text


async def test_redis_gone_ends_the_pass() -> None:
    seen: list[str] = []
    with pytest.raises(StoreUnavailable):
        await reconciler(StoreUnavailable(), seen).run_once()
    assert seen == ["a"]
