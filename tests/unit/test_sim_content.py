"""The simulator's generated video bodies and its Range parsing (pure)."""

import hashlib

import pytest

from gateway.sim.content import (
    BLOCK,
    RangeNotSatisfiable,
    content_bytes,
    iter_content,
    parse_range,
)


def test_content_is_deterministic_and_any_slice_matches_the_whole() -> None:
    size = 3 * BLOCK + 17
    whole = content_bytes("job1", 0, size)
    assert len(whole) == size
    assert content_bytes("job1", 0, size) == whole
    for start, end in [(0, 1), (BLOCK - 5, 2 * BLOCK + 3), (BLOCK, 2 * BLOCK), (size - 1, size)]:
        assert content_bytes("job1", start, end) == whole[start:end]
    assert content_bytes("job1", 10, 10) == b""


def test_content_differs_per_job_and_never_repeats_a_block() -> None:
    assert content_bytes("job1", 0, 4096) != content_bytes("job2", 0, 4096)
    blocks = [content_bytes("job1", i * BLOCK, (i + 1) * BLOCK) for i in range(50)]
    assert len(set(blocks)) == 50  # a resume off by whole blocks would be caught
    assert hashlib.sha256(b"".join(blocks)).digest() != hashlib.sha256(blocks[0] * 50).digest()


def test_content_is_generated_in_bounded_chunks() -> None:
    chunks = iter_content("job1", 123, 10 * BLOCK + 7)
    sizes = [len(c) for c in chunks]
    assert max(sizes) <= BLOCK
    assert sum(sizes) == 10 * BLOCK + 7 - 123


def test_huge_bodies_are_lazy() -> None:
    gib = 1 << 30
    first = next(iter_content("big", 0, 4 * gib))  # a whole body in memory would be 4 GiB
    assert len(first) == BLOCK
    tail = content_bytes("big", 4 * gib - 10, 4 * gib)
    assert len(tail) == 10


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", (0, 10)),
        ("bytes=0-0", (0, 1)),
        ("bytes=10-", (10, 100)),
        ("bytes=99-", (99, 100)),
        ("bytes=-5", (95, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=90-500", (90, 100)),
        ("Bytes = 1-2", (1, 3)),
        ("items=0-1", None),
        ("bytes=0-1,5-6", None),
        ("bytes=a-b", None),
        ("bytes=+1-2", None),
        ("bytes=5", None),
        ("bytes=-", None),
        ("bytes=50-40", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=-1", 0)],
)
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)
