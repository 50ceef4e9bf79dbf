"""Redis key names for quotas. Every key of one team shares the hash tag ``{team:<t>}``, so one
team's decision runs as one script on one Cluster slot. Team names are restricted by the
verifier (letters, digits, ``._-``), so they cannot break out of the tag."""

from __future__ import annotations

from dataclasses import dataclass

TEAMS = "gw:teams"  # every team that ever reserved, for the reconciler and the admin API


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

    def reservation(self, job_id: str) -> str:
        return f"{self.prefix}:res:{job_id}"

    def idempotency(self, digest: str) -> str:
        return f"{self.prefix}:idem:{digest}"


def reset_mark(bucket: str) -> str:
    """How many times an admin has reset ``bucket``; a refund goes back only into the
    generation its reservation was charged to."""
    return f"{bucket}:reset"
