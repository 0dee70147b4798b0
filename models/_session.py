"""What the ONNX Runtime and LiteRT sessions share: the feed check and the session plumbing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..stats import LatencyWindow
from .backend import ModelError, SessionStatistics, TensorSpec


def check_feeds(model: str, specs: tuple[TensorSpec, ...], feeds: Any) -> None:
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


class SessionBase:
    """Warm-up, statistics and repr for a session with ``_inputs``, ``_outputs``, ``run``."""

    path: str
    _inputs: tuple[TensorSpec, ...]
    _outputs: tuple[TensorSpec, ...]
    _window: LatencyWindow
    _runs: int

    def run(self, feeds: Any) -> Any:
        raise NotImplementedError

    def warmup(self, runs: int = 5) -> None:
        """Run ``runs`` times on zeros (dynamic dims as 1); not counted in :meth:`statistics`."""
        import numpy as np

        feeds = {
            s.name: np.zeros(tuple(1 if d is None else d for d in s.shape), dtype=s.dtype)
            for s in self._inputs
        }
        window, count = self._window, self._runs
        self._window = LatencyWindow()
        try:
            for _ in range(runs):
                self.run(feeds)
        finally:
            self._window, self._runs = window, count

    def statistics(self) -> SessionStatistics:
        p50, p95, p99 = self._window.percentiles_ms((50, 95, 99))
        return SessionStatistics(runs=self._runs, p50_ms=p50, p95_ms=p95, p99_ms=p99)

    def __repr__(self) -> str:
        signature = ", ".join(map(str, self._inputs))
        outputs = ", ".join(map(str, self._outputs))
        return f"{type(self).__name__}({self.path!r}, {signature} -> {outputs})"
