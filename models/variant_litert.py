"""LiteRT variants, written without TensorFlow, for devices that run the LiteRT interpreter: an
MLP chain's weights as a ``.tflite`` file (:mod:`edgeagent.models.tflite_writer`); other graphs
(conv nets) through the ONNX converter (:mod:`edgeagent.models.tflite_conv`), which also makes the
full-integer int8 variant. The converter keeps the ONNX model's input layout (NCHW).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import ModelError
from .mlp import MLPChain, OptimizeError, read_mlp_chain, require
from .variant_base import Built, Precision, count_params, load_onnx

if TYPE_CHECKING:
    import numpy.typing as npt

CALIBRATION_SAMPLES = 128
"""At most this many calibration inputs set the int8 ranges (min/max saturates well before)."""


def build_litert(
    src: Path, out: Path, *, name: str = "litert-fp32", chain: MLPChain | None = None
) -> Built:
    """Write the MLP chain's weights as a .tflite file (``write_mlp_tflite``)."""
    technique = "LiteRT (TFLite flatbuffer), fp32 weights"
    if chain is None:
        found = read_mlp_chain(load_onnx(src))
        if isinstance(found, str):
            return _convert(src, out, name, technique, None)
        chain = found
    try:
        writer = require("edgeagent.models.tflite_writer")
    except OptimizeError as exc:
        return Built(name, technique, "fp32", "litert", None, skipped=str(exc))
    acts = [d.activation for d in chain.layers]
    softmax = acts[-1] == "softmax"
    if softmax:
        acts[-1] = None
    unsupported = sorted({a for a in acts if a not in (None, "relu")})
    if unsupported:
        skip = f"the LiteRT writer fuses ReLU only, not {', '.join(map(str, unsupported))}"
        return Built(name, technique, "fp32", "litert", None, skipped=skip)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_mlp_tflite(
            [(d.weight.T.copy(), d.bias.copy()) for d in chain.layers],
            ["none" if a is None else a for a in acts],
            out,
            input_name=chain.input,
            output_name=chain.output,
            softmax=softmax,
        )
    except (ValueError, ModelError) as exc:
        return Built(name, technique, "fp32", "litert", None, skipped=f"writer refused: {exc}")
    return Built(
        name,
        technique,
        "fp32",
        "litert",
        out,
        chain.params,
        notes=("weights copied from the ONNX model; runs on the LiteRT interpreter",),
    )


def build_litert_int8(
    src: Path, out: Path, calibration: Mapping[str, npt.NDArray[Any]], *, name: str = "litert-int8"
) -> Built:
    """Full-integer int8 ``.tflite`` (float input and output), calibrated on ``calibration``."""
    technique = (
        "LiteRT (TFLite flatbuffer), int8: per-channel int8 conv weights, int8 activations "
        "(MinMax calibration), float input/output"
    )
    return _convert(src, out, name, technique, calibration)


def _convert(
    src: Path,
    out: Path,
    name: str,
    technique: str,
    calibration: Mapping[str, npt.NDArray[Any]] | None,
) -> Built:
    """Any graph the ONNX converter lowers; its refusal (naming the op) is the skip reason."""
    precision: Precision = "fp32" if calibration is None else "int8"
    try:
        conv = require("edgeagent.models.tflite_conv")
        conv.onnx_to_tflite(src, out, calibration=calibration, max_samples=CALIBRATION_SAMPLES)
    except (OptimizeError, ModelError) as exc:
        return Built(name, technique, precision, "litert", None, skipped=str(exc))
    notes = ["converted from the ONNX graph; input layout as in the ONNX model (NCHW)"]
    if calibration is not None:
        n = min(CALIBRATION_SAMPLES, *(len(v) for v in calibration.values()))
        notes.append(f"calibrated on {n} samples")
    return Built(
        name, technique, precision, "litert", out, count_params(load_onnx(src)), notes=tuple(notes)
    )
