"""LiteRT variants: an MLP chain's weights written as a ``.tflite`` file, without TensorFlow
(:mod:`edgeagent.models.tflite_writer`), for devices that run the LiteRT interpreter.
"""

from __future__ import annotations

from pathlib import Path

from .backend import ModelError
from .mlp import MLPChain, OptimizeError, read_mlp_chain, require
from .variant_base import Built, load_onnx


def build_litert(
    src: Path, out: Path, *, name: str = "litert-fp32", chain: MLPChain | None = None
) -> Built:
    """Write the MLP chain's weights as a .tflite file (``write_mlp_tflite``)."""
    technique = "LiteRT (TFLite flatbuffer), fp32 weights"
    if chain is None:
        found = read_mlp_chain(load_onnx(src))
        if isinstance(found, str):
            skip = f"the LiteRT writer handles MLP chains only: {found}"
            return Built(name, technique, "fp32", "litert", None, skipped=skip)
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
