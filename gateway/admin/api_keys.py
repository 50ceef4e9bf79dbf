"""Issuing and managing gateway API keys: create, list, revoke, rotate, each change audited.

Two doors lead here: the admin API (any team, may grant roles) and a team admin's own view
under ``/v1/gateway/api-keys`` (``team`` pinned to the caller's team, no roles). A key of
another team is a 404 there, exactly like a missing one. The secret is in the answer to a
create or a rotate and nowhere else: not in a listing, the audit log, a log line or a metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from gateway.admin import inputs
from gateway.auth import api_keys
from gateway.auth.api_keys import ACTIVE, KEY_LIMITS, KeyRecord
from gateway.auth.key_store import KeyStore, NameTaken
from gateway.auth.principal import Principal
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from gateway.quota.model import LimitError, parse_limit, shown, stored_limit
from gateway.settings import AuthSettings


class Audit(Protocol):
    """Records a change; ``team`` puts the entry in that team's own audit stream."""

    def __call__(
        self,
        actor: Principal,
        action: str,
        target: str,
        before: Any,
        after: Any,
        *,
        team: str | None = None,
    ) -> Awaitable[None]: ...


# A model pattern as the teams' ``models:`` take them: a name or a glob, no spaces.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9*?\[\]][A-Za-z0-9_.:/*?\[\]!-]{0,127}")
MAX_MODELS = 64
MAX_KEYS_PER_TEAM = 1000
CREATE_FIELDS = frozenset({"name", "expires_in_days", "models", "limits", "roles"})


class KeyAdmin:
    def __init__(
        self,
        store: KeyStore,
        settings: AuthSettings,
        *,
        digest: Callable[[str], str] | None,
        audit: Audit,
        clock: Callable[[], float],
        unenforced: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._digest = digest
        self._audit = audit
        self._clock = clock
        # What a key could name here but this gateway would not check, and why.
        self._unenforced = dict(unenforced or {})

    def _hash(self, token: str) -> str:
        if self._digest is None:
            raise ServiceUnavailable(
                "Gateway API keys are not enabled on this gateway (auth.api_key_pepper is "
                "not set); ask its operators.",
                code="api_keys_disabled",
            )
        return self._digest(token)

    async def create(
        self, actor: Principal, team: str, doc: Mapping[str, Any], *, may_grant_roles: bool
    ) -> dict[str, Any]:
        inputs.check_team(team)
        unknown = sorted(set(doc) - CREATE_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter {unknown[0]!r}.", code="unknown_parameter", param=unknown[0]
            )
        self._may_manage(actor, None)
        name = _name(doc.get("name"))
        now = self._clock()
        expires = self._expiry(doc.get("expires_in_days"), now)
        models = _models(doc.get("models"))
        limits = _limits(doc.get("limits"))
        self._enforceable(models, limits)
        roles = self._roles(doc.get("roles"), may_grant_roles)
        key_id, token = api_keys.new_key()
        record = KeyRecord(
            id=key_id,
            team=team,
            name=name,
            roles=roles,
            models=models,
            limits=limits,
            created=now,
            expires=expires,
            state=ACTIVE,
            digest=self._hash(token),
            created_by=f"{actor.team}/{actor.user}",
        )
        if await self.store.count(team) >= MAX_KEYS_PER_TEAM:
            raise InvalidRequest(
                f"Team '{team}' has {MAX_KEYS_PER_TEAM} keys that are not revoked, the most a "
                "team may have; revoke keys it no longer needs.",
                code="too_many_keys",
            )
        await self.store.forget_revoked(team, MAX_KEYS_PER_TEAM)
        try:
            await self.store.create(record)
        except NameTaken:
            raise GatewayError(
                f"Team '{team}' already has a key named '{name}' that is not revoked.",
                code="name_taken",
                param="name",
                status=409,
            ) from None
        view = key_view(record, now)
        await self._audited(actor, "api_key.create", f"api_key:{key_id}", None, view, team)
        return {**view, "key": token}

    async def list(self, team: str) -> dict[str, Any]:
        inputs.check_team(team)
        now = self._clock()
        records = sorted(await self.store.team_keys(team), key=lambda r: (r.created, r.id))
        return {"object": "list", "data": [key_view(r, now) for r in records]}

    async def revoke(self, actor: Principal, key_id: str, *, team: str | None) -> dict[str, Any]:
        record = await self._find(key_id, team)
        self._may_manage(actor, record)
        now = self._clock()
        if record.state != ACTIVE:
            return key_view(record, now)  # revoked already: nothing changes, nothing audited
        before = key_view(record, now)
        await self.store.revoke(record, now)
        after = key_view(await self._find(key_id, team), now)
        await self._audited(
            actor, "api_key.revoke", f"api_key:{key_id}", before, after, record.team
        )
        return after

    async def rotate(
        self, actor: Principal, key_id: str, doc: Mapping[str, Any], *, team: str | None
    ) -> dict[str, Any]:
        unknown = sorted(set(doc) - {"grace_seconds"})
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter {unknown[0]!r}.", code="unknown_parameter", param=unknown[0]
            )
        grace = self._grace(doc.get("grace_seconds", self.settings.api_key_rotate_grace_seconds))
        record = await self._find(key_id, team)
        self._may_manage(actor, record)
        now = self._clock()
        if record.refusal(now) is not None:
            raise GatewayError(
                "Only an active key can be rotated; create a new one.",
                code="key_not_active",
                status=409,
            )
        token = api_keys.rekey(key_id)
        before = key_view(record, now)
        await self.store.rotate(record, self._hash(token), now + grace if grace > 0 else 0.0)
        after = key_view(await self._find(key_id, team), now)
        await self._audited(
            actor, "api_key.rotate", f"api_key:{key_id}", before, after, record.team
        )
        return {**after, "key": token}

    async def _audited(
        self, actor: Principal, action: str, target: str, before: Any, after: Any, team: str
    ) -> None:
        # A gateway admin's change goes to the shared log. Anyone else manages only their own
        # team's keys, as often as they like: their entries go to the team's own stream, so
        # that churn can never push an admin's entries out of the shared one.
        own = None if actor.has_role(self.settings.admin_role) else team
        await self._audit(actor, action, target, before, after, team=own)

    def _enforceable(
        self, models: tuple[str, ...] | None, limits: tuple[tuple[str, int], ...]
    ) -> None:
        """A key must not promise a scope this gateway would not check."""
        named = [("models", "models")] if models is not None else []
        named += [(kind, f"limits.{kind}") for kind, _ in limits]
        for what, param in named:
            why = self._unenforced.get(what)
            if why is not None:
                raise InvalidRequest(
                    f"This gateway {why}, so a key's {what} would not be enforced.",
                    code="invalid_value",
                    param=param,
                )

    def _may_manage(self, actor: Principal, record: KeyRecord | None) -> None:
        """Whether ``actor`` may create a key (``record`` None), or rotate or revoke
        ``record``: no one reaches through a key more than they hold. A gateway admin may do
        anything; a team admin cannot touch a key that has roles (rotating one would hand
        them its secret, and its roles), nor can a key with models or limits of its own manage
        keys (it could make or rotate one without them)."""
        if actor.has_role(self.settings.admin_role):
            return
        if record is not None and record.roles:
            raise PermissionDenied(
                f"The key '{record.name}' has roles ({', '.join(record.roles)}): only a "
                "gateway admin can rotate or revoke it."
            )
        own = actor.key
        if own is not None and (own.models is not None or own.limits):
            raise PermissionDenied(
                f"The key '{own.name}' has models or limits of its own, so it cannot manage "
                "keys; use a team admin's token or a key without them."
            )

    async def _find(self, key_id: str, team: str | None) -> KeyRecord:
        record = await self.store.get(key_id) if api_keys.ID_PATTERN.fullmatch(key_id) else None
        # Another team's key is exactly as missing as one that never existed.
        if record is None or (team is not None and record.team != team):
            raise NotFound("No API key has this id.")
        return record

    def _expiry(self, raw: Any, now: float) -> float | None:
        if raw is None:
            return None
        top = self.settings.api_key_max_days
        days = _number(raw)
        if days is None or not 0 < days <= top:
            raise InvalidRequest(
                f"expires_in_days must be a number of days above 0 and at most {top}.",
                code="invalid_value",
                param="expires_in_days",
            )
        return now + days * 86_400

    def _grace(self, raw: Any) -> float:
        top = 30 * 86_400
        seconds = _number(raw)
        if seconds is None or not 0 <= seconds <= top:
            raise InvalidRequest(
                f"grace_seconds must be a number of seconds from 0 to {top}.",
                code="invalid_value",
                param="grace_seconds",
            )
        return seconds

    def _roles(self, raw: Any, may_grant: bool) -> tuple[str, ...]:
        if raw is None or raw == []:
            return ()
        if not may_grant:
            raise InvalidRequest(
                "Only a gateway admin can give a key roles.", code="invalid_value", param="roles"
            )
        grantable = {self.settings.admin_role, self.settings.team_admin_role}
        if not isinstance(raw, list) or not all(isinstance(r, str) and r in grantable for r in raw):
            raise InvalidRequest(
                f"roles must be a list of {', '.join(sorted(grantable))}.",
                code="invalid_value",
                param="roles",
            )
        return tuple(sorted(set(raw)))


def _number(raw: Any) -> float | None:
    """A JSON number as a finite float, else None (True, "7" and 10**400 are no numbers)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        value = float(raw)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _name(raw: Any) -> str:
    if raw is None:
        raise InvalidRequest("name is required.", code="missing_required_parameter", param="name")
    if not isinstance(raw, str) or not api_keys.NAME.fullmatch(raw):
        raise InvalidRequest(
            "name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            code="invalid_value",
            param="name",
        )
    return raw


def _models(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > MAX_MODELS
        or not all(isinstance(m, str) and MODEL_PATTERN.fullmatch(m) for m in raw)
    ):
        raise InvalidRequest(
            f"models must be a list of 1 to {MAX_MODELS} model names or glob patterns "
            "(such as 'gpt-4o*').",
            code="invalid_value",
            param="models",
        )
    return tuple(dict.fromkeys(raw))


def _limits(raw: Any) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidRequest("limits must be an object.", code="invalid_value", param="limits")
    out: list[tuple[str, int]] = []
    for kind, value in raw.items():
        if kind not in KEY_LIMITS:
            raise InvalidRequest(
                f"Unknown key limit {kind!r}; a key's limits are {', '.join(KEY_LIMITS)}.",
                code="unknown_parameter",
                param=f"limits.{kind}",
            )
        try:
            limit = parse_limit(kind, value)
        except LimitError as exc:
            raise InvalidRequest(
                f"{kind} {exc.problem}.", code="invalid_value", param=f"limits.{kind}"
            ) from None
        if limit is not None:
            out.append((kind, stored_limit(kind, limit)))
    return tuple(sorted(out))


def key_view(record: KeyRecord, now: float) -> dict[str, Any]:
    """A key as its owners see it: never the secret or its hash."""
    state = record.state
    if state == ACTIVE and record.expires is not None and now >= record.expires:
        state = "expired"
    grace = record.previous_until if record.previous_digest and now < record.previous_until else 0
    return {
        "id": record.id,
        "object": "gateway.api_key",
        "name": record.name,
        "team": record.team,
        "prefix": f"{api_keys.PREFIX}{record.id}_",
        "user": record.user,
        "state": state,
        "roles": list(record.roles),
        "models": list(record.models) if record.models is not None else None,
        "limits": {kind: shown(kind, v) for kind, v in record.limits},
        "created_at": int(record.created),
        "created_by": record.created_by,
        "expires_at": _epoch(record.expires),
        "last_used_at": _epoch(record.last_used),
        "revoked_at": _epoch(record.revoked),
        "previous_key_valid_until": _epoch(grace or None),
    }


def _epoch(t: float | None) -> int | None:
    return None if t is None else math.ceil(t)


def unenforced_key_scope(*, quota: bool, metering: bool) -> dict[str, str]:
    """What of a key's scope a gateway with these switches would not check, and why: its
    models and token and spend limits are checked when a call is metered, its request and
    job limits by the quota engine."""
    out: dict[str, str] = {}
    if not metering:
        off = "does not meter calls (pricing.enabled or quota.enabled is false)"
        out |= dict.fromkeys(
            ("models", "tokens_per_minute", "spend_per_day", "spend_per_month"), off
        )
    if not quota:
        off = "has quotas off (quota.enabled: false)"
        out |= dict.fromkeys(("requests_per_minute", "concurrent_jobs"), off)
    return out
