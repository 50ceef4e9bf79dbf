"""The metered scripts' arguments as the wire sends them: the runs that repeat between calls
are encoded once (``Runs``), and what leaves is byte for byte ``encode_args`` of the whole
argument list, whichever parts a call has (a folded rate check, a key's own rate and limits,
any ledger)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.auth.api_keys import KeyScope
from gateway.metering.store import KEY_KINDS, MeterStore
from gateway.quota.model import RATE_WINDOW_MS, TOKEN_WINDOW_S, Windows
from gateway.quota.rate import RateCall
from gateway.store.batcher import ScriptBatcher
from gateway.store.keys import TeamKeys
from gateway.store.lua import script
from gateway.store.wire import Runs, encode_args

NUM = st.integers(min_value=-1, max_value=10**15)
TEXT = st.text(max_size=12)


class Capture:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.calls: list[tuple[Sequence[str], Sequence[str | int], bytes | None]] = []

    async def __call__(
        self, *, keys: Sequence[str], args: Sequence[str | int], encoded: bytes | None = None
    ) -> Any:
        self.calls.append((keys, args, encoded))
        return self.reply


def _store() -> tuple[MeterStore, Capture, Capture]:
    store = MeterStore(Redis())
    store._known.add("t")  # no team registration call
    reserve, settle = Capture(b"1,100,5,-1"), Capture(1)
    store._reserve, store._settle = reserve, settle
    return store, reserve, settle


@given(
    st.tuples(NUM, NUM, NUM),
    st.lists(NUM, min_size=4, max_size=4),
    TEXT,
    st.none() | st.tuples(NUM, NUM, NUM, NUM, TEXT, NUM),
    st.booleans(),
    st.none() | st.lists(NUM, min_size=3, max_size=3),
)
def test_a_reservation_leaves_as_encode_args_of_its_arguments(
    varying: tuple[int, int, int],
    defaults: list[int],
    tag: str,
    rate_args: tuple[int, int, int, int, str, int] | None,
    key_rated: bool,
    key_limits: list[int] | None,
) -> None:
    store, reserve, _ = _store()
    now_s, tokens, spend = varying
    key = None
    if key_limits is not None:
        key = KeyScope(id="k1", name="n", limits=tuple(zip(KEY_KINDS, key_limits, strict=True)))
    rate = None
    if rate_args is not None:
        rate_key = KeyScope(id="k1", name="n") if key_rated else None
        args = (*rate_args, 7) if key_rated else rate_args
        rate = RateCall("t", rate_key, Windows.at(0, ZoneInfo("UTC")), ("a", "b", "c"), args)
    for _ in range(2):  # the second time from the runs already encoded
        asyncio.run(
            store.reserve(
                TeamKeys("t"),
                "c1",
                now_s=now_s,
                tokens=tokens,
                spend=spend,
                defaults=defaults,
                day="20261207",
                month="202612",
                ttls=(1, 2, 3),
                tag=tag,
                max_tags=100,
                key=key,
                rate=rate,
            )
        )
    for _, args_sent, encoded in reserve.calls:
        assert encoded == encode_args(args_sent)
    assert reserve.calls[0][1][:3] == [now_s, tokens, spend]
    assert reserve.calls[0][1] == reserve.calls[1][1]


@given(NUM, NUM, st.dictionaries(TEXT, NUM, max_size=6))
def test_a_settlement_leaves_as_encode_args_of_its_arguments(
    tokens: int, spend: int, ledger: dict[str, int]
) -> None:
    store, _, settle = _store()
    for _ in range(2):
        asyncio.run(
            store.settle(
                TeamKeys("t"),
                "c1",
                tokens=tokens,
                spend=spend,
                day="20261207",
                month="202612",
                ledger=ledger,
                ledger_ttl=86_400,
                ttls=(172_800, 3_000_000),
            )
        )
    for _, args_sent, encoded in settle.calls:
        assert encoded == encode_args(args_sent)
    names = list(settle.calls[0][1][7::2])
    assert names == [name for name, amount in ledger.items() if amount]


def test_runs_keep_only_text_and_integers_and_stay_bounded() -> None:
    runs = Runs(size=2)
    assert runs((True,)) == encode_args((True,)) == b"$4\r\nTrue\r\n"
    assert runs((1,)) == b"$1\r\n1\r\n"  # not the bool's encoding, never kept
    assert runs(("a", 1)) == encode_args(("a", 1))
    runs(("b",))
    runs(("c",))  # past the bound: the runs start over
    assert len(runs._runs) <= 2
    assert runs(("é",)) == encode_args(("é",)) == b"$2\r\n\xc3\xa9\r\n"


TAGS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}\Z") | st.just("")


@given(
    st.text(max_size=12),
    st.tuples(NUM, NUM, NUM, NUM),
    st.lists(NUM, min_size=4, max_size=4),
    st.lists(NUM, min_size=3, max_size=3),
    TAGS,
    st.booleans(),
    st.integers(min_value=0, max_value=10**9),
)
def test_a_reservation_kept_encoded_leaves_as_the_one_built_whole(
    team: str,
    varying: tuple[int, int, int, int],
    defaults: list[int],
    rate_defaults: list[int],
    tag: str,
    open_ended: bool,
    seq: int,
) -> None:
    """ReserveCommand fills in only what differs between calls; what leaves must be the
    command the general way builds from the same arguments (keys, then every argument)."""
    store = MeterStore(Redis())
    batcher = ScriptBatcher(Redis(), script("gateway.quota", "meter_reserve"), varying_keys=1)
    batcher.wire = object()  # type: ignore[assignment]  # a dedicated connection (not used)
    sent: list[bytes] = []

    def submit(command: bytes) -> Any:
        sent.append(command)

    batcher.submit_command = submit  # type: ignore[method-assign]
    store._reserve = batcher
    now_s, tokens, spend, now_ms = varying
    k = TeamKeys(team)
    w = Windows.at(0, ZoneInfo("UTC"))
    rate = RateCall(team, None, w, (k.rate, k.video_day(w.day), k.video_month(w.month)), ())
    command = store.reserve_command(
        k,
        rate,
        rate_defaults,
        defaults=defaults,
        day=w.day,
        month=w.month,
        ttls=(1, 2, 3),
        max_tags=100,
    )
    if not k.metered_call("").isascii():
        assert command is None  # lengths in characters would not be in bytes
        return
    assert command is not None
    call_id, member = f"1.ab.{seq}", f"2.cd.{seq}"
    command.send(
        call_id,
        now_s=now_s,
        tokens=tokens,
        spend=spend,
        tag=tag,
        open_ended=open_ended,
        now_ms=now_ms,
        member=member,
    )
    keys = (*store._reserve_head(k, w.day, w.month, rate, None), k.metered_call(call_id))
    args = [
        now_s, tokens, spend, *defaults, w.day, w.month, 1, 2, 3, tag, 100, TOKEN_WINDOW_S,
        "rx" if open_ended else "r", now_ms, *rate_defaults, member, RATE_WINDOW_MS,
    ]  # fmt: skip
    assert sent == [batcher._encode(keys, args)]
