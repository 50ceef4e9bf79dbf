"""GET /openapi.json and GET /docs on a real socket: the document is valid OpenAPI 3.1,
describes exactly the routes the live app serves under the gateway's own prefixes, and every
answer the gateway really gives (successes and errors, per route) is one it describes, its
body valid against the described schema; the docs page and its files are public, run no
inline script, carry a strict CSP and cannot be framed; the document holds no secret."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import httpx2
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import BaseRoute, Route

from gateway.auth.api_keys import PATTERN
from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.config import SimConfig
from gateway.web.routes import PrefixGroup
from tests.conftest import Stack, make_stack

ADMIN = ("gateway-admin",)
TEAM_ADMIN = ("team-admin",)
OWN_PREFIXES = ("/admin/v1/", "/v1/gateway/", "/v1/videos")
OWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
VIDEOS = {
    "models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4, 8], "price_per_second": 0.25}},
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
}
NO_VIDEO = "video_" + "0" * 32
# Answers >= 400 that are not the gateway's errors: readiness's own body, the upstream's 416.
NOT_ERRORS = {("/readyz", "503"), ("/v1/videos/{video_id}/content", "416")}


@pytest.fixture(scope="module")
def stack(redis_server: RedisProcess) -> Iterator[Stack]:
    # One stack for the module: every test here reads, or writes under names of its own.
    with make_stack(
        redis_server.url,
        key_ids=("primary", "secondary"),
        sim=SimConfig(job_seconds=0, content_bytes=1000),
        server={"metrics_token": secrets.token_urlsafe(24)},
        videos=VIDEOS,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def doc(stack: Stack) -> dict[str, Any]:
    r = httpx2.get(stack.url + "/openapi.json")  # no token
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    return body


class Described:
    """Holds live answers to what the document says the route answers."""

    def __init__(self, stack: Stack, doc: dict[str, Any]) -> None:
        self.stack = stack
        self.doc = doc
        self.client = httpx2.Client(base_url=stack.url, timeout=10)
        # Answers are held to closed schemas: a field the code returns and the document does
        # not name fails, as does a named field the code leaves out (they are required).
        self.closed = _closed(doc["components"])

    def call(
        self,
        method: str,
        template: str,
        path: str | None = None,
        *,
        token: str | None = None,
        status: int,
        code: str | None = None,
        **kw: Any,
    ) -> httpx2.Response:
        """Send, expect ``status`` (and error ``code``), and hold the answer to the
        description of ``template``: a described status, a described media type, a body
        valid against its schema, and for an error a code among that status's examples."""
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        r = self.client.request(method, path or template, headers=headers, **kw)
        assert r.status_code == status, (method, path or template, r.status_code, r.text)
        op = self.doc["paths"][template.partition("?")[0]][method.lower()]
        answer = op["responses"].get(str(status))
        assert answer is not None, f"{method} {template}: {status} is not described"
        media = r.headers.get("content-type", "").split(";")[0]
        content = answer.get("content", {})
        if status in (304, 416):
            return r
        assert media in content, f"{method} {template} {status}: {media} not described"
        if media == "application/json":
            schema = {**content[media]["schema"], "components": self.closed}
            OAS31Validator(schema).validate(r.json())
        if code is not None:
            assert r.json()["error"]["code"] == code
            assert code in content[media]["examples"], f"{method} {template}: {code} not listed"
        return r


def _closed(schema: Any) -> Any:
    """A copy in which every object schema with properties admits no other property."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def described(stack: Stack, doc: dict[str, Any]) -> Iterator[Described]:
    d = Described(stack, doc)
    yield d
    d.client.close()


def _served(routes: list[BaseRoute]) -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, PrefixGroup):
            yield from _served(route.routes)
        elif isinstance(route, Route) and ":path}" not in route.path:
            # A {x:path} catch-all spans segments, which no OpenAPI path template can.
            for method in route.methods or ():
                if method != "HEAD":
                    yield route.path, method.lower()


def test_openapi_json_is_public_and_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(doc).validate()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_it_describes_exactly_the_routes_the_app_serves(stack: Stack, doc: dict[str, Any]) -> None:
    served = set(_served(stack.app.asgi.routes))
    own = {(p, m) for p, m in served if p in OWN_PATHS or p.startswith(OWN_PREFIXES)}
    described = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert own - described == set(), "served but not described"
    assert described - served == set(), "described but not served"
    # Sanity: the derivation found each family.
    assert {("/admin/v1/reconcile", "post"), ("/v1/gateway/usage", "get")} <= own
    assert {("/v1/videos/{video_id}/content", "get"), ("/readyz", "get")} <= own


def test_every_operation_lists_its_errors_in_the_one_shape(doc: dict[str, Any]) -> None:
    examples = doc["components"]["examples"]
    error = {"$ref": "#/components/schemas/Error", "components": doc["components"]}
    for code, example in examples.items():
        OAS31Validator(error).validate(example["value"])
        assert example["value"]["error"]["code"] == code
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, answer in op["responses"].items():
                if status == "default" or int(status) < 400:
                    continue
                listed = answer.get("content", {}).get("application/json", {}).get("examples")
                if (path, status) in NOT_ERRORS:
                    assert listed is None
                    continue
                assert listed, (path, method, status)
                for code, ref in listed.items():
                    assert ref == {"$ref": f"#/components/examples/{code}"}
                    assert f"`{code}`" in answer["description"]
            if op.get("security") != []:  # needs a token: a bad one is a 401
                assert (
                    "invalid_api_key"
                    in op["responses"]["401"]["content"]["application/json"]["examples"]
                ), (path, method)


def test_health_and_metrics(stack: Stack, described: Described) -> None:
    described.call("GET", "/healthz", status=200)
    described.call("GET", "/readyz", status=200)
    described.call("GET", "/metrics", status=401, code="invalid_api_key")
    token = stack.settings.server.metrics_token
    described.call("GET", "/metrics", token=token, status=200)


def test_team_routes(stack: Stack, described: Described) -> None:
    me = stack.token()
    described.call("GET", "/v1/gateway/quota", status=401, code="invalid_api_key")
    described.call("GET", "/v1/gateway/quota", token=me, status=200)
    described.call("GET", "/v1/gateway/usage", token=me, status=200)
    described.call("GET", "/v1/gateway/usage?format=csv", token=me, status=200)
    described.call(
        "GET",
        "/v1/gateway/usage",
        "/v1/gateway/usage?x=1",
        token=me,
        status=400,
        code="unknown_parameter",
    )
    described.call(
        "GET",
        "/v1/gateway/usage",
        "/v1/gateway/usage?from=yesterday",
        token=me,
        status=400,
        code="invalid_value",
    )


def test_admin_routes(stack: Stack, described: Described) -> None:
    root, me = stack.token(team="ops", user="root", roles=ADMIN), stack.token()
    team = f"t-{secrets.token_hex(4)}"
    call = described.call
    call("GET", "/admin/v1/teams", token=me, status=403, code="permission_denied")
    call("GET", "/admin/v1/teams", token=root, status=200)
    t = "/admin/v1/teams/{team}"
    call("GET", t, f"/admin/v1/teams/{team}", token=root, status=200)
    call("GET", t, "/admin/v1/teams/default", token=root, status=400, code="invalid_value")
    limits, url = "/admin/v1/teams/{team}/limits", f"/admin/v1/teams/{team}/limits"
    call("PATCH", limits, url, token=root, status=200, json={"requests_per_minute": None})
    call("PATCH", limits, url, token=root, status=400, code="unknown_parameter", json={"x": 1})
    call("PUT", limits, url, token=root, status=200, json={"spend_per_month": 2.5})
    call("PUT", limits, url, token=root, status=400, code="invalid_json", content=b"[]")
    call("DELETE", limits, url, token=root, status=200)
    reset, url = "/admin/v1/teams/{team}/usage/reset", f"/admin/v1/teams/{team}/usage/reset"
    call("POST", reset, url, token=root, status=200, json={"window": "day"})
    call("POST", reset, url, token=root, status=400, code="missing_required_parameter", json={})
    jobs = "/admin/v1/teams/{team}/jobs"
    call("GET", jobs, f"/admin/v1/teams/{team}/jobs", token=root, status=200)
    call(
        "GET",
        jobs,
        f"/admin/v1/teams/{team}/jobs?limit=0",
        token=root,
        status=400,
        code="invalid_value",
    )
    call(
        "GET",
        jobs,
        f"/admin/v1/teams/{team}/jobs?after={NO_VIDEO}",
        token=root,
        status=404,
        code="not_found",
    )
    job = "/admin/v1/jobs/{id}"
    call("GET", job, f"/admin/v1/jobs/{NO_VIDEO}", token=root, status=404, code="not_found")
    call("GET", "/admin/v1/upstream-keys", token=root, status=200)
    for action in ("disable", "enable"):  # secondary: the video test needs primary
        k = f"/admin/v1/upstream-keys/{{id}}/{action}"
        call("POST", k, k.replace("{id}", "secondary"), token=root, status=200)
        call("POST", k, k.replace("{id}", "nope"), token=root, status=404, code="not_found")
    call("GET", "/admin/v1/audit", token=root, status=200)
    call(
        "GET",
        "/admin/v1/audit",
        "/admin/v1/audit?limit=0",
        token=root,
        status=400,
        code="invalid_value",
    )
    call("GET", "/admin/v1/usage", token=root, status=200)
    call(
        "GET", "/admin/v1/usage", f"/admin/v1/usage?team={team}&format=csv", token=root, status=200
    )
    call(
        "GET",
        "/admin/v1/usage",
        "/admin/v1/usage?team=%7B",
        token=root,
        status=400,
        code="invalid_value",
    )
    call("POST", "/admin/v1/reconcile", token=root, status=200)


@pytest.mark.parametrize("door", ["admin", "team"])
def test_api_key_routes(stack: Stack, described: Described, door: str) -> None:
    team = f"t-{secrets.token_hex(4)}"
    call = described.call
    if door == "admin":
        who = stack.token(team="ops", user="root", roles=ADMIN)
        base = "/admin/v1/teams/{team}/api-keys"
        url = base.replace("{team}", team)
        one, rotate = "/admin/v1/api-keys/{id}", "/admin/v1/api-keys/{id}/rotate"
    else:
        who = stack.token(team=team, user="lead", roles=TEAM_ADMIN)
        base = url = "/v1/gateway/api-keys"
        one, rotate = "/v1/gateway/api-keys/{id}", "/v1/gateway/api-keys/{id}/rotate"
        call("GET", base, token=stack.token(team=team), status=403, code="permission_denied")
    body = {"name": "nightly", "models": ["gpt-4o-mini"], "limits": {"spend_per_day": 5}}
    made = call("POST", base, url, token=who, status=201, json=body).json()
    call("POST", base, url, token=who, status=409, code="name_taken", json=body)
    call("POST", base, url, token=who, status=400, code="missing_required_parameter", json={})
    call("GET", base, url, token=who, status=200)
    key = made["id"]
    call("POST", rotate, rotate.replace("{id}", key), token=who, status=200, json={})
    call(
        "POST",
        rotate,
        rotate.replace("{id}", key),
        token=who,
        status=400,
        code="unknown_parameter",
        json={"x": 1},
    )
    call("DELETE", one, one.replace("{id}", key), token=who, status=200)
    call(
        "POST",
        rotate,
        rotate.replace("{id}", key),
        token=who,
        status=409,
        code="key_not_active",
        json={},
    )
    call("DELETE", one, one.replace("{id}", "0" * 16), token=who, status=404, code="not_found")


def test_video_routes(stack: Stack, described: Described) -> None:
    me, root = stack.token(team="team-b"), stack.token(team="ops", user="root", roles=ADMIN)
    call = described.call
    create = {"prompt": "a lighthouse at dusk", "model": "sora-2", "seconds": "4"}
    idem = {"idempotency-key": f"k-{secrets.token_hex(8)}"}
    video = call("POST", "/v1/videos", token=me, status=200, json=create, headers=idem).json()
    call(
        "POST",
        "/v1/videos",
        token=me,
        status=422,
        code="idempotency_key_reused",
        json={**create, "seconds": "8"},
        headers=idem,
    )
    for bad, code in [
        ({"prompt": "x", "model": "nope"}, "model_not_found"),
        ({"model": "sora-2"}, "missing_required_parameter"),
        ({"prompt": "x", "colour": "red"}, "unknown_parameter"),
        ({"prompt": "x", "seconds": "5"}, "invalid_value"),
    ]:
        call("POST", "/v1/videos", token=me, status=400, code=code, json=bad)
    call(
        "POST",
        "/v1/videos",
        token=me,
        status=400,
        code="unsupported_media_type",
        content=b"x",
        headers={"content-type": "text/plain"},
    )
    call(
        "POST",
        "/v1/videos",
        token=me,
        status=200,
        files={"input_reference": ("ref.png", b"\x89PNG\r\n\x1a\n", "image/png")},
        data={"prompt": "from a picture", "seconds": "4"},
    )
    call("GET", "/v1/videos", "/v1/videos?limit=1", token=me, status=200)
    call("GET", "/v1/videos", "/v1/videos?limit=0", token=me, status=400, code="invalid_value")
    one = "/v1/videos/{video_id}"
    url = f"/v1/videos/{video['id']}"
    got = call("GET", one, url, token=me, status=200).json()
    assert got["status"] == "completed"
    assert got["video"]["url"].endswith(url + "/content")
    call("GET", one, f"/v1/videos/{NO_VIDEO}", token=me, status=404, code="not_found")
    call("GET", one, "/v1/videos/video_x%2Fcontent", token=me, status=400, code="invalid_path")
    content = "/v1/videos/{video_id}/content"
    call("GET", content, url + "/content", token=me, status=200)
    call("GET", content, url + "/content", token=me, status=206, headers={"range": "bytes=0-9"})
    call("GET", content, url + "/content?variant=x", token=me, status=400, code="invalid_value")
    call("GET", "/admin/v1/jobs/{id}", f"/admin/v1/jobs/{video['id']}", token=root, status=200)
    remix = "/v1/videos/{video_id}/remix"
    call("POST", remix, url + "/remix", token=me, status=200, json={"prompt": "at dawn"})
    call(
        "POST",
        remix,
        url + "/remix",
        token=me,
        status=400,
        code="unknown_parameter",
        json={"prompt": "x", "size": "1x1"},
    )
    call("DELETE", one, url, token=me, status=200)
    call("GET", one, url, token=me, status=404, code="not_found")
    call("GET", "/v1/videos/edits", token=me, status=404, code="unsupported_endpoint")
    call("POST", "/v1/videos/characters", token=me, status=404, code="unsupported_endpoint")


def test_docs_page_and_its_files_are_public_and_locked_down(stack: Stack) -> None:
    page = httpx2.get(stack.url + "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    # No inline script: every <script> has a src and nothing inside.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts
    assert all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = {urljoin(stack.url + "/docs", link) for link in links}
    assert stack.url + "/openapi.json" in assets  # the <noscript> link
    assert len([a for a in assets if "/docs/static/" in a]) == 4
    for url in [stack.url + "/docs", *assets]:
        r = httpx2.get(url)
        assert r.status_code == 200, url
        csp = dict(
            part.strip().split(" ", 1)
            for part in r.headers["content-security-policy"].split(";")
            if part.strip()
        )
        assert csp["default-src"] == "'none'", url
        assert csp["script-src"] == "'self'", url
        assert "unsafe" not in r.headers["content-security-policy"]
        assert csp["frame-ancestors"] == "'none'"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "www-authenticate" not in r.headers
    init = httpx2.get(stack.url + "/docs/static/docs-init.js")
    assert init.headers["content-type"].startswith("text/javascript")
    assert '"openapi.json"' in init.text
    assert "validatorUrl: null" in init.text
    bundle = httpx2.get(stack.url + "/docs/static/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 100_000
    assert "SwaggerUIBundle" in bundle.text
    etag = bundle.headers["etag"]
    again = httpx2.get(
        stack.url + "/docs/static/swagger-ui-bundle.js", headers={"if-none-match": etag}
    )
    assert again.status_code == 304
    assert not again.content


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/docs/"),
        ("GET", "/docs/static/"),
        ("GET", "/docs/static/swagger-ui.js.map"),
        ("GET", "/docs/static/swagger-ui-standalone-preset.js"),
        ("GET", "/docs/staticx/swagger-ui.css"),
        ("GET", "/openapi.yaml"),
    ],
)
def test_nothing_else_is_public(stack: Stack, method: str, path: str) -> None:
    r = httpx2.request(method, stack.url + path)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_other_methods_on_the_public_paths_do_nothing(stack: Stack) -> None:
    for path in ("/docs", "/openapi.json", "/docs/static/docs-init.js"):
        r = httpx2.post(stack.url + path, content=b"{}")
        assert r.status_code == 405, path
        assert r.json()["error"]["code"] == "http_error"


def test_the_document_holds_no_secret(stack: Stack) -> None:
    text = httpx2.get(stack.url + "/openapi.json").text
    auth, server = stack.settings.auth, stack.settings.server
    secret_values = [
        *stack.keys.values(),
        stack.jwt_secret,
        auth.api_key_pepper,
        server.metrics_token,
        *auth.hs256_secrets,
    ]
    for value in secret_values:
        assert value
        assert value not in text
    # Key-shaped strings are the all-zero placeholder only; no upstream-style key at all.
    assert {m.group(0) for m in PATTERN.finditer(text)} <= {"gwk_" + "0" * 16 + "_" + "0" * 48}
    assert not re.search(r"sk-[A-Za-z0-9_-]{8,}", text)
