"""The console's cookies: an opaque value signed with HMAC-SHA256, and the headers that set
and clear it (pure).

A signed value reads ``<value>.<signature>``; the signature covers a purpose as well, so a
value signed for one cookie is worthless in another. The value itself is random and means
nothing outside Redis: the cookie carries no identity, role or expiry a browser could edit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SESSION = "gw_console"  # the session id, for as long as the session lasts
SIGN_IN = "gw_console_signin"  # the sign-in form's CSRF nonce, before there is a session
OIDC = "gw_console_oidc"  # binds an OpenID Connect sign-in under way to this browser
PATH = "/console"
OIDC_PATH = "/console/oidc"
_ID_BYTES = 32  # 256 random bits: guessing a live session id is hopeless
_MAX_COOKIE_CHARS = 256


def new_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def _mac(secret: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(secret, f"{purpose}\n{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, purpose: str, value: str) -> str:
    """``value`` with its signature for ``purpose`` (value must not contain a dot)."""
    if "." in value or not value:
        raise ValueError("a signed value is non-empty and has no dot")
    return f"{value}.{_mac(secret, purpose, value)}"


def unsign(secret: bytes, purpose: str, signed: str | None) -> str | None:
    """The value if ``signed`` carries a valid signature for ``purpose``, else None."""
    if not signed or len(signed) > _MAX_COOKIE_CHARS:
        return None
    value, dot, mac = signed.rpartition(".")
    if not dot or not value:
        return None
    want = _mac(secret, purpose, value)
    return value if hmac.compare_digest(want.encode(), mac.encode()) else None


def read(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` request header (the first, if repeated)."""
    for part in (cookie_header or "").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value.strip().strip('"')
    return None


def set_header(
    name: str,
    value: str,
    *,
    max_age: int,
    secure: bool,
    path: str = PATH,
    same_site: str = "Strict",
) -> str:
    """A ``Set-Cookie`` value: script cannot read it, other sites never send it, it lives under
    /console only, and over https only unless the gateway is plain-http development.

    ``same_site="Lax"`` is for the OpenID Connect binding alone: the IdP's redirect back is a
    navigation from another site, which a Strict cookie would not come along with."""
    attrs = [
        f"{name}={value}",
        f"Path={path}",
        f"Max-Age={max(0, max_age)}",
        "HttpOnly",
        f"SameSite={same_site}",
    ]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)


def clear_header(name: str, *, secure: bool, path: str = PATH, same_site: str = "Strict") -> str:
    return set_header(name, "", max_age=0, secure=secure, path=path, same_site=same_site)
