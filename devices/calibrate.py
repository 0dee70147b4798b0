"""Fit a device's :class:`SpeedModel` to measured figures (published tables or recorded runs).

::

    model = fit_device(profile, observations, workloads, holdout, table="…", date="2026-12-05")

Each precision is fitted on its own figures by :mod:`.calibrate_solve` (relative least squares
with non-negative rates, a grid over the parallel fraction and the layer-size exponent); float
first, then int8, whose thin data (6-8 models a board) are pulled towards the float fit's class
structure times one scale. The spread is the 90th percentile of |ratio − 1| over
leave-one-model-out refits (at least 0.10). Models in the hold-out list and noisy figures are
never fitted on. Deterministic: fixed grids, fixed order, rates rounded to 4 significant digits.

numpy only (devices run the estimate, not the fit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calibrate_solve import (
    BASE_RUNTIME,
    MIN_SPREAD,
    ONNXRUNTIME_ASSUMED_SPREAD,
    PM_GRID,
    WEAK_SHARE,
    CalibrationError,
    Fit,
    HeldOut,
    Observation,
    Row,
    fit_rows,
    is_held_out,
    lomo_spread,
)
from .nnls import Array
from .profile import DeviceProfile
from .speed_schema import (
    Basis,
    Calibration,
    EstimateRuntime,
    PrecisionRates,
    RuntimeFactor,
    SpeedModel,
)
from .workload import WORK_CLASSES, Precision, Workload

__all__ = [
    "CalibrationError",
    "HeldOut",
    "Observation",
    "PrecisionFit",
    "fit_device",
    "fit_precision",
    "is_held_out",
    "rows_for",
    "runtime_factors",
]


def _sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (stable YAML, no float noise)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(f"{value:.{digits}g}")


def rows_for(
    profile: DeviceProfile, observations: Sequence[Observation], workloads: dict[str, Workload]
) -> list[Row]:
    """Observations joined with their workloads, times normalised to the profile's clock."""
    rows = []
    for ob in observations:
        work = workloads.get(ob.model)
        if work is None:
            known = ", ".join(sorted(workloads)) or "(none)"
            raise CalibrationError(f"no workload for model {ob.model!r}; known: {known}")
        clock = ob.clock_ghz or profile.clock_ghz.value
        rows.append(Row(obs=ob, work=work, ms=ob.ms * clock / profile.clock_ghz.value))
    return rows


def _rates_of(fit: Fit, spread: float, source: str) -> PrecisionRates:
    inv = [float(v) for v in fit.x]
    values = {name: _sig(1.0 / inv[c]) for c, name in enumerate(WORK_CLASSES)}
    return PrecisionRates(
        **values,
        node_us=_sig(inv[len(WORK_CLASSES)] * 1000.0),
        node_thread_us=_sig(inv[len(WORK_CLASSES) + 1] * 1000.0),
        parallel=fit.p[0],
        parallel_memory=fit.p[1] if PM_GRID else None,
        size_exponent=fit.p[2],
        spread=round(max(spread, MIN_SPREAD), 3),
        source=source,
    )


@dataclass(frozen=True)
class PrecisionFit:
    """One precision's fit, before it is rounded into the profile."""

    precision: Precision
    rates: PrecisionRates
    factors: dict[str, float]
    notes: tuple[str, ...]
    entries: int
    runtime_figures: dict[str, str]


def fit_precision(
    rows: Sequence[Row],
    precision: Precision,
    basis_text: str,
    shape: Array | None = None,
    nodes: Array | None = None,
) -> PrecisionFit:
    """Fit one precision's rates, runtime factors and spread on ``rows`` (all that precision);
    ``shape`` and ``nodes`` (the float fit's inverse rates and per-op costs) for thin int8 data."""
    if not rows:
        raise CalibrationError(f"no {precision} figures to fit")
    fit = fit_rows(rows, shape, nodes=nodes)
    spread = lomo_spread(rows, shape, fit.p, nodes)
    notes = []
    if spread is None:
        notes.append(f"{precision}: too few models for a leave-one-out spread; 0.5 assumed")
        spread = 0.5
    if fit.weak:
        notes.append(
            f"{precision}: {', '.join(fit.weak)} under {WEAK_SHARE:.0%} of every fitted model's "
            + (
                "time: rate held near the prior (the float fit's class rates, scaled)"
                if shape is not None
                else "time: rate held near the prior (the pooled multiply-accumulate rate)"
            )
        )
    if not any(r.obs.runtime == BASE_RUNTIME for r in rows):
        notes.append(f"{precision}: no {BASE_RUNTIME} figures; rates are of the runtime measured")
    models = sorted({r.obs.model for r in rows})
    source = (
        f"Fitted to {len(rows)} {basis_text} {precision} figures of {len(models)} models "
        f"({', '.join(models)}), relative least squares; p and the size exponent on grids"
        + ("; per-op costs taken from the float fit." if nodes is not None else ".")
    )
    rates = _rates_of(fit, spread, source)
    described: dict[str, str] = {}
    for runtime in fit.factors:
        mine = [r for r in rows if r.obs.runtime == runtime]
        bits = "/".join(f"{b}-bit" for b in sorted({r.obs.bits for r in mine}))
        names = ", ".join(sorted({r.obs.model for r in mine}))
        described[runtime] = (
            f"{len(mine)} {basis_text} {runtime} {precision} figures ({names}; {bits})"
        )
    return PrecisionFit(precision, rates, dict(fit.factors), tuple(notes), len(rows), described)


def runtime_factors(fits: Sequence[PrecisionFit], basis_text: str) -> list[RuntimeFactor]:
    """Fitted factors of the non-base runtimes, and ONNX Runtime assumed like ncnn."""
    out: list[RuntimeFactor] = []
    for pf in fits:
        for runtime, factor in sorted(pf.factors.items()):
            rt: EstimateRuntime = "xnnpack" if runtime in ("xnnpack", "litert") else "onnxruntime"
            out.append(
                RuntimeFactor(
                    runtime=rt,
                    precision=pf.precision,
                    factor=_sig(factor, 3),
                    spread=0.0,
                    source=f"Fitted with the rates on {pf.runtime_figures.get(runtime, runtime)}.",
                )
            )
        if not any(f.runtime == "onnxruntime" and f.precision == pf.precision for f in out):
            out.append(
                RuntimeFactor(
                    runtime="onnxruntime",
                    precision=pf.precision,
                    factor=1.0,
                    spread=ONNXRUNTIME_ASSUMED_SPREAD,
                    source="assumed as fast as ncnn (no published ONNX Runtime figures on this "
                    "device in the table); range widened",
                )
            )
    return out


def fit_device(
    profile: DeviceProfile,
    observations: Sequence[Observation],
    workloads: dict[str, Workload],
    held_out: HeldOut,
    *,
    table: str,
    date: str,
    basis: Basis = "published",
) -> SpeedModel:
    """The speed model of ``profile`` fitted on ``observations`` (noisy and held-out excluded)."""
    usable = [o for o in observations if not o.noisy and not is_held_out(held_out, o)]
    if not usable:
        raise CalibrationError(f"{profile.name}: no figures to fit (after noisy and held-out)")
    basis_text = "published" if basis == "published" else "recorded"
    fits: list[PrecisionFit] = []
    for precision in ("fp32", "fp16", "int8"):
        prec_rows = rows_for(profile, [o for o in usable if o.precision == precision], workloads)
        if prec_rows:
            shape = nodes = None
            if precision == "int8" and fits:
                base = fits[0].rates
                shape = np.array([1.0 / float(getattr(base, n)) for n in WORK_CLASSES])
                nodes = np.array([base.node_us / 1000.0, base.node_thread_us / 1000.0])
            fits.append(fit_precision(prec_rows, precision, basis_text, shape, nodes))
    notes = [n for pf in fits for n in pf.notes]
    model = SpeedModel(
        **{pf.precision: pf.rates for pf in fits},
        runtimes=runtime_factors(fits, basis_text),
        calibration=Calibration(
            basis=basis,
            table=table,
            entries=sum(pf.entries for pf in fits),
            held_out=sorted({o.model for o in observations if is_held_out(held_out, o)}),
            threads_seen=sorted({o.threads for o in usable}),
            date=date,
            notes=notes,
        ),
    )
    from .calibrate_report import residual_stats  # the report imports this module

    stats = residual_stats(
        profile.model_copy(update={"speed_model": model}), observations, workloads, held_out
    )
    return model.model_copy(
        update={"calibration": model.calibration.model_copy(update={"residuals": stats})}
    )
