"""CSRF tokens: one random token per session (and one per sign-in form), echoed by every form
and compared in constant time. ``SameSite=Strict`` already keeps other sites' requests from
carrying the cookie; the token is the second lock."""

from __future__ import annotations

import hmac
import secrets

FIELD = "csrf"  # the form field every console form carries
_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(_BYTES)


def matches(expected: str | None, given: str | None) -> bool:
    """Whether a form's token is the one expected; a missing one never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
