"""Gateway API keys as values: the format secret scanners match, the keyed hash, and a stored
record's round trip through its Redis fields (property-tested)."""

from __future__ import annotations

import dataclasses
import re
import secrets

from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import api_keys
from gateway.auth.api_keys import ACTIVE, KEY_LIMITS, REVOKED, KeyRecord

DOCUMENTED = re.compile(r"gwk_[0-9a-f]{16}_[0-9a-f]{48}")  # docs/api-keys.md


def test_new_keys_match_the_documented_pattern_and_parse_to_their_id() -> None:
    seen = set()
    for _ in range(50):
        key_id, key = api_keys.new_key()
        assert DOCUMENTED.fullmatch(key)
        assert api_keys.parse(key) == key_id
        seen.add(key)
    assert len(seen) == 50
    rotated = api_keys.rekey(key_id)
    assert api_keys.parse(rotated) == key_id
    assert rotated != key


def test_anything_else_is_not_a_key() -> None:
    _, key = api_keys.new_key()
    for bad in (
        "",
        key[:-1],
        key + "0",
        key.upper(),
        key.replace("gwk_", "gwx_"),
        key.replace("_", "-"),
        " " + key,
        key + "\n",
    ):
        assert api_keys.parse(bad) is None, bad


def test_the_digest_depends_on_the_pepper_and_the_whole_key() -> None:
    _, key = api_keys.new_key()
    p1, p2 = secrets.token_bytes(32), secrets.token_bytes(32)
    d = api_keys.digest(p1, key)
    assert d != api_keys.digest(p2, key)
    assert d != api_keys.digest(p1, key[:-1] + ("0" if key[-1] != "0" else "1"))
    assert key[5:] not in d
    assert api_keys.same_digest(d, api_keys.digest(p1, key))


names = st.from_regex(api_keys.NAME, fullmatch=True)
models = st.none() | st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9.*?-]{0,20}", fullmatch=True), min_size=1, max_size=4
)
limits = st.dictionaries(st.sampled_from(KEY_LIMITS), st.integers(0, 10**15)).map(
    lambda d: tuple(sorted(d.items()))
)
times = st.floats(0, 4e9, allow_nan=False)


@given(
    name=names,
    team=names,
    models=models,
    limits=limits,
    created=times,
    expires=st.none() | times,
    state=st.sampled_from([ACTIVE, REVOKED]),
    roles=st.lists(st.sampled_from(["gateway-admin", "team-admin"]), unique=True),
    previous_until=times,
)
def test_a_record_survives_its_redis_fields(
    name: str,
    team: str,
    models: list[str] | None,
    limits: tuple[tuple[str, int], ...],
    created: float,
    expires: float | None,
    state: str,
    roles: list[str],
    previous_until: float,
) -> None:
    record = KeyRecord(
        id=secrets.token_hex(8),
        team=team,
        name=name,
        roles=tuple(roles),
        models=None if models is None else tuple(models),
        limits=limits,
        created=created,
        expires=expires,
        state=state,
        digest=secrets.token_hex(32),
        previous_digest=secrets.token_hex(32),
        previous_until=previous_until,
        created_by="ops/root",
    )
    assert KeyRecord.from_fields(record.id, record.fields()) == record
    assert record.user == f"key:{name}"
    for kind, value in limits:
        assert record.scope.limit(kind) == value


def test_refusals_and_the_rotation_grace() -> None:
    now = 1_000_000.0
    base = KeyRecord(
        id="0" * 16,
        team="t",
        name="n",
        roles=(),
        models=None,
        limits=(),
        created=now - 10,
        expires=now + 1,
        state=ACTIVE,
        digest="a" * 64,
        previous_digest="b" * 64,
        previous_until=now + 5,
    )
    assert base.refusal(now) is None
    assert base.refusal(now + 1) == "key_expired"  # to the second: at expiry it is over
    assert dataclasses.replace(base, state=REVOKED).refusal(now) == "key_revoked"
    assert base.matches("a" * 64, now)
    assert base.matches("b" * 64, now + 4.9)
    assert not base.matches("b" * 64, now + 5)
    assert not base.matches("c" * 64, now)
    assert base.scope.limit("requests_per_minute") == -1
