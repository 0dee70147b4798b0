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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


# -- shared by the backends ------------------------------------------------------------------


def _check_feeds(model: str, specs: tuple[TensorSpec, ...], feeds: Any) -> None:
    """Check ``feeds`` against ``specs`` (names, numpy arrays, dtypes, ranks and fixed dims).

    The backends' fast paths compare against the last accepted dtype and shape and call this only
    when something differs, so it may be thorough; it raises a :class:`ModelError` naming the
    expected signature, or returns when the feeds are acceptable (e.g. a new dynamic batch size).
    """
    expected = ", ".join(str(s) for s in specs)
    if not isinstance(feeds, Mapping):
        raise ModelError(
            f"{model}: feeds must be a dict of input name to array, not {type(feeds).__name__}; "
            f"the model expects {expected}"
        )
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise ModelError(
            f"{model}: missing input {', '.join(map(repr, missing))}; the model expects {expected}"
        )
    names = {s.name for s in specs}
    extra = sorted(repr(k) for k in feeds if k not in names)
    if extra:
        raise ModelError(
            f"{model}: unexpected input {', '.join(extra)}; the model expects {expected}"
        )
    for spec in specs:
        value = feeds[spec.name]
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if not isinstance(shape, tuple) or dtype is None:
            raise ModelError(
                f"{model}: input {spec.name!r} is a {type(value).__name__}, not a numpy array; "
                f"the model expects {spec}"
            )
        if len(shape) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise ModelError(
                f"{model}: input {spec.name!r} has shape {shape} but the model expects {spec}"
            )
        if not _dtype_matches(dtype, spec.dtype):
            native = "" if getattr(dtype, "isnative", True) else " (non-native byte order)"
            raise ModelError(
                f"{model}: input {spec.name!r} has dtype {dtype}{native} "
                f"but the model expects {spec}"
            )


def _dtype_matches(dtype: Any, name: str) -> bool:
    if name in ("str", "bytes", "object"):
        return getattr(dtype, "kind", "") in ("U", "S", "O")
    return bool(getattr(dtype, "name", None) == name and getattr(dtype, "isnative", False))
