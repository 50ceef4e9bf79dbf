"""Gateway API keys as values: their format, their keyed hash, and what a stored key grants.

A key reads ``gwk_<id>_<secret>``: 16 hex digits of id (shown in listings, used to find the
record) and 48 hex digits (192 bits) of secret. The whole key matches
``gwk_[0-9a-f]{16}_[0-9a-f]{48}``, so secret scanners can recognise it. Only a keyed hash
(HMAC-SHA256 under a server-side pepper) is stored: a copy of Redis does not yield a key, and
without the pepper a stored hash cannot even be checked against a guess.

No I/O here: ``gateway.auth.key_store`` keeps records in Redis, ``key_verifier`` turns a
presented key into a ``Principal``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "gwk_"
PATTERN = re.compile(r"gwk_([0-9a-f]{16})_([0-9a-f]{48})")
ID_PATTERN = re.compile(r"[0-9a-f]{16}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# How a key's calls are attributed: no person's JWT subject may start so (auth/verifier.py).
KEY_USER_PREFIX = "key:"
# The per-key limits; tokens and spend per day/month beyond these are the team's alone.
KEY_LIMITS = (
    "requests_per_minute",
    "tokens_per_minute",
    "spend_per_day",
    "spend_per_month",
    "concurrent_jobs",
)
ACTIVE, REVOKED = "active", "revoked"


def new_key() -> tuple[str, str]:
    """A fresh (id, key)."""
    key_id = secrets.token_hex(8)
    return key_id, rekey(key_id)


def rekey(key_id: str) -> str:
    """A new secret for an existing id (rotation keeps the id, so limits and usage stay)."""
    return f"{PREFIX}{key_id}_{secrets.token_hex(24)}"


def parse(token: str) -> str | None:
    """The id of a well-formed key, else None."""
    m = PATTERN.fullmatch(token)
    return m.group(1) if m else None


def digest(pepper: bytes, token: str) -> str:
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What a gateway key adds to its team's rules: its own models and limits (stored units,
    -1 unlimited). Carried on the ``Principal`` of a caller that used a key."""

    id: str
    name: str
    models: tuple[str, ...] | None = None  # None: whatever the team may use
    limits: tuple[tuple[str, int], ...] = ()

    def limit(self, kind: str) -> int:
        for k, v in self.limits:
            if k == kind:
                return v
        return -1

    def limits_any(self, kinds: tuple[str, ...]) -> bool:
        """Whether the key sets a limit of any of ``kinds``: a key without one keeps no
        counters of its own for them (it costs what a JWT costs)."""
        return any(k in kinds for k, _ in self.limits)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key, as Redis holds it (``digest`` fields are hashes, never secrets)."""

    id: str
    team: str
    name: str
    roles: tuple[str, ...]
    models: tuple[str, ...] | None
    limits: tuple[tuple[str, int], ...]
    created: float
    expires: float | None
    state: str
    digest: str
    previous_digest: str = ""
    previous_until: float = 0.0
    revoked: float | None = None
    last_used: float | None = None
    created_by: str = ""

    @property
    def scope(self) -> KeyScope:
        return KeyScope(self.id, self.name, self.models, self.limits)

    @property
    def user(self) -> str:
        """How the key's calls are attributed in logs, metrics and the usage ledger."""
        return f"{KEY_USER_PREFIX}{self.name}"

    def matches(self, candidate: str, now: float) -> bool:
        """Whether ``candidate`` (a digest) is this key's secret, or its previous one within
        the rotation's grace period."""
        if same_digest(candidate, self.digest):
            return True
        return (
            bool(self.previous_digest)
            and now < self.previous_until
            and same_digest(candidate, self.previous_digest)
        )

    def refusal(self, now: float) -> str | None:
        """Why a matching secret does not authenticate now (a metric label), else None."""
        if self.state != ACTIVE:
            return "key_revoked"
        if self.expires is not None and now >= self.expires:
            return "key_expired"
        return None

    def fields(self) -> dict[str, str]:
        """The Redis hash of this record."""
        return {
            "team": self.team,
            "name": self.name,
            "roles": " ".join(self.roles),
            "models": "\n".join(self.models) if self.models is not None else "*none*",
            "limits": " ".join(f"{k}={v}" for k, v in self.limits),
            "created": repr(self.created),
            "expires": "" if self.expires is None else repr(self.expires),
            "state": self.state,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "previous_until": repr(self.previous_until),
            "revoked": "" if self.revoked is None else repr(self.revoked),
            "created_by": self.created_by,
        }

    @classmethod
    def from_fields(cls, key_id: str, f: Mapping[str, str]) -> KeyRecord:
        def when(name: str) -> float | None:
            v = f.get(name, "")
            return float(v) if v else None

        models_text = f.get("models", "*none*")
        limits: list[tuple[str, int]] = []
        for pair in f.get("limits", "").split():
            kind, _, value = pair.partition("=")
            limits.append((kind, int(value)))
        return cls(
            id=key_id,
            team=f["team"],
            name=f["name"],
            roles=tuple(f.get("roles", "").split()),
            models=None if models_text == "*none*" else tuple(models_text.split("\n")),
            limits=tuple(limits),
            created=float(f.get("created", "0")),
            expires=when("expires"),
            state=f.get("state", REVOKED),
            digest=f.get("digest", ""),
            previous_digest=f.get("previous_digest", ""),
            previous_until=float(f.get("previous_until") or 0),
            revoked=when("revoked"),
            last_used=when("last_used"),
            created_by=f.get("created_by", ""),
        )
