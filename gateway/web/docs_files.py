"""What ``GET /docs`` serves: a page that shows ``/openapi.json`` with Swagger UI.

Swagger UI comes from the pinned ``swagger-ui-bundle-v2`` package, never from a CDN: the page
runs only code installed with the gateway. The files are a fixed allowlist, each at one exact
path (a request's path never reaches the file system), read once, on first use. The page has
no inline script (its start-up is ``static/docs-init.js``), so it runs under a
Content-Security-Policy that admits scripts, styles and requests from the gateway's own origin
only; it may not be framed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
STATIC_PREFIX = "/docs/static/"

# name under STATIC_PREFIX -> (package, file, media type); DOCS_PATH is the page itself.
_SWAGGER, _OWN = "swagger_ui_bundle", "gateway.web"
_FILES = {
    DOCS_PATH: (_OWN, "docs.html", "text/html; charset=utf-8"),
    STATIC_PREFIX + "docs-init.js": (_OWN, "docs-init.js", "text/javascript; charset=utf-8"),
    STATIC_PREFIX + "swagger-ui-bundle.js": (
        _SWAGGER,
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
    ),
    STATIC_PREFIX + "swagger-ui.css": (_SWAGGER, "swagger-ui.css", "text/css; charset=utf-8"),
    STATIC_PREFIX + "favicon-32x32.png": (_SWAGGER, "favicon-32x32.png", "image/png"),
}
# Every path the docs answer on, for the public paths (exact: nothing else under /docs is).
PATHS = frozenset({OPENAPI_PATH, *_FILES})

# data: images are Swagger UI's own icons; connect-src 'self' lets it fetch the document and
# send "Try it out" calls to this gateway, and nowhere else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass(frozen=True)
class DocsFile:
    body: bytes
    media_type: str
    etag: str


def _swagger_dir() -> Traversable:
    # The bundle keeps its files under vendor/swagger-ui-<version>/: found, not hard-coded,
    # so a new pin needs no change here.
    vendor = files(_SWAGGER) / "vendor"
    found = [d for d in vendor.iterdir() if d.is_dir() and d.name.startswith("swagger-ui-")]
    if len(found) != 1:
        raise RuntimeError(f"expected one swagger-ui-* folder in {_SWAGGER}, found {len(found)}")
    return found[0]


class DocsFiles:
    """The docs' files by path, read once when first asked for (most processes never are)."""

    def __init__(self) -> None:
        self._files: dict[str, DocsFile] | None = None

    def get(self, path: str) -> DocsFile | None:
        if self._files is None:
            self._files = self._load()
        return self._files.get(path)

    @staticmethod
    def _load() -> dict[str, DocsFile]:
        roots = {_SWAGGER: _swagger_dir(), _OWN: files(_OWN) / "static"}
        out = {}
        for path, (package, name, media_type) in _FILES.items():
            body = (roots[package] / name).read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            out[path] = DocsFile(body, media_type, etag)
        return out
