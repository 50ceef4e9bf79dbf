"""Who is calling: the result of authentication, recorded in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the team it is billed and limited as, its subject and roles."""

    team: str
    user: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        """Whether the token granted ``role`` (exact, case-sensitive match)."""
        return role in self.roles
