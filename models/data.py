"""The optimizer's inputs: a model's signature, its calibration and evaluation data files, the
metric to judge it by, and the file facts (hashes, portable paths) its cards record.

Shared by :func:`~edgeagent.models.optimize.optimize` and :func:`~edgeagent.models.bench.bench`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import TensorSpec
from .card import DataFile
from .mlp import OptimizeError, graph_inputs, require
from .quality import METRICS

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

#: A progress callback: one line of text per step.
Progress = Callable[[str], None]

_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    10: "float16",
    11: "float64",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    wanted = set(graph_inputs(model))
    specs = []
    for value in model.graph.input:
        if value.name not in wanted:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dims, _ONNX_DTYPES.get(tensor.elem_type, "?")))
    return specs


def model_outputs(model: onnx.ModelProto) -> list[str]:
    out = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dims = ", ".join(
            str(d.dim_value) if d.HasField("dim_value") else "?" for d in tensor.shape.dim
        )
        out.append(f"{value.name}: {_ONNX_DTYPES.get(tensor.elem_type, '?')}[{dims}]")
    return out


def load_data(
    path: Path, role: str, inputs: Sequence[TensorSpec], *, labels: bool
) -> tuple[dict[str, npt.NDArray[Any]], DataFile]:
    """Read a calibration or evaluation ``.npz``; its arrays must be named after the inputs."""
    np = require("numpy")
    option = "--eval" if role == "evaluation" else "--calibration"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"{option} {path}: not a readable .npz file ({exc})") from exc
    expected = ", ".join(str(s) for s in inputs)
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names and not (labels and k.startswith("labels"))]
    if missing or extra:
        raise OptimizeError(
            f"{option} {path}: arrays {sorted(arrays) or '(none)'} do not match the model's "
            f"inputs ({expected})"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + ("; plus `labels` for evaluation" if labels else "")
        )
    if labels and "labels" not in arrays:
        raise OptimizeError(
            f"--eval {path}: no `labels` array (arrays: {sorted(arrays)}); an evaluation file "
            f"holds the inputs ({expected}) and `labels`"
        )
    counts = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise OptimizeError(f"{option} {path}: arrays differ in sample count: {counts}")
    for spec in inputs:
        a = arrays[spec.name]
        fixed = spec.shape[1:]
        if a.ndim != len(spec.shape) or any(
            w is not None and w != g for w, g in zip(fixed, a.shape[1:], strict=False)
        ):
            raise OptimizeError(
                f"{option} {path}: array {spec.name!r} is shaped {a.shape}; the model expects "
                f"{spec} (first dimension: samples)"
            )
        if a.dtype.kind == "f" and spec.dtype.startswith("float"):
            arrays[spec.name] = a.astype(spec.dtype, copy=False)
        elif a.dtype.name != spec.dtype:
            raise OptimizeError(
                f"{option} {path}: array {spec.name!r} is {a.dtype}; the model expects {spec}"
            )
    info = DataFile(
        path=shown(path),
        sha256=sha256(path),
        samples=next(iter(counts.values())),
        arrays={k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()},
    )
    return arrays, info


def choose_metric(
    requested: str | None, model_path: Path, labels: npt.NDArray[Any] | None
) -> tuple[str | None, str]:
    if labels is None:
        return None, "no evaluation set"
    if requested:
        if requested not in METRICS:
            raise OptimizeError(f"unknown metric {requested!r}; known: {', '.join(METRICS)}")
        return requested, "--metric"
    card = model_path.parent / "card.json"
    if card.is_file():
        try:
            named = json.loads(card.read_text()).get("metric")
        except (ValueError, AttributeError):
            named = None
        if isinstance(named, str) and named in METRICS:
            return named, f"named by {card}"
    if labels.dtype.kind in "iub":
        return "accuracy", "integer labels: accuracy of the first output's argmax"
    return "mae", "numeric labels: mean absolute error of the first output"


def shown(path: Path) -> str:
    """``path`` relative to the working directory when under it: cards stay portable."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
