"""Inference backends (ONNX Runtime, LiteRT), loaded by file suffix.

::

    from edgeagent.models import load_model, settings_for

    settings = settings_for(profile, model_bytes=path.stat().st_size)
    session = load_model(path, settings)        # .onnx -> ONNX Runtime, .tflite -> LiteRT
    session.run({"x": batch})                   # {"logits": array}

Importing this package imports neither a runtime nor numpy (both come with the ``onnx`` and
``tflite`` extras): a backend module, and its runtime, are imported when a model is loaded, so an
agent on a device with one runtime, or none, still starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .backend import (
    ModelError,
    RuntimeMissing,
    RuntimeSettings,
    Session,
    SessionStatistics,
    TensorSpec,
)

if TYPE_CHECKING:
    from ..devices.profile import DeviceProfile

__all__ = [
    "ModelError",
    "RuntimeMissing",
    "RuntimeSettings",
    "Session",
    "SessionStatistics",
    "TensorSpec",
    "load_model",
    "settings_for",
]

SPIN_ABOVE_BYTES = 5 * 1024 * 1024
"""Models larger than this let idle ORT threads spin: worth it only when a run is long enough."""

_SUFFIXES = (".onnx", ".tflite")


def load_model(path: str | os.PathLike[str], settings: RuntimeSettings | None = None) -> Session:
    """Load ``path`` with the runtime its suffix names (``.onnx``: ONNX Runtime; ``.tflite``:
    LiteRT). Raises :class:`ModelError` for an unknown suffix, a missing or corrupt file, and
    :class:`RuntimeMissing` (naming the extra to install) when the runtime is not installed."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ModelError(
            f"{file}: unknown model format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(_SUFFIXES)}"
        )
    if not file.is_file():
        raise ModelError(f"{file}: no such model file")
    settings = settings or RuntimeSettings()
    if suffix == ".onnx":
        from .onnx_backend import OnnxSession

        return OnnxSession(file, settings)
    from .litert_backend import LiteRTSession

    return LiteRTSession(file, settings)


def settings_for(profile: DeviceProfile, model_bytes: int = 0) -> RuntimeSettings:
    """Runtime settings for a model of ``model_bytes`` on ``profile``: the profile's threads;
    spinning only for models above :data:`SPIN_ABOVE_BYTES` (for a tiny model a spinning thread
    burns a core between calls and saves nothing)."""
    return RuntimeSettings(threads=profile.threads, spin=model_bytes > SPIN_ABOVE_BYTES)
