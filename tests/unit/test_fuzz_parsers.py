"""No input to a parser of caller data is anything but a typed 4xx: the video create fields
(JSON, multipart and form bodies, then the create rules), the admin API's limits and bodies,
and bearer tokens. Anything else escaping would be a 500."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from gateway.admin.inputs import json_object, parse_limits
from gateway.auth.principal import Principal
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest
from gateway.quota.model import KINDS, MAX_LIMIT, LimitError, parse_limit
from gateway.settings import AuthSettings, VideoModel, VideoSettings
from gateway.videos.create_request import _KNOWN as KNOWN_CREATE_FIELDS
from gateway.videos.create_request import CreateRequest, Upload, parse_create
from gateway.videos.routes import _put, _zip_columns, read_fields

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEEP = 100_000

# -- what callers can send ---------------------------------------------------------------------

awkward_numbers = st.sampled_from(
    [10**400, -(10**400), 10**4000, 1e308, -1e308, math.inf, -math.inf, math.nan, -0.0, 2**63]
)
awkward_strings = st.sampled_from(
    [
        *("", " ", "nan", "NaN", "inf", "-1", "1e400", "10" + "0" * 400, "²", "٣", "4\n"),
        *("1280x720\n", "9" * 5000, "data:image/png;base64,AAAA", "data:", "[" * 50, "x" * 10_000),
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | awkward_numbers
    | awkward_strings
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# Every field the create rules know, plus one they do not (an unknown field must be a 400).
CREATE_KEYS = [*sorted(KNOWN_CREATE_FIELDS), "seed"]
create_values = (
    json_values
    | st.sampled_from(["sora-2", "sora", "sora-2-pro", "1280x720", "720x1280", "4", "8", "true"])
    | st.lists(
        st.fixed_dictionaries({"prompt": json_values, "duration": json_values}), max_size=3
    ).map(lambda scenes: json.dumps(scenes, allow_nan=True))
)
create_fields = st.dictionaries(
    st.sampled_from(CREATE_KEYS) | st.text(max_size=10), create_values, max_size=8
)
uploads = st.none() | st.builds(
    Upload,
    filename=st.none() | st.text(max_size=10),
    content_type=st.none() | st.sampled_from(["image/png", "image/png; x=1", "text/plain", ""]),
    data=st.binary(max_size=64),
)

VIDEOS = (
    VideoSettings(extra_fields=("seed",)),  # an empty model table accepts any model name
    VideoSettings(
        aliases={"sora": "sora-2"},
        models={
            "sora-2": VideoModel(sizes=("1280x720", "720x1280"), seconds=(4, 8, 12)),
            "sora-2-pro": VideoModel(max_seconds=20, max_prompt_chars=50),
        },
        reference_max_bytes=32,
    ),
)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """What ``fn`` returns, or the GatewayError it raises; anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except GatewayError as exc:
        return exc


def is_400(got: Any) -> bool:
    return isinstance(got, InvalidRequest) and got.status == 400


# -- video create: the rules -------------------------------------------------------------------


def check_create(
    fields: dict[str, Any], upload: Upload | None, videos: VideoSettings, force: bool
) -> None:
    req = outcome(parse_create, fields, videos, force_private=force, upload=upload)
    if is_400(req):
        return
    assert isinstance(req, CreateRequest)
    limits = videos.model(req.model)
    assert limits is not None
    assert 1 <= req.seconds <= limits.max_seconds
    assert re.fullmatch(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}", req.size)
    assert req.body["duration"] == req.seconds
    json.dumps(req.body, allow_nan=False)  # what goes upstream is plain JSON


@FUZZ
@given(create_fields, uploads, st.sampled_from(VIDEOS), st.booleans())
def test_parse_create_only_ever_answers_400(
    fields: dict[str, Any], upload: Upload | None, videos: VideoSettings, force: bool
) -> None:
    check_create(fields, upload, videos, force)


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "p", "seconds": "²"},
        {"prompt": "p", "duration": "9" * 5000},
        {"prompt": "p", "seconds": 10**400},
        {"storyboard": "[" * DEEP + "]" * DEEP},
        {"prompt": "p", "size": "1280x720\n"},
    ],
    ids=["superscript-digit", "5000-digits", "huge-int", "deep-storyboard", "size-newline"],
)
def test_parse_create_refuses_known_troublemakers(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_create(fields, VIDEOS[0], force_private=True)


# -- video create: the bodies ------------------------------------------------------------------


def _request(body: bytes, content_type: str, in_app: bool) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/videos",
        "headers": [(b"content-type", content_type.encode("latin-1"))],
        "query_string": b"",
    }
    if in_app:
        scope["app"] = object()  # Starlette then raises HTTPException instead of its own
    return Request(scope, receive)


def read(body: bytes, content_type: str, in_app: bool = True) -> Any:
    return asyncio.run(read_fields(_request(body, content_type, in_app)))


BOUNDARY = "fuzzfuzz"


def multipart(parts: list[tuple[str, str | bytes]], cut: int | None) -> bytes:
    out = b""
    for name, value in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if isinstance(value, bytes):
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="f.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode() + value
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out if cut is None else out[:cut]


part_names = (
    st.sampled_from([*CREATE_KEYS, "storyboard[][prompt]", "storyboard[][duration]", "a[b]"])
    | st.text(alphabet="ab[]", max_size=8)
    | st.text(max_size=8).filter(lambda s: '"' not in s and "\r" not in s and "\n" not in s)
)
part_values: st.SearchStrategy[str | bytes] = (
    st.text(max_size=20).filter(lambda s: BOUNDARY not in s)
    | st.sampled_from(["4", "sora-2", "1280x720", "true", "[" * 40])
    | st.binary(max_size=32)
)
bodies = st.one_of(
    st.tuples(
        st.lists(st.tuples(part_names, part_values), max_size=8),
        st.none() | st.integers(min_value=0, max_value=400),
    ).map(lambda p: (multipart(*p), f"multipart/form-data; boundary={BOUNDARY}")),
    st.tuples(
        st.binary(max_size=200),
        st.sampled_from(
            [
                "application/json",
                f"multipart/form-data; boundary={BOUNDARY}",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
                "text/plain",
                "",
            ]
        ),
    ),
    st.tuples(
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.just("application/json"),
    ),
    st.tuples(
        st.text(alphabet="ab[]=&%2", max_size=60).map(str.encode),
        st.just("application/x-www-form-urlencoded"),
    ),
)


@FUZZ
@given(bodies, st.booleans(), st.sampled_from(VIDEOS))
def test_reading_a_create_body_only_ever_answers_400(
    body: tuple[bytes, str], in_app: bool, videos: VideoSettings
) -> None:
    got = outcome(read, *body, in_app=in_app)
    if is_400(got):
        return
    fields, upload = got
    assert isinstance(fields, dict)
    assert upload is None or isinstance(upload, Upload)
    check_create(fields, upload, videos, True)  # and what it read goes through the rules


@FUZZ
@given(st.lists(st.tuples(st.text(alphabet="ab[]", max_size=8), st.text(max_size=3)), max_size=10))
def test_bracket_keys_only_ever_answer_400(items: list[tuple[str, str]]) -> None:
    fields: dict[str, Any] = {}
    columns: dict[str, dict[str, list[str]]] = {}

    def put_all() -> None:
        for key, value in items:
            _put(fields, columns, key, value)
        _zip_columns(fields, columns)

    got = outcome(put_all)
    assert got is None or is_400(got)


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (b"[" * DEEP + b"]" * DEEP, "application/json", "invalid_json"),
        (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "application/json", "invalid_json"),
        (b"\xff\xfe{", "application/json", "invalid_json"),
        (
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
            "invalid_form",
        ),
        (b"", "multipart/form-data", "invalid_form"),
        (
            multipart([("input_reference", b"png")], None)[:-20],
            f"multipart/form-data; boundary={BOUNDARY}",
            "invalid_form",
        ),
    ],
    ids=["deep-array", "deep-object", "bad-encoding", "nameless-part", "no-boundary", "truncated"],
)
@pytest.mark.parametrize("in_app", [True, False], ids=["in-app", "bare"])
def test_unreadable_bodies_are_400(body: bytes, ctype: str, code: str, in_app: bool) -> None:
    with pytest.raises(InvalidRequest) as err:
        read(body, ctype, in_app)
    assert (err.value.status, err.value.code) == (400, code)


# -- admin: limits and bodies ------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=30) | st.sampled_from(KINDS), json_values)
def test_parse_limit_only_ever_raises_limit_error(kind: str, value: Any) -> None:
    try:
        got = parse_limit(kind, value)
    except LimitError:
        return
    assert got is None or (math.isfinite(got) and 0 <= got <= MAX_LIMIT)


@FUZZ
@given(st.dictionaries(st.sampled_from(KINDS) | st.text(max_size=10), json_values, max_size=6))
def test_admin_limits_only_ever_answer_400(doc: dict[str, Any]) -> None:
    got = outcome(parse_limits, doc)
    assert is_400(got) or set(got) <= set(KINDS)


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), 1e400, -1e400, math.nan, "nan", "1" * 10_000, MAX_LIMIT + 1]
)
def test_admin_limits_refuse_huge_and_non_finite_numbers(value: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_limits({"spend_per_month": value})
    assert (err.value.code, err.value.param) == ("invalid_value", "spend_per_month")


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()))
def test_admin_json_bodies_only_ever_answer_400(raw: bytes) -> None:
    got = outcome(json_object, raw)
    assert isinstance(got, dict) or (is_400(got) and got.code == "invalid_json")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        # Nesting this deep is more values than an admin body may hold: refused unparsed.
        (b"[" * DEEP + b"]" * DEEP, "request_too_complex"),
        (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "request_too_complex"),
        (b"1" * 5000, "invalid_json"),
        (b"\xff", "invalid_json"),
    ],
)
def test_admin_json_bodies_refuse_what_json_cannot_read(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        json_object(raw)
    assert err.value.code == code


# -- bearer tokens -----------------------------------------------------------------------------

SECRET = "fuzz-test-secret-" + "x" * 32
VERIFIER_SETTINGS = AuthSettings(hs256_secrets=(SECRET,), cache_size=0)
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, payload: bytes) -> str:
    """A token whose HS256 signature is right whatever the header and payload bytes are."""
    signing = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(mac)}"


def verify(token: str) -> Principal | AuthenticationFailed:
    verifier = TokenVerifier(VERIFIER_SETTINGS, clock=lambda: NOW)
    try:
        return asyncio.run(verifier.verify(token))
    except AuthenticationFailed as exc:
        return exc


HEADER = b'{"alg":"HS256","typ":"JWT"}'
claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": json_values,
        "team": json_values | st.just("team-a"),
        "exp": json_values | st.just(NOW + 600),
        "iat": json_values,
        "nbf": json_values,
        "roles": json_values,
        "aud": json_values,
    },
)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_as_a_token_is_a_principal_or_401(token: str) -> None:
    assert isinstance(verify(token), Principal | AuthenticationFailed)


@FUZZ
@given(
    st.binary(max_size=100) | st.just(HEADER) | json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | claims.map(lambda c: json.dumps(c, allow_nan=True).encode()),
)
def test_validly_signed_garbage_is_a_principal_or_401(header: bytes, payload: bytes) -> None:
    got = verify(signed(header, payload))
    assert isinstance(got, Principal | AuthenticationFailed)
    if isinstance(got, AuthenticationFailed):
        assert (got.status, got.code) == (401, "invalid_api_key")


@pytest.mark.parametrize(
    "claim",
    [
        b'"exp":1' + b"0" * 400,
        b'"exp":1e400',
        b'"exp":-1e400',
        b'"exp":NaN',
        b'"exp":"nan"',
        b'"exp":' + str(NOW + 600).encode() + b',"iat":1' + b"0" * 400,
        b'"exp":' + str(NOW + 600).encode() + b',"nbf":1' + b"0" * 400,
        b'"exp":' + str(NOW + 600).encode() + b',"nbf":1e400',
        b'"exp":' + str(NOW + 600).encode() + b',"iat":"Infinity"',
        b'"exp":-1',
    ],
)
def test_out_of_range_times_are_401(claim: bytes) -> None:
    got = verify(signed(HEADER, b'{"sub":"alice","team":"team-a",' + claim + b"}"))
    assert isinstance(got, GatewayError)
    assert (got.status, got.code) == (401, "invalid_api_key")


def test_the_hand_built_token_is_accepted_when_its_times_are_sane() -> None:
    # The forging above is only meaningful if a sane token built the same way passes.
    exp = str(int(NOW) + 600).encode()
    got = verify(signed(HEADER, b'{"sub":"alice","team":"team-a","exp":' + exp + b"}"))
    assert got == Principal(team="team-a", user="alice", roles=frozenset())
