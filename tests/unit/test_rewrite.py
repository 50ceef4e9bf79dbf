import gzip
import json

import pytest

from gateway.errors import InvalidRequest
from gateway.upstream import rewrite


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/models/gpt-4o:free", "/v1/models/gpt-4o:free"),
        (b"/v1/models/a%20b", "/v1/models/a%20b"),
        (b"/v1/models/a b", "/v1/models/a%20b"),
        (b"/v1", "/v1"),
    ],
)
def test_valid_paths_are_requoted(raw: bytes, expected: str) -> None:
    assert rewrite.upstream_path(raw)[1] == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/../admin",
        b"/v1/%2e%2e/admin",
        b"/v1/models/a%2Fb",
        b"/v1/models/a%5Cb",
        b"/v1/models/a%00b",
        b"/v1//x",
        b"/v1/models/",
        b"/v1/./models",
        b"/v1/models/%ff",
        b"/v1/" + b"a" * 3000,
        b"v1/models",
    ],
)
def test_bad_paths_are_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        rewrite.upstream_path(raw)
    assert info.value.status == 400
    assert info.value.code == "invalid_path"


def test_decoded_path_is_what_routing_sees() -> None:
    assert rewrite.upstream_path(b"/v1/models/a%20b")[0] == "/v1/models/a b"


def test_request_headers_are_an_allowlist() -> None:
    caller = [
        (b"authorization", b"Bearer caller-jwt"),
        (b"cookie", b"a=b"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"connection", b"keep-alive"),
        (b"x-stainless-os", b"Linux"),
        (b"openai-organization", b"org"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json"),
        (b"accept-encoding", b"gzip, br, zstd"),
    ]
    out = rewrite.request_headers(caller, secret="sk-up", request_id="req_1", user_agent="gw")
    assert out == {
        "content-type": "application/json",
        "accept": "application/json",
        "accept-encoding": "gzip",
        "authorization": "Bearer sk-up",
        "x-request-id": "req_1",
        "user-agent": "gw",
    }


def test_response_headers_drop_cookies_and_identity() -> None:
    upstream = [
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"s=1"),
        (b"Server", b"nginx"),
        (b"X-Powered-By", b"new-api"),
        (b"X-Oneapi-Request-Id", b"20261124abcdef"),
        (b"Via", b"1.1 cf"),
        (b"ETag", b'"x"'),
    ]
    assert rewrite.response_headers(upstream) == [
        (b"content-type", b"application/json"),
        (b"x-upstream-request-id", b"20261124abcdef"),
        (b"etag", b'"x"'),
    ]


def test_normalise_openai_shape_keeps_code() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "no such model",
                "type": "invalid_request_error",
                "code": "model_not_found",
            }
        }
    ).encode()
    exc = rewrite.normalise_error(404, body)
    assert (exc.status, exc.code, exc.message, exc.error_type) == (
        404,
        "model_not_found",
        "no such model",
        "invalid_request_error",
    )


def test_normalise_task_shape_and_text() -> None:
    exc = rewrite.normalise_error(400, b'{"code":"task_not_exist","message":"gone","data":null}')
    assert (exc.code, exc.message) == ("task_not_exist", "gone")
    exc = rewrite.normalise_error(502, b"<html>bad gateway</html>")
    assert exc.code == "upstream_http_502"
    assert "502" in exc.message


def test_normalise_redacts_keys() -> None:
    body = (
        b'{"error":{"message":"key sk-abcdef123456 is invalid and so is SECRETVALUE","code":"x"}}'
    )
    exc = rewrite.normalise_error(401, body, secrets=["SECRETVALUE"])
    assert "sk-abcdef123456" not in exc.message
    assert "SECRETVALUE" not in exc.message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            'do_request_failed: Post "http://10.20.30.40:8080/v1/chat": dial tcp 10.20.30.40:8080',
            'do_request_failed: Post "[internal address]": dial tcp [internal address]',
        ),
        ("upstream http://relay:3000/v1 failed", "upstream [internal address] failed"),
        (
            "at http://[fd00::5]/x and https://api.svc/y",
            "at [internal address] and [internal address]",
        ),
        ("metadata http://169.254.169.254/latest", "metadata [internal address]"),
        ("from 192.168.1.7 and 127.0.0.1:6379", "from [internal address] and [internal address]"),
        # Public places and things that only look like addresses stay.
        (
            "see https://platform.openai.com/docs/guides",
            "see https://platform.openai.com/docs/guides",
        ),
        ("resolved to 8.8.8.8", "resolved to 8.8.8.8"),
        ("model v1.2.3.4000 and 999.1.1.1", "model v1.2.3.4000 and 999.1.1.1"),
        # A long run of scheme characters before "://" (once read from every word boundary)
        ("://" + "a-" * 40 + " x-http://10.0.0.1/", "://" + "a-" * 40 + " [internal address]"),
        ("x" * 40 + "http://db.internal/x", "[internal address]"),
    ],
)
def test_upstream_text_names_none_of_its_internal_addresses(text: str, shown: str) -> None:
    assert rewrite.redact(text) == shown
    body = json.dumps({"error": {"message": text, "code": "do_request_failed"}}).encode()
    assert rewrite.normalise_error(500, body).message == shown


def test_decode_gzip_body() -> None:
    assert rewrite.decode_body(gzip.compress(b"hello"), "gzip") == b"hello"
    assert rewrite.decode_body(b"garbage", "gzip") == b""


def test_retry_after() -> None:
    assert rewrite.retry_after_seconds({"retry-after": "7"}, 30) == 7
    assert rewrite.retry_after_seconds({}, 30) == 30
    assert rewrite.retry_after_seconds({"retry-after": "Wed, 21 Oct 2015"}, 30) == 30
