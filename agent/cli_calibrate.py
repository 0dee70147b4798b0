"""``edgeagent devices calibrate``: fit device speed models to published figures or recorded runs.

A thin shell over :mod:`edgeagent.devices.calibrate` (the fit), :mod:`.calibrate_report`
(ratios, derived boards, records) and :mod:`.calibrate_data` (the files). Registered by the lead
on the ``devices`` group with :func:`register`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .devices import (
    PROFILE_DIR,
    DeviceProfile,
    SpeedModel,
    find_profile,
    list_profiles,
    load_profile,
)
from .devices.calibration import CALIBRATION_DIR
from .errors import ConfigError

if TYPE_CHECKING:
    from .devices.calibrate_report import ReportRow

# The fit needs numpy (the optimize extra); a device's edgeagent has no numpy and imports this
# module with the CLI, so the calibration modules are imported where the command runs.
PUBLISHED_FILE = CALIBRATION_DIR / "published.yaml"
WORKLOADS_FILE = CALIBRATION_DIR / "workloads.yaml"

REFERENCE_PROFILE = "x86-64"


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _rel(path: Path) -> str:
    """A table path as recorded in the profile: relative to the package when it is committed."""
    try:
        return str(path.resolve().relative_to(PROFILE_DIR.parent.parent))
    except ValueError:
        return str(path)


def _fit_all(
    names: list[str],
    published: Path,
    workloads_file: Path,
    records: Path | None,
    model_files: list[Path],
    date: str,
) -> tuple[dict[str, tuple[DeviceProfile, SpeedModel]], list[ReportRow]]:
    from .devices.calibrate import CalibrationError, Observation, fit_device
    from .devices.calibrate_data import (
        DERIVED_FROM,
        count_models,
        load_holdout,
        load_published,
        load_workloads,
        records_from_file,
    )
    from .devices.calibrate_report import apply_records, derive_speed_model, report

    figures = load_published(published)
    workloads = load_workloads(workloads_file)
    held = load_holdout().holds
    by_sha = count_models(model_files) if model_files else {}
    if not names:
        names = sorted(
            p.name for p in list_profiles() if p.name in figures or p.name in DERIVED_FROM
        )
    fitted: dict[str, tuple[DeviceProfile, SpeedModel]] = {}
    rows: list[ReportRow] = []
    derived: list[DeviceProfile] = []
    for name in names:
        profile = load_profile(name)
        if profile.name == REFERENCE_PROFILE:
            raise CalibrationError(
                f"{profile.name} is the reference machine: its estimate is the local measurement, "
                "it has no speed model"
            )
        obs: list[Observation] = figures.get(profile.name, [])
        if not obs and profile.name in DERIVED_FROM and records is None:
            derived.append(profile)
            continue
        if not obs and records is None:
            known = ", ".join(sorted(figures)) or "(none)"
            raise CalibrationError(
                f"{profile.name}: no published figures in {published} (devices there: {known}) "
                "and no recorded runs (--records)"
            )
        table = _rel(published)
        model = profile.speed_model
        if obs:
            model = fit_device(profile, obs, workloads, held, table=table, date=date)
        if records is not None:
            recs, rec_work = records_from_file(records, profile.name, by_sha)
            if recs:
                base = profile.model_copy(update={"speed_model": model})
                model = apply_records(base, recs, rec_work, table=records.name, date=date)
                obs_all = list(recs)
                rows += report(
                    profile.model_copy(update={"speed_model": model}), obs_all, rec_work, set()
                )
        if model is None:
            known = ", ".join(sorted(figures)) or "(none)"
            raise CalibrationError(
                f"{profile.name}: no published figures in {published} (devices there: {known}) "
                "and no recorded runs (--records)"
            )
        new = profile.model_copy(update={"speed_model": model})
        rows += report(new, obs, workloads, held)
        fitted[profile.name] = (new, model)
    for profile in derived:
        donor_name = DERIVED_FROM[profile.name]
        donor = fitted[donor_name][0] if donor_name in fitted else load_profile(donor_name)
        model = derive_speed_model(profile, donor, date=date)
        fitted[profile.name] = (profile.model_copy(update={"speed_model": model}), model)
    return fitted, rows


def _print_table(rows: list[ReportRow]) -> None:
    header = ("DEVICE", "MODEL", "PREC", "THR", "RUNTIME", "PUBLISHED", "PREDICTED", "RATIO", "")
    body = [
        (
            r.device,
            r.model,
            r.precision,
            str(r.threads),
            r.runtime,
            f"{r.observed_ms:.1f}",
            f"{r.predicted_ms:.1f}",
            f"{r.ratio:.2f}",
            "held-out" if r.held_out else ("noisy" if r.noisy else ""),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@click.command("calibrate")
@click.argument("profiles", nargs=-1)
@click.option(
    "--published",
    type=click.Path(path_type=Path, dir_okay=False),
    default=PUBLISHED_FILE,
    show_default="the committed table",
    help="Published figures (YAML) to fit on.",
)
@click.option(
    "--workloads",
    "workloads_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=WORKLOADS_FILE,
    show_default="the committed table",
    help="Workload of every model named in the figures (YAML: name -> Workload).",
)
@click.option(
    "--records",
    type=click.Path(path_type=Path, dir_okay=False),
    help="`models bench --record` JSON of runs on a real device: they override published figures.",
)
@click.option(
    "--model",
    "model_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="ONNX file of a recorded run (matched by sha256) to count its workload; repeatable.",
)
@click.option("--write", is_flag=True, help="Update the built-in profiles' speed_model sections.")
@click.option(
    "-o",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write full user profiles with the new section here (for $EDGEAGENT_PROFILES).",
)
@click.option("--date", help="Date recorded in the calibration (default: today, UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: models, rows and summary.")
def calibrate(
    profiles: tuple[str, ...],
    published: Path,
    workloads_file: Path,
    records: Path | None,
    model_files: tuple[Path, ...],
    write: bool,
    out_dir: Path | None,
    date: str | None,
    as_json: bool,
) -> None:
    """Fit device speed models (PROFILE...: default every profile with figures, and the
    profiles derived from them) and print each figure's predicted/published ratio.

    Held-out models (devices/calibration/holdout.yaml) are never fitted on; their ratios show how
    well an estimate does on a model it has not seen.
    """
    try:
        from .devices.calibrate import CalibrationError
        from .devices.calibrate_data import replace_section
        from .devices.calibrate_report import summarise
    except ImportError as exc:
        _fail(f"fitting needs numpy ({exc}): pip install 'edgeagent[optimize]'")
    day = date or datetime.now(UTC).strftime("%Y-%m-%d")
    try:
        fitted, rows = _fit_all(
            list(profiles), published, workloads_file, records, list(model_files), day
        )
        for name, (_, model) in sorted(fitted.items()):
            if write:
                path = PROFILE_DIR / f"{name}.yaml"
                if not path.is_file():
                    raise ConfigError(f"{name} is not a built-in profile: use -o DIR")
                path.write_text(replace_section(path.read_text(encoding="utf-8"), model))
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                text = find_profile(name).read_text(encoding="utf-8")
                (out_dir / f"{name}.yaml").write_text(replace_section(text, model))
    except (ConfigError, CalibrationError) as exc:
        _fail(str(exc))
    summary = summarise(rows)
    if as_json:
        payload: dict[str, Any] = {
            "models": {n: m.model_dump(mode="json") for n, (_, m) in sorted(fitted.items())},
            "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
            "summary": [
                {"device": d, **s.model_dump(mode="json")} for (d, _), s in summary.items()
            ],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    _print_table(rows)
    click.echo("\n|ratio - 1|      fitted: n  median  worst   held-out: n  median  worst")
    for (device, precision), s in summary.items():
        click.echo(
            f"{device:<11} {precision:<5} {s.fitted_n:>3}  {_pct(s.fitted_median):>6}  "
            f"{_pct(s.fitted_worst):>5}   {s.held_out_n:>11}  {_pct(s.held_out_median):>6}  "
            f"{_pct(s.held_out_worst):>5}"
        )
    derived = sorted(n for n, (_, m) in fitted.items() if m.calibration.basis == "derived")
    if derived:
        click.echo(f"derived (no figures of their own): {', '.join(derived)}")
    if write:
        click.echo(f"updated speed_model in {PROFILE_DIR} for {', '.join(sorted(fitted))}")
    if out_dir is not None:
        click.echo(f"wrote {len(fitted)} profile(s) to {out_dir}")


def register(group: click.Group) -> None:
    """Add ``calibrate`` to the ``devices`` group."""
    group.add_command(calibrate)
