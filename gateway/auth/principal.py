"""Who is calling: the result of authentication, recorded in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    team: str
    user: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        return role in self.roles
