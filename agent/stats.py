"""Small measurement helpers shared by the agent, the client and the benchmarks."""

from __future__ import annotations

import math
import os
import resource
from collections import deque
from collections.abc import Iterable, Sequence
from typing import ClassVar


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyWindow:
    """The last ``size`` durations (seconds); percentiles are computed on demand."""

    __slots__ = ("_size", "_values")

    _EMPTY: ClassVar[deque[float]] = deque(maxlen=0)

    def __init__(self, size: int = 512) -> None:
        self._size = size
        # Made on the first add: an idle skill costs no buffer (a simulated fleet has 100,000).
        self._values: deque[float] = self._EMPTY

    def add(self, seconds: float) -> None:
        if self._values is self._EMPTY:
            self._values = deque(maxlen=self._size)
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles_ms(self, qs: Iterable[float]) -> list[float | None]:
        if not self._values:
            return [None for _ in qs]
        ordered = sorted(self._values)
        return [round(percentile(ordered, q) * 1000, 3) for q in qs]


def rss_bytes() -> int | None:
    """Resident memory of this process, bytes (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except (OSError, ValueError):
            return None
