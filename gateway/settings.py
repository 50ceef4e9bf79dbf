"""Typed, frozen configuration loaded from YAML plus the environment.

A config file may reference the environment as ``${NAME}`` or ``${NAME:-default}``. Secrets
belong in the environment (or in files named by ``*_file`` keys), never in the YAML itself.
Every validation error names the dotted key and the problem, and a file is checked whole
(every problem, keys given twice among them), so ``gateway check-config`` can tell an operator
everything there is to fix at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from gateway.metering.prices import ModelPrice, exact
from gateway.quota.model import Limit, LimitError, parse_limit
from gateway.upstream.address_policy import parse_networks
from gateway.upstream.routes import RouteRule, parse_route

EMBEDDED = "embedded"
HS256_MIN_SECRET_BYTES = 32
SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SettingsError(ValueError):
    """A configuration problem; the message starts with the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    @property
    def errors(self) -> tuple[SettingsError, ...]:
        return (self,)


class SettingsErrors(SettingsError):
    """Several problems in one config; ``key`` and ``problem`` are the first one's."""

    def __init__(self, errors: Sequence[SettingsError]) -> None:
        super().__init__(errors[0].key, errors[0].problem)
        self._errors = tuple(errors)
        self.args = ("\n".join(str(e) for e in self._errors),)

    @property
    def errors(self) -> tuple[SettingsError, ...]:
        return self._errors


class ConfigFileError(SettingsError):
    """The file itself is the problem (unreadable, not YAML); ``key`` is where: a path, or
    ``path:line:column``."""


@dataclass(frozen=True, kw_only=True)
class UpstreamKey:
    id: str
    secret: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class UpstreamSettings:
    base_url: str = "https://api.crazyrouter.com"
    keys: tuple[UpstreamKey, ...] = ()
    connect_timeout: float = 5.0
    # Between bytes, not for the whole answer: a streamed chat may run for minutes.
    read_timeout: float = 300.0
    max_connections: int = 512
    # Of those, the most one team's calls hold at once on a replica (0: seven eighths of
    # max_connections): a team whose callers stop reading answers cannot hold them all.
    max_connections_per_team: int = 0
    cooldown_seconds: float = 30.0
    quarantine_seconds: float = 3600.0
    health_cache_seconds: float = 1.0
    # CIDR networks a download redirect may lead into although they are not public (an
    # internal CDN); everything else off the upstream's origin must be a public address.
    trusted_networks: tuple[str, ...] = ()


def team_connections(up: UpstreamSettings) -> int:
    """The upstream connections one team may hold at once on a replica."""
    return up.max_connections_per_team or max(1, up.max_connections * 7 // 8)


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: str = field(default=EMBEDDED, repr=False)
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    max_connections: int = 32
    pool_timeout: float = 0.5
    data_dir: str = ".gateway-data"
    cluster: bool = False  # the URL names one node of a Redis Cluster

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    hs256_secrets: tuple[str, ...] = field(default=(), repr=False)
    public_keys: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks_cache_seconds: float = 300.0
    jwks_refetch_cooldown: float = 30.0
    jwks_timeout: float = 3.0
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    team_claim: str = "team"
    roles_claim: str = "roles"
    user_claim: str = "sub"
    admin_role: str = "gateway-admin"
    cache_size: int = 10_000
    # Gateway API keys (docs/api-keys.md): stored as HMAC-SHA256 under this pepper; unset,
    # keys are off (a gwk_ key gets 401, and creating one says why).
    api_key_pepper: str | None = field(default=None, repr=False)
    # How long a replica trusts what it read of a key: a revocation reaches every replica
    # within it. At most one second.
    api_key_cache_seconds: float = 1.0
    api_key_rotate_grace_seconds: float = 86_400.0  # the default; a rotate may name less
    api_key_max_days: int = 3650  # the longest expires_in_days a key may be given
    team_admin_role: str = "team-admin"  # manages its own team's keys at /v1/gateway/api-keys


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    # From a head's first byte to its end, and from the end of the head to the end of the
    # body: a client trickling bytes cannot hold a connection longer than this.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 120.0
    # Where callers reach the gateway; URLs in answers (a video's content URL) start with it,
    # never with the caller's Host. Unset: the listener's own address.
    public_base_url: str = "http://127.0.0.1:8080"
    # Forwarded beyond the built-in route table (gateway.upstream.routes): "POST /v1/x/{id}".
    extra_routes: tuple[RouteRule, ...] = ()
    metrics_token: str | None = field(default=None, repr=False)
    # asyncio, not uvloop, by measurement: see bench/RESULTS.md (uvloop stalls new
    # connections for seconds after many clients drop at once).
    loop: str = "asyncio"
    drain_seconds: float = 20.0  # on SIGTERM: how long in-flight requests may take to finish
    access_log: str = "auto"  # json | text | off; auto: text on a terminal, else json
    metrics_dir: str | None = None  # multi-worker metrics files; None: a fresh temp dir
    quota_metrics_seconds: float = 15.0  # how often per-team usage gauges are refreshed


@dataclass(frozen=True, kw_only=True)
class VideoModel:
    """What one upstream video model accepts. Absent limits are not checked."""

    sizes: tuple[str, ...] = ()
    seconds: tuple[int, ...] = ()  # allowed values; empty: anything up to max_seconds
    max_seconds: int = 60
    default_seconds: int = 4
    default_size: str | None = None
    max_prompt_chars: int = 4000
    max_storyboard_scenes: int = 10
    weight: float = 1.0  # video seconds charged per second requested
    price_per_second: float = 0.0  # in quota.currency
    size_multipliers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class VideoSettings:
    default_model: str = "sora-2"
    aliases: Mapping[str, str] = field(default_factory=dict)
    # An empty table accepts any model name with VideoModel()'s defaults (model-agnostic).
    models: Mapping[str, VideoModel] = field(default_factory=dict)
    poll_after_ms: int = 5000
    poll_interval_seconds: float = (
        5.0  # the upstream sees at most one status call per job per interval
    )
    deadline_seconds: float = 3600.0  # unfinished after this long: failed with code "timeout"
    force_private: bool = True
    extra_fields: tuple[str, ...] = ()  # unknown create fields passed upstream; others are 400
    reference_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp")
    reference_max_bytes: int = 10 * 1024 * 1024
    url_allowed_hosts: tuple[str, ...] = ()  # empty: any public https host

    def resolve_model(self, name: str | None) -> str:
        name = name or self.default_model
        return self.aliases.get(name, name)

    def model(self, name: str) -> VideoModel | None:
        if not self.models:
            return VideoModel()
        return self.models.get(name)


@dataclass(frozen=True, kw_only=True)
class QuotaSettings:
    # false: no limit is enforced and no quota call reaches Redis (a pure pass-through gateway)
    enabled: bool = True
    time_zone: str = "UTC"  # days and months follow this zone's calendar
    # The budget alert (deploy/prometheus/rules.yml) fires above this share of a limit.
    budget_alert_share: float = 0.9
    currency: str = "USD"
    rate_fail_open: bool = True  # Redis down: let requests through (counted) or answer 503
    lease_seconds: float = 900.0  # a concurrency slot expires unless its job is seen running
    reconcile_interval_seconds: float = 30.0
    reconcile_idle_seconds: float = 60.0  # the reconciler polls jobs nobody polled this long
    # A reservation without a job record is a create that died in flight; it is refunded once
    # it is older than the longest a create can take plus this margin.
    orphan_grace_seconds: float = 60.0
    idempotency_seconds: float = 86_400.0


@dataclass(frozen=True, kw_only=True)
class PricingSettings:
    """What calls cost (see docs/metering.md). Metering runs whenever quotas do."""

    # false: nothing is priced, checked or ledgered (team models: included); video keeps its
    # own quota. For measuring what metering costs, and for a gateway in front of free models.
    enabled: bool = True
    models: Mapping[str, ModelPrice] = field(default_factory=dict)  # name or glob -> price
    unpriced: str = "refuse"  # refuse: 403 model_not_priced | allow: charged zero, counted
    # Redis unreachable at admission: allow (forwarded unmetered, counted as fail_open, like
    # quota.rate_fail_open) | refuse (503: no call goes unmetered)
    store_down: str = "allow"
    # none: the prices are pricing.models | crazyrouter: also Crazyrouter's public list
    # (GET /api/pricing), loaded at start and every refresh_seconds; pricing.models override it
    source: str = "none"
    group: str = "default"  # the upstream account's group: whose group ratio the list applies
    refresh_seconds: float = 3600.0
    # The estimate: output tokens assumed (and sent as the cap) when a call names none.
    default_max_output_tokens: int = 4096
    # Tokens assumed per image, file or audio part a chat or responses call sends: the most
    # one image costs on the models we know (gpt-4.1-nano: 1,536 patches x 2.46 = 3,779).
    image_input_tokens: int = 4000
    transcription_max_seconds: int = 1500  # audio seconds assumed for a per-second price
    max_tags_per_day: int = 100  # distinct x-gateway-tag values per team and day
    ledger_retention_days: int = 400
    # Reconciliation with the upstream's bill (GET /api/usage/token per pooled key): how
    # often (0: only when an admin asks), and new-api's quota units per unit of quota.currency.
    reconcile_interval_seconds: float = 86400.0
    upstream_quota_per_unit: int = 500_000


OIDC_CALLBACK_PATH = "/console/oidc/callback"


@dataclass(frozen=True, kw_only=True)
class OidcSettings:
    """Console sign-in through the company IdP with OpenID Connect (docs/console.md)."""

    issuer: str  # exactly the IdP's issuer identifier; discovery is under it
    client_id: str
    # None: a public client, which PKCE alone protects.
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ("openid", "profile")
    redirect_url: str | None = None  # None: <server.public_base_url>/console/oidc/callback
    timeout_seconds: float = 5.0  # each call to the IdP: discovery, keys, code exchange
    display_name: str | None = None  # "Sign in with <name>"; None: the issuer's host

    def callback_url(self, public_base_url: str) -> str:
        return self.redirect_url or public_base_url.rstrip("/") + OIDC_CALLBACK_PATH

    @property
    def name(self) -> str:
        return self.display_name or urlsplit(self.issuer).hostname or self.issuer


@dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    """The web console under ``/console`` (docs/console.md)."""

    enabled: bool = True
    # Signs the session cookie (HMAC-SHA256), at least 32 bytes, the same on every replica.
    # Unset, the console is off and says so; `make run` generates one.
    session_secret: str | None = field(default=None, repr=False)
    session_hours: float = 8.0  # how long a sign-in lasts (never past a JWT's own expiry)
    oidc: OidcSettings | None = None  # None: sign-in with a pasted token only

    @property
    def active(self) -> bool:
        return self.enabled and self.session_secret is not None


@dataclass(frozen=True, kw_only=True)
class TeamSettings:
    """One entry of ``teams``. A kind absent from ``limits`` falls back to the ``default``
    entry (and then to unlimited); ``videos_private`` and ``models`` None fall back likewise
    (then to ``videos.force_private``, and to any model)."""

    limits: Mapping[str, Limit] = field(default_factory=dict)
    videos_private: bool | None = None
    models: tuple[str, ...] | None = None  # globs of the models the team may call


def team_table(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, TeamSettings]:
    """TeamSettings from already-validated entries (limits and options mixed, as in YAML)."""
    out = {
        name: TeamSettings(
            limits={k: v for k, v in entry.items() if k not in _TEAM_OPTIONS},
            videos_private=entry.get("videos_private"),
            models=entry.get("models"),
        )
        for name, entry in entries.items()
    }
    out.setdefault("default", TeamSettings())
    return out


@dataclass(frozen=True, kw_only=True)
class Settings:
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    teams: Mapping[str, TeamSettings] = field(default_factory=lambda: {"default": TeamSettings()})
    videos: VideoSettings = field(default_factory=VideoSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    def team_models(self, team: str) -> tuple[str, ...] | None:
        """The model globs ``team`` may call (None: any model)."""
        return models_of(self.teams, team)


def models_of(teams: Mapping[str, TeamSettings], team: str) -> tuple[str, ...] | None:
    """The model globs ``team`` may call in this teams table (None: any model)."""
    own = teams.get(team)
    if own is not None and own.models is not None:
        return own.models
    default = teams.get("default")
    return default.models if default is not None else None


# -- loading ---------------------------------------------------------------------------------
#
# Every default is the dataclass's own: a section reads a missing key from a default instance
# of its dataclass, so a default is written once. Errors are collected rather than raised one
# at a time, so that `gateway check-config` reports everything wrong with a file in one go.

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_FROM_CLASS: Any = object()  # an accessor's default: the section dataclass's own


def parse_bool(value: Any, key: str) -> bool:
    """A YAML boolean, 0 or 1, or (what ``${NAME:-false}`` expands to) one of the strings
    true/false, yes/no, on/off, 1/0 in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise SettingsError(key, f"must be true or false (or yes/no, on/off, 1/0), got {value!r}")


def _covers(key: str, earlier: str) -> bool:
    """``key`` is ``earlier`` or contains it: after ``auth.hs256_secrets[0]`` (an unset
    variable), ``auth.hs256_secrets`` (no secret at all) says nothing new."""
    return earlier == key or earlier.startswith((key + ".", key + "["))


class _Problems:
    """The errors found in one document. A key's later errors follow from its first (an unset
    variable leaves an empty value, which is then also too short), so only the first is kept."""

    def __init__(self) -> None:
        self.errors: list[SettingsError] = []

    def add(self, error: SettingsError) -> None:
        if not any(_covers(error.key, e.key) for e in self.errors):
            self.errors.append(error)

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SettingsErrors(self.errors)


def interpolate(value: str, env: Mapping[str, str], key: str) -> str:
    """Expand ``${NAME}`` and ``${NAME:-default}``; an unset NAME without default is an error."""
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is not None and got != "":
            return got
        if default is not None:
            return default
        if got is None:
            missing.append(name)
        return ""

    out = _ENV_REF.sub(repl, value)
    if len(missing) == 1:
        raise SettingsError(key, f"environment variable {missing[0]} is not set")
    if missing:
        raise SettingsError(key, f"environment variables {', '.join(missing)} are not set")
    return out


def _expand(node: Any, env: Mapping[str, str], key: str, problems: _Problems) -> Any:
    if isinstance(node, str):
        try:
            return interpolate(node, env, key)
        except SettingsError as exc:
            problems.add(exc)
            return ""
    if isinstance(node, list):
        return [_expand(v, env, f"{key}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: _expand(v, env, f"{key}.{k}" if key else str(k), problems) for k, v in node.items()
        }
    return node


class _Section:
    """Reads typed values out of one mapping and remembers which keys were consumed.

    A missing key yields the default (``defaults``, an instance of the section's dataclass); a
    bad one is recorded in ``problems`` and yields the default too, so reading goes on.
    """

    def __init__(self, data: Any, path: str, defaults: Any, problems: _Problems) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.add(SettingsError(path, "must be a mapping"))
            data = {}
        self.data: dict[str, Any] = data
        self.path = path
        self.defaults = defaults
        self.problems = problems
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, problem: str) -> None:
        """Record a problem with ``name`` (relative to this section: ``keys[0].id`` is fine)."""
        self.problems.add(SettingsError(self.key(name), problem))

    def given(self, name: str) -> bool:
        return name in self.data

    def default(self, name: str, default: Any = _FROM_CLASS) -> Any:
        return getattr(self.defaults, name) if default is _FROM_CLASS else default

    def raw(self, name: str, default: Any = _FROM_CLASS) -> Any:
        self.used.add(name)
        if name not in self.data:
            return self.default(name, default)
        return self.data[name]

    def _read(self, name: str, default: Any, check: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            return self.default(name, default)
        try:
            return check(self.data[name], self.key(name))
        except SettingsError as exc:
            self.problems.add(exc)
            return self.default(name, default)

    def string(self, name: str, default: Any = _FROM_CLASS) -> str | None:
        def check(v: Any, key: str) -> str | None:
            if v is None:
                return None
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise SettingsError(key, "must be a string")
            return str(v)

        out = self._read(name, default, check)
        return None if out is None else str(out)

    def req_string(self, name: str, default: Any = _FROM_CLASS) -> str:
        def check(v: Any, key: str) -> str:
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise SettingsError(key, "must be a string")
            if not str(v):
                raise SettingsError(key, "must not be empty")
            return str(v)

        return str(self._read(name, default, check))

    def number(
        self,
        name: str,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        default: Any = _FROM_CLASS,
    ) -> float:
        def check(v: Any, key: str) -> float:
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise SettingsError(key, f"must be a number, got {v!r}") from None
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SettingsError(key, "must be a number")
            if v < minimum:
                raise SettingsError(key, f"must be >= {minimum:g}")
            if v > maximum:
                raise SettingsError(key, f"must be <= {maximum:g}")
            return float(v)

        return float(self._read(name, default, check))

    def integer(self, name: str, *, minimum: int = 0, default: Any = _FROM_CLASS) -> int:
        def check(v: Any, key: str) -> int:
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise SettingsError(key, "must be an integer")
            if v < minimum:
                raise SettingsError(key, f"must be >= {minimum}")
            return v

        return int(self._read(name, default, check))

    def flag(self, name: str) -> bool:
        return bool(self._read(name, _FROM_CLASS, parse_bool))

    def strings(self, name: str, default: Any = _FROM_CLASS) -> tuple[str, ...]:
        def check(v: Any, key: str) -> tuple[str, ...]:
            if v is None:
                return ()
            if isinstance(v, str):
                v = [s.strip() for s in v.split(",")]
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise SettingsError(key, "must be a list of strings")
            return tuple(s for s in v if s)

        return tuple(self._read(name, default, check))

    def section(self, name: str, defaults: Any = None) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name), self.key(name), defaults, self.problems)

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.used, key=str):
            self.fail(str(name), "unknown setting")


def _read_secret_file(path: str, key: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(key, f"cannot read secret file {path!r}: {exc.strerror}") from None


def _secret_file(sec: _Section, name: str) -> str | None:
    path = sec.string(name, None)
    if not path:
        return None
    try:
        return _read_secret_file(path, sec.key(name))
    except SettingsError as exc:
        sec.problems.add(exc)
        return None


def parse_key_list(spec: str, key: str = "CRAZYROUTER_API_KEYS") -> tuple[UpstreamKey, ...]:
    """``id1:sk-...,id2:sk-...`` or a plain comma list (ids become key1, key2, ...)."""
    keys: list[UpstreamKey] = []
    for i, item in enumerate(s.strip() for s in spec.split(",")):
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        if not sep or not _KEY_ID.match(kid) or kid.startswith("sk-"):
            kid, secret = f"key{i + 1}", item
        if not secret:
            raise SettingsError(f"{key}[{i}]", "empty secret")
        keys.append(UpstreamKey(id=kid, secret=secret))
    return tuple(keys)


def _split_url(sec: _Section, name: str, url: str) -> SplitResult | None:
    """``url`` split, or None (and a recorded problem) when it is not an http(s) URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        sec.fail(name, "must be an http(s) URL")
        return None
    return parts


def _upstream(sec: _Section, env: Mapping[str, str]) -> UpstreamSettings:
    base_url = sec.req_string("base_url")
    parts = _split_url(sec, "base_url", base_url)
    if parts is not None and (parts.query or parts.fragment):
        sec.fail("base_url", "must not have a query or fragment")
    keys = _upstream_keys(sec)
    shortcut = env.get("CRAZYROUTER_API_KEYS", "").strip()
    if shortcut:
        try:
            keys = list(parse_key_list(shortcut))
        except SettingsError as exc:
            sec.problems.add(exc)
    ids = [k.id for k in keys]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        sec.fail("keys", f"duplicate key id {dup!r}")
    out = UpstreamSettings(
        base_url=base_url.rstrip("/"),
        keys=tuple(keys),
        connect_timeout=sec.number("connect_timeout", minimum=0.01),
        read_timeout=sec.number("read_timeout", minimum=0.01),
        max_connections=sec.integer("max_connections", minimum=1),
        max_connections_per_team=sec.integer("max_connections_per_team"),
        cooldown_seconds=sec.number("cooldown_seconds"),
        quarantine_seconds=sec.number("quarantine_seconds"),
        health_cache_seconds=sec.number("health_cache_seconds"),
        trusted_networks=_networks(sec, "trusted_networks"),
    )
    if out.max_connections_per_team > out.max_connections:
        sec.fail("max_connections_per_team", "must be at most max_connections")
    sec.finish()
    return out


def _upstream_keys(sec: _Section) -> list[UpstreamKey]:
    raw_keys = sec.raw("keys")
    if raw_keys is None or raw_keys == ():
        return []
    if not isinstance(raw_keys, list):
        sec.fail("keys", "must be a list of {id, secret}")
        return []
    keys: list[UpstreamKey] = []
    for i, item in enumerate(raw_keys):
        k = _Section(item, sec.key(f"keys[{i}]"), None, sec.problems)
        kid = k.req_string("id", "")
        if not _KEY_ID.match(kid):
            k.fail("id", "must be 1-64 of [A-Za-z0-9_.-]")
        secret = k.string("secret", None)
        secret = _secret_file(k, "secret_file") or secret
        k.finish()
        if not secret:
            k.fail("secret", "is empty (set it from the environment)")
        keys.append(UpstreamKey(id=kid, secret=secret or ""))
    return keys


def _networks(sec: _Section, name: str) -> tuple[str, ...]:
    specs = sec.strings(name)
    try:
        return tuple(str(n) for n in parse_networks(specs))
    except ValueError as exc:
        sec.fail(name, str(exc))
        return ()


def _redis(sec: _Section) -> RedisSettings:
    url = sec.req_string("url")
    if url != EMBEDDED:
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("redis", "rediss", "unix"):
            sec.fail("url", "must be 'embedded' or a redis://, rediss:// URL")
    out = RedisSettings(
        url=url,
        socket_timeout=sec.number("socket_timeout", minimum=0.01),
        connect_timeout=sec.number("connect_timeout", minimum=0.01),
        max_connections=sec.integer("max_connections", minimum=1),
        pool_timeout=sec.number("pool_timeout", minimum=0.01),
        data_dir=sec.req_string("data_dir"),
        cluster=sec.flag("cluster"),
    )
    if out.cluster and out.embedded:
        sec.fail("cluster", "needs a redis:// URL of a cluster node")
    sec.finish()
    return out


def _access_log_mode(sec: _Section) -> str:
    # YAML reads a bare `off` as false (and `on` as true): accept what people will write.
    raw = sec.raw("access_log")
    if raw is False:
        return "off"
    if raw is True:
        return "auto"
    mode = sec.req_string("access_log")
    if mode not in ("auto", "json", "text", "off"):
        sec.fail("access_log", "must be auto, json, text or off")
    return mode


def _auth(sec: _Section) -> AuthSettings:
    secrets = list(sec.strings("hs256_secrets"))
    for i, path in enumerate(sec.strings("hs256_secret_files", ())):
        try:
            secrets.append(_read_secret_file(path, sec.key(f"hs256_secret_files[{i}]")))
        except SettingsError as exc:
            sec.problems.add(exc)
    for i, s in enumerate(secrets):
        if len(s.encode()) < HS256_MIN_SECRET_BYTES:
            sec.fail(f"hs256_secrets[{i}]", f"must be at least {HS256_MIN_SECRET_BYTES} bytes")
    public_keys: list[str] = []
    for i, pk in enumerate(sec.strings("public_keys")):
        if "-----BEGIN" not in pk:
            try:
                pk = _read_secret_file(pk, sec.key(f"public_keys[{i}]"))
            except SettingsError as exc:
                sec.problems.add(exc)
                continue
        public_keys.append(pk)
    algorithms = sec.strings("algorithms")
    if not algorithms:
        sec.fail("algorithms", "must name at least one algorithm")
    for alg in algorithms:
        if alg not in SUPPORTED_ALGORITHMS:
            sec.fail("algorithms", f"unsupported algorithm {alg!r}")
    jwks_url = sec.string("jwks_url") or None
    if jwks_url:
        _split_url(sec, "jwks_url", jwks_url)
    if any(a.startswith("HS") for a in algorithms) and not secrets:
        sec.fail("hs256_secrets", "HS algorithms need at least one secret")
    if any(not a.startswith("HS") for a in algorithms) and not (public_keys or jwks_url):
        sec.fail("public_keys", "RS/ES algorithms need public_keys or jwks_url")
    pepper = sec.string("api_key_pepper", None) or None
    pepper = _secret_file(sec, "api_key_pepper_file") or pepper
    if pepper is not None and len(pepper.encode()) < HS256_MIN_SECRET_BYTES:
        sec.fail("api_key_pepper", f"must be at least {HS256_MIN_SECRET_BYTES} bytes")
    out = AuthSettings(
        hs256_secrets=tuple(secrets),
        public_keys=tuple(public_keys),
        jwks_url=jwks_url,
        jwks_cache_seconds=sec.number("jwks_cache_seconds"),
        jwks_refetch_cooldown=sec.number("jwks_refetch_cooldown"),
        jwks_timeout=sec.number("jwks_timeout", minimum=0.01),
        algorithms=algorithms,
        issuer=sec.string("issuer") or None,
        audience=sec.string("audience") or None,
        leeway=sec.number("leeway"),
        team_claim=sec.req_string("team_claim"),
        roles_claim=sec.req_string("roles_claim"),
        user_claim=sec.req_string("user_claim"),
        admin_role=sec.req_string("admin_role"),
        cache_size=sec.integer("cache_size"),
        api_key_pepper=pepper,
        api_key_cache_seconds=sec.number("api_key_cache_seconds", minimum=0.0, maximum=1.0),
        api_key_rotate_grace_seconds=sec.number(
            "api_key_rotate_grace_seconds", maximum=30 * 86_400.0
        ),
        api_key_max_days=sec.integer("api_key_max_days", minimum=1),
        team_admin_role=sec.req_string("team_admin_role"),
    )
    sec.finish()
    return out


def _server(sec: _Section) -> ServerSettings:
    if sec.given("allowed_path_prefixes"):
        sec.used.add("allowed_path_prefixes")
        sec.fail(
            "allowed_path_prefixes",
            "replaced by the route table: only known routes are forwarded; add others with "
            "server.extra_routes (e.g. ['POST /v1/rerank'])",
        )
    extra_routes = []
    for spec in sec.strings("extra_routes", ()):
        try:
            extra_routes.append(parse_route(spec))
        except ValueError as exc:
            sec.fail("extra_routes", str(exc))
    token = sec.string("metrics_token") or None
    token = _secret_file(sec, "metrics_token_file") or token
    host = sec.req_string("host")
    port = sec.integer("port", minimum=0)
    if port > 65535:
        sec.fail("port", "must be <= 65535")
    loop = sec.req_string("loop")
    if loop not in ("asyncio", "uvloop"):
        sec.fail("loop", "must be 'asyncio' or 'uvloop'")
    out = ServerSettings(
        host=host,
        port=port,
        workers=sec.integer("workers", minimum=1),
        max_body_bytes=sec.integer("max_body_bytes", minimum=1024),
        max_header_bytes=sec.integer("max_header_bytes", minimum=1024),
        header_timeout_seconds=sec.number("header_timeout_seconds", minimum=0.1),
        body_timeout_seconds=sec.number("body_timeout_seconds", minimum=0.1),
        public_base_url=_public_base_url(sec, host, port),
        extra_routes=tuple(extra_routes),
        metrics_token=token,
        loop=loop,
        drain_seconds=sec.number("drain_seconds"),
        access_log=_access_log_mode(sec),
        metrics_dir=sec.string("metrics_dir") or None,
        quota_metrics_seconds=sec.number("quota_metrics_seconds", minimum=0.1),
    )
    sec.finish()
    return out


def listener_url(host: str, port: int) -> str:
    """The default public base URL: where this listener is reached from this machine."""
    # A wildcard listener is reachable on loopback; anything public must be configured.
    name = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def listening_on(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` for a server told another host/port on its command line: the listener
    changes, and so does a public base URL that was only derived from it."""
    server = settings.server
    host = host or server.host
    port = server.port if port is None else port
    derived = server.public_base_url == listener_url(server.host, server.port)
    url = listener_url(host, port) if derived else server.public_base_url
    new = dataclasses.replace(server, host=host, port=port, public_base_url=url)
    return dataclasses.replace(settings, server=new)


def _public_base_url(sec: _Section, host: str, port: int) -> str:
    raw = sec.string("public_base_url", None)
    if not raw:
        return listener_url(host, port)
    problem = _public_base_url_problem(raw)
    if problem:
        sec.fail("public_base_url", problem)
    return raw.rstrip("/")


def _public_base_url_problem(raw: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in raw) or "?" in raw or "#" in raw:
        return "must be an absolute http(s) URL without query or fragment"
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number in range
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    return None


_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")


def _video_model(sec: _Section) -> VideoModel:
    sizes = sec.strings("sizes")
    for sz in sizes:
        if not _SIZE.match(sz):
            sec.fail("sizes", f"bad size {sz!r} (want WIDTHxHEIGHT)")
    raw_seconds = sec.raw("seconds")
    if not isinstance(raw_seconds, list | tuple) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in raw_seconds
    ):
        sec.fail("seconds", "must be a list of positive integers")
        raw_seconds = []
    # With a list of allowed seconds, the longest and the shortest are the natural defaults.
    max_seconds = sec.integer(
        "max_seconds", minimum=1, default=max(raw_seconds, default=sec.default("max_seconds"))
    )
    default_seconds = sec.integer(
        "default_seconds",
        minimum=1,
        default=min(raw_seconds, default=sec.default("default_seconds")),
    )
    if raw_seconds and default_seconds not in raw_seconds:
        sec.fail("default_seconds", "must be one of seconds")
    default_size = sec.string("default_size") or (sizes[0] if sizes else None)
    if default_size and sizes and default_size not in sizes:
        sec.fail("default_size", "must be one of sizes")
    out = VideoModel(
        sizes=sizes,
        seconds=tuple(raw_seconds),
        max_seconds=max_seconds,
        default_seconds=default_seconds,
        default_size=default_size,
        max_prompt_chars=sec.integer("max_prompt_chars", minimum=1),
        max_storyboard_scenes=sec.integer("max_storyboard_scenes", minimum=1),
        weight=sec.number("weight"),
        price_per_second=sec.number("price_per_second"),
        size_multipliers=_multipliers(sec, sizes),
    )
    sec.finish()
    return out


def _multipliers(sec: _Section, sizes: tuple[str, ...]) -> dict[str, float]:
    raw = sec.raw("size_multipliers") or {}
    if not isinstance(raw, dict):
        sec.fail("size_multipliers", "must map sizes to numbers")
        return {}
    out: dict[str, float] = {}
    for size, value in raw.items():
        name = f"size_multipliers.{size}"
        if not isinstance(size, str) or not _SIZE.match(size) or (sizes and size not in sizes):
            sec.fail(name, "not one of the model's sizes")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            sec.fail(name, "must be a number >= 0")
        else:
            out[size] = float(value)
    return out


def _videos(sec: _Section) -> VideoSettings:
    models_sec = sec.section("models")
    models = {
        str(name): _video_model(models_sec.section(str(name), VideoModel()))
        for name in list(models_sec.data)
    }
    aliases_raw = sec.raw("aliases") or {}
    if not isinstance(aliases_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases_raw.items()
    ):
        sec.fail("aliases", "must map names to model names")
        aliases_raw = {}
    for alias, target in aliases_raw.items():
        if models and target not in models:
            sec.fail(f"aliases.{alias}", f"unknown model {target!r}")
    default_model = sec.req_string("default_model")
    resolved = aliases_raw.get(default_model, default_model)
    if models and resolved not in models:
        sec.fail("default_model", f"unknown model {default_model!r}")
    out = VideoSettings(
        default_model=default_model,
        aliases=dict(aliases_raw),
        models=models,
        poll_after_ms=sec.integer("poll_after_ms", minimum=100),
        poll_interval_seconds=sec.number("poll_interval_seconds"),
        deadline_seconds=sec.number("deadline_seconds", minimum=1),
        force_private=sec.flag("force_private"),
        extra_fields=sec.strings("extra_fields"),
        reference_types=sec.strings("reference_types"),
        reference_max_bytes=sec.integer("reference_max_bytes", minimum=1),
        url_allowed_hosts=tuple(h.lower() for h in sec.strings("url_allowed_hosts")),
    )
    sec.finish()
    return out


_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TEAM_OPTIONS = ("videos_private", "models")
# "-" alone: what a call on an extra route that names no model is priced as.
_MODEL_GLOB = re.compile(r"^(?:-|[A-Za-z0-9*?\[\]][A-Za-z0-9_.:/@*?\[\]!-]{0,127})$")


def _teams(sec: _Section) -> dict[str, TeamSettings]:
    teams: dict[str, dict[str, Any]] = {}  # validated entries, typed by team_table
    for name in list(sec.data):
        if not _TEAM_NAME.fullmatch(str(name)):
            sec.fail(str(name), "team names are letters, digits, '.', '_' and '-'")
            continue
        body = sec.raw(name) or {}
        if not isinstance(body, dict):
            sec.fail(str(name), "must be a mapping of limits")
            continue
        entry: dict[str, Any] = {}
        for opt, value in body.items():
            key = f"{sec.key(str(name))}.{opt}"
            try:
                if opt == "models":
                    entry[opt] = _model_globs(value, key)
                elif opt in _TEAM_OPTIONS:
                    entry[opt] = parse_bool(value, key)
                else:
                    entry[str(opt)] = parse_limit(str(opt), value)
            except SettingsError as exc:
                sec.problems.add(exc)
            except LimitError as exc:
                sec.fail(f"{name}.{exc.key}", exc.problem)
        teams[str(name)] = entry
    return team_table(teams)


def _model_globs(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(key, "must be a list of model names or globs (gpt-4o*)")
    for v in value:
        if not _MODEL_GLOB.fullmatch(v):
            raise SettingsError(key, f"{v!r} is not a model name or glob")
    return tuple(value)


def _price(sec: _Section, name: str) -> Any:
    """A price: a number >= 0 (a decimal string too, for prices finer than a float says)."""
    raw = sec.raw(name, None)
    if raw is None:
        return None
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError
        value = exact(raw)
    except (ValueError, ZeroDivisionError):
        sec.fail(name, "must be a number >= 0")
        return None
    if value < 0 or value > 10**6:
        sec.fail(name, "must be a number >= 0 and at most 1000000")
        return None
    return value


PRICE_SOURCES = ("none", "crazyrouter")
_PRICE_GROUP = re.compile(r"^[^\x00-\x20\x7f]{1,64}$")
_IMAGE_KEY = re.compile(r"^(\*|auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})(/[a-z]{1,16})?$")


def _model_price(sec: _Section) -> ModelPrice:
    images: dict[str, Fraction] = {}
    raw_images = sec.raw("per_image", None)
    if isinstance(raw_images, dict):
        for size, value in raw_images.items():
            name = f"per_image.{size}"
            try:
                if not isinstance(size, str) or not _IMAGE_KEY.fullmatch(size):
                    raise ValueError
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise ValueError
                price = exact(value)
                if price < 0:
                    raise ValueError
            except (ValueError, ZeroDivisionError):
                sec.fail(name, "want SIZE or SIZE/QUALITY (or *) mapped to a number >= 0")
                continue
            images[size] = price
    elif raw_images is not None:
        one = _price(sec, "per_image")
        if one is not None:
            images["*"] = one
    sec.used.add("per_image")
    cap = sec.raw("max_output_tokens", None)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        sec.fail("max_output_tokens", "must be a whole number >= 1")
        cap = None
    sec.used.add("max_output_tokens")
    zero = Fraction(0)
    out = ModelPrice(
        input_per_million=_price(sec, "input_per_million") or zero,
        output_per_million=_price(sec, "output_per_million") or zero,
        cached_input_per_million=_price(sec, "cached_input_per_million"),
        per_request=_price(sec, "per_request") or zero,
        per_image=images,
        per_audio_second=_price(sec, "per_audio_second") or zero,
        per_character=_price(sec, "per_character") or zero,
        max_output_tokens=cap,
    )
    for name in (
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "per_request",
        "per_audio_second",
        "per_character",
    ):
        sec.used.add(name)
    sec.finish()
    return out


def _pricing(sec: _Section) -> PricingSettings:
    models_sec = sec.section("models")
    models: dict[str, ModelPrice] = {}
    for name in list(models_sec.data):
        if not isinstance(name, str) or not _MODEL_GLOB.fullmatch(name):
            models_sec.fail(str(name), "not a model name or glob")
            continue
        models[name] = _model_price(models_sec.section(name, PricingSettings()))
    unpriced = sec.req_string("unpriced")
    if unpriced not in ("refuse", "allow"):
        sec.fail("unpriced", "must be refuse or allow")
    store_down = sec.req_string("store_down")
    if store_down not in ("refuse", "allow"):
        sec.fail("store_down", "must be refuse or allow")
    source = sec.req_string("source")
    if source not in PRICE_SOURCES:
        sec.fail(
            "source",
            f"must be none (prices from pricing.models only) or crazyrouter (also the "
            f"upstream's GET /api/pricing list), not {source!r}",
        )
    group = sec.req_string("group")
    if not _PRICE_GROUP.fullmatch(group):
        sec.fail(
            "group",
            "must be an upstream group name: 1-64 characters, no spaces or control characters",
        )
    out = PricingSettings(
        enabled=sec.flag("enabled"),
        models=models,
        unpriced=unpriced,
        store_down=store_down,
        source=source,
        group=group,
        refresh_seconds=sec.number("refresh_seconds", minimum=60),
        default_max_output_tokens=sec.integer("default_max_output_tokens", minimum=1),
        image_input_tokens=sec.integer("image_input_tokens"),
        transcription_max_seconds=sec.integer("transcription_max_seconds", minimum=1),
        max_tags_per_day=sec.integer("max_tags_per_day"),
        ledger_retention_days=sec.integer("ledger_retention_days", minimum=1),
        reconcile_interval_seconds=sec.number("reconcile_interval_seconds"),
        upstream_quota_per_unit=sec.integer("upstream_quota_per_unit", minimum=1),
    )
    sec.finish()
    return out


def _quota(sec: _Section) -> QuotaSettings:
    tz = sec.req_string("time_zone")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        sec.fail("time_zone", f"unknown time zone {tz!r}")
    out = QuotaSettings(
        enabled=sec.flag("enabled"),
        time_zone=tz,
        currency=sec.req_string("currency"),
        rate_fail_open=sec.flag("rate_fail_open"),
        lease_seconds=sec.number("lease_seconds", minimum=10),
        reconcile_interval_seconds=sec.number("reconcile_interval_seconds", minimum=0.1),
        reconcile_idle_seconds=sec.number("reconcile_idle_seconds", minimum=0.1),
        orphan_grace_seconds=sec.number("orphan_grace_seconds"),
        idempotency_seconds=sec.number("idempotency_seconds", minimum=60),
        budget_alert_share=sec.number("budget_alert_share", minimum=0.01, maximum=1),
    )
    sec.finish()
    return out


def _console(sec: _Section) -> ConsoleSettings:
    secret = sec.string("session_secret", None) or None
    secret = _secret_file(sec, "session_secret_file") or secret
    if secret is not None and len(secret.encode()) < HS256_MIN_SECRET_BYTES:
        sec.fail("session_secret", f"must be at least {HS256_MIN_SECRET_BYTES} bytes")
        secret = None
    out = ConsoleSettings(
        enabled=sec.flag("enabled"),
        session_secret=secret,
        # At least five minutes; at most a month, so a forgotten browser does not stay in.
        session_hours=sec.number("session_hours", minimum=5 / 60, maximum=24 * 31),
        oidc=_oidc(sec.section("oidc")),
    )
    sec.finish()
    return out


_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749's scope-token


def _oidc(sec: _Section) -> OidcSettings | None:
    if not sec.data:  # absent, null or {}: sign-in with a pasted token only
        return None
    sec.defaults = OidcSettings(issuer="", client_id="")
    for name in ("issuer", "client_id"):
        if not sec.given(name):
            sec.fail(name, "is required for sign-in with OpenID Connect")
    issuer = sec.req_string("issuer")
    if issuer:
        _oidc_url(sec, "issuer", issuer)
    secret = sec.string("client_secret") or None
    secret = _secret_file(sec, "client_secret_file") or secret
    scopes = tuple(s for item in sec.strings("scopes") for s in item.split())
    if "openid" not in scopes:
        sec.fail("scopes", "must include openid")
    for scope in scopes:
        if not _SCOPE.fullmatch(scope):
            sec.fail("scopes", f"{scope!r} is not a valid scope")
    redirect_url = sec.string("redirect_url") or None
    if (
        redirect_url
        and _oidc_url(sec, "redirect_url", redirect_url)
        and urlsplit(redirect_url).path != OIDC_CALLBACK_PATH
    ):
        sec.fail("redirect_url", f"must end in the console's callback, {OIDC_CALLBACK_PATH}")
    display_name = sec.string("display_name") or None
    if display_name is not None and len(display_name) > 60:
        sec.fail("display_name", "must be at most 60 characters")
    out = OidcSettings(
        issuer=issuer,
        client_id=sec.req_string("client_id"),
        client_secret=secret,
        scopes=scopes,
        redirect_url=redirect_url,
        timeout_seconds=sec.number("timeout_seconds", minimum=0.1, maximum=60),
        display_name=display_name,
    )
    sec.finish()
    return out if issuer and out.client_id else None


def _oidc_url(sec: _Section, name: str, url: str) -> bool:
    """Whether ``url`` may carry sign-ins: https, or plain http to this machine only (tests
    and development); no query, fragment or credentials. Records the problem if not."""
    parts = _split_url(sec, name, url)
    if parts is None:
        return False
    if parts.query or parts.fragment or parts.username is not None:
        sec.fail(name, "must not have a query, fragment or credentials")
        return False
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        sec.fail(name, "must be an https URL (plain http only to this machine)")
        return False
    return True


def settings_from_mapping(data: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Build validated Settings from a parsed YAML document.

    Raises SettingsError for one problem, SettingsErrors (its subclass) for several.
    """
    return _build(data, env, _Problems())


def _build(data: Any, env: Mapping[str, str] | None, problems: _Problems) -> Settings:
    env = dict(os.environ) if env is None else env
    if data is not None and not isinstance(data, dict):
        problems.add(SettingsError("(top level)", "must be a mapping of sections"))
        data = {}
    root = _Section(_expand(data, env, "", problems), "", Settings(), problems)
    settings = Settings(
        upstream=_upstream(root.section("upstream", UpstreamSettings()), env),
        redis=_redis(root.section("redis", RedisSettings())),
        auth=_auth(root.section("auth", AuthSettings())),
        server=_server(root.section("server", ServerSettings())),
        teams=_teams(root.section("teams")),
        videos=_videos(root.section("videos", VideoSettings())),
        quota=_quota(root.section("quota", QuotaSettings())),
        pricing=_pricing(root.section("pricing", PricingSettings())),
        console=_console(root.section("console", ConsoleSettings())),
    )
    root.finish()
    if settings.console.oidc is not None and all(
        a.startswith("HS") for a in settings.auth.algorithms
    ):
        # ID tokens are verified like API tokens, with the IdP's published (asymmetric) keys.
        problems.add(
            SettingsError(
                "auth.algorithms",
                "console.oidc needs an RS* or ES* algorithm here: ID tokens are checked with "
                "the IdP's published keys and the algorithms this list allows",
            )
        )
    if settings.pricing.source == "crazyrouter" and settings.quota.currency != "USD":
        # new-api's list is in US dollars (500,000 quota units = 1 USD), the spend limits in
        # quota.currency: the gateway converts no currency.
        problems.add(
            SettingsError(
                "pricing.source",
                f"crazyrouter's prices are in USD but quota.currency is "
                f"{settings.quota.currency!r}: set quota.currency to USD or price every model "
                "under pricing.models",
            )
        )
    problems.raise_any()
    return settings


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML that also finds every key given twice in one mapping: PyYAML keeps the last
    one silently, so a second ``server:`` block would drop what the first one set."""

    def load_checked(self) -> tuple[Any, list[SettingsError]]:
        node = self.get_single_node()
        if node is None:
            return None, []
        duplicates = list(_duplicate_keys(node, "", set()))
        return self.construct_document(node), duplicates


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> Iterator[SettingsError]:
    if id(node) in seen:  # an alias: its keys were checked where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding keys of it is the point of a merge
            name = str(key_node.value)
            key = f"{path}.{name}" if path else name
            line = key_node.start_mark.line + 1
            if name in lines:
                yield SettingsError(
                    key,
                    f"duplicate key (lines {lines[name]} and {line}); "
                    "the second would silently replace the first",
                )
            else:
                lines[name] = line
            yield from _duplicate_keys(value_node, key, seen)


def _yaml_error(path: str, text: str, exc: yaml.YAMLError) -> ConfigFileError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return ConfigFileError(
                f"{path}:{mark.line + 1}:{mark.column + 1}", f"could not parse YAML: {problem}"
            )
        return ConfigFileError(path, f"could not parse YAML: {problem}")
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        return ConfigFileError(
            f"{path}:{line}:{column}",
            f"could not parse YAML: {exc.reason} (U+{exc.character:04X})",
        )
    return ConfigFileError(path, f"could not parse YAML: {exc}")


def read_config(path: str | Path) -> tuple[Any, list[SettingsError]]:
    """A config file's YAML document and the keys it gives twice. Raises ConfigFileError."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigFileError(name, f"cannot read config: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(name, f"not UTF-8 text (byte {exc.start})") from None
    try:
        loader = _ConfigLoader(text)  # refuses control characters already
        try:
            return loader.load_checked()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(name, text, exc) from None


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load a YAML config file (or only defaults and environment when path is None).

    Raises ConfigFileError when the file cannot be read or parsed, else SettingsError (one
    problem) or SettingsErrors (several, duplicate keys among them).
    """
    problems = _Problems()
    data: Any = {}
    if path is not None:
        data, duplicates = read_config(path)
        for dup in duplicates:
            problems.add(dup)
        if data is not None and not isinstance(data, dict):
            raise ConfigFileError(
                str(path), "the document must be a mapping of sections (upstream:, auth:, ...)"
            )
    return _build(data, env, problems)


def production_problems(settings: Settings) -> list[str]:
    """What a production start lacks; the development fallbacks cover exactly these."""
    problems = []
    if not settings.upstream.keys:
        problems.append(
            "upstream.keys: no upstream key configured (set CRAZYROUTER_API_KEYS or upstream.keys)"
        )
    if settings.redis.embedded:
        problems.append("redis.url: no Redis URL configured (set REDIS_URL or redis.url)")
    a = settings.auth
    if not (a.hs256_secrets or a.public_keys or a.jwks_url):
        problems.append("auth.hs256_secrets: no JWT secret or public key configured")
    return problems


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine itself (plain http there crosses no network)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def audience_warnings(settings: Settings) -> list[str]:
    """A company IdP signs tokens for many applications: without an audience to require, a
    token it issued to any of them (a console's own ID token included) is a gateway token."""
    a = settings.auth
    if (a.jwks_url or a.public_keys) and not a.audience:
        return [
            "auth.audience: not set, so a token the IdP issued for any application is accepted "
            "here; set it to the audience the IdP puts in this gateway's tokens"
        ]
    return []


def cleartext_warnings(settings: Settings) -> list[str]:
    """Plain-http URLs off this machine that carry something worth protecting: the upstream
    gets the pool's keys, and whoever answers the JWKS URL decides which tokens are valid."""
    out = []
    checks = (
        ("upstream.base_url", settings.upstream.base_url, "the upstream keys would cross"),
        ("auth.jwks_url", settings.auth.jwks_url, "the token signing keys would come"),
    )
    for key, url, risk in checks:
        parts = urlsplit(url or "")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            out.append(f"{key}: cleartext http to {parts.hostname}: {risk} unencrypted (use https)")
    return out
