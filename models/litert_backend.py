"""LiteRT (TensorFlow Lite) backend: :class:`LiteRTSession` runs a ``.tflite`` file.

The interpreter comes from ``ai_edge_litert`` (works with numpy 2) or, failing that, from
``tflite_runtime`` (2.14 and older break with numpy 2); either is imported when a session is
created, not when this module is.
"""

from __future__ import annotations

import importlib
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..stats import LatencyWindow
from ._session import SessionBase, check_feeds
from .backend import ModelError, RuntimeMissing, RuntimeSettings, TensorSpec

try:
    import numpy as np
except ModuleNotFoundError as exc:  # numpy comes with the extra
    raise RuntimeMissing("numpy is not installed: pip install 'edgeagent[tflite]'") from exc

if TYPE_CHECKING:
    from .backend import Array

EXTRA = "pip install 'edgeagent[tflite]'"

INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
"""Where to find ``Interpreter``, in order of preference."""


def _interpreter_class() -> Any:
    """The first importable ``Interpreter`` class of :data:`INTERPRETER_MODULES`."""
    failures: list[str] = []
    for name in INTERPRETER_MODULES:
        try:
            return importlib.import_module(name).Interpreter
        except ModuleNotFoundError:
            failures.append(f"{name} is not installed")
        except (ImportError, AttributeError) as exc:  # installed but broken (numpy ABI, …)
            failures.append(f"{name} cannot be imported ({exc})")
    raise RuntimeMissing(f"LiteRT is not available ({'; '.join(failures)}): {EXTRA}")


def _spec(details: dict[str, Any]) -> TensorSpec:
    """A TensorSpec from interpreter tensor details; -1 in ``shape_signature`` becomes None."""
    signature = details.get("shape_signature")
    dims = details["shape"] if signature is None or len(signature) == 0 else signature
    if len(dims) == 0:
        dims = details["shape"]
    return TensorSpec(
        name=str(details["name"]),
        shape=tuple(None if int(d) < 0 else int(d) for d in dims),
        dtype=np.dtype(details["dtype"]).name,
    )


class _Slot:
    """One input: tensor index, dtype, and the shape the interpreter is allocated for."""

    __slots__ = ("dtype", "index", "name", "shape")

    def __init__(self, details: dict[str, Any]) -> None:
        self.name = str(details["name"])
        self.index = int(details["index"])
        self.dtype = np.dtype(details["dtype"])
        self.shape = tuple(int(d) for d in details["shape"])


class LiteRTSession(SessionBase):
    """A TFLite model on the LiteRT interpreter (see :class:`~.backend.Session`).

    ``settings.threads`` becomes the interpreter's ``num_threads``; ``spin`` and
    ``graph_optimization`` are ONNX Runtime settings and do not apply. A feed whose dynamic
    dimensions (e.g. the batch) differ from the allocated shape resizes the input and
    reallocates, once per change of shape. One run at a time: the interpreter is not reentrant.
    """

    runtime: str = "litert"

    def __init__(
        self, path: str | os.PathLike[str], settings: RuntimeSettings | None = None
    ) -> None:
        interpreter_class = _interpreter_class()
        self.path: str = os.fspath(path)
        self.settings = settings = settings or RuntimeSettings()
        if settings.threads < 1:
            raise ModelError(f"{self.path}: threads must be at least 1, not {settings.threads}")
        try:
            interpreter = interpreter_class(model_path=self.path, num_threads=settings.threads)
            interpreter.allocate_tensors()
            input_details = interpreter.get_input_details()
            output_details = interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load TFLite model {self.path}: {exc}") from exc
        self.interpreter: Any = interpreter
        """The underlying LiteRT ``Interpreter``."""
        self._inputs = tuple(_spec(d) for d in input_details)
        self._outputs = tuple(_spec(d) for d in output_details)
        self._label = os.path.basename(self.path)
        self._slots = tuple(_Slot(d) for d in input_details)
        self._n_inputs = len(self._slots)
        self._fetch = tuple((str(d["name"]), int(d["index"])) for d in output_details)
        # Bound methods of the Python wrapper (never of its private native object: holding one
        # would make the wrapper's "no outstanding buffer references" check fail).
        self._set_tensor = interpreter.set_tensor
        self._invoke = interpreter.invoke
        self._get_tensor = interpreter.get_tensor
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
        set_tensor = self._set_tensor
        try:
            ok = len(feeds) == self._n_inputs
            if ok:
                for slot in self._slots:
                    value = feeds[slot.name]
                    if value.dtype is not slot.dtype or value.shape != slot.shape:
                        ok = False
                        break
                    set_tensor(slot.index, value)
        except (KeyError, AttributeError, TypeError):
            ok = False
        try:
            if not ok:
                self._accept(feeds)
                for slot in self._slots:
                    set_tensor(slot.index, feeds[slot.name])
            self._invoke()
            get_tensor = self._get_tensor
            if len(self._fetch) == 1:  # the common case, without a comprehension's cost
                ((name, index),) = self._fetch
                result = {name: get_tensor(index)}
            else:
                result = {name: get_tensor(index) for name, index in self._fetch}
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self._label}: LiteRT failed: {exc}") from exc
        self._runs += 1
        self._window.add(perf_counter() - start)
        return result

    def _accept(self, feeds: Any) -> None:
        """The slow path: check everything (raising ModelError); resize inputs whose dynamic
        dimensions changed and reallocate."""
        check_feeds(self._label, self._inputs, feeds)
        resized = False
        try:
            for slot in self._slots:
                shape = tuple(feeds[slot.name].shape)
                if shape != slot.shape:
                    self.interpreter.resize_tensor_input(slot.index, list(shape), strict=True)
                    slot.shape = shape
                    resized = True
        finally:
            if resized:
                self.interpreter.allocate_tensors()
