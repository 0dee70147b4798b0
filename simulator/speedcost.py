"""A simulated model skill's device time from the device's speed model.

The same estimate ``models bench --device`` and the optimizer's cards make
(:func:`edgeagent.devices.speed.estimate` on the model's counted workload), so a simulated camera
skill on a Pi Zero 2 W costs what the Zero's speed model says. Workloads come from the model's card
when the optimizer wrote one, else are counted from the file once per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..devices import DeviceProfile
from ..devices.workload import Workload

_WORKLOADS: dict[tuple[str, int], Workload | None] = {}


def _workload(path: Path, figures: dict[str, Any] | None) -> Workload | None:
    """The model's workload: from its card's figures, else counted from the file (cached)."""
    if figures is not None and isinstance(figures.get("workload"), dict):
        try:
            return Workload.model_validate(figures["workload"])
        except ValueError:
            pass
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
    if key not in _WORKLOADS:
        from ..models.estimate import workload_of

        _WORKLOADS[key] = workload_of(path)[0]
    return _WORKLOADS[key]


def speed_model_ms(
    resolved: Any, figures: dict[str, Any] | None, profile: DeviceProfile, kind: str, session: Any
) -> tuple[float, float, float, str] | None:
    """The model's device time from the profile's speed model, or ``None`` (no workload, no
    speed model for the precision): the same estimate ``models bench --device`` makes."""
    from ..devices.speed import estimate

    path = getattr(resolved, "path", None)
    if not isinstance(path, Path):
        return None
    workload = _workload(path, figures)
    if workload is None:
        return None
    runtime = "litert" if path.suffix.lower() == ".tflite" else "onnxruntime"
    threads = getattr(getattr(session, "settings", None), "threads", None) or profile.threads
    est = estimate(
        workload,
        profile,
        threads=min(int(threads), profile.threads),
        precision="int8" if kind == "int8" else "fp32",
        runtime=runtime,
    )
    if est is None:
        return None
    return est.ms, est.low_ms, est.high_ms, est.basis
