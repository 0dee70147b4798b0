"""The schema of a device's speed model (the ``speed_model:`` section of a profile).

Kept apart from :mod:`edgeagent.devices.speed` (which turns a workload into milliseconds) so
that :mod:`edgeagent.devices.profile` can hold a :class:`SpeedModel` without importing the
estimator, which itself needs the profile. The arithmetic, per precision::

    work_ms(t) = Σ_class  amount[class] (million) / rate[class] (G per s)  ×  ((1 − p) + p / t)
    ms(t)      = work_ms(t) + nodes × (node_us + node_thread_us × (t − 1)) / 1000

``t`` is the thread count (capped at the cores), ``p`` the parallel fraction (Amdahl). Rates are
single-thread, at the profile's clock, for the base runtime the published tables use most (ncnn);
other runtimes are a factor on the whole time. Every number says where it comes from: the
``source`` of its block and the ``calibration`` record of what it was fitted on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Basis = Literal["published", "recorded", "derived"]
"""What a speed model rests on: published device figures, runs recorded on a device of this
class (``models bench --record``), or another device's model scaled (no figures of its own)."""

EstimateRuntime = Literal["onnxruntime", "litert", "ncnn", "xnnpack"]
"""Runtimes an estimate can be asked for (``litert`` runs XNNPACK on Arm CPUs)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrecisionRates(_Strict):
    """Single-thread rates of one precision on one device, with thread scaling and spread."""

    conv_mmac: float = Field(gt=0, description="Dense k>1 convolutions, GMAC/s on one thread.")
    pointwise_mmac: float = Field(gt=0, description="1x1 convolutions and GEMMs, GMAC/s.")
    depthwise_mmac: float = Field(gt=0, description="Depthwise/grouped convolutions, GMAC/s.")
    fc_mweights: float = Field(gt=0, description="Matrix-vector products, G weights/s.")
    elementwise_melems: float = Field(gt=0, description="Other ops, G output elements/s.")
    node_us: float = Field(ge=0, description="Fixed cost of one op that runs, µs.")
    node_thread_us: float = Field(
        default=0.0,
        ge=0,
        description="Extra cost of one op per thread beyond the first (fork/join), µs.",
    )
    parallel: float = Field(
        ge=0, le=1, description="Parallel fraction p of the work time (Amdahl), 0..1."
    )
    parallel_memory: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Parallel fraction of the memory-bound classes (fc_mweights, "
        "elementwise_melems); None: the same as parallel.",
    )
    size_exponent: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Multiply-accumulates run faster in larger layers: their time is scaled by "
        "(MMAC per op / 10)^-size_exponent (0: no size effect).",
    )
    spread: float = Field(
        ge=0.1,
        description="Relative uncertainty: 90th percentile of |predicted/observed - 1| over "
        "leave-one-model-out fits (at least 0.10); the range is ms/(1+s) .. ms*(1+s).",
    )
    source: str = Field(min_length=3, description="Where these numbers come from.")


class RuntimeFactor(_Strict):
    """Time of ``runtime`` over the base runtime's (ncnn) time, for one precision."""

    runtime: EstimateRuntime = Field(description="The runtime this factor converts to.")
    precision: Literal["fp32", "fp16", "int8"] = Field(description="The precision it applies to.")
    factor: float = Field(gt=0, description="Multiplies the base (ncnn) time; < 1 is faster.")
    spread: float = Field(
        ge=0, description="Extra relative uncertainty this conversion adds (0 when fitted well)."
    )
    source: str = Field(min_length=3, description="Fitted on which figures, or assumed why.")


class ResidualStats(_Strict):
    """How well the fit reproduces figures, as |predicted/observed - 1|."""

    precision: Literal["fp32", "fp16", "int8"] = Field(description="Precision of the figures.")
    fitted_n: int = Field(ge=0, description="Figures fitted on.")
    fitted_median: float = Field(ge=0, description="Median |ratio - 1| on fitted figures.")
    fitted_worst: float = Field(ge=0, description="Worst |ratio - 1| on fitted figures.")
    held_out_n: int = Field(ge=0, description="Figures of held-out models.")
    held_out_median: float | None = Field(
        default=None, ge=0, description="Median |ratio - 1| on held-out figures."
    )
    held_out_worst: float | None = Field(
        default=None, ge=0, description="Worst |ratio - 1| on held-out figures."
    )


class Calibration(_Strict):
    """What a speed model was fitted on, so anyone can refit and compare."""

    basis: Basis = Field(description="published | recorded | derived.")
    table: str = Field(description="Figures file(s) fitted on, relative to the package.")
    entries: int = Field(ge=0, description="Figures used in the fit (noisy and held-out excluded).")
    held_out: list[str] = Field(
        default_factory=list, description="Models left out of the fit on purpose (holdout.yaml)."
    )
    threads_seen: list[int] = Field(
        default_factory=list, description="Thread counts of the fitted figures."
    )
    date: str = Field(description="When the fit was made (YYYY-MM-DD).")
    residuals: list[ResidualStats] = Field(
        default_factory=list, description="Fit quality per precision."
    )
    notes: list[str] = Field(default_factory=list, description="What the fit could not tell.")


class SpeedModel(_Strict):
    """A device's speed per precision, thread scaling, runtime factors and their calibration."""

    fp32: PrecisionRates | None = Field(default=None, description="Float32 rates, if known.")
    fp16: PrecisionRates | None = Field(
        default=None, description="Float16 arithmetic rates (ncnn on cores with FP16), if known."
    )
    int8: PrecisionRates | None = Field(default=None, description="Int8 rates, if known.")
    runtimes: list[RuntimeFactor] = Field(
        default_factory=list, description="Other runtimes' time over ncnn's, per precision."
    )
    calibration: Calibration = Field(description="What this model was fitted on.")

    def rates(self, precision: str) -> PrecisionRates | None:
        """The rates of ``precision`` (``fp32``, ``fp16``, ``int8``), or None."""
        value = getattr(self, precision, None)
        return value if isinstance(value, PrecisionRates) else None
