"""The report's line charts as inline SVG (no scripts, fonts or outside links; text escaped)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from edgeagent.simulator import png

from .report_values import Band, Series

_e = html.escape


def _text(x: float, y: float, cls: str, text: str) -> str:
    return f'<text x="{x}" y="{y}" class="{cls}">{_e(text)}</text>'


def _colour(j: int) -> str:
    c = png.PALETTE[j % len(png.PALETTE)]
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


def _runs(points: list[str | None]) -> list[str]:
    """One series' points ("x,y"; None is a gap) as polylines, a lone point as a dot."""
    runs: list[list[str]] = [[]]
    for point in points:
        if point is None:
            runs.append([])
        else:
            runs[-1].append(point)
    out: list[str] = []
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2"/>')
        elif run:
            out.append(f'<polyline fill="none" points="{" ".join(run)}"/>')
    return out


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
            out.append(f'<rect x="{lx}" y="{y0 - 14}" width="10" height="10" fill="{_colour(j)}"/>')
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
            out.append(f'<g stroke="{_colour(j)}" fill="{_colour(j)}"><title>{_e(name)}</title>')
            points = [
                f"{px(xv)},{py(v)}" if v is not None else None for xv, v in zip(x, vs, strict=False)
            ]
            out += _runs(points)
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
