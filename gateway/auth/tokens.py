"""Minting HS256 tokens, for development and service accounts (`gateway token`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt


def mint_token(
    secret: str,
    *,
    team: str,
    user: str,
    roles: Sequence[str] = (),
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    team_claim: str = "team",
    roles_claim: str = "roles",
    now: float | None = None,
) -> str:
    """An HS256 token the verifier accepts with ``secret`` (for ``gateway token`` and tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user,
        team_claim: team,
        roles_claim: list(roles),
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
