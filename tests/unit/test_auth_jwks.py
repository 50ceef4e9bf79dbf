import asyncio
import json
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwks import JWKSCache
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings
from tests.clock import Clock

NOW = 1_800_000_000.0
URL = "https://idp.example/jwks"
CACHE_SECONDS = 300.0
COOLDOWN = 30.0


def jwk(kid: str | None, private_key: Any, **extra: Any) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        doc = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        doc = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        doc["kid"] = kid
    return {**doc, **extra}


class FakeIdp:
    """The injected fetch: serves ``keys``, counts calls, can be down, broken or held open."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.down = False
        self.body: bytes | None = None  # served instead of the document when set
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def fetch(self, url: str) -> bytes:
        assert url == URL
        self.calls += 1
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise ConnectionError("idp down")
        if self.body is not None:
            return self.body
        return json.dumps({"keys": self.keys}).encode()


def cache_for(idp: FakeIdp, clock: Clock) -> JWKSCache:
    return JWKSCache(
        URL, idp.fetch, cache_seconds=CACHE_SECONDS, refetch_cooldown=COOLDOWN, clock=clock
    )


def verifier_for(cache: JWKSCache, clock: Clock, *algs: str) -> TokenVerifier:
    settings = AuthSettings(algorithms=algs or ("ES256",), jwks_url=URL)
    return TokenVerifier(settings, jwks=cache, clock=clock)


def token(key: Any, kid: str | None, clock: Clock, alg: str = "ES256", **over: Any) -> str:
    claims = {"sub": "alice", "team": "team-a", "iat": clock.now, "exp": clock.now + 600, **over}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


async def unknown(cache: JWKSCache, kid: str | None, alg: str = "ES256") -> bool:
    with pytest.raises(AuthenticationFailed) as info:
        await cache.key_for(kid, alg)
    return info.value.reason == "unknown_kid"


@pytest.fixture(scope="module")
def k1() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def k2() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_es256_via_jwks_fetched_lazily_and_cached(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    v = verifier_for(cache_for(idp, clock), clock)
    assert idp.calls == 0
    assert (await v.verify(token(k1, "k1", clock))).team == "team-a"
    assert (await v.verify(token(k1, "k1", clock, sub="bob"))).user == "bob"
    assert idp.calls == 1


async def test_rs256_via_jwks(rsa_key: Any) -> None:
    idp, clock = FakeIdp(jwk("r1", rsa_key)), Clock(NOW)
    v = verifier_for(cache_for(idp, clock), clock, "RS256")
    assert (await v.verify(token(rsa_key, "r1", clock, alg="RS256"))).user == "alice"


async def test_keys_are_prepared_once_per_fetch(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    cache = cache_for(idp, clock)
    first = await cache.key_for("k1", "ES256")
    assert await cache.key_for("k1", "ES256") is first
    assert isinstance(first, ec.EllipticCurvePublicKey)


async def test_unknown_kid_refetches_once_then_is_rejected(k1: Any, k2: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    v = verifier_for(cache_for(idp, clock), clock)
    await v.verify(token(k1, "k1", clock))
    clock.now += COOLDOWN
    with pytest.raises(AuthenticationFailed) as info:
        await v.verify(token(k2, "k2", clock))
    assert info.value.reason == "unknown_kid"
    assert idp.calls == 2
    with pytest.raises(AuthenticationFailed):
        await v.verify(token(k2, "k2", clock))
    assert idp.calls == 2


async def test_a_rotated_in_key_is_found_by_the_refetch(k1: Any, k2: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    v = verifier_for(cache_for(idp, clock), clock)
    await v.verify(token(k1, "k1", clock))
    idp.keys.append(jwk("k2", k2))
    clock.now += COOLDOWN
    assert (await v.verify(token(k2, "k2", clock))).team == "team-a"
    assert idp.calls == 2


async def test_refetch_cooldown_bounds_fetches_for_many_unknown_kids(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    cache = cache_for(idp, clock)
    await cache.key_for("k1", "ES256")
    for second in range(1, 96):
        clock.now = NOW + second
        assert await unknown(cache, f"made-up-{secrets.token_hex(4)}")
    # one fetch at the start, then one at +30, +60 and +90 s
    assert idp.calls == 4


async def test_cache_expiry_refetches_and_drops_revoked_keys(k1: Any, k2: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1), jwk("k2", k2)), Clock(NOW)
    cache = cache_for(idp, clock)
    await cache.key_for("k1", "ES256")
    idp.keys = [jwk("k2", k2)]
    clock.now += CACHE_SECONDS - 1
    await cache.key_for("k1", "ES256")
    assert idp.calls == 1
    clock.now += 2
    assert await unknown(cache, "k1")
    assert idp.calls == 2
    assert isinstance(await cache.key_for("k2", "ES256"), ec.EllipticCurvePublicKey)


async def test_idp_down_keeps_last_good_keys(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    v = verifier_for(cache_for(idp, clock), clock)
    await v.verify(token(k1, "k1", clock))
    idp.down = True
    clock.now += 10 * CACHE_SECONDS
    assert (await v.verify(token(k1, "k1", clock))).team == "team-a"
    assert idp.calls == 2
    clock.now += 1  # still down, inside the cooldown: no new attempt
    assert (await v.verify(token(k1, "k1", clock, sub="bob"))).user == "bob"
    assert idp.calls == 2


@pytest.mark.parametrize(
    "body",
    [b"<html>502 Bad Gateway</html>", b"\xff\xfe", b"[1, 2]", b"{}", b'{"keys": "x"}', b""],
)
async def test_garbage_from_the_idp_keeps_last_good_keys(k1: Any, body: bytes) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    cache = cache_for(idp, clock)
    good = await cache.key_for("k1", "ES256")
    idp.body = body
    clock.now += CACHE_SECONDS + 1
    assert await cache.key_for("k1", "ES256") is good
    assert idp.calls == 2


async def test_an_empty_key_set_keeps_last_good_keys(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    cache = cache_for(idp, clock)
    await cache.key_for("k1", "ES256")
    idp.keys = []
    clock.now += CACHE_SECONDS + 1
    assert isinstance(await cache.key_for("k1", "ES256"), ec.EllipticCurvePublicKey)


async def test_idp_down_at_start_recovers_after_the_cooldown(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    cache = cache_for(idp, clock)
    idp.down = True
    assert await unknown(cache, "k1")
    assert await unknown(cache, "k1")
    assert idp.calls == 1
    idp.down = False
    clock.now += COOLDOWN
    assert isinstance(await cache.key_for("k1", "ES256"), ec.EllipticCurvePublicKey)
    assert idp.calls == 2


async def test_bad_keys_in_the_set_do_not_hide_good_ones(k1: Any) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    broken = {**jwk("broken", k1), "x": "AAAA"}
    oct_key = {"kty": "oct", "kid": "oct", "k": secrets.token_urlsafe(32)}
    idp = FakeIdp(
        broken,
        jwk("weak", weak),
        jwk("enc", k1, use="enc"),
        oct_key,
        {"kty": "EC", "kid": 5},
        "not-a-dict",
        jwk("k1", k1),
    )
    cache = cache_for(idp, Clock(NOW))
    assert isinstance(await cache.key_for("k1", "ES256"), ec.EllipticCurvePublicKey)
    for kid, alg in [("broken", "ES256"), ("weak", "RS256"), ("enc", "ES256"), ("oct", "HS256")]:
        assert await unknown(cache, kid, alg)


async def test_key_must_fit_the_algorithm(k1: Any, rsa_key: Any) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    idp = FakeIdp(
        jwk("ec", k1), jwk("rsa", rsa_key), jwk("p384", p384), jwk("pin", rsa_key, alg="RS512")
    )
    cache = cache_for(idp, Clock(NOW))
    assert isinstance(await cache.key_for("ec", "ES256"), ec.EllipticCurvePublicKey)
    assert isinstance(await cache.key_for("rsa", "RS384"), rsa.RSAPublicKey)
    assert isinstance(await cache.key_for("p384", "ES384"), ec.EllipticCurvePublicKey)
    assert await unknown(cache, "ec", "RS256")
    assert await unknown(cache, "rsa", "ES256")
    assert await unknown(cache, "p384", "ES256")
    assert isinstance(await cache.key_for("pin", "RS512"), rsa.RSAPublicKey)
    assert await unknown(cache, "pin", "RS256")  # the JWK pins its own algorithm


async def test_no_kid_matches_only_a_single_fitting_key(k1: Any, k2: Any, rsa_key: Any) -> None:
    clock = Clock(NOW)
    one = cache_for(FakeIdp(jwk("k1", k1), jwk("r", rsa_key)), clock)
    assert isinstance(await one.key_for(None, "ES256"), ec.EllipticCurvePublicKey)
    assert isinstance(await one.key_for(None, "RS256"), rsa.RSAPublicKey)
    two = cache_for(FakeIdp(jwk("k1", k1), jwk("k2", k2)), clock)
    assert await unknown(two, None)
    two_without_kids = cache_for(FakeIdp(jwk(None, k1), jwk(None, k2)), clock)
    assert await unknown(two_without_kids, None)


async def test_concurrent_first_fetch_shares_one_call(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    idp.hold = asyncio.Event()
    v = verifier_for(cache_for(idp, clock), clock)
    tasks = [asyncio.create_task(v.verify(token(k1, "k1", clock, sub=f"u{i}"))) for i in range(20)]
    await idp.entered.wait()
    assert not any(t.done() for t in tasks)
    idp.hold.set()
    results = await asyncio.gather(*tasks)
    assert {p.user for p in results} == {f"u{i}" for i in range(20)}
    assert idp.calls == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(k1: Any) -> None:
    idp, clock = FakeIdp(jwk("k1", k1)), Clock(NOW)
    idp.hold = asyncio.Event()
    cache = cache_for(idp, clock)
    first = asyncio.create_task(cache.key_for("k1", "ES256"))
    second = asyncio.create_task(cache.key_for("k1", "ES256"))
    await idp.entered.wait()
    first.cancel()
    idp.hold.set()
    assert isinstance(await second, ec.EllipticCurvePublicKey)
    assert first.cancelled()
    assert idp.calls == 1


async def test_hs256_never_consults_the_jwks(rsa_key: Any) -> None:
    idp, clock = FakeIdp(jwk("r1", rsa_key)), Clock(NOW)
    settings = AuthSettings(
        algorithms=("RS256", "HS256"), hs256_secrets=(secrets.token_urlsafe(48),), jwks_url=URL
    )
    v = TokenVerifier(settings, jwks=cache_for(idp, clock), clock=clock)
    # keyed with the published key's modulus, as a confused verifier might use it
    n = rsa_key.public_key().public_numbers().n
    forged = token(n.to_bytes(256, "big"), "r1", clock, alg="HS256")
    with pytest.raises(AuthenticationFailed) as info:
        await v.verify(forged)
    assert info.value.reason == "bad_signature"
    assert idp.calls == 0
