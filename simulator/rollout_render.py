"""The report's rollout section as text (terminal summary) and HTML (``report.html``)."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape as _e
from typing import Any


def _n(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int | float) else "-"


def _bytes(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:,.1f} {unit}"
    return f"{v:,.0f} B"


def _t(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:,.1f} s"


def headline(r: Mapping[str, Any]) -> str:
    phase = str(r.get("phase"))
    if r.get("halted"):
        phase += f" ({r['halted']})"
    if r.get("error"):
        phase += f" (error: {r['error']})"
    return (
        f"rollout {r.get('id')}: {r.get('from_release')} -> {r.get('release')}  {phase}  "
        f"in {_t(r.get('duration_s'))} from {_t(r.get('started_s'))}"
    )


def _counts(r: Mapping[str, Any]) -> str:
    counts = r.get("counts") or {}
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _bytes_line(r: Mapping[str, Any]) -> str:
    b = r.get("bytes") or {}
    return (
        f"bytes {_bytes(b.get('total'))} to {_n(b.get('devices'))} devices: "
        f"{_bytes(b.get('per_device_mean'))} per device (max {_bytes(b.get('per_device_max'))}); "
        f"release {_bytes(r.get('size_bytes'))}, changed {_bytes(r.get('changed_bytes'))}"
    )


def _wave_cells(w: Mapping[str, Any]) -> list[str]:
    outcomes = ", ".join(f"{k} {v}" for k, v in (w.get("outcomes") or {}).items())
    label = f"{w.get('number')}/{w.get('of')}" + (" canary" if w.get("canary") else "")
    return [label, _n(w.get("size")), _t(w.get("start_s")), _t(w.get("end_s")), outcomes]


def text_lines(r: Mapping[str, Any]) -> list[str]:
    out = ["", headline(r), f"  devices {_n(r.get('selected'))}: {_counts(r)}",
           f"  {_bytes_line(r)}",
           f"  without a working release: {_n(r.get('without_release'))}"]  # fmt: skip
    for w in r.get("waves") or ():
        label, size, start, end, outcomes = _wave_cells(w)
        out.append(f"  wave {label:<10} {size:>6} devices  {start:>10} - {end:>10}  {outcomes}")
    failed = r.get("failed_devices") or []
    for f in failed[:10]:
        said = f" (device: {f['device_reason']})" if f.get("device_reason") else ""
        out.append(f"  {f.get('state')}: {f.get('device')}  {f.get('reason')}{said}")
    more = len(failed) - 10 + int(r.get("failed_devices_more") or 0)
    if more > 0:
        out.append(f"  … {more} more failed or rolled back (report.json)")
    return out


def html(r: Mapping[str, Any]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in _wave_cells(w)) + "</tr>"
        for w in r.get("waves") or ()
    )
    failed = "".join(
        f"<tr><td>{_e(str(f.get('device')))}</td><td>{_e(str(f.get('state')))}</td>"
        f"<td>{_e(str(f.get('reason')))}</td><td>{_e(str(f.get('device_reason') or ''))}</td></tr>"
        for f in r.get("failed_devices") or ()
    )
    more = int(r.get("failed_devices_more") or 0)
    broken = ", ".join(map(str, r.get("without_release_devices") or ())) or "none"
    return (
        f'<section id="rollout"><h2>Rollout</h2><p>{_e(headline(r))}</p>'
        f"<p>devices {_e(_n(r.get('selected')))}: {_e(_counts(r))}</p>"
        f"<p>{_e(_bytes_line(r))}</p>"
        f"<p>without a working release: {_e(_n(r.get('without_release')))} ({_e(broken)})</p>"
        "<table><tr><th>wave</th><th>devices</th><th>start</th><th>end</th><th>outcomes</th>"
        f"</tr>{rows}</table>"
        "<table><tr><th>device</th><th>state</th><th>reason</th><th>the device says</th></tr>"
        f"{failed or '<tr><td colspan=4>none failed</td></tr>'}</table>"
        + (f"<p>{more} more not listed (report.json)</p>" if more else "")
        + "</section>"
    )
