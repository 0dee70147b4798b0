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
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeagent.simulator import png, rollout_render

Series = list[tuple[str, list[float | None]]]
Band = tuple[float, float, str]
Cell = str | tuple[str, str]  # plain text, or (text, css class)

_e = html.escape
_ANSI = {"bold": "\x1b[1m", "green": "\x1b[32m", "red": "\x1b[31m", "reset": "\x1b[0m"}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def fmt_ms(v: Any) -> str:
    return "-" if (n := _num(v)) is None else f"{n:.1f} ms"


def fmt_pct(rate: Any) -> str:
    """A 0..1 rate as a percentage: ``97.2 %``."""
    return "-" if (n := _num(rate)) is None else f"{100 * n:.1f} %"


def fmt_num(v: Any) -> str:
    if (n := _num(v)) is None:
        return "-"
    return str(int(n)) if n == int(n) and abs(n) < 1e15 else f"{n:g}"


def fmt_s(v: Any) -> str:
    return "-" if _num(v) is None else f"{fmt_num(v)} s"


def fmt_value(v: Any) -> str:
    return "-" if v is None else fmt_num(v) if _num(v) is not None else str(v)


def _errors(errors: Any) -> list[tuple[str, int]]:
    items = [(str(k), int(n)) for k, v in _dict(errors).items() if (n := _num(v))]
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))


def fmt_errors(errors: Any) -> str:
    return ", ".join(f"{k} {n}" for k, n in _errors(errors)) or "-"


def top_error(errors: Any) -> str:
    return next((f"{k} ({n})" for k, n in _errors(errors)), "-")


def fault_bands(report: Mapping[str, Any]) -> list[Band]:
    """``(start, end, name)`` of every fault in the timeline; an open fault ends with the run."""
    end = _num(report.get("duration_s"))
    bands: list[Band] = []
    for ev in _list(report.get("timeline")):
        t = _num(_dict(ev).get("t"))
        if ev.get("kind") != "fault" or t is None:
            continue
        until = _num(ev.get("until"))
        name = ev.get("name") or ev.get("fault") or "fault"
        bands.append((t, until if until is not None else max(end or t, t), str(name)))
    return bands


def _x(report: Mapping[str, Any], series: list[Any]) -> list[float]:
    half = (_num(report.get("bucket_s")) or 0.0) / 2
    return [(_num(_dict(p).get("t")) or 0.0) + half for p in series]


def _col(series: list[Any], key: str) -> list[float | None]:
    return [_num(_dict(p).get(key)) for p in series]


def _rate(series: list[Any]) -> list[float | None]:
    """Per-bucket success rate in percent (null for a bucket without calls)."""
    calls, ok = _col(series, "calls"), _col(series, "ok")
    return [100 * o / c if c and o is not None else None for c, o in zip(calls, ok, strict=True)]


def _x_range(report: Mapping[str, Any]) -> tuple[float, float] | None:
    return (0.0, d) if (d := _num(report.get("duration_s"))) else None


# ---------------------------------------------------------------- SVG charts


def _text(x: float, y: float, cls: str, text: str) -> str:
    return f'<text x="{x}" y="{y}" class="{cls}">{_e(text)}</text>'


def svg_chart(
    title: str,
    x: list[float],
    panels: Sequence[tuple[str, Series]],
    bands: Sequence[Band] = (),
    x_range: tuple[float, float] | None = None,
) -> str:
    """Stacked panels sharing one time axis; each panel is ``(y label, series)``."""
    w, left, right, ph, gap, top = 760, 56, 16, 130, 40, 30
    h = top + len(panels) * (ph + gap) - gap + 50
    xs = [*x, *(b[0] for b in bands), *(b[1] for b in bands)]
    x_lo, x_hi = x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0))
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def px(v: float) -> float:
        return round(left + (v - x_lo) / (x_hi - x_lo) * (w - left - right), 1)

    def colour(j: int) -> str:
        c = png.PALETTE[j % len(png.PALETTE)]
        return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"

    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">']
    out.append(_text(w / 2, 16, "ct", title))
    for i, (label, series) in enumerate(panels):
        y0 = top + i * (ph + gap) + 16
        vals = [v for _, vs in series for v in vs if v is not None]
        ticks, labels = png.axis_ticks(vals), list[str]()
        y_lo, y_hi = ticks[0], ticks[-1]

        def py(v: float, y0: int = y0, y_lo: float = y_lo, y_hi: float = y_hi) -> float:
            return round(y0 + ph - (v - y_lo) / (y_hi - y_lo) * ph, 1)

        out.append(_text(left, y0 - 6, "yl", label))
        lx = w - right
        for j, (name, _) in reversed(list(enumerate(series))):
            lx -= 7 * len(name) + 22
            out.append(f'<rect x="{lx}" y="{y0 - 14}" width="10" height="10" fill="{colour(j)}"/>')
            out.append(_text(lx + 14, y0 - 5, "lg", name))
        for b0, b1, name in bands:
            a, b = px(max(b0, x_lo)), px(min(b1, x_hi))
            if b1 < x_lo or b0 > x_hi or b < a:
                continue
            out.append(
                f'<rect x="{a}" y="{y0}" width="{max(b - a, 1)}" height="{ph}" '
                f'class="band"><title>{_e(name)}</title></rect>'
            )
            if i == 0:  # names on top of the first panel, drawn after its series
                labels.append(_text(a + 3, y0 + 12, "bl", name))
        for t in ticks:
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(t)}" y2="{py(t)}" class="gr"/>')
            out.append(_text(left - 5, py(t) + 4, "yt", png.format_tick(t)))
        out.append(
            f'<rect x="{left}" y="{y0}" width="{w - left - right}" height="{ph}" class="ax"/>'
        )
        for j, (name, vs) in enumerate(series):
            out.append(f'<g stroke="{colour(j)}" fill="{colour(j)}"><title>{_e(name)}</title>')
            runs: list[list[str]] = [[]]
            for xv, v in zip(x, vs, strict=False):
                if v is None:
                    runs.append([])
                else:
                    runs[-1].append(f"{px(xv)},{py(v)}")
            for run in runs:
                if len(run) == 1:
                    cx, cy = run[0].split(",")
                    out.append(f'<circle cx="{cx}" cy="{cy}" r="2"/>')
                elif run:
                    out.append(f'<polyline fill="none" points="{" ".join(run)}"/>')
            out.append("</g>")
        out += labels
        if not vals:
            out.append(_text(w / 2, y0 + ph / 2, "nd", "no data"))
    axis_y = top + len(panels) * (ph + gap) - gap + 16
    for t in png.nice_ticks(x_lo, x_hi, 8):
        if x_lo <= t <= x_hi:
            out.append(_text(px(t), axis_y + 14, "xt", png.format_tick(t)))
    out.append(_text(w - right, axis_y + 28, "xl", "time (s)") + "</svg>")
    return "".join(out)


# ---------------------------------------------------------------- HTML


def _table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], empty: str = "none") -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            text, cls = (cell, "") if isinstance(cell, str) else cell
            cells.append(
                f'<td class="{_e(cls)}">{_e(text)}</td>' if cls else f"<td>{_e(text)}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STAT_HEADERS = ("calls", "success", "p50", "p95", "p99", "failovers", "errors")


def _stat_cells(s: Mapping[str, Any]) -> list[str]:
    ms = [fmt_ms(s.get(f"p{p}_ms")) for p in (50, 95, 99)]
    rate, failovers = fmt_pct(s.get("success_rate")), fmt_num(s.get("failovers"))
    return [fmt_num(s.get("calls")), rate, *ms, failovers, fmt_errors(s.get("errors"))]


def _verdict(v: Any) -> Cell:
    return ("PASS", "pass") if v is True else ("FAIL", "fail")


def _nested_table(data: Any, first: Sequence[str], depth: int) -> str:
    """Rows from ``{a: {b: {field: value}}}`` (depth 2) or ``{a: {field: value}}`` (depth 1)."""
    rows: list[tuple[list[str], dict[str, Any]]] = []
    for a, inner in sorted(_dict(data).items()):
        if depth == 1:
            rows.append(([a], _dict(inner)))
        else:
            rows.extend(([a, b], _dict(v)) for b, v in sorted(_dict(inner).items()))
    fields = list(dict.fromkeys(k for _, f in rows for k in f))
    cells: list[list[Cell]] = []
    for keys, f in rows:
        row: list[Cell] = [*keys]
        row += [
            _verdict(f[k]) if isinstance(f.get(k), bool) else fmt_value(f.get(k)) for k in fields
        ]
        cells.append(row)
    return _table([*first, *fields], cells)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{margin:0 0 4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta span{margin-right:18px;color:#555}.meta b{color:#222}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:90px}.card b{display:block;font-size:20px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
.pass{color:#1a7f37;font-weight:bold}.fail,.k-fault{color:#c62828;font-weight:bold}
.empty{color:#888;font-style:italic}svg.chart{display:block;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .ct{font-size:14px;text-anchor:middle}
svg .yt{text-anchor:end}svg .xt{text-anchor:middle}svg .xl{text-anchor:end}
svg .bl{fill:#aa1e1e;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .nd{fill:#999;text-anchor:middle}svg .gr{stroke:#e4e4e4}
svg .ax{fill:none;stroke:#888}svg .band{fill:#ffd6d6}svg polyline{stroke-width:1.8}
"""


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no external links)."""
    name = str(report.get("name") or "simulation")
    summary = _dict(report.get("summary"))
    skills, groups = _dict(report.get("skills")), _dict(report.get("groups"))
    bands, xr = fault_bands(report), _x_range(report)
    meta = [
        ("mode", report.get("mode")),
        ("seed", report.get("seed")),
        ("duration", fmt_s(report.get("duration_s"))),
        ("devices", report.get("devices")),
        ("bucket", fmt_s(report.get("bucket_s"))),
        ("spec", report.get("spec_file")),
    ]
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(name)} · '
        f"simulation report</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{_e(name)}</h1><p class="meta">',
        *(f"<span>{_e(k)} <b>{_e(fmt_value(v))}</b></span>" for k, v in meta),
        '</p></header><section id="summary"><h2>Summary</h2><div class="cards">',
    ]
    values = _stat_cells(summary)
    values.insert(1, fmt_num(summary.get("ok")))
    for label, text in zip(("calls", "ok", *_STAT_HEADERS[1:]), values, strict=True):
        out.append(f'<div class="card">{_e(label)}<b>{_e(text)}</b></div>')
    out.append("</div></section>")
    if isinstance(report.get("rollout"), dict):
        out.append(rollout_render.html(report["rollout"]))
    out.append('<section id="assertions"><h2>Assertions</h2>')
    rows: list[list[Cell]] = []
    for a in map(_dict, _list(report.get("assertions"))):
        rows.append([_verdict(a.get("passed")), str(a.get("text", "")), fmt_value(a.get("value"))])
    out.append(_table(["result", "assertion", "value"], rows, "No assertions."))
    fleet = _list(report.get("fleet_series"))
    out.append('</section><section id="fleet"><h2>Fleet</h2>')
    panels: list[tuple[str, Series]] = [
        ("p95 latency (ms)", [("p95", _col(fleet, "p95_ms"))]),
        ("success rate (%)", [("success", _rate(fleet))]),
        ("online devices", [("online", _col(fleet, "online"))]),
    ]
    out.append(svg_chart("Fleet over time", _x(report, fleet), panels, bands, xr))
    out.append('</section><section id="skills"><h2>Skills</h2>')
    rows = [[k, *_stat_cells(_dict(s))] for k, s in sorted(skills.items())]
    out.append(_table(["skill", *_STAT_HEADERS], rows, "No skills."))
    for k, s in sorted(skills.items()):
        ser = _list(_dict(s).get("series"))
        lat: Series = [(p, _col(ser, f"{p}_ms")) for p in ("p50", "p95", "p99")]
        out.append(svg_chart(f"{k} latency", _x(report, ser), [("latency (ms)", lat)], bands, xr))
    out.append('</section><section id="groups"><h2>Groups</h2>')
    rows = []
    for k, g in sorted(groups.items()):
        g = _dict(g)
        extra = [fmt_s(g.get("offline_s")), fmt_num(g.get("queue_depth_max"))]
        rows.append([k, str(g.get("profile") or "-"), fmt_num(g.get("devices")), *_stat_cells(g)])
        rows[-1] += extra
    headers = ["group", "profile", "devices", *_STAT_HEADERS, "offline", "max queue"]
    out.append(_table(headers, rows, "No groups."))
    for k, g in sorted(groups.items()):
        ser = _list(_dict(g).get("series"))
        panels = [
            ("calls per bucket", [("calls", _col(ser, "calls")), ("ok", _col(ser, "ok"))]),
            ("online devices", [("online", _col(ser, "online"))]),
            ("queue depth", [("queue", _col(ser, "queue_depth"))]),
        ]
        out.append(svg_chart(f"group {k}", _x(report, ser), panels, bands, xr))
    out.append('</section><section id="timeline"><h2>Timeline</h2>')
    rows = []
    for ev in _list(report.get("timeline")):
        ev = _dict(ev)
        kind = str(ev.get("kind") or "-")
        kind_cell = (f"{kind} ({ev['fault']})" if ev.get("fault") else kind, f"k-{kind}")
        what = str(ev.get("name") or ev.get("device") or "")
        where = ", ".join(map(str, _list(ev.get("targets")))) or str(ev.get("group") or "")
        times = [fmt_s(ev.get("t")), fmt_s(ev.get("until"))]
        rows.append([*times, kind_cell, what, where, str(ev.get("detail") or "")])
    out.append(_table(["start", "until", "kind", "name", "targets", "detail"], rows, "No events."))
    out.append('</section><section id="calibration"><h2>Calibration</h2>')
    out.append(_nested_table(report.get("calibration"), ["group", "skill"], 2))
    out.append('</section><section id="memory"><h2>Memory</h2>')
    out.append(_nested_table(report.get("memory"), ["group"], 1))
    out.append("</section></body></html>\n")
    return "\n".join(out)


# ---------------------------------------------------------------- PNG, terminal, files


def write_pngs(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write fleet.png (fleet p95), skills.png (p95 per skill) and groups.png (online devices
    per group) into ``directory``; return their paths."""
    bands, xr = fault_bands(report), _x_range(report)
    fleet = _list(report.get("fleet_series"))
    charts: list[tuple[str, str, str, list[Any], Series]] = [
        ("fleet.png", "Fleet p95 latency", "latency (ms)", fleet, [("p95", _col(fleet, "p95_ms"))]),
    ]
    for file, key, col, title, label in (
        ("skills.png", "skills", "p95_ms", "p95 latency per skill", "latency (ms)"),
        ("groups.png", "groups", "online", "Online devices per group", "devices"),
    ):
        items = sorted(_dict(report.get(key)).items())
        longest = max((_list(_dict(v).get("series")) for _, v in items), key=len, default=[])
        series = [(k, _col(_list(_dict(v).get("series")), col)) for k, v in items]
        charts.append((file, title, label, longest, series))
    paths = []
    for file, title, label, ref, series in charts:
        x, xl = _x(report, ref), "time (s)"
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
        ("fleet", [("all", _dict(report.get("summary")))]),
        ("skill", sorted(_dict(report.get("skills")).items())),
        ("group", sorted(_dict(report.get("groups")).items())),
    ):
        for k, s in items:
            s = _dict(s)
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
    for a in _list(report.get("assertions")):
        mark = paint("PASS", "green") if _dict(a).get("passed") is True else paint("FAIL", "red")
        out.append(f"  {mark}  {a.get('text', '')}  (value {fmt_value(a.get('value'))})")
    if not _list(report.get("assertions")):
        out.append("  (none)")
    out += ["", "faults"]
    for ev in _list(report.get("timeline")):
        if _dict(ev).get("kind") != "fault":
            continue
        until = "end" if ev.get("until") is None else fmt_num(ev.get("until"))
        span = f"{fmt_num(ev.get('t'))}-{until} s"
        targets = ", ".join(map(str, _list(ev.get("targets")))) or "-"
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
