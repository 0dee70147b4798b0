"""int8 variants with onnxruntime.quantization: static (QDQ, calibrated) and dynamic.

Dynamic quantization is skipped for graphs with convolutions (ConvInteger is several times
slower than fp32 there); static needs calibration data and never guesses it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mlp import batch_dim, graph_inputs, has_conv, require
from .variant_base import Built, count_params, load_onnx

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

    Arrays = Mapping[str, npt.NDArray[Any]]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it out of our output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, work: Path) -> Path:
    shape_inference = require("onnxruntime.quantization.shape_inference")
    pre = work / f"{src.stem}.pre.onnx"
    if not pre.exists():
        with _quiet_quantizer():
            shape_inference.quant_pre_process(str(src), str(pre))
    return pre


def _calibration_batches(
    model: onnx.ModelProto, calibration: Arrays
) -> list[dict[str, npt.NDArray[Any]]]:
    names = graph_inputs(model)
    n = len(calibration[names[0]])
    step = 32 if batch_dim(model) != 1 else 1
    return [{name: calibration[name][i : i + step] for name in names} for i in range(0, n, step)]


def build_int8_static(
    src: Path, out: Path, calibration: Arrays, work: Path, *, name: str = "int8-static"
) -> Built:
    q = require("onnxruntime.quantization")
    model = load_onnx(src)
    batches = _calibration_batches(model, calibration)

    reader_base: Any = q.CalibrationDataReader

    class Reader(reader_base):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
            return next(self._it, None)

    pre = _preprocess(src, work)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_quantizer():
        q.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
        )
    n = sum(len(next(iter(b.values()))) for b in batches)
    return Built(
        name,
        "int8 static: QDQ, per-channel int8 weights, int8 activations (MinMax calibration)",
        "int8",
        "onnxruntime",
        out,
        count_params(model),
        notes=(f"calibrated on {n} samples",),
    )


def build_int8_dynamic(src: Path, out: Path, work: Path) -> Built:
    technique = "int8 dynamic: int8 weights, activations quantized at run time"
    model = load_onnx(src)
    if has_conv(model):
        return Built(
            "int8-dynamic",
            technique,
            "int8",
            "onnxruntime",
            None,
            skipped="the graph has convolutions: dynamic quantization (ConvInteger) is several "
            "times slower than fp32 there; int8-static is the int8 variant for it",
        )
    q = require("onnxruntime.quantization")
    pre = _preprocess(src, work)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_quantizer():
        q.quantize_dynamic(str(pre), str(out), weight_type=q.QuantType.QInt8)
    return Built("int8-dynamic", technique, "int8", "onnxruntime", out, count_params(model))
