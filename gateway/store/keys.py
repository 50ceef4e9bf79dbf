"""Every Redis key the gateway uses, named in this one module.

    gw:{team:<t>}:...        one team's quota counters, limits, reservations, job index and
                             idempotency keys: one hash tag, so one team's decision runs as one
                             script on one Cluster slot
    gw:job:{<id>}            a video job's record (and ``:poll``, its poll lock)
    gw:pool:{<key-id>}       an upstream key's shared health
    gw:pool:{<key-id>}:charged  what the gateway charged for calls that key served
    gw:pool:{<key-id>}:bill     the reconciliation baseline for that key
    gw:pool:cooler:{<team>}  the key a team's 429 cooled this cooldown period (one at most)
    gw:apikey:{<id>}         a gateway API key's record (hashed secret, team, scope, state)
    gw:teams                 every team that ever reserved
    gw:reconciler:leader     the reconciler's leader lock
    gw:audit                 the audit log of gateway admins' changes (a stream)
    gw:audit:teams           the teams whose own audit stream (``gw:{team:<t>}:audit``) exists
    gw:console:session:{<id>}  a console sign-in: who, its CSRF token (expires with it)
    gw:{team:<t>}:console:<user-hash>  one person's live console sessions (a sorted set)
    gw:console:oidc:{<state>}  an OpenID Connect sign-in's state, once used (minutes)

Team names are restricted by the verifier (letters, digits, ``._-``), so they cannot break
out of the tag; video ids are checked for shape before any look-up."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

TEAMS = "gw:teams"  # every team that ever reserved, for the reconciler and the admin API
RECONCILER_LEADER = "gw:reconciler:leader"
AUDIT_STREAM = "gw:audit"
AUDIT_TEAMS = "gw:audit:teams"


def api_key(key_id: str) -> str:
    return f"gw:apikey:{{{key_id}}}"


def console_session(session_id: str) -> str:
    """A console session (a hash with a TTL); the id is the cookie's, never guessable."""
    return f"gw:console:session:{{{session_id}}}"


def console_oidc(state: str) -> str:
    """An OpenID Connect sign-in's state, marked used once the IdP vouched for it."""
    return f"gw:console:oidc:{{{state}}}"


def job(video_id: str) -> str:
    return f"gw:job:{{{video_id}}}"


def job_poll(video_id: str) -> str:
    """At most one upstream status call per job per interval, across replicas."""
    return f"{job(video_id)}:poll"


def upstream_key_health(key_id: str) -> str:
    return f"gw:pool:{{{key_id}}}"


def upstream_key_charged(key_id: str) -> str:
    """Stored spend units the gateway charged for calls this upstream key served."""
    return f"{upstream_key_health(key_id)}:charged"


def upstream_key_bill(key_id: str) -> str:
    """The first reconciliation's readings (the upstream's and ours), which later ones
    compare against: a key used before the gateway counted is not drift."""
    return f"{upstream_key_health(key_id)}:bill"


def upstream_cooler(team: str) -> str:
    """Held while a team's 429 has cooled a key: its next 429s cool none (until it expires)."""
    return f"gw:pool:cooler:{{{team}}}"


@dataclass(frozen=True)
class TeamKeys:
    team: str

    @property
    def prefix(self) -> str:
        return f"gw:{{team:{self.team}}}"

    @property
    def limits(self) -> str:
        return f"{self.prefix}:limits"

    @property
    def rate(self) -> str:
        return f"{self.prefix}:rate"

    @property
    def videos(self) -> str:
        """The team's visible video jobs, scored by creation time (ms)."""
        return f"{self.prefix}:videos"

    @property
    def slots(self) -> str:
        return f"{self.prefix}:slots"

    @property
    def open(self) -> str:
        return f"{self.prefix}:open"

    def video_day(self, day: str) -> str:
        return f"{self.prefix}:vs:d:{day}"

    def video_month(self, month: str) -> str:
        return f"{self.prefix}:vs:m:{month}"

    def spend_month(self, month: str) -> str:
        return f"{self.prefix}:spend:m:{month}"

    def spend_day(self, day: str) -> str:
        return f"{self.prefix}:spend:d:{day}"

    def console_sessions(self, user: str) -> str:
        """One person's live console sessions, by expiry. The user is hashed: user names are
        the IdP's, any characters, and must not break out of the tag."""
        digest = hashlib.sha256(user.encode()).hexdigest()[:32]
        return f"{self.prefix}:console:{digest}"

    @property
    def tokens_minute(self) -> str:
        """Tokens per second of the last minute: a hash of epoch second -> tokens."""
        return f"{self.prefix}:tpm"

    def tokens_day(self, day: str) -> str:
        return f"{self.prefix}:tok:d:{day}"

    def metered_call(self, call_id: str) -> str:
        """One metered call's reservation, until it settles."""
        return f"{self.prefix}:call:{call_id}"

    def ledger(self, day: str) -> str:
        """The day's usage ledger: a hash of (user, model, tag, measure) -> amount."""
        return f"{self.prefix}:ledger:{day}"

    def tags(self, day: str) -> str:
        """The distinct x-gateway-tag values the team used that day (bounded)."""
        return f"{self.prefix}:tags:{day}"

    def reservation(self, job_id: str) -> str:
        return f"{self.prefix}:res:{job_id}"

    def idempotency(self, digest: str) -> str:
        return f"{self.prefix}:idem:{digest}"

    @property
    def audit(self) -> str:
        """The audit entries of the team's own key management (a stream, capped on its own)."""
        return f"{self.prefix}:audit"

    @property
    def api_keys(self) -> str:
        """The ids of every gateway API key the team was issued (a set)."""
        return f"{self.prefix}:apikeys"

    @property
    def api_key_names(self) -> str:
        """Name -> id of the team's keys that are not revoked: names are unique among them."""
        return f"{self.prefix}:apikey-names"

    def key(self, key_id: str) -> KeyCounters:
        """One gateway key's own counters: in the team's hash tag, so the team's scripts
        check and charge them in the same decision."""
        return KeyCounters(f"{self.prefix}:key:{key_id}")


@dataclass(frozen=True)
class KeyCounters:
    prefix: str

    @property
    def rate(self) -> str:
        return f"{self.prefix}:rate"

    def console_sessions(self, user: str) -> str:
        """One person's live console sessions, by expiry. The user is hashed: user names are
        the IdP's, any characters, and must not break out of the tag."""
        digest = hashlib.sha256(user.encode()).hexdigest()[:32]
        return f"{self.prefix}:console:{digest}"

    @property
    def tokens_minute(self) -> str:
        return f"{self.prefix}:tpm"

    def spend_day(self, day: str) -> str:
        return f"{self.prefix}:spend:d:{day}"

    def spend_month(self, month: str) -> str:
        return f"{self.prefix}:spend:m:{month}"

    @property
    def slots(self) -> str:
        return f"{self.prefix}:slots"


def reset_mark(bucket: str) -> str:
    """How many times an admin has reset ``bucket``; a refund goes back only into the
    generation its reservation was charged to."""
    return f"{bucket}:reset"
