"""Cheap, bounded call statistics that metrics exporters read at scrape time (pure).

The services keep these next to the counters they already had (the coordinator's calls and
forwards, a device's skill runs); an exporter (:mod:`edgeagent.bridges.metrics`) turns them into
Prometheus families only when scraped, so the hot path pays a dict lookup, a ``bisect`` and two
additions per call, not a metrics library's locks.

Everything is bounded: a :class:`LabelCap` admits at most ``limit`` distinct values of a label
(skills, devices) and folds the rest into :data:`OTHER`, so a caller inventing skill names or a
fleet of 100,000 devices cannot grow a table or a scrape without limit.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_BUCKETS_S",
    "DEVICE_LABELS",
    "OTHER",
    "SKILL_LABELS",
    "Buckets",
    "CallStats",
    "LabelCap",
]

#: Upper bounds (seconds) of the duration histograms' buckets; +Inf is implied.
DEFAULT_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: The label value every value past a cap is folded into.
OTHER: Final = "other"
#: Distinct skill / device label values a service exports before folding into ``other``.
SKILL_LABELS: Final = 200
DEVICE_LABELS: Final = 500


class Buckets:
    """A duration histogram: counts per bucket (``le`` bounds) and the sum, made on first use."""

    __slots__ = ("_counts", "bounds", "total")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS_S) -> None:
        self.bounds = bounds
        self._counts: list[int] | None = None  # an idle skill holds no list
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        counts = self._counts
        if counts is None:
            counts = self._counts = [0] * (len(self.bounds) + 1)
        counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return 0 if self._counts is None else sum(self._counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` for every bound and ``+Inf``, as Prometheus wants."""
        counts = self._counts or [0] * (len(self.bounds) + 1)
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class LabelCap:
    """At most ``limit`` distinct label values; later ones become :data:`OTHER`."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a label cap must be at least 1, not {limit}")
        self.limit = limit
        self.seen: set[str] = set()

    def fold(self, value: str) -> str:
        seen = self.seen
        if value in seen:
            return value
        if len(seen) < self.limit:
            seen.add(value)
            return value
        return OTHER


@dataclass(slots=True)
class CallStats:
    """Calls counted by (key, outcome) and timed by key, with capped key labels.

    A key is a tuple of label values (``(skill,)``, ``(skill, device)``); its parts are folded
    through the caps given, in order."""

    caps: tuple[LabelCap, ...]
    counts: dict[tuple[tuple[str, ...], str], int] = field(default_factory=dict)
    durations: dict[tuple[str, ...], Buckets] = field(default_factory=dict)

    def key(self, *values: str) -> tuple[str, ...]:
        caps = self.caps
        if len(values) != len(caps):
            raise ValueError(f"a key has {len(caps)} parts, not {len(values)}")
        if len(values) == 1:  # the hot cases, without a generator
            return (caps[0].fold(values[0]),)
        if len(values) == 2:
            return (caps[0].fold(values[0]), caps[1].fold(values[1]))
        return tuple(cap.fold(v) for cap, v in zip(caps, values, strict=True))

    def record(self, key: tuple[str, ...], outcome: str, seconds: float | None) -> None:
        """One call of ``key`` ended with ``outcome`` (``ok`` or an error code) after
        ``seconds`` (None: not timed)."""
        counts = self.counts
        k = (key, outcome)
        counts[k] = counts.get(k, 0) + 1
        if seconds is not None:
            hist = self.durations.get(key)
            if hist is None:
                hist = self.durations[key] = Buckets()
            hist.observe(seconds)

    def by_outcome(self) -> dict[str, int]:
        """Calls per outcome, all keys summed."""
        out: dict[str, int] = {}
        for (_, outcome), n in self.counts.items():
            out[outcome] = out.get(outcome, 0) + n
        return out
