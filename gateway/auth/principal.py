"""Who is calling: the result of authentication, recorded in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.api_keys import KeyRecord, KeyScope


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the team it is billed and limited as, its subject and roles,
    and, when it came with a gateway API key, that key's own scope (checked with the team's)."""

    team: str
    user: str
    roles: frozenset[str]
    key: KeyScope | None = None

    @classmethod
    def of_key(cls, record: KeyRecord) -> Principal:
        """Who a gateway key authenticates as, wherever it is used (the API, or a console
        session made with it): its team, its holder, its roles and its own scope."""
        return cls(
            team=record.team, user=record.user, roles=frozenset(record.roles), key=record.scope
        )

    def has_role(self, role: str) -> bool:
        """Whether the token granted ``role`` (exact, case-sensitive match)."""
        return role in self.roles
