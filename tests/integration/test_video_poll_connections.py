"""A job's status poll is its team's call (its 429s are bounded like the team's other calls),
but it never counts against the team's upstream connections: a team whose downloads hold
them all (a caller who stops reading, a slow upstream) still sees its running jobs finish,
instead of every poll, the caller's and the reconciler's, being refused until the gateway's
deadline fails a job the upstream ran and billed. Found by an attack on b52c0cc."""

from __future__ import annotations

import threading

import httpx2

from gateway.sim.config import SimConfig
from tests.conftest import make_stack
from tests.integration.test_keypool_one_team import sdk
from tests.integration.test_videos_sdk import VIDEOS, upstream_job
from tests.servers import wait_for


def test_held_downloads_leave_the_teams_polls_their_way(redis_url: str) -> None:
    with make_stack(
        redis_url,
        key_ids=("k1",),
        sim=SimConfig(job_seconds=0.5),
        upstream={"max_connections_per_team": 2},
        videos={**VIDEOS, "deadline_seconds": 3600},
    ) as s:
        token = s.token(team="t")
        client = sdk(s, token)
        done = client.videos.create(prompt="a lighthouse at dusk", seconds="4")
        wait_for(
            lambda: client.videos.retrieve(done.id).status == "completed",
            timeout=10,
            interval=0.1,
            message="the first job never finished",
        )
        running = client.videos.create(prompt="a harbour at dawn", seconds="4")
        content = f"/v1/videos/{upstream_job(s, done.id)[1].upstream_id}/content"
        sim = s.sim_app.state.sim
        sim.add_fault(kind="slow", count=2, delay=4, path_prefix=content)

        def download() -> None:
            httpx2.get(
                f"{s.v1}/videos/{done.id}/content",
                headers={"Authorization": f"Bearer {token}"},
                timeout=15,
            )

        held = [threading.Thread(target=download) for _ in range(2)]
        for t in held:
            t.start()
        wait_for(  # both downloads hold their upstream connections
            lambda: sum(1 for r in sim.requests if r["path"] == content) == 2,
            timeout=5,
            interval=0.02,
            message="the downloads never reached the upstream",
        )
        sim_job = upstream_job(s, running.id)[0]
        wait_for(
            lambda: sim_job.phase(sim.clock(), sim.config.job_seconds)[0] == "completed",
            timeout=5,
            interval=0.05,
            message="the job never finished upstream",
        )
        assert client.videos.retrieve(running.id).status == "completed"
        for t in held:
            t.join()


def test_one_teams_polls_hold_no_more_than_its_share_of_upstream_connections(
    redis_url: str,
) -> None:
    """Polls once did not count at all, and a team has as many unfinished jobs as its quota
    allows: its jobs polled at once against a slow upstream held the whole connection pool,
    and every other team got 503. A poll has one connection past the team's share."""
    with make_stack(
        redis_url,
        key_ids=("k1", "k2"),
        sim=SimConfig(job_seconds=3600),
        upstream={"max_connections": 4, "max_connections_per_team": 2, "connect_timeout": 1},
        videos={**VIDEOS, "poll_interval_seconds": 5, "deadline_seconds": 3600},
    ) as s:
        noisy = sdk(s, s.token(team="noisy"))
        jobs = [noisy.videos.create(prompt="a lighthouse at dusk", seconds="4") for _ in range(4)]
        sim = s.sim_app.state.sim
        sim.add_fault(kind="slow", count=4, delay=6, path_prefix="/v1/videos/")
        before = len(sim.requests)

        seen: list[str] = []

        def poll(video_id: str) -> None:
            seen.append(noisy.videos.retrieve(video_id).status)

        threads = [threading.Thread(target=poll, args=(j.id,)) for j in jobs]
        for t in threads:
            t.start()
        wait_for(  # the team's polls, one per job, are all upstream at once
            lambda: (
                sum(1 for r in sim.requests[before:] if r["path"].startswith("/v1/videos/")) >= 3
            ),
            timeout=5,
            interval=0.02,
            message="the polls never reached the upstream",
        )
        try:
            with sdk(s, s.token(team="quiet")) as quiet:
                assert quiet.models.list().data  # another team still gets a connection
        finally:
            for t in threads:
                t.join()
        # Each caller got its job's last known state (a refused poll is tried again later).
        assert sorted(seen) == ["queued"] * len(jobs)
