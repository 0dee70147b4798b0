"""Injectable time. Logic takes ``now`` or a :class:`Clock`; only this module reads the real clock.

The simulator substitutes a virtual clock so a day of a fleet can run in seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock Unix time, seconds (for timestamps people read)."""

    def monotonic(self) -> float:
        """Monotonic seconds (for deadlines and durations)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
