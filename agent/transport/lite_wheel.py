"""Keepalive for every MQTT client of one event loop: one timer wheel, ticking once a second.

Ten thousand idle simulated devices must not cost ten thousand timers: a single callback on the
injected :class:`~edgeagent.clock.Clock` visits only the connections due for a PINGREQ (or
overdue for an answer) at that tick, and stops while no connection is registered. Each
connection re-registers itself after its visit, at the time its session says it is next due.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

from ..clock import Clock

TICK_S = 1.0
"""The wheel's resolution, seconds: a ping may go out up to one tick early."""


class WheelEntry(Protocol):
    """A connection on the wheel: where it is filed, and what to do when due."""

    wheel_key: int

    def keepalive(self, now: float) -> None: ...


class KeepaliveWheel:
    """Connections filed by the tick at which they are next due."""

    __slots__ = ("buckets", "clock", "cursor", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = weakref.ref(loop)  # the wheels registry must not keep a loop alive
        self.clock = clock  # the first client's: every clock of one loop reads that loop's time
        self.buckets: dict[int, set[WheelEntry]] = {}  # tick number -> connections due then
        self.cursor = 0  # the next tick to visit; 0 while the wheel is stopped

    def add(self, entry: WheelEntry, when: float) -> None:
        """Visit ``entry`` at the first tick at or after ``when`` (never, for infinity)."""
        if when == float("inf"):
            return  # keepalive off
        if not self.cursor:
            now = self.clock.monotonic()
            self.cursor = int(now / TICK_S) + 1
            self.clock.call_later(self.cursor * TICK_S - now, self._tick)
        entry.wheel_key = max(-int(-when // TICK_S), self.cursor)
        self.buckets.setdefault(entry.wheel_key, set()).add(entry)

    def remove(self, entry: WheelEntry) -> None:
        bucket = self.buckets.get(entry.wheel_key)
        if bucket is not None:
            bucket.discard(entry)
            if not bucket:
                del self.buckets[entry.wheel_key]

    def _tick(self) -> None:
        if self.loop() is None:
            return
        now = self.clock.monotonic()
        upto = int(now / TICK_S)
        due = [self.buckets.pop(k) for k in range(self.cursor, upto + 1) if k in self.buckets]
        self.cursor = upto + 1
        for bucket in due:
            for entry in bucket:
                entry.keepalive(now)
        if self.buckets:
            self.clock.call_later(self.cursor * TICK_S - now, self._tick)
        else:
            self.cursor = 0


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeepaliveWheel] = (
    weakref.WeakKeyDictionary()
)


def wheel_for(loop: asyncio.AbstractEventLoop, clock: Clock) -> KeepaliveWheel:
    """The loop's wheel, made on first use with ``clock``."""
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = KeepaliveWheel(loop, clock)
    return wheel
