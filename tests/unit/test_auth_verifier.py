import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwks import JWKSCache
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(**over: Any) -> dict[str, Any]:
    base = {"sub": "alice", "team": "team-a", "roles": ["a"], "iat": NOW, "exp": NOW + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture
def hs(secret: str) -> TokenVerifier:
    return TokenVerifier(AuthSettings(hs256_secrets=(secret,)), clock=Clock())


async def reason(v: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await v.verify(token)
    return info.value.reason


async def test_good_hs256_token(hs: TokenVerifier, secret: str) -> None:
    p = await hs.verify(jwt.encode(claims(), secret, algorithm="HS256"))
    assert (p.team, p.user, p.roles) == ("team-a", "alice", frozenset({"a"}))
    assert p.has_role("a")


async def test_secret_rotation(secret: str) -> None:
    old = secrets.token_urlsafe(48)
    v = TokenVerifier(AuthSettings(hs256_secrets=(secret, old)), clock=Clock())
    assert (await v.verify(jwt.encode(claims(), old, algorithm="HS256"))).team == "team-a"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"exp": NOW - 31}, "expired"),
        ({"nbf": NOW + 31}, "not_yet_valid"),
        ({"iat": NOW + 31}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "soon"}, "missing_claim"),
        ({"team": None}, "no_team"),
        ({"team": ""}, "no_team"),
        ({"team": "a/b"}, "bad_team"),
        ({"team": 7}, "bad_team"),
        ({"sub": None}, "no_subject"),
    ],
)
async def test_bad_claims(
    hs: TokenVerifier, secret: str, over: dict[str, Any], expected: str
) -> None:
    assert await reason(hs, jwt.encode(claims(**over), secret, algorithm="HS256")) == expected


async def test_leeway_accepts_small_skew(hs: TokenVerifier, secret: str) -> None:
    token = jwt.encode(claims(exp=NOW - 29, nbf=NOW + 29), secret, algorithm="HS256")
    assert (await hs.verify(token)).user == "alice"


async def test_garbage_wrong_secret_and_alg_none(hs: TokenVerifier) -> None:
    assert await reason(hs, "garbage") == "malformed"
    other = secrets.token_urlsafe(48)
    assert await reason(hs, jwt.encode(claims(), other, algorithm="HS256")) == "bad_signature"
    assert await reason(hs, b64({"alg": "none"}) + "." + b64(claims()) + ".") == "bad_algorithm"
    hs512 = jwt.encode(claims(), secrets.token_urlsafe(64), algorithm="HS512")
    assert await reason(hs, hs512) == "bad_algorithm"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def forge_hs256(public_pem: str, payload: dict[str, Any]) -> str:
    head = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}"
    sig = hmac.new(public_pem.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


@pytest.mark.parametrize("with_hs", [False, True])
async def test_hs256_signed_with_rsa_public_key(
    rsa_key: rsa.RSAPrivateKey, secret: str, with_hs: bool
) -> None:
    settings = AuthSettings(
        algorithms=("RS256", "HS256") if with_hs else ("RS256",),
        hs256_secrets=(secret,) if with_hs else (),
        public_keys=(pem(rsa_key),),
    )
    v = TokenVerifier(settings, clock=Clock())
    assert (await v.verify(jwt.encode(claims(), rsa_key, algorithm="RS256"))).team == "team-a"
    forged = forge_hs256(pem(rsa_key), claims())
    assert await reason(v, forged) == ("bad_signature" if with_hs else "bad_algorithm")


async def test_issuer_audience_and_roles_string(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = AuthSettings(
        algorithms=("RS256",), public_keys=(pem(rsa_key),), issuer="idp", audience="gw"
    )
    v = TokenVerifier(settings, clock=Clock())
    ok = jwt.encode(claims(iss="idp", aud=["x", "gw"], roles="r1 r2"), rsa_key, algorithm="RS256")
    assert (await v.verify(ok)).roles == frozenset({"r1", "r2"})
    bad_iss = jwt.encode(claims(iss="evil", aud="gw"), rsa_key, algorithm="RS256")
    assert await reason(v, bad_iss) == "bad_issuer"
    bad_aud = jwt.encode(claims(iss="idp", aud="other"), rsa_key, algorithm="RS256")
    assert await reason(v, bad_aud) == "bad_audience"


def test_bad_pem_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"auth.public_keys\[0\]"):
        TokenVerifier(AuthSettings(algorithms=("RS256",), public_keys=("-----BEGIN nonsense",)))


async def test_cache_hit_skips_verification_but_still_expires(secret: str) -> None:
    clock = Clock()
    v = TokenVerifier(AuthSettings(hs256_secrets=(secret,)), clock=clock)
    token = jwt.encode(claims(exp=NOW + 100), secret, algorithm="HS256")
    await v.verify(token)
    # drop the secret: only the cache can still accept the token
    v._secrets = []
    assert (await v.verify(token)).user == "alice"
    clock.now = NOW + 131
    assert await reason(v, token) == "bad_signature"


async def test_cache_is_bounded(secret: str) -> None:
    v = TokenVerifier(replace(AuthSettings(hs256_secrets=(secret,)), cache_size=3), clock=Clock())
    for i in range(10):
        await v.verify(jwt.encode(claims(sub=f"u{i}"), secret, algorithm="HS256"))
    assert len(v._cache) <= 3


class FakeIdp:
    def __init__(self, *keys: tuple[str, Any]) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.down = False

    async def fetch(self, url: str) -> bytes:
        self.calls += 1
        if self.down:
            raise ConnectionError("idp down")
        docs = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            docs.append({**jwk, "kid": kid, "use": "sig"})
        return json.dumps({"keys": docs}).encode()


def jwks_verifier(idp: FakeIdp, clock: Clock) -> TokenVerifier:
    cache = JWKSCache(
        "https://idp/jwks", idp.fetch, cache_seconds=300, refetch_cooldown=30, clock=clock
    )
    return TokenVerifier(
        AuthSettings(algorithms=("ES256",), jwks_url="https://idp/jwks"), jwks=cache, clock=clock
    )


def es_token(key: Any, kid: str) -> str:
    return jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid})


async def test_es256_via_jwks_and_unknown_kid_cooldown() -> None:
    k1 = ec.generate_private_key(ec.SECP256R1())
    k2 = ec.generate_private_key(ec.SECP256R1())
    idp, clock = FakeIdp(("k1", k1)), Clock()
    v = jwks_verifier(idp, clock)
    assert (await v.verify(es_token(k1, "k1"))).team == "team-a"
    assert idp.calls == 1
    # an unknown kid refetches once, then not again within the cooldown
    assert await reason(v, es_token(k2, "k2")) == "unknown_kid"
    calls = idp.calls
    for _ in range(5):
        assert await reason(v, es_token(k2, "k2")) == "unknown_kid"
    assert idp.calls == calls <= 2
    # the IdP rotates in k2; after the cooldown it is found
    idp.keys.append(("k2", k2))
    clock.now += 31
    assert (await v.verify(es_token(k2, "k2"))).user == "alice"


async def test_idp_down_keeps_last_good_keys() -> None:
    k1 = ec.generate_private_key(ec.SECP256R1())
    idp, clock = FakeIdp(("k1", k1)), Clock()
    v = jwks_verifier(idp, clock)
    await v.verify(es_token(k1, "k1"))
    idp.down = True
    clock.now += 10_000  # cache long expired, IdP unreachable
    fresh = jwt.encode(
        claims(iat=clock.now, exp=clock.now + 600), k1, algorithm="ES256", headers={"kid": "k1"}
    )
    assert (await v.verify(fresh)).team == "team-a"
    assert idp.calls == 2


async def test_concurrent_first_fetch_is_shared() -> None:
    import asyncio

    k1 = ec.generate_private_key(ec.SECP256R1())
    idp, clock = FakeIdp(("k1", k1)), Clock()
    v = jwks_verifier(idp, clock)
    tokens = [
        jwt.encode(claims(sub=f"u{i}"), k1, algorithm="ES256", headers={"kid": "k1"})
        for i in range(10)
    ]
    results = await asyncio.gather(*(v.verify(t) for t in tokens))
    assert {p.user for p in results} == {f"u{i}" for i in range(10)}
    assert idp.calls == 1
