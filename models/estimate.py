"""What a measured model will cost on a device: one estimate for the optimizer, ``models bench``
and the simulator.

In order of trust:

1. **Measured on the device.** When this machine *is* the profile's device (same architecture and,
   for a board profile, its device-tree model), the local timing is the answer.
2. **The device's speed model** (:mod:`edgeagent.devices.speed`), when the model's graph can be
   counted (:func:`workload_of`: an ONNX file with the ``onnx`` package, or a ``.tflite`` file)
   and the profile has a speed model for the precision: per operator class, per precision,
   at the device's threads, fitted to published real-device figures or to recorded runs. It does
   not depend on this machine's timing at all, so it is the same from run to run; the p99 keeps
   this machine's tail ratio (p99 / p50).
3. **The old single factor**: this machine's p50 × the profile's ``speed.fp32`` / ``speed.int8``,
   with a range of 2× either way, and a note saying why the speed model could not be used.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from ..devices.profile import DeviceProfile
from ..devices.workload import Precision, Workload

FALLBACK_SPREAD = 2.0
"""The old factor's range: this many times faster or slower (it was never checked per model)."""

REFERENCE_PROFILE = "x86-64"

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True, slots=True)
class DeviceEstimate:
    """A model's estimated latency on a device, with its range and where it comes from."""

    p50_ms: float
    p99_ms: float
    low_ms: float
    high_ms: float
    threads: int
    """The device's inference threads the estimate is for."""
    basis: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def factor(self, local_p50_ms: float) -> float:
        """The effective "times slower than here" of this estimate (1.0 when measured here)."""
        return round(self.p50_ms / local_p50_ms, 4) if local_p50_ms > 0 else 1.0


def local_threads(profile: DeviceProfile) -> int:
    """Threads to time with on this machine: the profile's, but never more than this machine's
    CPUs (oversubscribed threads make the local timing slower *and* noisier, and the speed model
    does the thread scaling for the device)."""
    return max(1, min(profile.threads, os.cpu_count() or 1))


def _device_tree_model() -> str:
    try:
        return DEVICE_TREE_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""


def on_this_device(profile: DeviceProfile) -> bool:
    """Is this machine a device of ``profile``? Same architecture, and for a board profile
    (``match`` not empty) a device-tree model naming the board; the reference profile matches any
    x86-64 machine (its figures are "this machine" by definition)."""
    if platform.machine() != profile.arch:
        return False
    if not profile.match:
        return True
    model = _device_tree_model()
    return any(m in model for m in profile.match)


def workload_of(path: Path) -> tuple[Workload | None, str | None]:
    """The model's workload, or ``None`` and why it could not be counted (a missing package, a
    graph the counter cannot read). Never raises: the caller falls back to the factor."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            from .workload_onnx import count_onnx

            return count_onnx(path), None
        if suffix == ".tflite":
            from .workload_tflite import count_tflite

            return count_tflite(path), None
    except ImportError as exc:
        return None, f"cannot count the graph here ({exc}): pip install 'edgeagent[optimize]'"
    except Exception as exc:  # a counter's refusal is a reason, not a crash
        return None, f"cannot count the graph: {type(exc).__name__}: {exc}"
    return None, f"no workload counter for {suffix or 'a file without a suffix'}"


def _factor(profile: DeviceProfile, precision: str) -> float:
    return profile.speed.int8.value if precision == "int8" else profile.speed.fp32.value


def device_estimate(
    profile: DeviceProfile,
    *,
    precision: Precision,
    runtime: str,
    p50_ms: float,
    p99_ms: float,
    workload: Workload | None,
    why_no_workload: str | None = None,
) -> DeviceEstimate:
    """The estimate for one measured model file (see the module doc for the order of trust)."""
    threads = profile.threads
    if on_this_device(profile):
        return DeviceEstimate(
            p50_ms,
            p99_ms,
            p50_ms,
            p99_ms,
            local_threads(profile),
            f"measured on this machine, a {profile.name}",
        )
    notes: list[str] = []
    from ..devices.speed import SMALL_MODEL_MMAC, estimate

    if workload is not None and workload.total_mmac < SMALL_MODEL_MMAC:
        notes.append(
            f"{workload.total_mmac:.3g} MMAC: below the speed model's calibrated sizes (the "
            "smallest published model is about 29 MMAC), so the profile's factor instead"
        )
    elif workload is not None:
        est = estimate(workload, profile, threads=threads, precision=precision, runtime=runtime)
        if est is not None:
            tail = p99_ms / p50_ms if p50_ms > 0 else 1.0
            return DeviceEstimate(
                est.ms,
                est.ms * max(1.0, tail),
                est.low_ms,
                est.high_ms,
                est.threads,
                est.basis,
                tuple(est.notes),
            )
        notes.append(f"{profile.name} has no speed model for {precision}")
    elif why_no_workload:
        notes.append(why_no_workload)
    factor = _factor(profile, precision)
    ms = p50_ms * factor
    return DeviceEstimate(
        ms,
        p99_ms * factor,
        ms / FALLBACK_SPREAD,
        ms * FALLBACK_SPREAD,
        threads,
        f"this machine's p50 × {profile.name}'s {precision} factor {factor:g} "
        f"(range {FALLBACK_SPREAD:g}× either way: the factor is not per model)",
        tuple(notes),
    )
