"""Fixtures of the middle tier: the upstream client on a fake transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.upstream.client import UpstreamClient
from tests.fakes import FakeUpstream


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[UpstreamClient]:
    c = upstream.client()
    await c.start()
    yield c
    await c.close()
