"""Statistics over rounds, with no I/O: nearest-rank percentiles, medians, the rotating order
of interleaved rounds, and the per-round :class:`Sample` and its :class:`Summary`.

Why rounds: on a small machine shared with other work, one long measurement can be hit by a
burst that another variant escapes. So every variant runs once per round, in an order that
rotates every round (each runs first equally often), and the report gives the median over the
rounds of each metric separately.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
S = TypeVar("S")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank ``p``-th percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Iterable[float]) -> float:
    """The median, NaN when there are no values (a skipped variant is not an error)."""
    data = list(values)
    return statistics.median(data) if data else math.nan


def median_by_key(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key by key, the median over rounds (the keys of the first round, in its order)."""
    if not rounds:
        return {}
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def rotation(items: Sequence[T], round_index: int) -> list[T]:
    """The order of round ``round_index``: ``items`` rotated left by the round number, so each
    item runs first (and after each other) equally often."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def run_rounds(
    measures: Mapping[str, Callable[[], S]],
    rounds: int,
    *,
    on_sample: Callable[[int, str, S], None] | None = None,
    after_round: Callable[[int], None] | None = None,
) -> dict[str, list[S]]:
    """Run every measure once per round, in :func:`rotation` order; the samples per measure.

    ``on_sample(round, name, sample)`` reports progress; ``after_round(round)`` may check that
    the processes measured are still alive (and raise)."""
    names = list(measures)
    out: dict[str, list[S]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotation(names, r):
            sample = measures[name]()
            out[name].append(sample)
            if on_sample is not None:
                on_sample(r, name, sample)
        if after_round is not None:
            after_round(r)
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One round of one requester: sequential latency, pipelined rate, CPU µs per call by
    process (``requester`` is this process; the others as named by the :class:`CpuMeter`)."""

    p50_us: float
    p99_us: float
    mean_us: float
    calls_per_s: float
    cpu_sequential: dict[str, float]
    cpu_pipelined: dict[str, float]


@dataclass(frozen=True, slots=True)
class Summary:
    """The median over rounds, metric by metric, and the rounds themselves."""

    p50_us: float
    p99_us: float
    mean_us: float
    calls_per_s: float
    cpu_sequential: dict[str, float]
    cpu_pipelined: dict[str, float]
    rounds: list[Sample]


def make_sample(
    latencies_s: Sequence[float],
    calls_per_s: float,
    cpu_sequential: dict[str, float],
    cpu_pipelined: dict[str, float],
) -> Sample:
    """A round's :class:`Sample` from its sequential latencies (seconds) and pipelined rate."""
    ordered = sorted(latencies_s)
    return Sample(
        p50_us=percentile(ordered, 50) * 1e6,
        p99_us=percentile(ordered, 99) * 1e6,
        mean_us=statistics.fmean(ordered) * 1e6 if ordered else math.nan,
        calls_per_s=calls_per_s,
        cpu_sequential=cpu_sequential,
        cpu_pipelined=cpu_pipelined,
    )


def summarize(rounds: Sequence[Sample]) -> Summary:
    """The median of each metric over the rounds (each metric on its own: the p50 of the
    summary may come from another round than its throughput)."""
    if not rounds:
        raise ValueError("summarize: no rounds")
    return Summary(
        p50_us=statistics.median(s.p50_us for s in rounds),
        p99_us=statistics.median(s.p99_us for s in rounds),
        mean_us=statistics.median(s.mean_us for s in rounds),
        calls_per_s=statistics.median(s.calls_per_s for s in rounds),
        cpu_sequential=median_by_key([s.cpu_sequential for s in rounds]),
        cpu_pipelined=median_by_key([s.cpu_pipelined for s in rounds]),
        rounds=list(rounds),
    )
