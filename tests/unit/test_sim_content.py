import pytest

from gateway.sim.content import BLOCK, RangeNotSatisfiable, content_bytes, iter_content, parse_range
from gateway.sim.jobs import Job, render


def test_content_is_deterministic_and_sliceable() -> None:
    whole = content_bytes("job1", 0, 3 * BLOCK + 17)
    assert len(whole) == 3 * BLOCK + 17
    assert content_bytes("job1", 0, 3 * BLOCK + 17) == whole
    assert content_bytes("job1", BLOCK - 5, 2 * BLOCK + 3) == whole[BLOCK - 5 : 2 * BLOCK + 3]
    assert content_bytes("job2", 0, 100) != whole[:100]
    assert all(len(c) <= 64 * 1024 for c in iter_content("job1", 0, 10 * BLOCK))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-5", (95, 100)),
        ("bytes=90-500", (90, 100)),
        ("items=0-1", None),
        ("bytes=0-1,5-6", None),
        ("bytes=a-b", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-40", "bytes=-0"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def _job(behaviour: str = "normal") -> Job:
    return Job(
        id="video_1",
        key="k",
        model="sora-2",
        prompt="p",
        size="1280x720",
        seconds=8,
        started=0.0,
        created_at=1_700_000_000,
        behaviour=behaviour,
    )


@pytest.mark.parametrize(
    ("now", "page", "envelope", "openai"),
    [
        (0.05, "queued", "SUBMITTED", "queued"),
        (5.0, "processing", "IN_PROGRESS", "in_progress"),
        (11.0, "completed", "SUCCESS", "completed"),
    ],
)
def test_three_shapes(now: float, page: str, envelope: str, openai: str) -> None:
    job = _job()
    assert render(job, "page", now, 10, "http://s")["status"] == page
    assert render(job, "envelope", now, 10, "http://s")["data"]["status"] == envelope
    assert render(job, "openai", now, 10, "http://s")["status"] == openai


def test_completed_page_shape_has_video_object() -> None:
    body = render(_job(), "page", 11.0, 10, "http://s")
    assert body["video"] == {
        "url": "http://s/files/video_1.mp4",
        "duration": 8,
        "width": 1280,
        "height": 720,
    }
    env = render(_job(), "envelope", 11.0, 10, "http://s")["data"]
    assert env["result_url"] == "http://s/files/video_1.mp4"
    assert render(_job(), "openai", 11.0, 10, "http://s")["metadata"]["url"].endswith(".mp4")


def test_fail_and_never() -> None:
    assert render(_job("fail"), "openai", 11.0, 10, "x")["status"] == "failed"
    assert render(_job("fail"), "envelope", 11.0, 10, "x")["data"]["status"] == "FAILURE"
    never = render(_job("never"), "openai", 1e9, 10, "x")
    assert (never["status"], never["progress"]) == ("in_progress", 99)
