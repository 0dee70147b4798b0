"""Injectable time: one clock for reading time *and* for timers.

Logic takes ``now`` or a :class:`Clock`; only this module reads the real clock or arms timers on
the event loop directly. Every deadline in the agent, client, coordinator and transports goes
through :meth:`Clock.call_later` or :meth:`Clock.timeout`, and every read through
:meth:`Clock.monotonic`, so a virtual clock (the simulator's
:class:`~edgeagent.simulator.vclock.VirtualClock`) moves reads and timers together: a day of a
fleet runs in seconds and nothing mixes two time bases.

:class:`SystemClock` reads the running loop's time, which for asyncio's loops is
``time.monotonic()``; outside a loop it reads ``time.monotonic()`` itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock Unix time, seconds (for timestamps people read)."""

    def monotonic(self) -> float:
        """Monotonic seconds (for deadlines and durations), on the same base as the timers."""

    async def sleep(self, seconds: float) -> None: ...

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        """Run ``callback(*args)`` on the running loop after ``delay`` seconds of this clock."""

    def timeout(self, delay: float | None) -> asyncio.Timeout:
        """``async with clock.timeout(s):`` raises TimeoutError after ``s`` seconds."""


class LoopClock:
    """A clock whose time is the running event loop's (real or virtual).

    Timers and reads share one base by construction: ``monotonic()`` is ``loop.time()``, and
    ``call_later``/``timeout`` are the loop's own. Subclasses choose the wall-clock epoch.
    """

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def timeout(self, delay: float | None) -> asyncio.Timeout:
        return asyncio.timeout(delay)


class SystemClock(LoopClock):
    """The real clock."""


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock for tests of pure logic: time moves only when :meth:`advance` is called.

    It has no loop, so it offers no timers (``call_later``/``timeout`` raise); pure policies
    take ``now`` and need none.
    """

    def __init__(self, start: float = 1000.0, epoch: float = 1_700_000_000.0) -> None:
        self.now = start
        self.epoch = epoch

    def time(self) -> float:
        return self.epoch + self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        raise RuntimeError("ManualClock has no timers: test the pure logic with explicit `now`")

    def timeout(self, delay: float | None) -> asyncio.Timeout:
        raise RuntimeError("ManualClock has no timers: test the pure logic with explicit `now`")
