"""Typed, frozen configuration loaded from YAML plus the environment.

A config file may reference the environment as ``${NAME}`` or ``${NAME:-default}``. Secrets
belong in the environment (or in files named by ``*_file`` keys), never in the YAML itself.
Every validation error names the dotted key and the problem, so ``gateway check-config`` can
tell an operator exactly what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from gateway.quota.model import LimitError, parse_limit
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
    cooldown_seconds: float = 30.0
    quarantine_seconds: float = 3600.0
    health_cache_seconds: float = 1.0
    # CIDR networks a download redirect may lead into although they are not public (an
    # internal CDN); everything else off the upstream's origin must be a public address.
    trusted_networks: tuple[str, ...] = ()


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
    # asyncio, not uvloop, by measurement: see README "Benchmarks" (uvloop stalls new
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
class Settings:
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    teams: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"default": {}})
    videos: VideoSettings = field(default_factory=VideoSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)


# -- loading ---------------------------------------------------------------------------------


def interpolate(value: str, env: Mapping[str, str], key: str) -> str:
    """Expand ``${NAME}`` and ``${NAME:-default}``; an unset NAME without default is an error."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is not None and got != "":
            return got
        if default is not None:
            return default
        if got == "":
            return ""
        raise SettingsError(key, f"environment variable {name} is not set")

    return _ENV_REF.sub(repl, value)


def _expand(node: Any, env: Mapping[str, str], key: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, key)
    if isinstance(node, list):
        return [_expand(v, env, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _expand(v, env, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    return node


class _Section:
    """Reads typed values out of one mapping and remembers which keys were consumed."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SettingsError(path, "must be a mapping")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def string(self, name: str, default: str | None) -> str | None:
        v = self.raw(name, default)
        if v is None:
            return None
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise SettingsError(self.key(name), "must be a string")
        return str(v)

    def req_string(self, name: str, default: str) -> str:
        v = self.string(name, default)
        if not v:
            raise SettingsError(self.key(name), "must not be empty")
        return v

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        v = self.raw(name, default)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise SettingsError(self.key(name), f"must be a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SettingsError(self.key(name), "must be a number")
        if v < minimum:
            raise SettingsError(self.key(name), f"must be >= {minimum:g}")
        return float(v)

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        v = self.raw(name, default)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise SettingsError(self.key(name), "must be an integer")
        if v < minimum:
            raise SettingsError(self.key(name), f"must be >= {minimum}")
        return v

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.raw(name, list(default))
        if v is None:
            return ()
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",")]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise SettingsError(self.key(name), "must be a list of strings")
        return tuple(s for s in v if s)

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name), self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise SettingsError(self.key(unknown[0]), "unknown setting")


def _read_secret_file(path: str, key: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(key, f"cannot read secret file {path!r}: {exc.strerror}") from None


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


def _upstream(sec: _Section, env: Mapping[str, str]) -> UpstreamSettings:
    base_url = sec.req_string("base_url", UpstreamSettings.base_url) or ""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(sec.key("base_url"), "must be an http(s) URL")
    if parts.query or parts.fragment:
        raise SettingsError(sec.key("base_url"), "must not have a query or fragment")
    raw_keys = sec.raw("keys", [])
    if raw_keys is None:
        raw_keys = []
    if not isinstance(raw_keys, list):
        raise SettingsError(sec.key("keys"), "must be a list of {id, secret}")
    keys: list[UpstreamKey] = []
    for i, item in enumerate(raw_keys):
        k = _Section(item, f"{sec.key('keys')}[{i}]")
        kid = k.req_string("id", "") or ""
        if not _KEY_ID.match(kid):
            raise SettingsError(k.key("id"), "must be 1-64 of [A-Za-z0-9_.-]")
        secret = k.string("secret", None)
        secret_file = k.string("secret_file", None)
        if secret_file:
            secret = _read_secret_file(secret_file, k.key("secret_file"))
        k.finish()
        if not secret:
            raise SettingsError(k.key("secret"), "is empty (set it from the environment)")
        keys.append(UpstreamKey(id=kid, secret=secret))
    shortcut = env.get("CRAZYROUTER_API_KEYS", "").strip()
    if shortcut:
        keys = list(parse_key_list(shortcut))
    ids = [k.id for k in keys]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise SettingsError(sec.key("keys"), f"duplicate key id {dup!r}")
    out = UpstreamSettings(
        base_url=base_url.rstrip("/"),
        keys=tuple(keys),
        connect_timeout=sec.number("connect_timeout", 5.0, minimum=0.01),
        read_timeout=sec.number("read_timeout", 300.0, minimum=0.01),
        max_connections=sec.integer("max_connections", 512, minimum=1),
        cooldown_seconds=sec.number("cooldown_seconds", 30.0),
        quarantine_seconds=sec.number("quarantine_seconds", 3600.0),
        health_cache_seconds=sec.number("health_cache_seconds", 1.0),
        trusted_networks=_networks(sec, "trusted_networks"),
    )
    sec.finish()
    return out


def _networks(sec: _Section, name: str) -> tuple[str, ...]:
    specs = sec.strings(name, ())
    try:
        return tuple(str(n) for n in parse_networks(specs))
    except ValueError as exc:
        raise SettingsError(sec.key(name), str(exc)) from None


def _redis(sec: _Section) -> RedisSettings:
    url = sec.req_string("url", EMBEDDED) or EMBEDDED
    if url != EMBEDDED and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(sec.key("url"), "must be 'embedded' or a redis://, rediss:// URL")
    out = RedisSettings(
        url=url,
        socket_timeout=sec.number("socket_timeout", 0.5, minimum=0.01),
        connect_timeout=sec.number("connect_timeout", 0.5, minimum=0.01),
        max_connections=sec.integer("max_connections", 32, minimum=1),
        pool_timeout=sec.number("pool_timeout", 0.5, minimum=0.01),
        data_dir=sec.req_string("data_dir", ".gateway-data") or ".gateway-data",
        cluster=_flag(sec, "cluster", False),
    )
    if out.cluster and out.embedded:
        raise SettingsError(sec.key("cluster"), "needs a redis:// URL of a cluster node")
    sec.finish()
    return out


def _access_log_mode(sec: _Section) -> str:
    # YAML reads a bare `off` as false (and `on` as true): accept what people will write.
    raw = sec.raw("access_log", "auto")
    if raw is False:
        return "off"
    if raw is True:
        return "auto"
    return sec.req_string("access_log", "auto") or "auto"


def _flag(sec: _Section, name: str, default: bool) -> bool:
    v = sec.raw(name, default)
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        v = v.lower() in ("true", "1", "yes")
    if not isinstance(v, bool):
        raise SettingsError(sec.key(name), "must be true or false")
    return v


def _auth(sec: _Section) -> AuthSettings:
    secrets = list(sec.strings("hs256_secrets", ()))
    for path in sec.strings("hs256_secret_files", ()):
        secrets.append(_read_secret_file(path, sec.key("hs256_secret_files")))
    for i, s in enumerate(secrets):
        if len(s.encode()) < HS256_MIN_SECRET_BYTES:
            raise SettingsError(
                f"{sec.key('hs256_secrets')}[{i}]",
                f"must be at least {HS256_MIN_SECRET_BYTES} bytes",
            )
    public_keys: list[str] = []
    for i, pk in enumerate(sec.strings("public_keys", ())):
        if "-----BEGIN" not in pk:
            pk = _read_secret_file(pk, f"{sec.key('public_keys')}[{i}]")
        public_keys.append(pk)
    algorithms = sec.strings("algorithms", ("HS256",))
    if not algorithms:
        raise SettingsError(sec.key("algorithms"), "must name at least one algorithm")
    for alg in algorithms:
        if alg not in SUPPORTED_ALGORITHMS:
            raise SettingsError(sec.key("algorithms"), f"unsupported algorithm {alg!r}")
    jwks_url = sec.string("jwks_url", None) or None
    if jwks_url and urlsplit(jwks_url).scheme not in ("http", "https"):
        raise SettingsError(sec.key("jwks_url"), "must be an http(s) URL")
    if any(a.startswith("HS") for a in algorithms) and not secrets:
        raise SettingsError(sec.key("hs256_secrets"), "HS algorithms need at least one secret")
    if any(not a.startswith("HS") for a in algorithms) and not (public_keys or jwks_url):
        raise SettingsError(sec.key("public_keys"), "RS/ES algorithms need public_keys or jwks_url")
    out = AuthSettings(
        hs256_secrets=tuple(secrets),
        public_keys=tuple(public_keys),
        jwks_url=jwks_url,
        jwks_cache_seconds=sec.number("jwks_cache_seconds", 300.0),
        jwks_refetch_cooldown=sec.number("jwks_refetch_cooldown", 30.0),
        jwks_timeout=sec.number("jwks_timeout", 3.0, minimum=0.01),
        algorithms=algorithms,
        issuer=sec.string("issuer", None) or None,
        audience=sec.string("audience", None) or None,
        leeway=sec.number("leeway", 30.0),
        team_claim=sec.req_string("team_claim", "team") or "team",
        roles_claim=sec.req_string("roles_claim", "roles") or "roles",
        user_claim=sec.req_string("user_claim", "sub") or "sub",
        admin_role=sec.req_string("admin_role", "gateway-admin") or "gateway-admin",
        cache_size=sec.integer("cache_size", 10_000),
    )
    sec.finish()
    return out


def _server(sec: _Section) -> ServerSettings:
    if "allowed_path_prefixes" in sec.data:
        raise SettingsError(
            sec.key("allowed_path_prefixes"),
            "replaced by the route table: only known routes are forwarded; add others with "
            "server.extra_routes (e.g. ['POST /v1/rerank'])",
        )
    extra_routes = []
    for spec in sec.strings("extra_routes", ()):
        try:
            extra_routes.append(parse_route(spec))
        except ValueError as exc:
            raise SettingsError(sec.key("extra_routes"), str(exc)) from None
    token = sec.string("metrics_token", None) or None
    token_file = sec.string("metrics_token_file", None)
    if token_file:
        token = _read_secret_file(token_file, sec.key("metrics_token_file"))
    host = sec.req_string("host", "127.0.0.1") or "127.0.0.1"
    port = sec.integer("port", 8080, minimum=0)
    out = ServerSettings(
        host=host,
        port=port,
        workers=sec.integer("workers", 1, minimum=1),
        max_body_bytes=sec.integer("max_body_bytes", 32 * 1024 * 1024, minimum=1024),
        max_header_bytes=sec.integer("max_header_bytes", 16 * 1024, minimum=1024),
        header_timeout_seconds=sec.number("header_timeout_seconds", 10.0, minimum=0.1),
        body_timeout_seconds=sec.number("body_timeout_seconds", 120.0, minimum=0.1),
        public_base_url=_public_base_url(sec, host, port),
        extra_routes=tuple(extra_routes),
        metrics_token=token,
        loop=sec.req_string("loop", "asyncio") or "asyncio",
        drain_seconds=sec.number("drain_seconds", 20.0),
        access_log=_access_log_mode(sec),
        metrics_dir=sec.string("metrics_dir", None) or None,
        quota_metrics_seconds=sec.number("quota_metrics_seconds", 15.0, minimum=0.1),
    )
    if out.access_log not in ("auto", "json", "text", "off"):
        raise SettingsError(sec.key("access_log"), "must be auto, json, text or off")
    if out.loop not in ("asyncio", "uvloop"):
        raise SettingsError(sec.key("loop"), "must be 'asyncio' or 'uvloop'")
    if out.port > 65535:
        raise SettingsError(sec.key("port"), "must be <= 65535")
    sec.finish()
    return out


def _public_base_url(sec: _Section, host: str, port: int) -> str:
    raw = sec.string("public_base_url", None)
    if not raw:
        # A wildcard listener is reachable on loopback; anything public must be configured.
        name = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"
    key = sec.key("public_base_url")
    if any(c.isspace() or not c.isprintable() for c in raw) or "?" in raw or "#" in raw:
        raise SettingsError(key, "must be an absolute http(s) URL without query or fragment")
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number in range
    except ValueError:
        raise SettingsError(key, "has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(key, "must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(key, "must not carry credentials")
    return raw.rstrip("/")


_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")


def _video_model(sec: _Section) -> VideoModel:
    sizes = sec.strings("sizes", ())
    for sz in sizes:
        if not _SIZE.match(sz):
            raise SettingsError(sec.key("sizes"), f"bad size {sz!r} (want WIDTHxHEIGHT)")
    raw_seconds = sec.raw("seconds", [])
    if not isinstance(raw_seconds, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in raw_seconds
    ):
        raise SettingsError(sec.key("seconds"), "must be a list of positive integers")
    max_seconds = sec.integer("max_seconds", max(raw_seconds, default=60), minimum=1)
    default_seconds = sec.integer("default_seconds", min(raw_seconds, default=4), minimum=1)
    if raw_seconds and default_seconds not in raw_seconds:
        raise SettingsError(sec.key("default_seconds"), "must be one of seconds")
    default_size = sec.string("default_size", sizes[0] if sizes else None)
    if default_size and sizes and default_size not in sizes:
        raise SettingsError(sec.key("default_size"), "must be one of sizes")
    out = VideoModel(
        sizes=sizes,
        seconds=tuple(raw_seconds),
        max_seconds=max_seconds,
        default_seconds=default_seconds,
        default_size=default_size,
        max_prompt_chars=sec.integer("max_prompt_chars", 4000, minimum=1),
        max_storyboard_scenes=sec.integer("max_storyboard_scenes", 10, minimum=1),
        weight=sec.number("weight", 1.0),
        price_per_second=sec.number("price_per_second", 0.0),
        size_multipliers=_multipliers(sec, sizes),
    )
    sec.finish()
    return out


def _multipliers(sec: _Section, sizes: tuple[str, ...]) -> dict[str, float]:
    raw = sec.raw("size_multipliers", {}) or {}
    if not isinstance(raw, dict):
        raise SettingsError(sec.key("size_multipliers"), "must map sizes to numbers")
    out: dict[str, float] = {}
    for size, value in raw.items():
        key = f"{sec.key('size_multipliers')}.{size}"
        if not isinstance(size, str) or not _SIZE.match(size) or (sizes and size not in sizes):
            raise SettingsError(key, "not one of the model's sizes")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SettingsError(key, "must be a number >= 0")
        out[size] = float(value)
    return out


def _videos(sec: _Section) -> VideoSettings:
    models_sec = sec.section("models")
    models = {
        str(name): _video_model(models_sec.section(str(name))) for name in list(models_sec.data)
    }
    aliases_raw = sec.raw("aliases", {}) or {}
    if not isinstance(aliases_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases_raw.items()
    ):
        raise SettingsError(sec.key("aliases"), "must map names to model names")
    for alias, target in aliases_raw.items():
        if models and target not in models:
            raise SettingsError(f"{sec.key('aliases')}.{alias}", f"unknown model {target!r}")
    default_model = sec.req_string("default_model", "sora-2") or "sora-2"
    resolved = aliases_raw.get(default_model, default_model)
    if models and resolved not in models:
        raise SettingsError(sec.key("default_model"), f"unknown model {default_model!r}")
    private = sec.raw("force_private", True)
    if not isinstance(private, bool):
        raise SettingsError(sec.key("force_private"), "must be true or false")
    out = VideoSettings(
        default_model=default_model,
        aliases=dict(aliases_raw),
        models=models,
        poll_after_ms=sec.integer("poll_after_ms", 5000, minimum=100),
        poll_interval_seconds=sec.number("poll_interval_seconds", 5.0),
        deadline_seconds=sec.number("deadline_seconds", 3600.0, minimum=1),
        force_private=private,
        extra_fields=sec.strings("extra_fields", ()),
        reference_types=sec.strings("reference_types", VideoSettings.reference_types),
        reference_max_bytes=sec.integer("reference_max_bytes", 10 * 1024 * 1024, minimum=1),
        url_allowed_hosts=tuple(h.lower() for h in sec.strings("url_allowed_hosts", ())),
    )
    sec.finish()
    return out


_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TEAM_OPTIONS = ("videos_private",)


def _teams(sec: _Section) -> dict[str, dict[str, Any]]:
    teams: dict[str, dict[str, Any]] = {}
    for name in list(sec.data):
        key = sec.key(str(name))
        if not _TEAM_NAME.fullmatch(str(name)):
            raise SettingsError(key, "team names are letters, digits, '.', '_' and '-'")
        body = sec.raw(name) or {}
        if not isinstance(body, dict):
            raise SettingsError(key, "must be a mapping of limits")
        entry: dict[str, Any] = {}
        for opt, value in body.items():
            if opt in _TEAM_OPTIONS:
                if not isinstance(value, bool):
                    raise SettingsError(f"{key}.{opt}", "must be true or false")
                entry[opt] = value
                continue
            try:
                entry[str(opt)] = parse_limit(str(opt), value)
            except LimitError as exc:
                raise SettingsError(f"{key}.{exc.key}", exc.problem) from None
        teams[str(name)] = entry
    teams.setdefault("default", {})
    return teams


def _quota(sec: _Section) -> QuotaSettings:
    tz = sec.req_string("time_zone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(sec.key("time_zone"), f"unknown time zone {tz!r}") from None
    fail_open = sec.raw("rate_fail_open", True)
    if not isinstance(fail_open, bool):
        raise SettingsError(sec.key("rate_fail_open"), "must be true or false")
    out = QuotaSettings(
        enabled=_flag(sec, "enabled", True),
        time_zone=tz,
        currency=sec.req_string("currency", "USD"),
        rate_fail_open=fail_open,
        lease_seconds=sec.number("lease_seconds", 900.0, minimum=10),
        reconcile_interval_seconds=sec.number("reconcile_interval_seconds", 30.0, minimum=0.1),
        reconcile_idle_seconds=sec.number("reconcile_idle_seconds", 60.0, minimum=0.1),
        orphan_grace_seconds=sec.number("orphan_grace_seconds", 60.0),
        idempotency_seconds=sec.number("idempotency_seconds", 86_400.0, minimum=60),
    )
    sec.finish()
    return out


def settings_from_mapping(data: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Build validated Settings from a parsed YAML document."""
    env = dict(os.environ) if env is None else env
    root = _Section(_expand(data, env, ""), "")
    settings = Settings(
        upstream=_upstream(root.section("upstream"), env),
        redis=_redis(root.section("redis")),
        auth=_auth(root.section("auth")),
        server=_server(root.section("server")),
        teams=_teams(root.section("teams")),
        videos=_videos(root.section("videos")),
        quota=_quota(root.section("quota")),
    )
    root.finish()
    return settings


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load a YAML config file (or only defaults and environment when path is None)."""
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SettingsError(str(path), f"cannot read config: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(str(path), f"invalid YAML: {exc}") from None
    return settings_from_mapping(data, env)


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
