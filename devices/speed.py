"""How long one inference takes on a device: a :class:`Workload` through a profile's speed model.

::

    e = estimate(workload, load_profile("pi4"), threads=4, runtime="litert")
    e.ms, e.low_ms, e.high_ms, e.basis, e.notes

Pure Python (no numpy): it runs on devices and inside the simulator. The model (see
:mod:`edgeagent.devices.speed_schema`) is fitted by :mod:`edgeagent.devices.calibrate`. The range
is multiplicative: ``ms / (1 + s) .. ms × (1 + s)``, where ``s`` starts at the fit's
leave-one-model-out spread and grows, with a note each time, for what the fit did not see: a
precision derived from another, a runtime without figures, threads beyond the published ones,
ops without a cost of their own. ``None`` means the profile has no speed model for the question
(or the model is far below the calibrated sizes, :data:`SMALL_MODEL_MMAC`), so the caller falls
back to the profile's single factor.
"""

from __future__ import annotations

from typing import cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from .profile import DeviceProfile
from .speed_schema import EstimateRuntime, PrecisionRates, SpeedModel
from .workload import WORK_CLASSES, Precision, Workload

ESTIMATE_RUNTIMES: tuple[str, ...] = get_args(EstimateRuntime)
"""The runtime names :func:`estimate` accepts."""

FP16_OVER_FP32 = 1.6
"""fp16 arithmetic speed-up over fp32 assumed when fp32 is derived from fp16 figures (the Pi 5's
only float figures): FP16 NEON holds 8 lanes per 128-bit register instead of 4 (2x at best for
multiply-accumulates), less in memory-bound ops and ncnn's fp16 paths; 1.6 sits between and the
range is widened by :data:`FP16_DERIVED_SPREAD`. Assumption, not a fit."""

FP16_DERIVED_SPREAD = 0.3
"""Extra relative uncertainty of fp32 derived from fp16 (the 1.25x..2x plausible speed-up)."""

INT8_DERIVED_SPREAD = 1.0
"""Extra relative uncertainty of int8 derived from fp32 by the old factor ratio: the published
int8 gain ranges from 1.1x to 3x on cores without and with a dot product."""

UNKNOWN_OPS_SPREAD = 0.2
"""Extra relative uncertainty when ops were costed as elementwise for want of a cost."""

SMALL_MODEL_MMAC = 3.0
"""Below this many million MACs a model is far smaller than any calibrated one (the smallest
published model, blazeface, is about 29 MMAC): its time would be mostly per-op costs fitted on
large layers (tens of µs per op at 4 threads), an extrapolation the figures never checked, so
:func:`estimate` declines (None) and callers use the profile's factor on a local timing."""

THREADS_EXTRAPOLATED_SPREAD = 0.15
"""Extra relative uncertainty for thread counts above the largest fitted one."""


class Estimate(BaseModel):
    """Milliseconds of one batch-1 inference on a device, with a range and why it is that wide."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ms: float = Field(gt=0, description="Best estimate, ms.")
    low_ms: float = Field(gt=0, description="Low end of the range, ms.")
    high_ms: float = Field(gt=0, description="High end of the range, ms.")
    threads: int = Field(ge=1, description="Threads the estimate is for (capped at the cores).")
    precision: Precision = Field(description="Arithmetic the estimate is for.")
    runtime: EstimateRuntime = Field(description="Runtime the estimate is for.")
    spread: float = Field(ge=0, description="Relative half-width s of the range.")
    basis: str = Field(description="One line: what the estimate rests on.")
    notes: list[str] = Field(default_factory=list, description="Why the range is what it is.")


MEMORY_BOUND = frozenset({"fc_mweights", "elementwise_melems"})
"""Classes limited by memory traffic: they scale with threads by ``parallel_memory``."""


SIZE_REF_MMAC = 10.0
"""Layer size (MMAC per op that runs) at which the multiply-accumulate rates hold as written."""

SIZE_CLAMP_MMAC = (0.5, 1000.0)
"""Layer sizes outside this range (beyond the calibration models') are clamped to it."""

_MAC_CLASSES = frozenset({"conv_mmac", "pointwise_mmac", "depthwise_mmac"})


def _mean_layer_mmac(workload: Workload) -> float:
    macs = workload.conv_mmac + workload.pointwise_mmac + workload.depthwise_mmac
    return macs / max(workload.nodes, 1)


def _size_factor(size: float, exponent: float) -> float:
    size = min(max(size, SIZE_CLAMP_MMAC[0]), SIZE_CLAMP_MMAC[1])
    return float((size / SIZE_REF_MMAC) ** (-exponent))


def class_scale(workload: Workload, parallel: float, exponent: float, threads: int) -> float:
    """Time multiplier of a class's one-thread time at ``threads`` threads.

    Amdahl, ``(1 − p) + p / t``, with a layer-size effect when ``exponent`` > 0: bigger layers
    amortise packing, tiling and dispatch better (published one-thread ncnn rates on one Pi 4
    span 2-14 GMAC/s from 100-MMAC detectors to VGG-16), so the time is scaled by
    ``(s / 10)^-exponent`` for the mean MMAC per op ``s``; the parallel part runs on slices of
    ``s / t`` per thread, so it speeds up by ``t^(1 − exponent)``, not ``t``. Sizes are clamped
    to :data:`SIZE_CLAMP_MMAC`.
    """
    if exponent == 0:
        return (1.0 - parallel) + parallel / threads
    s = _mean_layer_mmac(workload)
    return (1.0 - parallel) * _size_factor(s, exponent) + parallel / threads * _size_factor(
        s / threads, exponent
    )


def rates_ms(workload: Workload, rates: PrecisionRates, threads: int) -> float:
    """The model's time for ``workload`` at ``threads`` (>= 1) with ``rates``, base runtime."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    p_mem = rates.parallel if rates.parallel_memory is None else rates.parallel_memory
    work = 0.0
    for name, amount in zip(WORK_CLASSES, workload.vector(), strict=True):
        if name in MEMORY_BOUND:
            scale = class_scale(workload, p_mem, 0.0, threads)
        else:
            scale = class_scale(workload, rates.parallel, rates.size_exponent, threads)
        # amount in million, rate in G per second: million / (G/s) = milliseconds.
        work += amount / float(getattr(rates, name)) * scale
    per_node = rates.node_us + rates.node_thread_us * (threads - 1)
    return work + workload.nodes * per_node / 1000.0


def _grow(spread: float, extra: float) -> float:
    """Combine relative uncertainties multiplicatively (conservative: (1+a)(1+b) - 1)."""
    return (1.0 + spread) * (1.0 + extra) - 1.0


def _runtime_factor(
    model: SpeedModel, runtime: EstimateRuntime, precision: str, notes: list[str]
) -> tuple[float, float]:
    """(factor over ncnn, extra spread) for ``runtime``; assumptions are noted."""
    if runtime == "ncnn":
        return 1.0, 0.0
    lookup: EstimateRuntime = "xnnpack" if runtime == "litert" else runtime
    for rf in model.runtimes:
        if rf.runtime == lookup and rf.precision == precision:
            if rf.spread > 0:
                notes.append(f"{runtime}: {rf.source}")
            return rf.factor, rf.spread
    for rf in model.runtimes:
        if rf.runtime == lookup and rf.precision == "fp32":
            notes.append(f"{runtime} {precision}: no factor of its own, the fp32 one is used")
            return rf.factor, rf.spread + 0.2
    notes.append(f"{runtime}: no published figures on this device; assumed as fast as ncnn")
    return 1.0, 0.5


def _pick_rates(
    model: SpeedModel, profile: DeviceProfile, precision: Precision, notes: list[str]
) -> tuple[PrecisionRates, float, float] | None:
    """(rates, time multiplier, extra spread) for ``precision``, deriving it when it is missing."""
    direct = model.rates(precision)
    if direct is not None:
        return direct, 1.0, 0.0
    if precision == "fp32" and model.fp16 is not None:
        notes.append(
            f"no fp32 figures on {profile.name}: fp32 derived from its fp16 rates / "
            f"{FP16_OVER_FP32} (assumed FP16 speed-up), range widened"
        )
        return model.fp16, FP16_OVER_FP32, FP16_DERIVED_SPREAD
    if precision == "int8" and model.fp32 is not None:
        ratio = profile.speed.int8.value / profile.speed.fp32.value
        notes.append(
            f"no int8 figures on {profile.name}: int8 derived from its fp32 rates × {ratio:.3g} "
            "(the profile's int8/fp32 factor ratio), range widened"
        )
        return model.fp32, ratio, INT8_DERIVED_SPREAD
    if precision == "int8" and model.fp16 is not None:
        ratio = profile.speed.int8.value / profile.speed.fp32.value
        notes.append(
            f"no int8 or fp32 figures on {profile.name}: int8 derived from fp16 rates / "
            f"{FP16_OVER_FP32} × {ratio:.3g} (factor ratio), range widened"
        )
        return model.fp16, FP16_OVER_FP32 * ratio, _grow(FP16_DERIVED_SPREAD, INT8_DERIVED_SPREAD)
    return None


def estimate(
    workload: Workload,
    profile: DeviceProfile,
    *,
    threads: int | None = None,
    precision: Precision | None = None,
    runtime: EstimateRuntime | str = "onnxruntime",
) -> Estimate | None:
    """Estimate one inference of ``workload`` on ``profile``; None when no speed model applies.

    ``threads`` defaults to the profile's, ``precision`` to the workload's; fp16 is used only
    when asked for. Threads above the cores are capped (more threads than cores never help).
    """
    if runtime not in ESTIMATE_RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(ESTIMATE_RUNTIMES)}")
    rt = cast(EstimateRuntime, runtime)
    model = profile.speed_model
    if model is None or workload.total_mmac < SMALL_MODEL_MMAC:
        return None
    prec: Precision = precision or workload.precision
    notes: list[str] = []
    picked = _pick_rates(model, profile, prec, notes)
    if picked is None:
        return None
    rates, multiplier, extra = picked
    asked = profile.threads if threads is None else threads
    if asked < 1:
        raise ValueError(f"threads must be >= 1, got {asked}")
    cores = int(profile.cores.value)
    used = min(asked, cores)
    if used < asked:
        notes.append(f"{asked} threads capped at the {cores} cores")
    spread = _grow(rates.spread, extra)
    seen = model.calibration.threads_seen
    if seen and used > max(seen):
        notes.append(f"{used} threads: beyond the fitted {max(seen)}, Amdahl extrapolated")
        spread = _grow(spread, THREADS_EXTRAPOLATED_SPREAD)
    factor, rt_spread = _runtime_factor(model, rt, prec, notes)
    spread = _grow(spread, rt_spread)
    if workload.unknown_ops:
        notes.append(f"ops costed as elementwise: {', '.join(workload.unknown_ops)}")
        spread = _grow(spread, UNKNOWN_OPS_SPREAD)
    if model.calibration.basis == "derived":
        notes.append(
            f"derived speed model: {model.calibration.notes[0]}"
            if model.calibration.notes
            else "derived speed model"
        )
    ms = max(rates_ms(workload, rates, used) * multiplier * factor, 1e-6)
    cal = model.calibration
    runtimes = sorted({rf.runtime for rf in model.runtimes if rf.spread == 0} | {"ncnn"})
    if cal.basis == "derived":
        basis = f"speed model of {profile.name} derived by clock from another board's fit"
    else:
        basis = (
            f"speed model of {profile.name} fitted to {cal.entries} {cal.basis} figures "
            f"({', '.join(runtimes)}; {cal.table})"
        )
    return Estimate(
        ms=ms,
        low_ms=ms / (1.0 + spread),
        high_ms=ms * (1.0 + spread),
        threads=used,
        precision=prec,
        runtime=rt,
        spread=spread,
        basis=basis,
        notes=notes,
    )
