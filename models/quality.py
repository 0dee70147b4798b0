"""Quality of a variant: the evaluation metrics, the loss against fp32 in the budget's unit, and
the fidelity of its outputs to fp32's. Pure numpy (imported when called), no runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .card import Fidelity
from .mlp import OptimizeError

if TYPE_CHECKING:
    import numpy.typing as npt

METRICS: dict[str, Literal["higher", "lower"]] = {
    "accuracy": "higher",
    "mae": "lower",
    "rmse": "lower",
}
"""Evaluation metrics: ``accuracy`` (argmax of the first output against integer ``labels``) and
two for numeric outputs (``mae``, ``rmse`` against ``labels`` of the output's shape)."""


def unit_for(metric: str | None, accuracy_checked: bool) -> str:
    """What a budget of ``1.0`` means for this metric."""
    if accuracy_checked and metric == "accuracy":
        return "points of accuracy"
    if accuracy_checked and metric is not None:
        return f"% relative increase of {metric}"
    return "points of top-1 disagreement with fp32"


def metric_value(metric: str, output: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float:
    import numpy as np

    if metric == "accuracy":
        if output.ndim < 2:
            raise OptimizeError(
                f"accuracy needs class scores, but the first output is {output.shape}"
            )
        return float((output.reshape(len(output), -1).argmax(axis=1) == labels.ravel()).mean())
    diff = output.astype(np.float64).reshape(labels.shape) - labels.astype(np.float64)
    if metric == "mae":
        return float(np.abs(diff).mean())
    if metric == "rmse":
        return float(np.sqrt((diff**2).mean()))
    raise OptimizeError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def quality_drop(metric: str, reference: float, value: float) -> float:
    """Loss against fp32 in the unit :func:`unit_for` names (negative: better than fp32)."""
    if METRICS[metric] == "higher":
        return round((reference - value) * 100, 6)
    return round((value - reference) / max(abs(reference), 1e-12) * 100, 6)


def fidelity(reference: npt.NDArray[Any], output: npt.NDArray[Any], data: str) -> Fidelity:
    import numpy as np

    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = output.astype(np.float64).reshape(len(output), -1)
    if ref.shape != out.shape:
        raise OptimizeError(f"output shape {output.shape} differs from fp32's {reference.shape}")
    diff = np.abs(ref - out)
    agree = None
    if ref.shape[1] > 1:
        agree = float((ref.argmax(axis=1) == out.argmax(axis=1)).mean())
    return Fidelity(
        data=data,
        samples=len(ref),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agree,
    )
