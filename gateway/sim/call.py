"""One request to the simulated upstream: who sent it, its parsed body, and how it is recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request


@dataclass
class Call:
    request: Request
    key: str | None  # the bearer secret, whether or not it is a valid one
    body_size: int
    json: Any = None  # the parsed body when it is JSON
    form: dict[str, str] | None = None  # non-file multipart/urlencoded fields
    files: dict[str, dict[str, Any]] | None = None
    params: dict[str, str] = field(default_factory=dict)  # filled in by routing

    @property
    def path(self) -> str:
        return self.request.url.path

    @property
    def base_url(self) -> str:
        return f"{self.request.url.scheme}://{self.request.url.netloc}"

    def fields(self) -> dict[str, Any] | None:
        """The body as a dict of fields, whichever way it was encoded; None if it is neither."""
        if self.form is not None:
            return self.form
        return self.json if isinstance(self.json, dict) else None

    def record(self) -> dict[str, Any]:
        request = self.request
        return {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_size": self.body_size,
            "json": self.json,
            "form": self.form,
            "files": self.files,
            "key": self.key,
        }


def bearer(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return (secret.strip() or None) if scheme.lower() == "bearer" else None


async def read_call(request: Request) -> Call:
    body = await request.body()
    call = Call(request=request, key=bearer(request), body_size=len(body))
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        call.form, call.files = {}, {}
        async with request.form() as parsed:
            for name, value in parsed.multi_items():
                if isinstance(value, UploadFile):
                    size = len(await value.read())
                    call.files[name] = {
                        "filename": value.filename,
                        "content_type": value.content_type,
                        "size": size,
                    }
                else:
                    call.form[name] = value
    elif body:
        try:
            call.json = json.loads(body)
        except ValueError:
            call.json = None  # body_size still tells the test something was sent
    return call
