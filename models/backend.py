"""The inference interface: one small protocol, implemented for ONNX Runtime and LiteRT.

::

    session = load_model("digits.onnx", RuntimeSettings(threads=1))
    session.inputs      # (TensorSpec(name="x", shape=(1, 64), dtype="float32"),)
    out = session.run({"x": batch})          # {"logits": array}
    session.statistics()

Runtimes are imported lazily: the agent starts on a device that has only one of them, and a
missing runtime is a :class:`RuntimeMissing` naming the extra to install. A bad model file, or an
input of the wrong name, shape or dtype, is a :class:`ModelError` naming the expected signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ..errors import EdgeAgentError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Array = npt.NDArray[np.generic]


class ModelError(EdgeAgentError):
    """A model file cannot be loaded, or an input does not match the model's signature."""


class RuntimeMissing(ModelError):
    """The runtime a model needs is not installed; the message names the extra to install."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: name, shape (None for a dynamic dimension) and numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """How to run a model; the device profile supplies the defaults."""

    threads: int = 1
    spin: bool = False
    """Let idle threads spin (ORT intra-op spinning): faster for big models, wasteful for tiny."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class Session(Protocol):
    """A loaded model."""

    runtime: str
    path: str

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run once; checks names, shapes and dtypes first. Thread-safe for one caller."""

    def warmup(self, runs: int = 5) -> None:
        """Run on zeros of the input signature (dynamic dims as 1)."""

    def statistics(self) -> SessionStatistics: ...
