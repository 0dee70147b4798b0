"""Render a simulator report: one self-contained HTML page, PNG charts and a terminal table.

The report is the plain JSON-able dict the simulation writes (``version`` 1): header fields
(``name``, ``mode``, ``seed``, ``duration_s``, ``bucket_s``, ``devices``), ``summary``,
per-skill and per-group stats with a ``series`` of time buckets each, ``fleet_series``, the
``timeline`` (faults, offline periods, notes), ``assertions``, ``calibration`` and ``memory``.
Times are seconds since the run started, latencies milliseconds, and any value may be null or
missing: every renderer shows ``-`` (or "no data") for it rather than failing.

The HTML page, top to bottom: header (name, mode, seed, duration, devices); summary numbers;
assertions (pass green, fail red); the fleet chart (p95 latency, success rate and online devices,
with fault bands named at the top); per skill a table and p50/p95/p99 charts; per group a table
and charts of calls, online devices and queue depth; the timeline table; calibration and memory
tables. Charts are inline SVG, styles inline CSS: no scripts, fonts or links to anything outside
the page, and every piece of text from the report goes through ``html.escape``.

A bucket's value is plotted at the middle of the bucket (``t + bucket_s / 2``), and a fault with
``until: null`` is shaded to the end of the run.

``write_report`` writes ``report.json``, ``report.html`` and the PNGs of ``write_pngs``
(``fleet.png``, ``skills.png``, ``groups.png``, drawn by :mod:`edgeagent.simulator.png`).

The page is :mod:`~edgeagent.simulator.report_html`, its charts
:mod:`~edgeagent.simulator.report_svg`, the defensive reading of values
:mod:`~edgeagent.simulator.report_values`; this module keeps the PNGs, the terminal table and
the files, and re-exports the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeagent.simulator import png, rollout_render

from .report_html import render_html
from .report_svg import svg_chart
from .report_values import (
    Band,
    Cell,
    Series,
    as_dict,
    as_list,
    bucket_x,
    column,
    fault_bands,
    fmt_errors,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_s,
    fmt_value,
    top_error,
    x_range,
)

__all__ = [
    "Band", "Cell", "Series", "fault_bands", "fmt_errors", "fmt_ms", "fmt_num", "fmt_pct",
    "fmt_s", "fmt_value", "render_html", "summary_table", "svg_chart", "top_error",
    "write_pngs", "write_report",
]  # fmt: skip

_ANSI = {"bold": "\x1b[1m", "green": "\x1b[32m", "red": "\x1b[31m", "reset": "\x1b[0m"}


def write_pngs(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write fleet.png (fleet p95), skills.png (p95 per skill) and groups.png (online devices
    per group) into ``directory``; return their paths."""
    bands, xr = fault_bands(report), x_range(report)
    fleet = as_list(report.get("fleet_series"))
    charts: list[tuple[str, str, str, list[Any], Series]] = [
        (
            "fleet.png",
            "Fleet p95 latency",
            "latency (ms)",
            fleet,
            [("p95", column(fleet, "p95_ms"))],
        ),
    ]
    for file, key, col, title, label in (
        ("skills.png", "skills", "p95_ms", "p95 latency per skill", "latency (ms)"),
        ("groups.png", "groups", "online", "Online devices per group", "devices"),
    ):
        items = sorted(as_dict(report.get(key)).items())
        longest = max((as_list(as_dict(v).get("series")) for _, v in items), key=len, default=[])
        series = [(k, column(as_list(as_dict(v).get("series")), col)) for k, v in items]
        charts.append((file, title, label, longest, series))
    paths = []
    for file, title, label, ref, series in charts:
        x, xl = bucket_x(report, ref), "time (s)"
        data = png.line_chart(
            series, x=x, title=title, y_label=label, bands=bands, x_range=xr, x_label=xl
        )
        (directory / file).write_bytes(data)
        paths.append(directory / file)
    return paths


def summary_table(report: dict[str, Any], *, color: bool = False) -> str:
    """A fixed-width plain-text summary for the terminal (ANSI colours if ``color``)."""

    def paint(text: str, style: str) -> str:
        return f"{_ANSI[style]}{text}{_ANSI['reset']}" if color else text

    head = ["", "name", "calls", "ok %", "p50", "p95", "p99", "failovers", "top error"]
    rows: list[list[str]] = []
    for kind, items in (
        ("fleet", [("all", as_dict(report.get("summary")))]),
        ("skill", sorted(as_dict(report.get("skills")).items())),
        ("group", sorted(as_dict(report.get("groups")).items())),
    ):
        for k, s in items:
            s = as_dict(s)
            stats = [fmt_num(s.get("calls")), fmt_pct(s.get("success_rate"))]
            stats += [fmt_ms(s.get(f"p{p}_ms")) for p in (50, 95, 99)]
            rows.append(
                [kind, str(k), *stats, fmt_num(s.get("failovers")), top_error(s.get("errors"))]
            )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        cells = [
            c.ljust(w) if i in (0, 1, 8) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    title = f"{report.get('name') or 'simulation'}  mode {fmt_value(report.get('mode'))}  "
    title += f"seed {fmt_value(report.get('seed'))}  {fmt_s(report.get('duration_s'))}  "
    title += f"{fmt_num(report.get('devices'))} devices"
    out = [paint(title, "bold"), paint(line(head), "bold"), *map(line, rows)]
    if isinstance(report.get("rollout"), dict):
        out += rollout_render.text_lines(report["rollout"])
    out += ["", "assertions"]
    for a in as_list(report.get("assertions")):
        mark = paint("PASS", "green") if as_dict(a).get("passed") is True else paint("FAIL", "red")
        out.append(f"  {mark}  {a.get('text', '')}  (value {fmt_value(a.get('value'))})")
    if not as_list(report.get("assertions")):
        out.append("  (none)")
    out += ["", "faults"]
    for ev in as_list(report.get("timeline")):
        if as_dict(ev).get("kind") != "fault":
            continue
        until = "end" if ev.get("until") is None else fmt_num(ev.get("until"))
        span = f"{fmt_num(ev.get('t'))}-{until} s"
        targets = ", ".join(map(str, as_list(ev.get("targets")))) or "-"
        detail = f"  ({ev['detail']})" if ev.get("detail") else ""
        out.append(f"  {span:>13}  {ev.get('name') or '-'}  [{ev.get('fault') or '-'}]  {targets}")
        out[-1] += detail
    if not fault_bands(report):
        out.append("  (none)")
    return "\n".join(out) + "\n"


def write_report(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Create ``directory`` and write report.json, report.html and the PNGs; paths by file name."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"report.json": directory / "report.json", "report.html": directory / "report.html"}
    paths["report.json"].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", "utf-8")
    paths["report.html"].write_text(render_html(report), "utf-8")
    paths.update((p.name, p) for p in write_pngs(report, directory))
    return paths
