"""``edgeagent devices``: list and show device profiles (built-in and user ones).

Registered on the main command in ``cli.py`` with ``main.add_command(devices)``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any, NoReturn

import click

from .cli_calibrate import register as register_calibrate
from .devices import (
    PROFILE_DIR,
    PROFILES_ENV,
    SOURCED_FIELDS,
    DeviceProfile,
    Figure,
    SpeedFactors,
    SpeedModel,
    find_profile,
    list_profiles,
    load_profile,
)
from .errors import ConfigError

_WIDTH = 100
_UNITS = {"_mb": "MiB", "_ghz": "GHz"}


def _fail(exc: ConfigError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _mib(value: float) -> str:
    return f"{value / 1024:g} GB" if value >= 1024 else f"{value:g} MB"


def _is_user(profile: DeviceProfile) -> bool:
    return find_profile(profile.name).resolve().parent != PROFILE_DIR


@click.group()
def devices() -> None:
    """Device profiles: what each class of device can do, with a source for every figure.

    PROFILE is a built-in name (see `edgeagent devices ls`), a name found in the directories of
    $EDGEAGENT_PROFILES, or the path to a profile YAML file.
    """


register_calibrate(devices)


@devices.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array) instead of a table.")
def devices_ls(as_json: bool) -> None:
    """List the profiles: built-in ones and those in $EDGEAGENT_PROFILES (marked *)."""
    try:
        profiles = list_profiles(include_user=True)
        user = {p.name for p in profiles if _is_user(p)}
    except ConfigError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return
    rows = [
        (
            p.name + ("*" if p.name in user else ""),
            p.title,
            p.arch,
            f"{p.cores.value:g}×{p.clock_ghz.value:g}",
            _mib(p.ram_mb.value),
            "yes" if p.int8_dot_product else "no",
            ",".join(p.runtimes) or "-",
            p.speed_model.calibration.basis if p.speed_model is not None else "-",
            f"{p.speed.fp32.value:g}×",
        )
        for p in profiles
    ]
    header = (
        "NAME",
        "TITLE",
        "ARCH",
        "CORES×GHZ",
        "RAM",
        "INT8-DOT",
        "RUNTIMES",
        "SPEED MODEL",
        "FP32 SPEED",
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, r[-1]]))
    click.echo(
        "\nSPEED MODEL: what device estimates rest on (published figures, recorded runs, or "
        "derived from\nanother board; docs/device-speed.md). FP32 SPEED: times slower than the "
        "reference (x86-64),\nused where the speed model does not apply. See `edgeagent devices "
        "show`."
    )
    if user:
        click.echo(f"* user profile (from ${PROFILES_ENV})")


def _value_text(field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        unit = next((u for suffix, u in _UNITS.items() if field.endswith(suffix)), "")
        return f"{value:g} {unit}".rstrip()
    return str(value) if value != "" else "-"


def _speed_text(value: float) -> str:
    if value == 1:
        return "1× (same as the reference)"
    return f"{value:g}× slower than the reference" if value > 1 else f"{1 / value:.3g}× faster"


def _speed_model_text(model: SpeedModel) -> str:
    """One paragraph: what the speed model rests on and how well it fits (devices/speed.py)."""
    c = model.calibration
    known = [p for p in ("fp32", "fp16", "int8") if model.rates(p) is not None]
    parts = [f"{c.basis}: {', '.join(known) or 'no'} rates, {c.entries} figures, {c.date}"]
    for r in c.residuals:
        held = (
            f"; held-out {r.held_out_n} median {r.held_out_median:.0%} worst {r.held_out_worst:.0%}"
            if r.held_out_median is not None and r.held_out_worst is not None
            else ""
        )
        parts.append(
            f"{r.precision}: fitted {r.fitted_n} median {r.fitted_median:.0%} worst "
            f"{r.fitted_worst:.0%}{held}"
        )
    return "; ".join(parts) + " (|estimate/published - 1|; `edgeagent devices calibrate`)"


def _rows(profile: DeviceProfile) -> list[tuple[str, str, str | None]]:
    """(field, value, source) for every field of the profile, in the model's order."""
    rows: list[tuple[str, str, str | None]] = []
    for field in DeviceProfile.model_fields:
        if field in ("name", "title", "sources"):
            continue
        value = getattr(profile, field)
        if isinstance(value, Figure):
            rows.append((field, _value_text(field, value.value), value.source))
        elif isinstance(value, SpeedFactors):
            for kind in SpeedFactors.model_fields:
                fig: Figure = getattr(value, kind)
                rows.append((f"speed.{kind}", _speed_text(fig.value), fig.source))
        elif isinstance(value, SpeedModel):
            rows.append(("speed_model", _speed_model_text(value), value.calibration.table))
        elif field in SOURCED_FIELDS:
            rows.append(
                (field, _value_text(field, value), profile.sources.get(field, "(not given)"))
            )
        else:
            rows.append((field, _value_text(field, value), None))
    return rows


@devices.command("show")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def devices_show(profile: str, as_json: bool) -> None:
    """Show every field of PROFILE with its source."""
    try:
        path = find_profile(profile)
        p = load_profile(profile)
    except ConfigError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(p.model_dump(mode="json"), indent=2))
        return
    click.echo(f"{p.name}: {p.title}")
    click.echo(f"file: {path}")
    rows = _rows(p)
    width = max(len(field) for field, _, _ in rows) + 2
    for field, value, source in rows:
        click.echo(
            textwrap.fill(
                value,
                _WIDTH,
                initial_indent=field.ljust(width),
                subsequent_indent=" " * width,
                break_on_hyphens=False,
            )
        )
        if source is not None:
            click.echo(
                textwrap.fill(
                    " ".join(source.split()),
                    _WIDTH,
                    initial_indent=" " * width + "source: ",
                    subsequent_indent=" " * (width + 8),
                    break_on_hyphens=False,
                )
            )
    for line in _llm_lines(p):
        click.echo(line)


def _llm_lines(profile: DeviceProfile) -> list[str]:
    """What the zoo's language models would do on ``profile``, from their cards (estimates; see
    edgeagent.models.llm_estimate); nothing when the zoo is not importable (no numpy)."""
    from .models.backend import RuntimeMissing

    try:
        from .models.llm_estimate import estimate, measured_from_card
        from .models.zoo import llm_recipes
    except (ImportError, RuntimeMissing):  # a device's install: no numpy, no zoo
        return []
    lines = ["", "language models (estimated from the zoo cards; range 2x either way):"]
    for name, recipe in sorted(llm_recipes().items()):
        try:
            e = estimate(measured_from_card(recipe.card()), profile)
        except (OSError, ValueError):
            continue
        verdict = "runs" if e.runs else f"no: {e.reason}"
        lines.append(
            f"  zoo:{name}: {verdict}; ~{e.tokens_per_s} tokens/s, first token "
            f"~{e.first_token_ms} ms, needs {e.memory_mb:.0f} of {e.budget_mb:.0f} MiB"
        )
    return lines if len(lines) > 2 else []
