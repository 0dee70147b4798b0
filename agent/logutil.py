"""Logging that outside input cannot flood: per-kind rate limits, and long values clipped.

A fleet on an open broker can be sent 20,000 bad requests a second; logging each one would fill a
disk. :class:`LogLimiter` lets through ``burst`` records of one *kind* (a short string naming the
situation: ``"bad_request"``, ``"spoofed-state"``…) per ``period_s``, counts the rest, and adds
the count to the next record of that kind that gets through ("… (and 4,312 more like it in the
last 10 s)"). :func:`clip` shortens any value outside input can make long (an idempotency key, a
topic, an error text) before it reaches a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Longest outside-supplied value written into a log line, characters.
CLIP_CHARS = 120
#: Most distinct kinds remembered; a limiter never grows past it (old kinds are forgotten).
MAX_KINDS = 256


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr``-free text of ``value``, at most ``limit`` characters (with the full length)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text):,} chars]"


@dataclass(slots=True)
class _Window:
    start: float
    sent: int = 0
    suppressed: int = 0


class LogLimiter:
    """At most ``burst`` records per kind per ``period_s``; the rest are counted, not written."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        period_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or period_s <= 0:
            raise ValueError("burst must be >= 1 and period_s > 0")
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        #: Records not written, by kind, since this limiter was made.
        self.suppressed_total: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``kind`` is over its budget; True if it was written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        w = self._windows.get(kind)
        if w is None or now - w.start >= self.period_s:
            carried = w.suppressed if w is not None else 0
            if w is None and len(self._windows) >= MAX_KINDS:
                self._windows.pop(next(iter(self._windows)))
            w = self._windows[kind] = _Window(start=now, suppressed=carried)
        if w.sent >= self.burst:
            w.suppressed += 1
            self.suppressed_total[kind] = self.suppressed_total.get(kind, 0) + 1
            return False
        w.sent += 1
        if w.suppressed:
            msg = f"{msg} (and {w.suppressed:,} more like it not logged)"
            w.suppressed = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, kind, msg, *args)
