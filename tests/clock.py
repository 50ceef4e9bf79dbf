"""The clock tests hand to the gateway instead of ``time.time``: it moves only when told to."""

from __future__ import annotations


class Clock:
    """Seconds since the epoch, pinned until a test moves ``now`` (or ``ms``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        """Whole milliseconds: set through here, ``int(clock() * 1000)`` gives them back."""
        return round(self.now * 1000)

    @ms.setter
    def ms(self, value: int) -> None:
        self.now = value / 1000

    def advance(self, seconds: float) -> None:
        self.now += seconds
