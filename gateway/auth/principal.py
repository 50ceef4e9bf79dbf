"""Who is calling: the result of authentication, recorded in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.api_keys import KeyScope


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the team it is billed and limited as, its subject and roles,
    and, when it came with a gateway API key, that key's own scope (checked with the team's)."""

    team: str
    user: str
    roles: frozenset[str]
    key: KeyScope | None = None

    def has_role(self, role: str) -> bool:
        """Whether the token granted ``role`` (exact, case-sensitive match)."""
        return role in self.roles
