"""Reading a simulator report defensively, and its values as text.

Any value in a report may be null, missing or of the wrong type (a report written by an older or
newer version, or edited by hand); these helpers turn each into ``-``, None or an empty
container instead of failing, so the HTML page, the PNG charts and the terminal table show what
there is. Shared by :mod:`~edgeagent.simulator.render`, :mod:`~edgeagent.simulator.report_svg`
and :mod:`~edgeagent.simulator.report_html`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

Series = list[tuple[str, list[float | None]]]
Band = tuple[float, float, str]
Cell = str | tuple[str, str]  # plain text, or (text, css class)


def as_num(v: Any) -> float | None:
    """A finite number as float; anything else (null, text, NaN, a bool) is None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def as_dict(v: Any) -> dict[str, Any]:
    """``v`` if it is a dict, else an empty one (any report value may be missing)."""
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list[Any]:
    """``v`` if it is a list, else an empty one."""
    return v if isinstance(v, list) else []


def fmt_ms(v: Any) -> str:
    return "-" if (n := as_num(v)) is None else f"{n:.1f} ms"


def fmt_pct(rate: Any) -> str:
    """A 0..1 rate as a percentage: ``97.2 %``."""
    return "-" if (n := as_num(rate)) is None else f"{100 * n:.1f} %"


def fmt_num(v: Any) -> str:
    if (n := as_num(v)) is None:
        return "-"
    return str(int(n)) if n == int(n) and abs(n) < 1e15 else f"{n:g}"


def fmt_s(v: Any) -> str:
    return "-" if as_num(v) is None else f"{fmt_num(v)} s"


def fmt_value(v: Any) -> str:
    return "-" if v is None else fmt_num(v) if as_num(v) is not None else str(v)


def error_counts(errors: Any) -> list[tuple[str, int]]:
    """``(code, count)`` pairs, the most frequent first."""
    items = [(str(k), int(n)) for k, v in as_dict(errors).items() if (n := as_num(v))]
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))


def fmt_errors(errors: Any) -> str:
    return ", ".join(f"{k} {n}" for k, n in error_counts(errors)) or "-"


def top_error(errors: Any) -> str:
    return next((f"{k} ({n})" for k, n in error_counts(errors)), "-")


def fault_bands(report: Mapping[str, Any]) -> list[Band]:
    """``(start, end, name)`` of every fault in the timeline; an open fault ends with the run."""
    end = as_num(report.get("duration_s"))
    bands: list[Band] = []
    for ev in as_list(report.get("timeline")):
        t = as_num(as_dict(ev).get("t"))
        if ev.get("kind") != "fault" or t is None:
            continue
        until = as_num(ev.get("until"))
        name = ev.get("name") or ev.get("fault") or "fault"
        bands.append((t, until if until is not None else max(end or t, t), str(name)))
    return bands


def bucket_x(report: Mapping[str, Any], series: list[Any]) -> list[float]:
    """The x of each bucket of ``series``: the middle of the bucket."""
    half = (as_num(report.get("bucket_s")) or 0.0) / 2
    return [(as_num(as_dict(p).get("t")) or 0.0) + half for p in series]


def column(series: list[Any], key: str) -> list[float | None]:
    """The ``key`` value of every bucket (None where missing)."""
    return [as_num(as_dict(p).get(key)) for p in series]


def success_pct(series: list[Any]) -> list[float | None]:
    """Per-bucket success rate in percent (null for a bucket without calls)."""
    calls, ok = column(series, "calls"), column(series, "ok")
    return [100 * o / c if c and o is not None else None for c, o in zip(calls, ok, strict=True)]


def x_range(report: Mapping[str, Any]) -> tuple[float, float] | None:
    """0 to the run's duration, when the report has one."""
    return (0.0, d) if (d := as_num(report.get("duration_s"))) else None
