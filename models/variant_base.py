"""What every variant builder shares: the :class:`Built` record, the precision and runtime names,
reading and writing ONNX files with our errors, and the sizes a card reports.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .mlp import OptimizeError, require

if TYPE_CHECKING:
    import onnx

Precision = Literal["fp32", "int8"]
VariantRuntime = Literal["onnxruntime", "litert"]


@dataclass(frozen=True, slots=True)
class Built:
    """One candidate model, or the reason it could not be built."""

    name: str
    technique: str
    precision: Precision
    runtime: VariantRuntime
    path: Path | None
    params: int | None = None
    """Weights and biases in the fp32 model the variant was made from (quantization keeps it)."""
    base: str | None = None
    """The fp32 variant an int8 variant was quantized from (the "slower than fp32" rule)."""
    notes: tuple[str, ...] = ()
    skipped: str | None = None


def load_onnx(path: Path) -> onnx.ModelProto:
    onnx_module = require("onnx")
    try:
        model: onnx.ModelProto = onnx_module.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OptimizeError(f"{path}: not an ONNX model ({exc})") from exc
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    onnx_module = require("onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_module.save(model, str(path))
    return path


def count_params(model: onnx.ModelProto) -> int:
    """Elements of float initializers (weights and biases)."""
    from onnx import TensorProto

    total = 0
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            n = 1
            for d in t.dims:
                n *= int(d)
            total += n
    return total


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def build_fp32(src: Path, out: Path) -> Built:
    model = load_onnx(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    return Built("fp32", "the model as given", "fp32", "onnxruntime", out, count_params(model))
