"""What ``edgeagent rollout`` prints: the status as text and the live progress of a rollout
being driven (``TextReporter``, the driver's ``Reporter``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .deploy.rollout_plan import Rollout
    from .deploy.rollout_state import WaveStarted

SHOWN = 20  # device names listed per state in text output


def _names(devices: list[str]) -> str:
    more = f" … and {len(devices) - SHOWN} more" if len(devices) > SHOWN else ""
    return " ".join(devices[:SHOWN]) + more


def when_text(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def counts_text(status: Mapping[str, Any]) -> str:
    counts = status.get("counts", {})
    return " · ".join(f"{k} {v}" for k, v in counts.items() if v) or "no device"


def format_status(status: Mapping[str, Any], driver: str | None = None) -> str:
    lines = [
        f"rollout {status['id']}  {status['phase']}  wave {status['wave']}/{status['waves']}  "
        f"target {status['version']}" + (f"  (driven by {driver})" if driver else ""),
        f"  started {when_text(status.get('started_at'))}; {status['selected']} devices held "
        f"(canary {status['canary']}), {status['unmatched']} not matching",
        f"  {counts_text(status)}",
        f"  failures {status['failures']} of {status['attempted']} attempted "
        f"(allowed {status['allowed_failures']} by --max-failures {status['max_failures']})",
    ]
    if status.get("halted"):
        lines.append(f"  halted: {status['halted']}")
    for state, devices in status.get("devices", {}).items():
        lines.append(f"  {state:<12}{_names(devices)}")
    reasons = status.get("reasons") or {}
    if reasons:
        lines.append("  why:")
        shown = list(reasons.items())[:SHOWN]
        lines += [f"    {d}: {why}" for d, why in shown]
        if len(reasons) > SHOWN:
            lines.append(f"    … and {len(reasons) - SHOWN} more")
    return "\n".join(lines)


class TextReporter:
    """Progress of ``rollout start``/``resume``: plain lines, or on a terminal one progress line
    per wave (failures printed above it)."""

    def __init__(self, *, tty: bool, err: bool) -> None:
        self.tty = tty
        self.err = err
        self._line = False
        self._wave = ""
        self._drawn = ""

    def _echo(self, text: str) -> None:
        if self._line:
            click.echo("", err=self.err)
            self._line = False
        stamp = time.strftime("%H:%M:%S")
        click.echo(f"{stamp} {text}", err=self.err)

    def selected(self, rollout: Rollout, excluded: Mapping[str, str]) -> None:
        st = rollout.status(devices=False)
        counts = st["counts"]
        self._echo(
            f"rollout {st['id']}: target {st['version']}; {st['selected']} devices held "
            f"(canary {st['canary']}, waves ending at {rollout.ends}), "
            f"{counts['skipped']} already on it, {counts['conflict']} claimed by another "
            f"rollout, {st['unmatched']} not matching"
        )
        if excluded:
            by_reason: dict[str, list[str]] = {}
            for d, why in excluded.items():
                by_reason.setdefault(why, []).append(d)
            for why, devices in by_reason.items():
                self._echo(f"not selected ({why}): {_names(sorted(devices))}")

    def wave(self, wave: WaveStarted) -> None:
        kind = " (canary)" if wave.canary else ""
        self._wave = f"wave {wave.number}/{wave.of}{kind}"
        self._echo(f"{self._wave}: {wave.size} device" + ("s" if wave.size != 1 else ""))

    def device(self, device: str, state: str, detail: str) -> None:
        if self.tty and state in ("updating", "healthy"):
            return  # the progress line shows them
        self._echo(f"{device} {state}" + (f": {detail}" if detail else ""))

    def note(self, text: str) -> None:
        self._echo(text)

    def progress(self, rollout: Rollout) -> None:
        if not self.tty:
            return
        st = rollout.status(devices=False)
        c = st["counts"]
        end = rollout.ends[rollout.wave - 1] if rollout.wave else 0
        done = c["healthy"] + c["failed"] + c["rolled_back"] + c["skipped"]
        width = 24
        filled = int(width * min(done, end) / end) if end else 0
        bar = "#" * filled + "-" * (width - filled)
        text = (
            f"\r{self._wave or 'starting'} [{bar}] {min(done, end)}/{end}  updating "
            f"{c['updating']}  healthy {c['healthy']}  failed {c['failed'] + c['rolled_back']}"
            f"  offline {c['offline']}  {st['phase']}"
        )
        if text != self._drawn or not self._line:
            click.echo(text + "\x1b[K", nl=False, err=self.err)  # (erase the rest of the line)
            self._drawn = text
        self._line = True

    def close(self) -> None:
        if self._line:
            click.echo("", err=self.err)
            self._line = False
