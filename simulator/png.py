r"""A tiny PNG line-chart writer: pure Python, stdlib only (``zlib`` and ``struct``).

The simulator's report ships PNG charts next to its HTML page so they can be pasted into an issue
or viewed on a machine without a browser. Nothing here needs matplotlib or Pillow.

Layout of a chart (``width`` x ``height`` pixels, white background)::

    +--------------------------------------------------------------+
    |                     TITLE (2x font)                          |  MARGIN_TOP
    |  Y  tick |  fault band label                                  |
    |  l  tick |  ##### band #####   ___/\____  series polylines    |
    |  a  tick |  ################  /          \___                 |
    |  b       +----------------------------------------------     |  x axis
    |  e         tick      tick      tick      tick                 |  x tick labels
    |  l   [#] series-1   [#] series-2 ...   (legend, wraps)        |  legend rows
    +--------------------------------------------------------------+
     MARGIN_LEFT                                        MARGIN_RIGHT

Drawing order: background, grid, fault bands (so a band hides the grid under it), axes, series,
text. Series colours come from ``PALETTE`` (no reds: red is kept for ``BAND_COLOUR`` and its
label). Text uses a built-in 5x7 bitmap font; lowercase letters print as uppercase and unknown
characters as ``?``. The PNG is 8-bit RGB, one IDAT chunk, filter type 0 on every row.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

Colour = tuple[int, int, int]

MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 30
BACKGROUND: Colour = (255, 255, 255)
GRID_COLOUR: Colour = (228, 228, 228)
AXIS_COLOUR: Colour = (60, 60, 60)
TEXT_COLOUR: Colour = (30, 30, 30)
BAND_COLOUR: Colour = (255, 214, 214)
BAND_TEXT_COLOUR: Colour = (170, 30, 30)
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)

# 5x7 glyphs: seven rows, each a two-digit hex number whose low five bits are the pixels
# (bit 4 = leftmost column).
_FONT_ROWS = {
    "0": "0E11131519110E",
    "1": "040C040404040E",
    "2": "0E11010204081F",
    "3": "1F02040201110E",
    "4": "02060A121F0202",
    "5": "1F101E0101110E",
    "6": "0608101E11110E",
    "7": "1F010204080808",
    "8": "0E11110E11110E",
    "9": "0E11110F01020C",
    "A": "0E1111111F1111",
    "B": "1E11111E11111E",
    "C": "0E11101010110E",
    "D": "1C12111111121C",
    "E": "1F10101E10101F",
    "F": "1F10101E101010",
    "G": "0E11101711110F",
    "H": "1111111F111111",
    "I": "0E04040404040E",
    "J": "0702020202120C",
    "K": "11121418141211",
    "L": "1010101010101F",
    "M": "111B1515111111",
    "N": "11111915131111",
    "O": "0E11111111110E",
    "P": "1E11111E101010",
    "Q": "0E11111115120D",
    "R": "1E11111E141211",
    "S": "0F10100E01011E",
    "T": "1F040404040404",
    "U": "1111111111110E",
    "V": "11111111110A04",
    "W": "1111111515150A",
    "X": "11110A040A1111",
    "Y": "1111110A040404",
    "Z": "1F01020408101F",
    ".": "00000000000C0C",
    ",": "000000000C0408",
    "-": "0000001F000000",
    "+": "0004041F040400",
    "_": "0000000000001F",
    ":": "000C0C000C0C00",
    "%": "18190204081303",
    "/": "00010204081000",
    "(": "02040808080402",
    ")": "08040202020408",
    "<": "02040810080402",
    ">": "08040201020408",
    "=": "00001F001F0000",
    "'": "0C040800000000",
    "?": "0E110102040004",
    "#": "0A0A1F0A1F0A0A",
    " ": "00000000000000",
}
_FONT: dict[str, tuple[int, ...]] = {
    ch: tuple(bytes.fromhex(rows)) for ch, rows in _FONT_ROWS.items()
}
GLYPH_W, GLYPH_H = 5, 7


class _Canvas:
    """An RGB pixel buffer with clipped drawing primitives."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(BACKGROUND) * (width * height))

    def set(self, x: int, y: int, colour: Colour) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(colour)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), both inclusive."""
        x0, x1 = max(0, min(x0, x1)), min(self.width - 1, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height - 1, max(y0, y1))
        if x0 > x1 or y0 > y1:
            return
        row = bytes(colour) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = (y * self.width + x0) * 3
            self.pixels[i : i + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: Colour, thick: int = 1) -> None:
        """Bresenham's line; ``thick`` > 1 paints a small square at every step."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            if thick > 1:
                self.rect(x0, y0, x0 + thick - 1, y0 + thick - 1, colour)
            else:
                self.set(x0, y0, colour)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(
        self, x: int, y: int, s: str, colour: Colour, scale: int = 1, vertical: bool = False
    ) -> None:
        """Draw ``s`` with its top-left corner at (x, y); ``vertical`` reads bottom to top,
        starting at (x, y) as the bottom-left corner."""
        for n, ch in enumerate(s.upper()):
            rows = _FONT.get(ch, _FONT["?"])
            for r, bits in enumerate(rows):
                for c in range(GLYPH_W):
                    if not bits & (0x10 >> c):
                        continue
                    col = n * (GLYPH_W + 1) + c
                    px, py = (
                        (x + r * scale, y - col * scale)
                        if vertical
                        else (
                            x + col * scale,
                            y + r * scale,
                        )
                    )
                    for a in range(scale):
                        for b in range(scale):
                            self.set(px + a, py - b if vertical else py + b, colour)


def text_width(s: str, scale: int = 1) -> int:
    """Width in pixels of ``s`` in the built-in font (no trailing spacing)."""
    return max(0, len(s) * (GLYPH_W + 1) - 1) * scale


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def axis_ticks(values: Sequence[float]) -> list[float]:
    """At least two round ticks from at or below min(0, values) to at or above max(values)."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min([0.0, *finite]), max([0.0, *finite])
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1) or [lo]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    if ticks[0] > lo:
        ticks.insert(0, ticks[0] - step)
    if ticks[-1] < hi or len(ticks) < 2:
        ticks.append(ticks[-1] + step)
    return ticks


def format_tick(v: float) -> str:
    """A short label for a tick value: ``5``, ``2.5``, ``0.05``, ``12k``."""
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    return f"{v:.6g}" if v != int(v) else str(int(v))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """Encode raw 8-bit RGB rows (top to bottom) as a PNG file."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride : (y + 1) * stride]) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _legend_rows(names: Sequence[str], inner_w: int) -> list[list[tuple[int, str]]]:
    """Lay legend entries (index, name) out in rows no wider than ``inner_w``."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0
    for i, name in enumerate(names):
        w = 14 + text_width(name) + 14
        if rows[-1] and used + w > inner_w:
            rows.append([])
            used = 0
        rows[-1].append((i, name))
        used += w
    return rows if rows[0] else []


def line_chart(
    series: list[tuple[str, list[float | None]]],
    *,
    x: list[float],
    title: str,
    y_label: str,
    bands: Sequence[tuple[float, float, str]] = (),
    width: int = 800,
    height: int = 300,
    x_range: tuple[float, float] | None = None,
    x_label: str = "",
) -> bytes:
    """A PNG line chart: one polyline per ``(name, values)`` over ``x`` (None leaves a gap),
    shaded vertical ``(x0, x1, label)`` bands, axes with ticks, a title and a legend.

    ``x_range`` fixes the x axis (e.g. ``(0, duration)``); by default it spans ``x`` and the
    bands. The y axis always includes 0. ``x_label`` is printed at the right under the axis."""
    canvas = _Canvas(width, height)
    inner_w = width - MARGIN_LEFT - MARGIN_RIGHT
    legend = _legend_rows([name for name, _ in series], inner_w - text_width(x_label) - 8)
    bottom = height - 24 - 12 * len(legend)  # y pixel of the x axis
    top = MARGIN_TOP
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT - 1

    if x_range is not None:
        x_lo, x_hi = x_range
    else:
        xs = [*x, *(b[0] for b in bands), *(b[1] for b in bands)]
        x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = axis_ticks([v for _, vs in series for v in vs if v is not None])
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(v: float) -> int:
        return round(left + (v - x_lo) / (x_hi - x_lo) * (right - left))

    def py(v: float) -> int:
        return round(bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top))

    x_ticks = [t for t in nice_ticks(x_lo, x_hi, max(2, inner_w // 90)) if x_lo <= t <= x_hi]
    for t in y_ticks:
        canvas.rect(left, py(t), right, py(t), GRID_COLOUR)
    for t in x_ticks:
        canvas.rect(px(t), top, px(t), bottom, GRID_COLOUR)
    spans = sorted(
        (max(px(x0), left), min(px(x1), right), label)
        for x0, x1, label in bands
        if x0 <= x1 and x1 >= x_lo and x0 <= x_hi
    )
    for a, b, _ in spans:
        canvas.rect(a, top, b, bottom - 1, BAND_COLOUR)
    for n, (a, _b, label) in enumerate(spans):  # a label may run on until the next band
        limit = min([right, *(s[0] for s in spans[n + 1 :] if s[0] > a + 2)])
        chars = max(0, (limit - a - 4) // (GLYPH_W + 1))
        canvas.text(a + 2, top + 2, label[:chars], BAND_TEXT_COLOUR)
    canvas.rect(left, top, left, bottom, AXIS_COLOUR)
    canvas.rect(left, bottom, right, bottom, AXIS_COLOUR)

    for i, (_, vs) in enumerate(series):
        points = [
            (px(xv), py(v)) if v is not None and math.isfinite(v) else None
            for xv, v in zip(x, vs, strict=False)
        ]
        _polyline(canvas, points, PALETTE[i % len(PALETTE)])

    canvas.text((width - text_width(title, 2)) // 2, 6, title, TEXT_COLOUR, scale=2)
    canvas.text(6, (top + bottom + text_width(y_label)) // 2, y_label, TEXT_COLOUR, vertical=True)
    for t in y_ticks:
        label = format_tick(t)
        canvas.rect(left - 4, py(t), left - 1, py(t), AXIS_COLOUR)
        canvas.text(left - 7 - text_width(label), py(t) - 3, label, TEXT_COLOUR)
    for t in x_ticks:
        label = format_tick(t)
        canvas.rect(px(t), bottom + 1, px(t), bottom + 4, AXIS_COLOUR)
        lx = min(max(px(t) - text_width(label) // 2, 0), width - text_width(label))
        canvas.text(lx, bottom + 8, label, TEXT_COLOUR)
    canvas.text(right - text_width(x_label), bottom + 22, x_label, TEXT_COLOUR)
    _draw_legend(canvas, legend, left, bottom + 22)
    return encode_png(width, height, canvas.pixels)


def _polyline(canvas: _Canvas, points: list[tuple[int, int] | None], colour: Colour) -> None:
    """One series: lines between neighbouring points (None is a gap), a dot for a lone one."""
    for j, p in enumerate(points):
        if p is None:
            continue
        prev = points[j - 1] if j else None
        nxt = points[j + 1] if j + 1 < len(points) else None
        if prev is not None:
            canvas.line(prev[0], prev[1], p[0], p[1], colour, thick=2)
        elif nxt is None:  # an isolated point: a small square
            canvas.rect(p[0] - 1, p[1] - 1, p[0] + 1, p[1] + 1, colour)


def _draw_legend(canvas: _Canvas, legend: list[list[tuple[int, str]]], left: int, y: int) -> None:
    """The legend rows (of :func:`_legend_rows`) from ``(left, y)`` down: swatch, then name."""
    for r, row in enumerate(legend):
        lx, ly = left, y + 12 * r
        for i, name in row:
            canvas.rect(lx, ly, lx + 8, ly + 6, PALETTE[i % len(PALETTE)])
            canvas.text(lx + 14, ly, name, TEXT_COLOUR)
            lx += 14 + text_width(name) + 14
