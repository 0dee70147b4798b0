"""Virtual time for embedded runs: an asyncio event loop whose clock jumps instead of waiting.

:class:`VirtualTimeLoop` is a selector event loop whose ``time()`` is a counter. When the loop has
nothing ready and would block until its next timer, the selector wrapper moves the counter to that
timer instead of sleeping, so ``asyncio.sleep``, ``asyncio.timeout``, ``call_later`` and
everything built on them (agent health loops, deadlines, coordinator patience, reconnect backoff)
run on simulated time, as fast as the CPU allows. Real I/O still works (the wrapper polls the real
selector first), but an embedded run has none: agents talk through the in-memory broker and
synchronous skills run inline (:class:`InlineExecutor`), so the order of events depends only on
the seed. That is what makes a run reproducible.

The same trick as trio's ``MockClock(autojump_threshold=0)``; asyncio has no hook for it, so the
selector is the place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from collections.abc import Callable
from typing import Any, TypeVar

from ..clock import LoopClock

T = TypeVar("T")

#: Unix time at virtual t=0 (2026-01-01T00:00:00Z): timestamps in messages look plausible and
#: are the same in every run.
EPOCH = 1_767_225_600.0


class _JumpingSelector(selectors.DefaultSelector):
    """Poll the real selector; when it has nothing and the loop would wait, jump virtual time."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        loop = self.loop
        if timeout is None or loop is None or loop.real_waits:
            return super().select(timeout)  # nothing scheduled, or real work in flight: wait
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (seconds from 0); see the module docstring."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0
        self.real_waits = 0
        """While above zero (real threads or sockets in use), the loop really waits."""

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


class VirtualClock(LoopClock):
    """The :class:`~edgeagent.clock.Clock` of a virtual-time loop: reads and timers alike."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: float = EPOCH) -> None:
        self._loop = loop
        self.epoch = epoch

    def time(self) -> float:
        return self.epoch + self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()


class InlineExecutor(concurrent.futures.Executor):
    """Runs submitted work at once on the calling thread: no threads, so no nondeterminism.

    Embedded simulations hand it to device agents; their synchronous skills (model inference
    included) then run on the loop, and their device time is paid in virtual time instead.
    """

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the caller sees it through the future, as with threads
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None
