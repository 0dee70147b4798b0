"""``edgeagent sim``: run a simulated fleet from a fleet spec and write its report.

Registered on the main command in ``cli.py`` with ``main.add_command(sim)``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from .errors import EdgeAgentError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90`` / ``90s`` / ``10m`` / ``2h`` / ``1d`` → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 90, 90s, 10m, 2h or 1d")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise click.BadParameter("a duration must be above zero")
    return value


class Bar:
    """A progress bar per phase of a run (on stderr; nothing when disabled)."""

    _STEPS = 1000

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._name: str | None = None
        self._bar: Any = None
        self._done = 0

    def phase(self, name: str) -> None:
        if self.enabled and name != self._name:
            self.close()
            self._name = name
            self._bar = click.progressbar(
                length=self._STEPS, label=f"{name:<13}", file=sys.stderr, show_eta=False
            )
            self._bar.__enter__()
            self._done = 0

    def update(self, name: str, fraction: float) -> None:
        if not self.enabled:
            return
        self.phase(name)
        target = int(min(1.0, max(0.0, fraction)) * self._STEPS)
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            self._name = None


def parse_shard(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise click.BadParameter(f"{text!r} is not K/N with 0 <= K < N, e.g. 0/2")
    return int(m.group(1)), int(m.group(2))


@click.group()
def sim() -> None:
    """Simulate a fleet on this machine: real agents and skills, emulated devices, faults.

    A fleet spec (YAML) names device groups (count, profile, skills, tags), the coordinator, a
    workload and faults; see examples/smart-home/fleet.yaml and docs/simulator.md.
    """


@sim.command("run")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--broker",
    metavar="URL|local",
    default=None,
    help="Broker mode: every device is an MQTT 5 client of this broker, in real time. 'local' "
    "starts a private mosquitto. Default: embedded mode (in-process network, virtual time).",
)
@click.option("--duration", metavar="TIME", help="Simulated time, e.g. 600, 10m, 2h (default: "
              "the spec's duration_s).")  # fmt: skip
@click.option("--seed", type=int, help="Seed for every random choice (default: the spec's).")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write report.json, report.html and PNG charts into this folder.",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Reuse the skill costs of an earlier report.json, so the same seed gives the same "
    "report on another day (costs measured here vary a little from run to run).",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Broker mode across processes or hosts: run every N-th device from K. Start the same "
    "spec once per K (0 … N-1); shard 0 runs the coordinators and workload and writes the report.",
)
@click.option(
    "--secure",
    is_flag=True,
    help="With --broker local: run the private mosquitto with the generated fleet policy (TLS, "
    "ACL; docs/security.md); every device connects with its own certificate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, not a table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sim_run(
    spec: Path,
    broker: str | None,
    duration: str | None,
    seed: int | None,
    report_dir: Path | None,
    calibration: Path | None,
    shard: str | None,
    secure: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run the fleet in SPEC and print a summary (exit 1 if an assertion fails).

    Every device runs the real agent code and skills, models included; device speed comes from
    its profile. Exit codes: 0 all assertions passed, 1 an assertion failed, 2 bad spec or
    options (nothing was started).
    """
    ours = logging.getLogger("edgeagent")
    level_before = ours.level
    if logging.getLogger().level <= logging.WARNING and not _explicit_log_level():
        ours.setLevel(logging.ERROR)  # faults make agents chatty
    try:
        _run_and_report(spec, broker, seed, duration, calibration, shard, secure, report_dir,
                        as_json, quiet)  # fmt: skip
    finally:
        ours.setLevel(level_before)  # the caller's logging as it was (in-process callers, tests)


def _run_and_report(
    spec: Path,
    broker: str | None,
    seed: int | None,
    duration: str | None,
    calibration: Path | None,
    shard: str | None,
    secure: bool,
    report_dir: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    from .simulator import load_calibration, simulate
    from .simulator.render import summary_table, write_report

    seconds = parse_duration(duration) if duration is not None else None
    shard_k_n = parse_shard(shard) if shard is not None else (0, 1)
    bar = Bar(enabled=not quiet and not as_json)
    try:
        pinned = load_calibration(calibration) if calibration is not None else None
        bar.phase("loading fleet")
        result = simulate(
            spec,
            broker=broker,
            seed=seed,
            duration_s=seconds,
            calibration=pinned,
            progress=bar.update,
            shard=shard_k_n,
            secure=secure,
        )
    except EdgeAgentError as exc:
        bar.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        bar.close()
        sys.exit(130)
    bar.close()
    report = result.report
    if shard_k_n[0] > 0:
        click.echo(
            f"shard {shard}: ran {report['devices']} devices for {result.stats.wall_s:.1f} s "
            f"({report['faults_applied']} faults applied); shard 0 writes the report"
        )
        return
    paths: dict[str, Path] = {}
    if report_dir is not None:
        paths = write_report(report, report_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(summary_table(report, color=sys.stdout.isatty()))
        s = result.stats
        click.echo(
            f"\n{report['mode']} run: {report['devices']} devices, {report['duration_s']:g} s "
            f"simulated in {s.wall_s:.1f} s of wall time (start-up {s.start_wall_s:.1f} s)"
        )
        if paths:
            click.echo(f"report: {paths.get('report.html', report_dir)}")
    failed = result.failed_assertions
    if failed:
        click.echo(f"{len(failed)} assertion(s) failed", err=True)
        sys.exit(1)


def _explicit_log_level() -> bool:
    ctx = click.get_current_context(silent=True)
    root: Any = ctx.find_root() if ctx is not None else None
    if root is None:
        return False
    return bool(root.get_parameter_source("log_level") != click.core.ParameterSource.DEFAULT)


@sim.command("check")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def sim_check(spec: Path, as_json: bool) -> None:
    """Validate SPEC and build its fleet (profiles, skills, models, memory) without running it."""
    from .simulator import build_fleet, load_spec

    try:
        fleet_spec = load_spec(spec)
        plan = build_fleet(fleet_spec, source=str(spec))
    except EdgeAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    rows: list[dict[str, Any]] = [
        {
            "group": g.group.name,
            "devices": len(g.devices),
            "profile": g.profile.name,
            "skills": sorted(g.costs),
            "device_ms": {k: round(c.device_ms, 3) for k, c in sorted(g.costs.items())},
            "model_memory_mb": round(g.memory_mb, 2),
            "budget_mb": g.budget_mb,
        }
        for g in plan.groups
    ]
    if as_json:
        click.echo(json.dumps({"name": fleet_spec.name, "groups": rows}, indent=2))
        return
    click.echo(f"{fleet_spec.name}: {fleet_spec.devices} devices in {len(rows)} groups, OK")
    for r in rows:
        costs = ", ".join(f"{k} {v:g} ms" for k, v in r["device_ms"].items())
        click.echo(
            f"  {r['group']:<14} {r['devices']:>5} x {r['profile']:<12} "
            f"models {r['model_memory_mb']:g}/{r['budget_mb']:g} MiB  {costs}"
        )
