"""Simulator report rendering: the HTML page (well-formed, self-contained, escaped, complete),
the PNG charts (decoded here byte by byte: chunks, CRCs, pixels, band and series colours), the
terminal summary table and the files write_report leaves behind. Pure logic: no broker."""

from __future__ import annotations

import copy
import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from edgeagent.simulator import png
from edgeagent.simulator.render import (
    fault_bands,
    render_html,
    summary_table,
    write_pngs,
    write_report,
)

SAMPLE = Path(__file__).resolve().parent / "data" / "sim_report_sample.json"
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


@pytest.fixture
def report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAMPLE.read_text())
    return data


class Page(HTMLParser):
    """Checks that every non-void tag closes in order; keeps text, start tags and table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.ends: list[str] = []
        self.text: list[str] = []
        self.cells: list[tuple[str, str]] = []  # (class, text) of every <td>
        self._cell: list[str] | None = None
        self._cell_class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "td":
            self._cell, self._cell_class = [], dict(attrs).get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        self.ends.append(tag)
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell_class, "".join(self._cell)))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def tags(p: Page, name: str) -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in p.starts if tag == name]


def fault_names(report: dict[str, Any]) -> list[str]:
    return [e["name"] for e in report["timeline"] if e["kind"] == "fault"]


# ---------------------------------------------------------------- HTML


def test_html_is_balanced_and_has_every_section(report: dict[str, Any]) -> None:
    p = parse(render_html(report))
    assert p.errors == []
    assert p.stack == []
    for tag in ("svg", "table", "section", "g", "html", "body"):
        assert len(tags(p, tag)) == p.ends.count(tag), tag
    sections = [a.get("id") for a in tags(p, "section")]
    expected = ["summary", "assertions", "fleet", "skills", "groups", "timeline"]
    assert sections == [*expected, "calibration", "memory"]
    # the fleet chart, one per skill, one per group
    assert len(tags(p, "svg")) == 1 + len(report["skills"]) + len(report["groups"])


def test_html_names_every_skill_group_and_fault(report: dict[str, Any]) -> None:
    p = parse(render_html(report))
    text = "".join(p.text)
    cell_texts = {t for _, t in p.cells}
    for name in [*report["skills"], *report["groups"]]:
        assert name in cell_texts, name
    assert len(fault_names(report)) == 2
    for name in fault_names(report):
        assert name in cell_texts  # timeline table
        assert text.count(name) >= 1 + 1 + len(report["skills"]) + len(report["groups"])
    header = "".join(p.text[: p.text.index("Summary")])
    for value in ("smart-home", "embedded", "7", "600 s", "36"):
        assert value in header


def test_html_summary_and_tables_show_formatted_numbers(report: dict[str, Any]) -> None:
    p = parse(render_html(report))
    text = "".join(p.text)
    s = report["summary"]
    assert f"{s['p95_ms']:.1f} ms" in text
    assert f"{100 * s['success_rate']:.1f} %" in text
    cells = [t for _, t in p.cells]
    for name, skill in report["skills"].items():
        i = cells.index(name)
        assert cells[i + 1] == str(skill["calls"])
        assert cells[i + 4] == f"{skill['p95_ms']:.1f} ms"
    for group, memory in report["memory"].items():  # the memory table is the last one
        i = len(cells) - 1 - cells[::-1].index(group)
        verdict = "PASS" if memory["ok"] else "FAIL"
        assert cells[i + 1 : i + 4] == [
            f"{memory['budget_mb']:g}",
            verdict,
            f"{memory['used_mb']:g}",
        ]


def test_html_assertions_are_coloured_by_outcome(report: dict[str, Any]) -> None:
    p = parse(render_html(report))
    verdicts = [(cls, t) for cls, t in p.cells if t in ("PASS", "FAIL") and cls in ("pass", "fail")]
    results = [a["passed"] for a in report["assertions"]]
    assert results.count(False) == 1
    assert verdicts[: len(results)] == [
        ("pass", "PASS") if r else ("fail", "FAIL") for r in results
    ]
    failed = next(a["text"] for a in report["assertions"] if not a["passed"])
    cells = [t for _, t in p.cells]
    assert cells[cells.index(failed) - 1] == "FAIL"


def test_html_is_self_contained(report: dict[str, Any]) -> None:
    page = render_html(report)
    for banned in ("http://", "https://", "<script", "<link", "@import", "url(", "src="):
        assert banned not in page, banned


def test_html_escapes_report_text(report: dict[str, Any]) -> None:
    risky = ("b", "i", "script", "img")
    before = parse(render_html(report))
    report["groups"]["<b>x</b>"] = report["groups"].pop("meters")
    report["skills"]['say "hi" & <i>bye</i>'] = report["skills"].pop("read_digit")
    report["timeline"][0]["name"] = "<script>alert(1)</script>"
    report["timeline"][0]["kind"] = 'fault" onclick="evil()'
    report["assertions"][0]["text"] = "<img src=x>"
    p = parse(render_html(report))
    assert p.errors == []
    for tag in risky:  # the page's own <b> tags only, nothing from the report
        assert len(tags(p, tag)) == len(tags(before, tag)), tag
    assert all("onclick" not in attrs for _, attrs in p.starts)
    text = "".join(p.text)
    for raw in ("<b>x</b>", 'say "hi" & <i>bye</i>', "<script>alert(1)</script>", "<img src=x>"):
        assert raw in text


def test_html_fault_bands_sit_at_the_fault_times(report: dict[str, Any]) -> None:
    page = render_html(report)
    fleet_svg = re.search(r"<svg.*?</svg>", page, re.S)
    assert fleet_svg is not None
    p = parse(fleet_svg.group(0))
    axis = tags(p, "rect")
    plot = next(a for a in axis if a.get("class") == "ax")
    left, width = float(plot["x"] or 0), float(plot["width"] or 0)
    bands = [a for a in axis if a.get("class") == "band"]
    faults = [e for e in report["timeline"] if e["kind"] == "fault"]
    assert len(bands) == 3 * len(faults)  # three panels in the fleet chart
    duration = report["duration_s"]
    for fault, band in zip(faults, bands, strict=False):
        assert float(band["x"] or 0) == pytest.approx(left + fault["t"] / duration * width, abs=0.2)
        span = (fault["until"] - fault["t"]) / duration * width
        assert float(band["width"] or 0) == pytest.approx(span, abs=0.2)


def test_html_leaves_gaps_for_null_buckets(report: dict[str, Any]) -> None:
    series = report["skills"]["detect_person"]["series"]
    nulls = [i for i, b in enumerate(series) if b["p50_ms"] is None]
    assert nulls  # a gap inside the series, not at either end
    assert nulls[0] > 0
    assert nulls[-1] < len(series) - 1
    page = render_html(report)
    svg = next(s for s in re.findall(r"<svg.*?</svg>", page, re.S) if "detect_person" in s)
    first_series = re.search(r"<g [^>]*><title>p50</title>(.*?)</g>", svg, re.S)
    assert first_series is not None
    assert first_series.group(1).count("<polyline") == 2


def test_open_fault_is_shaded_to_the_end_of_the_run(report: dict[str, Any]) -> None:
    report["timeline"].append({"t": 500.0, "until": None, "kind": "fault", "name": "outage"})
    assert fault_bands(report)[-1] == (500.0, 600.0, "outage")
    assert "outage" in render_html(report)


@pytest.mark.parametrize(
    "piece",
    [
        {},
        {"skills": {}, "groups": {}, "timeline": [], "assertions": [], "fleet_series": []},
        "all-null",
    ],
)
def test_empty_or_null_reports_still_render(
    report: dict[str, Any], piece: dict[str, Any] | str, tmp_path: Path
) -> None:
    if piece == "all-null":
        data = copy.deepcopy(report)
        for holder in [*data["skills"].values(), *data["groups"].values(), data]:
            series = holder.get("series", holder.get("fleet_series"))
            for bucket in series:
                for key in bucket:
                    if key != "t":
                        bucket[key] = None
        for skill in data["skills"].values():
            skill.update(p50_ms=None, p95_ms=None, p99_ms=None, success_rate=None, errors={})
        data["summary"] = {}
        data["calibration"] = data["memory"] = None
    else:
        data = {**report, **piece} if isinstance(piece, dict) and piece else {}
    p = parse(render_html(data))
    assert p.errors == []
    assert p.stack == []
    text = "".join(p.text)
    assert "nan" not in text.lower().split()
    assert "None" not in text
    if piece == "all-null":
        assert "no data" in text
        assert "<polyline" not in render_html(data)
    else:
        assert "No skills." in text
        assert "No events." in text
    table = summary_table(data)
    assert "None" not in table
    assert len(write_pngs(data, tmp_path)) == 3


# ---------------------------------------------------------------- PNG


def decode(data: bytes) -> tuple[int, int, list[bytes]]:
    """Check signature, chunk CRCs and IHDR; return width, height and the RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert {row[0] for row in rows} == {0}  # filter type None on every row
    return width, height, [row[1:] for row in rows]


def columns_with(rows: list[bytes], colour: png.Colour, y_range: range) -> set[int]:
    rgb = bytes(colour)
    found: set[int] = set()
    for y in y_range:
        row = rows[y]
        found.update(x // 3 for x in range(0, len(row), 3) if row[x : x + 3] == rgb)
    return found


def x_pixel(v: float, width: int, x_hi: float) -> int:
    left, right = png.MARGIN_LEFT, width - png.MARGIN_RIGHT - 1
    return round(left + v / x_hi * (right - left))


def test_png_structure_and_size() -> None:
    data = png.line_chart(
        [("a", [1.0, 2.0])], x=[0, 1], title="T", y_label="ms", width=321, height=123
    )
    width, height, rows = decode(data)
    assert (width, height) == (321, 123)
    assert all(len(row) == 3 * 321 for row in rows)


def test_png_band_and_series_colours_land_where_expected() -> None:
    width, height = 640, 260
    xs = [float(t) for t in range(0, 601, 10)]
    steady: list[float | None] = [50.0 for _ in xs]
    gappy = [None if 300 <= t <= 400 else 20.0 for t in xs]
    data = png.line_chart(
        [("steady", steady), ("gappy", gappy)],
        x=xs,
        title="latency",
        y_label="ms",
        bands=[(120.0, 180.0, "crash")],
        width=width,
        height=height,
        x_range=(0.0, 600.0),
    )
    _, _, rows = decode(data)
    plot_rows = range(png.MARGIN_TOP, height - 36)  # above the x labels and the legend
    band = columns_with(rows, png.BAND_COLOUR, plot_rows)
    a, b = x_pixel(120, width, 600), x_pixel(180, width, 600)
    assert min(band) == a
    assert max(band) == b
    assert set(range(a, b + 1)) <= band
    assert columns_with(rows, png.PALETTE[0], plot_rows) >= set(range(png.MARGIN_LEFT + 1, b))
    gap = set(range(x_pixel(290, width, 600) + 3, x_pixel(410, width, 600) - 1))
    gappy_columns = columns_with(rows, png.PALETTE[1], plot_rows)
    assert gappy_columns
    assert not gappy_columns & gap
    assert png.BAND_TEXT_COLOUR in {
        tuple(rows[y][x * 3 : x * 3 + 3]) for y in plot_rows for x in range(a, b)
    }  # the band's label


def test_png_draws_the_title_text() -> None:
    def top_rows(title: str) -> list[bytes]:
        _, _, rows = decode(png.line_chart([], x=[], title=title, y_label=""))
        return rows[:22]  # the 2x title: rows 6..19

    blank, titled = top_rows(""), top_rows("FLEET 95%")
    assert not columns_with(blank, png.TEXT_COLOUR, range(len(blank)))
    assert len(columns_with(titled, png.TEXT_COLOUR, range(len(titled)))) > 50


def test_png_font_covers_the_needed_characters() -> None:
    needed = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_:%/()<>= "
    glyphs = {ch: png._FONT[ch] for ch in needed}
    assert all(len(g) == png.GLYPH_H and max(g) < 32 for g in glyphs.values())
    assert len(set(glyphs.values())) == len(needed)  # no copy-paste duplicates
    assert sum(glyphs[" "]) == 0
    assert all(sum(g) for ch, g in glyphs.items() if ch != " ")


def test_png_with_no_data_is_still_a_chart() -> None:
    data = png.line_chart([("none", [None, None])], x=[0.0, 1.0], title="empty", y_label="ms")
    _, height, rows = decode(data)
    plot_rows = range(png.MARGIN_TOP, height - 36)
    assert not columns_with(rows, png.PALETTE[0], plot_rows)
    assert columns_with(rows, png.AXIS_COLOUR, plot_rows)


def test_write_pngs_draws_both_faults(report: dict[str, Any], tmp_path: Path) -> None:
    paths = write_pngs(report, tmp_path)
    assert [p.name for p in paths] == ["fleet.png", "skills.png", "groups.png"]
    charts = {p.name: decode(p.read_bytes()) for p in paths}
    width, height, rows = charts["fleet.png"]
    assert (width, height) == (800, 300)
    band = sorted(columns_with(rows, png.BAND_COLOUR, range(png.MARGIN_TOP, height - 36)))
    runs = [[band[0]]]
    for c in band[1:]:
        if c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    faults = [e for e in report["timeline"] if e["kind"] == "fault"]
    assert [(r[0], r[-1]) for r in runs] == [
        (x_pixel(f["t"], width, 600), x_pixel(f["until"], width, 600)) for f in faults
    ]
    _, height, rows = charts["skills.png"]
    for i in range(len(report["skills"])):
        assert columns_with(rows, png.PALETTE[i], range(png.MARGIN_TOP, height - 36)), i


# ---------------------------------------------------------------- terminal and files


def test_summary_table_lists_everything(report: dict[str, Any]) -> None:
    table = summary_table(report)
    assert "\x1b[" not in table
    lines = table.splitlines()
    for kind in ("skill", "group"):
        names = [line.split()[1] for line in lines if line.startswith(kind + " ")]
        assert names == sorted(report[kind + "s"])
    failed = next(a["text"] for a in report["assertions"] if not a["passed"])
    assert [line.split()[0] for line in lines if failed in line] == ["FAIL"]
    assert sum(line.split()[:1] == ["PASS"] for line in lines) == 2
    for name in fault_names(report):
        assert any(name in line and line.lstrip()[0].isdigit() for line in lines)
    header = lines[1]
    end = header.index("ok %") + len("ok %")
    stat_rows = [line for line in lines if line.split()[:1] in (["fleet"], ["skill"], ["group"])]
    assert len(stat_rows) == 1 + len(report["skills"]) + len(report["groups"])
    assert all(row[end - 1] == "%" for row in stat_rows)  # columns line up
    p95 = report["skills"]["light.set"]["p95_ms"]
    assert f"{p95:.1f} ms" in next(row for row in stat_rows if "light.set" in row)


def test_summary_table_colours_and_dashes(report: dict[str, Any]) -> None:
    report["skills"]["read_digit"].update(p99_ms=None, errors={})
    coloured = summary_table(report, color=True)
    assert "\x1b[31mFAIL\x1b[0m" in coloured
    assert "\x1b[32mPASS\x1b[0m" in coloured
    row = next(line for line in summary_table(report).splitlines() if "read_digit" in line)
    assert row.split()[-2:] == [str(report["skills"]["read_digit"]["failovers"]), "-"]
    assert " - " in row  # the null p99


def test_write_report_writes_every_file(report: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "runs" / "first"
    paths = write_report(report, out)
    names = ["report.json", "report.html", "fleet.png", "skills.png", "groups.png"]
    assert sorted(paths) == sorted(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all(paths[n] == out / n for n in names)
    text = paths["report.json"].read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == report
    assert text == json.dumps(report, indent=2, sort_keys=True) + "\n"
    assert paths["report.html"].read_text() == render_html(report)
    for n in names[2:]:
        assert decode(paths[n].read_bytes())[:2] == (800, 300)
