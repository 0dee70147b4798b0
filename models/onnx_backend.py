"""ONNX Runtime backend: :class:`OnnxSession` runs an ``.onnx`` file on the CPU provider,
optionally with a LoRA adapter active on every run (see :mod:`.lora_adapter`).

onnxruntime is imported when a session is created, not when this module is: a device without it
gets a :class:`RuntimeMissing` naming the extra to install.
"""

from __future__ import annotations

import contextlib
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..stats import LatencyWindow
from ._session import SessionBase, check_feeds
from .backend import ModelError, RuntimeMissing, RuntimeSettings, TensorSpec

try:
    import numpy as np
except ModuleNotFoundError as exc:  # numpy comes with the extra
    raise RuntimeMissing("numpy is not installed: pip install 'edgeagent[onnx]'") from exc

if TYPE_CHECKING:
    from .backend import Array

EXTRA = "pip install 'edgeagent[onnx]'"

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# ONNX element type names, as onnxruntime prints them ("tensor(float)"), to numpy dtype names.
_DTYPES = {"float": "float32", "double": "float64", "string": "str"}


def _onnxruntime() -> Any:
    """The onnxruntime module (imported here so the package imports without it)."""
    try:
        import onnxruntime  # type: ignore[import-untyped, unused-ignore]
    except ModuleNotFoundError as exc:
        raise RuntimeMissing(f"ONNX Runtime is not installed: {EXTRA}") from exc
    except ImportError as exc:  # installed but broken (e.g. built against another numpy)
        raise RuntimeMissing(f"ONNX Runtime cannot be imported ({exc}): {EXTRA}") from exc
    return onnxruntime


def _spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg; symbolic and unknown dims become None."""
    kind: str = arg.type
    if kind.startswith("tensor(") and kind.endswith(")"):
        element = kind[len("tensor(") : -1]
        dtype = _DTYPES.get(element, element)
    else:  # sequence or map (e.g. a ZipMap output): keep onnxruntime's name
        dtype = kind
    shape = arg.shape if isinstance(arg.shape, list) else []
    return TensorSpec(
        name=arg.name,
        shape=tuple(d if isinstance(d, int) and d >= 0 else None for d in shape),
        dtype=dtype,
    )


class _Slot:
    """One input on the fast path: the dtype and the last shape that passed the full check."""

    __slots__ = ("dtype", "name", "shape")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.dtype: np.dtype[Any] | None = None
        # No numpy dtype of some names (bfloat16 without ml_dtypes, seq(...)): always slow path.
        with contextlib.suppress(TypeError):
            self.dtype = np.dtype(spec.dtype)
        fixed = all(d is not None for d in spec.shape)
        # A fully static shape is known now; a dynamic one is learnt from the first good feed.
        self.shape: tuple[int, ...] | None = (
            tuple(d for d in spec.shape if d is not None) if fixed else None
        )


class OnnxSession(SessionBase):
    """An ONNX model on onnxruntime's CPU execution provider (see :class:`~.backend.Session`).

    One run at a time: the agent serializes calls to a model. ``adapter``: an ONNX Runtime
    adapter file whose tensors replace the model's overridable initializers on every run (a
    LoRA base's zero-default ``lora_A``/``lora_B`` inputs); :func:`.lora_adapter.load_adapted`
    checks that it was trained for this base before it comes here.
    """

    runtime: str = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: RuntimeSettings | None = None,
        adapter: str | os.PathLike[str] | None = None,
    ) -> None:
        ort = _onnxruntime()
        self.path: str = os.fspath(path)
        self.settings = settings = settings or RuntimeSettings()
        if settings.threads < 1:
            raise ModelError(f"{self.path}: threads must be at least 1, not {settings.threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[settings.graph_optimization]
        )
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if settings.spin else "0"
        )
        # Errors only: a LoRA base's overridable initializers (its adapter inputs) make ORT
        # print one warning per input on stderr at every load; failures still raise.
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                self.path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.ort_session: Any = session
        """The underlying ``onnxruntime.InferenceSession``."""
        self.adapter: str | None = None if adapter is None else os.fspath(adapter)
        """The active adapter's file, if any."""
        self._run_options: Any = None
        self._lora: Any = None  # kept alive: the run options point at it
        if adapter is not None:
            self._run_options = ort.RunOptions()
            try:
                lora = ort.LoraAdapter()
                lora.Load(os.fspath(adapter))
                self._run_options.add_active_adapter(lora)
                self._lora = lora
            except Exception as exc:  # onnxruntime raises RuntimeError for a bad file
                raise ModelError(f"cannot load adapter {self.adapter}: {exc}") from exc
        self._inputs = tuple(_spec(a) for a in session.get_inputs())
        self._outputs = tuple(_spec(a) for a in session.get_outputs())
        self._label = os.path.basename(self.path)
        self._slots = tuple(_Slot(s) for s in self._inputs)
        self._n_inputs = len(self._slots)
        self._output_names = [s.name for s in self._outputs]
        self._single_output = self._output_names[0] if len(self._output_names) == 1 else None
        self._run = session.run
        self._window = LatencyWindow()
        self._runs = 0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        start = perf_counter()
        try:
            ok = len(feeds) == self._n_inputs
            if ok:
                for slot in self._slots:
                    value = feeds[slot.name]
                    if value.dtype is not slot.dtype or value.shape != slot.shape:
                        ok = False
                        break
        except (KeyError, AttributeError, TypeError):
            ok = False
        if not ok:
            self._accept(feeds)
        try:
            values = self._run(self._output_names, feeds, self._run_options)
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelError(f"{self._label}: onnxruntime failed: {exc}") from exc
        self._runs += 1
        self._window.add(perf_counter() - start)
        if self._single_output is not None:  # the common case, without dict(zip(...))'s cost
            return {self._single_output: values[0]}
        return dict(zip(self._output_names, values, strict=True))

    def _accept(self, feeds: Any) -> None:
        """The slow path: check everything (raising ModelError) and remember the new shapes."""
        check_feeds(self._label, self._inputs, feeds)
        for slot in self._slots:
            slot.shape = feeds[slot.name].shape
