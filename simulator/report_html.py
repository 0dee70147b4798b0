"""The report as one self-contained HTML page (layout: :mod:`~edgeagent.simulator.render`).

Inline CSS and SVG charts only; every piece of text from the report goes through
``html.escape``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from edgeagent.simulator import rollout_render

from .report_svg import svg_chart
from .report_values import (
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
    success_pct,
    x_range,
)

_e = html.escape


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
    for a, inner in sorted(as_dict(data).items()):
        if depth == 1:
            rows.append(([a], as_dict(inner)))
        else:
            rows.extend(([a, b], as_dict(v)) for b, v in sorted(as_dict(inner).items()))
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
    summary = as_dict(report.get("summary"))
    skills, groups = as_dict(report.get("skills")), as_dict(report.get("groups"))
    bands, xr = fault_bands(report), x_range(report)
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
    for a in map(as_dict, as_list(report.get("assertions"))):
        rows.append([_verdict(a.get("passed")), str(a.get("text", "")), fmt_value(a.get("value"))])
    out.append(_table(["result", "assertion", "value"], rows, "No assertions."))
    fleet = as_list(report.get("fleet_series"))
    out.append('</section><section id="fleet"><h2>Fleet</h2>')
    panels: list[tuple[str, Series]] = [
        ("p95 latency (ms)", [("p95", column(fleet, "p95_ms"))]),
        ("success rate (%)", [("success", success_pct(fleet))]),
        ("online devices", [("online", column(fleet, "online"))]),
    ]
    out.append(svg_chart("Fleet over time", bucket_x(report, fleet), panels, bands, xr))
    out.append('</section><section id="skills"><h2>Skills</h2>')
    rows = [[k, *_stat_cells(as_dict(s))] for k, s in sorted(skills.items())]
    out.append(_table(["skill", *_STAT_HEADERS], rows, "No skills."))
    for k, s in sorted(skills.items()):
        ser = as_list(as_dict(s).get("series"))
        lat: Series = [(p, column(ser, f"{p}_ms")) for p in ("p50", "p95", "p99")]
        out.append(
            svg_chart(f"{k} latency", bucket_x(report, ser), [("latency (ms)", lat)], bands, xr)
        )
    out.append('</section><section id="groups"><h2>Groups</h2>')
    rows = []
    for k, g in sorted(groups.items()):
        g = as_dict(g)
        extra = [fmt_s(g.get("offline_s")), fmt_num(g.get("queue_depth_max"))]
        rows.append([k, str(g.get("profile") or "-"), fmt_num(g.get("devices")), *_stat_cells(g)])
        rows[-1] += extra
    headers = ["group", "profile", "devices", *_STAT_HEADERS, "offline", "max queue"]
    out.append(_table(headers, rows, "No groups."))
    for k, g in sorted(groups.items()):
        ser = as_list(as_dict(g).get("series"))
        panels = [
            ("calls per bucket", [("calls", column(ser, "calls")), ("ok", column(ser, "ok"))]),
            ("online devices", [("online", column(ser, "online"))]),
            ("queue depth", [("queue", column(ser, "queue_depth"))]),
        ]
        out.append(svg_chart(f"group {k}", bucket_x(report, ser), panels, bands, xr))
    out.append('</section><section id="timeline"><h2>Timeline</h2>')
    rows = []
    for ev in as_list(report.get("timeline")):
        ev = as_dict(ev)
        kind = str(ev.get("kind") or "-")
        kind_cell = (f"{kind} ({ev['fault']})" if ev.get("fault") else kind, f"k-{kind}")
        what = str(ev.get("name") or ev.get("device") or "")
        where = ", ".join(map(str, as_list(ev.get("targets")))) or str(ev.get("group") or "")
        times = [fmt_s(ev.get("t")), fmt_s(ev.get("until"))]
        rows.append([*times, kind_cell, what, where, str(ev.get("detail") or "")])
    out.append(_table(["start", "until", "kind", "name", "targets", "detail"], rows, "No events."))
    out.append('</section><section id="calibration"><h2>Calibration</h2>')
    out.append(_nested_table(report.get("calibration"), ["group", "skill"], 2))
    out.append('</section><section id="memory"><h2>Memory</h2>')
    out.append(_nested_table(report.get("memory"), ["group"], 1))
    out.append("</section></body></html>\n")
    return "\n".join(out)
