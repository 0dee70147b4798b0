"""How well speed models reproduce figures, derived speed models, and recorded runs.

- :func:`report`: for every figure (fitted, held out, noisy) the predicted and the observed ms
  and their ratio; :func:`summarise` turns rows into per device/precision statistics (median and
  worst |ratio − 1| on fitted and on held-out figures). ``benchmarks/bench_fidelity.py`` prints
  these.
- :func:`derive_speed_model`: a board without figures of its own borrows the nearest calibrated
  core's model scaled by clock, with a wider range (basis ``derived``).
- :func:`apply_records`: runs recorded on a real device (``models bench --record``) override the
  published fit: refit on them with >= 4 distinct models, rescale by one factor per precision
  with fewer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .calibrate import (
    CalibrationError,
    HeldOut,
    Observation,
    _sig,
    fit_device,
    is_held_out,
)
from .calibrate_solve import MIN_SPREAD
from .profile import DeviceProfile
from .speed import estimate
from .speed_schema import EstimateRuntime, PrecisionRates, ResidualStats, SpeedModel
from .workload import WORK_CLASSES, Precision, Workload

DERIVED_EXTRA_SPREAD = 0.3
"""Extra relative uncertainty of a model scaled from another board (core, memory, cooling
differ even where the core class is the same)."""

RECORDS_REFIT_MODELS = 4
"""Distinct recorded models from which the records alone are fitted."""


@dataclass(frozen=True)
class ReportRow:
    """One figure against the model's prediction."""

    device: str
    model: str
    precision: Precision
    threads: int
    runtime: str
    observed_ms: float
    predicted_ms: float
    held_out: bool
    noisy: bool

    @property
    def ratio(self) -> float:
        """Predicted / observed."""
        return self.predicted_ms / self.observed_ms


def _runtime(name: str) -> EstimateRuntime:
    if name in ("ncnn", "xnnpack", "onnxruntime", "litert"):
        return name  # type: ignore[return-value]
    raise CalibrationError(f"unknown runtime {name!r} (ncnn, xnnpack, onnxruntime, litert)")


def report(
    profile: DeviceProfile,
    observations: Sequence[Observation],
    workloads: dict[str, Workload],
    held_out: HeldOut,
) -> list[ReportRow]:
    """Every figure of ``profile`` with the prediction of its speed model (clock-normalised)."""
    rows: list[ReportRow] = []
    for ob in observations:
        work = workloads.get(ob.model)
        if work is None:
            raise CalibrationError(f"no workload for model {ob.model!r}")
        e = estimate(
            work, profile, threads=ob.threads, precision=ob.precision, runtime=_runtime(ob.runtime)
        )
        if e is None:
            continue
        clock = ob.clock_ghz or profile.clock_ghz.value
        predicted = e.ms * profile.clock_ghz.value / clock
        rows.append(
            ReportRow(
                device=profile.name,
                model=ob.model,
                precision=ob.precision,
                threads=ob.threads,
                runtime=ob.runtime,
                observed_ms=ob.ms,
                predicted_ms=predicted,
                held_out=is_held_out(held_out, ob),
                noisy=ob.noisy,
            )
        )
    return rows


def _stats(precision: Precision, rows: Sequence[ReportRow]) -> ResidualStats:
    fitted = [abs(r.ratio - 1) for r in rows if not r.held_out and not r.noisy]
    held = [abs(r.ratio - 1) for r in rows if r.held_out and not r.noisy]
    return ResidualStats(
        precision=precision,
        fitted_n=len(fitted),
        fitted_median=round(statistics.median(fitted), 4) if fitted else 0.0,
        fitted_worst=round(max(fitted), 4) if fitted else 0.0,
        held_out_n=len(held),
        held_out_median=round(statistics.median(held), 4) if held else None,
        held_out_worst=round(max(held), 4) if held else None,
    )


def summarise(rows: Sequence[ReportRow]) -> dict[tuple[str, str], ResidualStats]:
    """Per (device, precision): median and worst |ratio − 1| on fitted and held-out figures."""
    keys = sorted({(r.device, r.precision) for r in rows})
    return {
        (d, p): _stats(p, [r for r in rows if r.device == d and r.precision == p]) for d, p in keys
    }


def residual_stats(
    profile: DeviceProfile,
    observations: Sequence[Observation],
    workloads: dict[str, Workload],
    held_out: HeldOut,
) -> list[ResidualStats]:
    """The fit-quality block of a profile's calibration record."""
    rows = report(profile, observations, workloads, held_out)
    return [stats for (_, _), stats in summarise(rows).items()]


def _scaled(rates: PrecisionRates, time_factor: float, extra: float, source: str) -> PrecisionRates:
    values = {n: _sig(float(getattr(rates, n)) / time_factor) for n in WORK_CLASSES}
    return PrecisionRates(
        **values,
        node_us=_sig(rates.node_us * time_factor),
        node_thread_us=_sig(rates.node_thread_us * time_factor),
        parallel=rates.parallel,
        spread=round((1 + rates.spread) * (1 + extra) - 1, 3),
        source=source,
    )


def derive_speed_model(target: DeviceProfile, donor: DeviceProfile, *, date: str) -> SpeedModel:
    """``donor``'s speed model scaled by clock to ``target`` (a board without figures)."""
    model = donor.speed_model
    if model is None:
        raise CalibrationError(f"{donor.name} has no speed model to derive {target.name} from")
    ratio = donor.clock_ghz.value / target.clock_ghz.value
    why = (
        f"scaled from {donor.name} ({donor.cpu}, {donor.clock_ghz.value:g} GHz) by clock "
        f"{target.clock_ghz.value:g}/{donor.clock_ghz.value:g} GHz: no published figures for "
        f"{target.name}; range widened by {DERIVED_EXTRA_SPREAD:.0%}"
    )
    update: dict[str, PrecisionRates | None] = {}
    for precision in ("fp32", "fp16", "int8"):
        rates = model.rates(precision)
        update[precision] = (
            None
            if rates is None
            else _scaled(
                rates, ratio, DERIVED_EXTRA_SPREAD, f"Derived: {why}. Donor: {rates.source}"
            )
        )
    calibration = model.calibration.model_copy(
        update={
            "basis": "derived",
            "date": date,
            "entries": 0,
            "held_out": [],
            "residuals": [],
            "notes": [why, *(f"{donor.name} {n}" for n in model.calibration.notes)],
        }
    )
    return model.model_copy(update={**update, "calibration": calibration})


def apply_records(
    profile: DeviceProfile,
    records: Sequence[Observation],
    workloads: dict[str, Workload],
    *,
    table: str,
    date: str,
) -> SpeedModel:
    """The profile's speed model after recorded runs (which override published figures)."""
    models = sorted({r.model for r in records})
    if not records:
        raise CalibrationError(f"{profile.name}: no recorded runs for this device")
    if len(models) >= RECORDS_REFIT_MODELS:
        return fit_device(
            profile, records, workloads, set(), table=table, date=date, basis="recorded"
        )
    base = profile.speed_model
    if base is None:
        raise CalibrationError(
            f"{profile.name}: {len(models)} recorded model(s) and no published fit to rescale "
            f"(refitting needs >= {RECORDS_REFIT_MODELS} distinct models)"
        )
    update: dict[str, PrecisionRates | None] = {}
    notes: list[str] = []
    for precision in ("fp32", "fp16", "int8"):
        mine = [r for r in records if r.precision == precision]
        rates = base.rates(precision)
        if not mine or rates is None:
            continue
        logs = []
        for r in mine:
            e = estimate(
                workloads[r.model],
                profile,
                threads=r.threads,
                precision=r.precision,
                runtime=_runtime(r.runtime),
            )
            if e is not None:
                logs.append(math.log(r.ms / e.ms))
        if not logs:
            continue
        k = math.exp(sum(logs) / len(logs))
        note = (
            f"{precision}: published fit rescaled x{k:.3g} to {len(mine)} recorded run(s) of "
            f"{len({r.model for r in mine})} model(s) ({table})"
        )
        notes.append(note)
        update[precision] = _scaled(rates, k, 0.0, f"{note}. Before: {rates.source}")
        update[precision] = update[precision].model_copy(  # type: ignore[union-attr]
            update={"spread": max(rates.spread, MIN_SPREAD)}
        )
    if not update:
        raise CalibrationError(f"{profile.name}: no recorded precision matches the speed model")
    calibration = base.calibration.model_copy(
        update={
            "basis": "recorded",
            "date": date,
            "table": f"{base.calibration.table} + {table}",
            "notes": [*notes, *base.calibration.notes],
        }
    )
    return base.model_copy(update={**update, "calibration": calibration})
