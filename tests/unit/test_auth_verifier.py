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

from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings
from tests.clock import Clock

NOW = 1_800_000_000.0


def claims(**over: Any) -> dict[str, Any]:
    base = {"sub": "alice", "team": "team-a", "roles": ["a", "b"], "iat": NOW, "exp": NOW + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], sig: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{sig}"


def forge_hs256(secret: bytes, payload: dict[str, Any]) -> str:
    """What an attacker builds by hand: an HS256 MAC keyed with something public."""
    head = unsigned({"alg": "HS256", "typ": "JWT"}, payload).rstrip(".")
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def reason(v: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await v.verify(token)
    return info.value.reason


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture
def hs(secret: str) -> TokenVerifier:
    return TokenVerifier(AuthSettings(hs256_secrets=(secret,)), clock=Clock(NOW))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def hs256(secret: str, **over: Any) -> str:
    return jwt.encode(claims(**over), secret, algorithm="HS256")


async def test_good_hs256_token(hs: TokenVerifier, secret: str) -> None:
    p = await hs.verify(hs256(secret))
    assert (p.team, p.user, p.roles) == ("team-a", "alice", frozenset({"a", "b"}))
    assert p.has_role("a")
    assert not p.has_role("A")


@pytest.mark.parametrize(
    ("roles", "granted"),
    [
        (["x\ngateway-admin", "a"], {"a"}),  # a line break would split into two elsewhere
        (["gateway-admin x"], set()),
        (["\tgateway-admin"], set()),
        (["gate\x00way"], set()),
        ("a  b", {"a", "b"}),  # the string form is words
    ],
)
async def test_a_role_with_a_blank_or_control_character_is_no_role(
    hs: TokenVerifier, secret: str, roles: Any, granted: set[str]
) -> None:
    p = await hs.verify(hs256(secret, roles=roles))
    assert p.roles == frozenset(granted)


async def test_secret_rotation_accepts_the_second_secret(secret: str) -> None:
    newer = secrets.token_urlsafe(48)
    v = TokenVerifier(AuthSettings(hs256_secrets=(newer, secret)), clock=Clock(NOW))
    assert (await v.verify(hs256(secret))).team == "team-a"
    assert (await v.verify(hs256(newer))).team == "team-a"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "missing"),
        ("garbage", "malformed"),
        ("a.b.c", "malformed"),
        ("x.y", "malformed"),
        (unsigned({"alg": "HS256"}, {}).replace(".", "!", 1), "malformed"),
        (b64(b"[1, 2]") + "." + b64(b"{}") + ".", "malformed"),
        (unsigned({"alg": "HS256", "kid": 7}, claims(), "c2ln"), "malformed"),
    ],
)
async def test_missing_and_garbled(hs: TokenVerifier, token: str, expected: str) -> None:
    assert await reason(hs, token) == expected


async def test_wrong_secret_and_tampered_payload(hs: TokenVerifier, secret: str) -> None:
    assert await reason(hs, hs256(secrets.token_urlsafe(48))) == "bad_signature"
    head, _, sig = hs256(secret).split(".")
    tampered = f"{head}.{b64(json.dumps(claims(team='root')).encode())}.{sig}"
    assert await reason(hs, tampered) == "bad_signature"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"exp": NOW - 31}, "expired"),  # leeway is 30 s
        ({"nbf": NOW + 31}, "not_yet_valid"),
        ({"iat": NOW + 31}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "soon"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"exp": float("nan")}, "malformed"),
        ({"nbf": "later"}, "malformed"),
        ({"team": None}, "no_team"),
        ({"team": ""}, "no_team"),
        ({"team": "a/b"}, "bad_team"),
        ({"team": "-leading-dash"}, "bad_team"),
        ({"team": "t" * 65}, "bad_team"),
        ({"team": 7}, "bad_team"),
        ({"team": "team-a\n"}, "bad_team"),  # "$" alone would let a trailing newline in
        ({"team": ["team-a"]}, "bad_team"),
        ({"sub": None}, "no_subject"),
        ({"sub": ""}, "no_subject"),
        ({"sub": 42}, "no_subject"),
        ({"sub": "u" * 257}, "no_subject"),
        ({"sub": "key:svc"}, "no_subject"),  # a gateway key's name in the ledger
    ],
)
async def test_bad_claims(
    hs: TokenVerifier, secret: str, over: dict[str, Any], expected: str
) -> None:
    assert await reason(hs, hs256(secret, **over)) == expected


async def test_leeway_accepts_small_clock_skew(hs: TokenVerifier, secret: str) -> None:
    token = hs256(secret, exp=NOW - 29, nbf=NOW + 29, iat=NOW + 29)
    assert (await hs.verify(token)).user == "alice"


async def test_leeway_comes_from_settings(secret: str) -> None:
    v = TokenVerifier(AuthSettings(hs256_secrets=(secret,), leeway=0), clock=Clock(NOW))
    assert await reason(v, hs256(secret, exp=NOW - 1)) == "expired"
    assert await reason(v, hs256(secret, nbf=NOW + 1)) == "not_yet_valid"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(hs: TokenVerifier, alg: str) -> None:
    assert await reason(hs, unsigned({"alg": alg, "typ": "JWT"}, claims())) == "bad_algorithm"


async def test_header_alg_outside_the_pinned_list(
    hs: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    hs512 = jwt.encode(claims(), secrets.token_urlsafe(64), algorithm="HS512")
    assert await reason(hs, hs512) == "bad_algorithm"
    assert await reason(hs, jwt.encode(claims(), rsa_key, algorithm="RS256")) == "bad_algorithm"
    assert await reason(hs, unsigned({"typ": "JWT"}, claims(), "c2ln")) == "bad_algorithm"


@pytest.mark.parametrize("with_hs", [False, True], ids=["rs256-only", "rs256-and-hs256"])
async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey, secret: str, with_hs: bool
) -> None:
    pem = public_pem(rsa_key)
    settings = AuthSettings(
        algorithms=("RS256", "HS256") if with_hs else ("RS256",),
        hs256_secrets=(secret,) if with_hs else (),
        public_keys=(pem,),
    )
    v = TokenVerifier(settings, clock=Clock(NOW))
    assert (await v.verify(jwt.encode(claims(), rsa_key, algorithm="RS256"))).team == "team-a"
    expected = "bad_signature" if with_hs else "bad_algorithm"
    # The PEM as configured, and the variants an attacker would also try.
    for key_bytes in (pem.encode(), pem.strip().encode(), pem.encode() + b"\n"):
        assert await reason(v, forge_hs256(key_bytes, claims())) == expected


async def test_rs256_via_pem_issuer_audience_and_roles_string(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    settings = AuthSettings(
        algorithms=("RS256",), public_keys=(public_pem(rsa_key),), issuer="idp", audience="gw"
    )
    v = TokenVerifier(settings, clock=Clock(NOW))

    def rs(**over: Any) -> str:
        return jwt.encode(claims(**over), rsa_key, algorithm="RS256")

    assert (await v.verify(rs(iss="idp", aud=["x", "gw"], roles="r1  r2"))).roles == frozenset(
        {"r1", "r2"}
    )
    assert (await v.verify(rs(iss="idp", aud="gw", roles=None))).roles == frozenset()
    assert await reason(v, rs(iss="evil", aud="gw")) == "bad_issuer"
    assert await reason(v, rs(aud="gw")) == "bad_issuer"
    assert await reason(v, rs(iss="idp", aud="other")) == "bad_audience"
    assert await reason(v, rs(iss="idp", aud=["other"])) == "bad_audience"
    assert await reason(v, rs(iss="idp")) == "bad_audience"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(iss="idp", aud="gw"), other, algorithm="RS256")
    assert await reason(v, forged) == "bad_signature"


async def test_issuer_and_audience_not_checked_when_not_configured(
    hs: TokenVerifier, secret: str
) -> None:
    assert (await hs.verify(hs256(secret, iss="anyone", aud="anything"))).team == "team-a"


async def test_claim_names_come_from_settings(secret: str) -> None:
    settings = AuthSettings(
        hs256_secrets=(secret,), team_claim="org", user_claim="email", roles_claim="scope"
    )
    v = TokenVerifier(settings, clock=Clock(NOW))
    token = hs256(secret, team=None, sub=None, roles=None, org="o1", email="a@x", scope="r w")
    p = await v.verify(token)
    assert (p.team, p.user, p.roles) == ("o1", "a@x", frozenset({"r", "w"}))
    assert await reason(v, hs256(secret, org="o1")) == "no_subject"


async def test_es_keys_are_pinned_to_their_curve() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    settings = AuthSettings(algorithms=("ES256", "ES384"), public_keys=(public_pem(p256),))
    v = TokenVerifier(settings, clock=Clock(NOW))
    assert (await v.verify(jwt.encode(claims(), p256, algorithm="ES256"))).team == "team-a"
    assert await reason(v, jwt.encode(claims(), p384, algorithm="ES384")) == "bad_signature"


def test_a_bad_pem_names_its_index(rsa_key: rsa.RSAPrivateKey) -> None:
    good = public_pem(rsa_key)
    with pytest.raises(ValueError, match=r"^auth\.public_keys\[1\]: not a PEM public key"):
        TokenVerifier(AuthSettings(algorithms=("RS256",), public_keys=(good, "-----BEGIN x")))


def test_unusable_keys_and_settings_fail_at_construction(secret: str) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(ValueError, match=r"^auth\.public_keys\[0\]: RSA keys need"):
        TokenVerifier(AuthSettings(algorithms=("RS256",), public_keys=(public_pem(weak),)))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match=r"^auth\.public_keys\[0\]: only RSA"):
        TokenVerifier(AuthSettings(algorithms=("ES256",), public_keys=(public_pem(k1),)))
    with pytest.raises(ValueError, match=r"^auth\.algorithms: unsupported algorithm 'none'"):
        TokenVerifier(AuthSettings(hs256_secrets=(secret,), algorithms=("HS256", "none")))
    short = secrets.token_hex(16)  # 32 bytes: enough for HS256, not for HS512
    with pytest.raises(ValueError, match=r"^auth\.hs256_secrets\[0\]: must be at least 64"):
        TokenVerifier(AuthSettings(hs256_secrets=(short,), algorithms=("HS512",)))


async def test_failure_message_is_fixed_whatever_the_reason(hs: TokenVerifier) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        await hs.verify("garbage")
    assert str(info.value) == "Invalid or missing bearer token."
    assert info.value.message == "Invalid or missing bearer token."
    assert "malformed" not in str(info.value)


class DecodeSpy:
    """Counts signature verifications by wrapping ``jwt.decode``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = jwt.decode
        monkeypatch.setattr(jwt, "decode", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real(*args, **kwargs)


async def test_cache_hit_skips_verification_but_expires_on_the_clock(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, clock = DecodeSpy(monkeypatch), Clock(NOW)
    v = TokenVerifier(AuthSettings(hs256_secrets=(secret,)), clock=clock)
    token = hs256(secret, exp=NOW + 100)
    assert (await v.verify(token)).user == "alice"
    assert spy.calls == 1
    clock.now = NOW + 129  # past exp, within leeway
    assert (await v.verify(token)).user == "alice"
    assert spy.calls == 1
    clock.now = NOW + 131
    assert await reason(v, token) == "expired"
    assert spy.calls == 2


async def test_cache_entries_live_at_most_five_minutes(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, clock = DecodeSpy(monkeypatch), Clock(NOW)
    v = TokenVerifier(AuthSettings(hs256_secrets=(secret,)), clock=clock)
    token = hs256(secret, exp=NOW + 86_400)
    await v.verify(token)
    clock.now = NOW + 299
    await v.verify(token)
    assert spy.calls == 1
    clock.now = NOW + 300
    assert (await v.verify(token)).team == "team-a"
    assert spy.calls == 2


async def test_cache_is_bounded(secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = DecodeSpy(monkeypatch)
    v = TokenVerifier(
        replace(AuthSettings(hs256_secrets=(secret,)), cache_size=3), clock=Clock(NOW)
    )
    tokens = [hs256(secret, sub=f"u{i}") for i in range(10)]
    for t in tokens:
        await v.verify(t)
    assert spy.calls == 10
    await v.verify(tokens[-1])  # still cached
    assert spy.calls == 10
    await v.verify(tokens[0])  # evicted long ago
    assert spy.calls == 11


async def test_cache_size_zero_disables_the_cache(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecodeSpy(monkeypatch)
    v = TokenVerifier(
        replace(AuthSettings(hs256_secrets=(secret,)), cache_size=0), clock=Clock(NOW)
    )
    token = hs256(secret)
    await v.verify(token)
    await v.verify(token)
    assert spy.calls == 2


async def test_cache_belongs_to_one_verifier(hs: TokenVerifier, secret: str) -> None:
    token = hs256(secret)
    await hs.verify(token)
    other = TokenVerifier(
        AuthSettings(hs256_secrets=(secrets.token_urlsafe(48),)), clock=Clock(NOW)
    )
    assert await reason(other, token) == "bad_signature"
