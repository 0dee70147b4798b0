"""Can a device run this language model, and how fast? An estimate from figures measured here.

Pure: measured figures (:class:`LlmMeasured`: tokens/s, first-token latency, peak memory, bytes on
disk, precision, all taken on the reference machine) and a :class:`~edgeagent.devices.DeviceProfile`
in, a typed :class:`LlmEstimate` out. No I/O, no runtime.

The rule, and why
-----------------
*Memory.* What a model needs does not depend much on the CPU: the same weights, KV cache and
runtime buffers are allocated on a Pi as here. The peak RSS measured while generating (model and
runtime, minus the Python process before loading) is compared with the profile's
``model_budget_mb`` (what is left for a model on that device, not all its RAM), after a margin of
:data:`MEMORY_MARGIN` for the other architecture's runtime build and allocator; the file must also
fit the ``storage_budget_mb``. onnxruntime-genai publishes wheels for x86-64 and aarch64 only, so
a 32-bit (armv7l) device cannot run it at all.

*Decoding (tokens/s).* Generating one token reads every weight once (and the KV cache), and does
about two operations per weight: at batch size 1 it is limited by memory bandwidth more than
by arithmetic (Pope et al., "Efficiently Scaling Transformer Inference", 2022, section 2, on
the low arithmetic intensity of decoding; llama.cpp's Apple Silicon benchmark,
github.com/ggml-org/llama.cpp/discussions/4167, where text-generation speed follows each chip's
memory bandwidth while prompt processing follows its compute). Device profiles carry no
bandwidth figures, only speed factors measured or estimated on small models; on the boards the
profiles describe, bandwidth and compute scale roughly together (LPDDR2 on the Zero 2 W and Pi 3,
LPDDR4 on the Pi 4, LPDDR4X on the Pi 5), so the estimate divides the measured tokens/s by the
profile's speed factor and says how unsure it is: the range is ``mid / UNCERTAINTY`` to
``mid * UNCERTAINTY`` (:data:`UNCERTAINTY` = 2).

*First token.* Reading the prompt (prefill) is matrix-matrix work, bound by compute: the measured
first-token latency is multiplied by the same factor, with the same range.

*Which factor.* int4 weights run in onnxruntime's ``MatMulNBits``; the model builder asks for
int8 compute (``accuracy_level`` 4), which MLAS carries out with the int8 dot-product
instructions (Arm SDOT/UDOT, x86 VNNI) when the CPU has them, and otherwise falls back to
dequantizing to fp32 and fp32 kernels (onnxruntime ``docs/ContribOperators.md``, MatMulNBits
``accuracy_level``; MLAS ``sqnbitgemm`` kernels). So int4 and int8 models use the profile's
``int8`` factor on a device with ``int8_dot_product`` and its ``fp32`` factor otherwise; fp32
models always use ``fp32``. The profiles' factors are themselves estimates unless calibrated
on the device (``edgeagent models bench``): calibrate and the estimate follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..devices import DeviceProfile
from ..errors import EdgeAgentError

Precision = Literal["fp32", "int8", "int4"]
UNCERTAINTY = 2.0
"""The estimate's range is mid / UNCERTAINTY .. mid * UNCERTAINTY (see the module docstring)."""
MEMORY_MARGIN = 1.10
"""Peak memory measured here times this is what a device needs (other runtime build, allocator)."""
GENAI_ARCHES = frozenset({"x86_64", "aarch64"})
"""Architectures onnxruntime-genai publishes wheels for (PyPI, onnxruntime-genai 0.18)."""


class EstimateError(EdgeAgentError, ValueError):
    """The measured figures are not usable: the message names the field and the value."""


@dataclass(frozen=True, slots=True)
class LlmMeasured:
    """What a model did on the reference machine (the card's ``measured`` block)."""

    tokens_per_s: float
    first_token_ms: float
    peak_memory_mb: float
    model_bytes: int
    precision: Precision
    machine: str = "reference"

    def __post_init__(self) -> None:
        for name in ("tokens_per_s", "first_token_ms", "peak_memory_mb", "model_bytes"):
            value = getattr(self, name)
            if not value > 0:
                raise EstimateError(f"measured {name} must be positive, got {value!r}")
        if self.precision not in ("fp32", "int8", "int4"):
            raise EstimateError(
                f"measured precision must be fp32, int8 or int4: {self.precision!r}"
            )


@dataclass(frozen=True, slots=True)
class Span:
    """An estimate: the middle value and the range it may fall in."""

    low: float
    mid: float
    high: float

    def __str__(self) -> str:
        return f"{_num(self.mid)} ({_num(self.low)}-{_num(self.high)})"


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


@dataclass(frozen=True, slots=True)
class LlmEstimate:
    """Whether ``profile`` can run the model, and how fast."""

    profile: str
    runs: bool
    """True when it fits in memory and storage and the runtime exists for the architecture."""
    reason: str
    """Why it does not run, or ``"fits"`` with the margin."""
    memory_mb: float
    """What the model needs there, MiB (measured peak here times :data:`MEMORY_MARGIN`)."""
    budget_mb: float
    factor: float
    """The speed factor used (times slower than the reference)."""
    factor_kind: Literal["fp32", "int8"]
    tokens_per_s: Span
    first_token_ms: Span

    def summary(self) -> str:
        head = f"{self.profile}: " + ("runs" if self.runs else f"no ({self.reason})")
        return (
            f"{head}; ~{self.tokens_per_s} tokens/s, first token ~{self.first_token_ms} ms "
            f"(needs {self.memory_mb:.0f} of {self.budget_mb:.0f} MiB)"
        )


def speed_factor(
    profile: DeviceProfile, precision: Precision
) -> tuple[float, Literal["fp32", "int8"]]:
    """The profile's factor for this precision (see "Which factor" in the module docstring)."""
    if precision != "fp32" and profile.int8_dot_product:
        return profile.speed.int8.value, "int8"
    return profile.speed.fp32.value, "fp32"


def estimate(measured: LlmMeasured, profile: DeviceProfile) -> LlmEstimate:
    """Estimate what ``profile``'s device does with the model measured in ``measured``."""
    factor, kind = speed_factor(profile, measured.precision)
    need = measured.peak_memory_mb * MEMORY_MARGIN
    budget = profile.model_budget_mb.value
    disk_mb = measured.model_bytes / 2**20
    if profile.arch not in GENAI_ARCHES:
        reason = f"no onnxruntime-genai wheel for {profile.arch}"
    elif need > profile.ram_mb.value:
        reason = f"needs {need:.0f} MiB, more than the {profile.ram_mb.value:.0f} MiB of RAM"
    elif need > budget:
        reason = f"needs {need:.0f} MiB, over the model budget of {budget:.0f} MiB"
    elif disk_mb > profile.storage_budget_mb.value:
        reason = (
            f"{disk_mb:.0f} MiB on disk, over the storage budget of "
            f"{profile.storage_budget_mb.value:.0f} MiB"
        )
    else:
        reason = ""
    tps = measured.tokens_per_s / factor
    first = measured.first_token_ms * factor
    return LlmEstimate(
        profile=profile.name,
        runs=not reason,
        reason=reason or f"fits: {need:.0f} of {budget:.0f} MiB",
        memory_mb=need,
        budget_mb=budget,
        factor=factor,
        factor_kind=kind,
        tokens_per_s=Span(tps / UNCERTAINTY, tps, tps * UNCERTAINTY),
        first_token_ms=Span(first / UNCERTAINTY, first, first * UNCERTAINTY),
    )


def measured_from_card(card: Mapping[str, Any]) -> LlmMeasured:
    """The :class:`LlmMeasured` of a zoo language model's ``card.json`` (its ``measured`` block,
    ``size_bytes`` and ``precision``); :class:`EstimateError` names what is missing."""
    try:
        m = card["measured"]
        return LlmMeasured(
            tokens_per_s=float(m["tokens_per_s"]),
            first_token_ms=float(m["first_token_ms"]),
            peak_memory_mb=float(m["model_memory_mb"]),
            model_bytes=int(card["size_bytes"]),
            precision=card["precision"],
            machine=str(m.get("machine", "reference")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EstimateError(
            f"card {card.get('name', '?')!r}: no usable measurements ({exc})"
        ) from exc
