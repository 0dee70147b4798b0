"""A small TFLite graph in memory (tensors, operators) and its flatbuffer writer.

:mod:`.tflite_conv` lowers an ONNX conv net into a :class:`Graph`; :mod:`.tflite_conv_quant`
rewrites it to int8; :func:`write_graph` packs it with the schema's object API (the same one
:mod:`.tflite_writer` uses for MLPs, and its helpers). Kept apart so that the lowering rules,
the quantization rules and the file format are each read on their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .tflite_writer import _schema, aligned_buffer_type, write_model


@dataclass(slots=True)
class Quant:
    """Affine quantization: ``real = scale * (q - zero_point)``, per channel along ``axis``."""

    scale: npt.NDArray[np.float64]
    zero_point: npt.NDArray[np.int64]
    axis: int = 0


@dataclass(slots=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    """With the batch as 1 when ``batched``; the signature writes it as -1 (dynamic)."""
    dtype: str = "FLOAT32"
    """A ``TensorType`` name: FLOAT32, INT8, INT32."""
    data: npt.NDArray[Any] | None = None
    """The value of a constant; None for activations."""
    batched: bool = False
    quant: Quant | None = None


@dataclass(slots=True)
class Op:
    code: str
    """A ``BuiltinOperator`` name, e.g. CONV_2D."""
    inputs: list[str]
    outputs: list[str]
    options: str | None = None
    """A ``BuiltinOptions`` name, e.g. Conv2DOptions; its fields are in ``params``."""
    params: dict[str, Any] = field(default_factory=dict)
    weight_axis: int | None = None
    """For CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: the output-channel axis of input 1."""


@dataclass(slots=True)
class Graph:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)
    """Activation tensor -> the ONNX tensor whose values it holds (for calibration ranges)."""
    ties: list[tuple[str, str]] = field(default_factory=list)
    """Pairs that must share quantization (TFLite int8 kernels for transpose, reshape, pad,
    pooling and concatenation do not rescale)."""

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        dtype = {"float32": "FLOAT32", "int32": "INT32", "int8": "INT8"}[value.dtype.name]
        self.tensors[name] = Tensor(name, tuple(value.shape), dtype, value)
        return name

    def activation(self, name: str, shape: tuple[int, ...], batched: bool, src: str) -> str:
        self.tensors[name] = Tensor(name, shape, batched=batched)
        if src:
            self.source[name] = src
        return name

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        return op


_ENUM_FIELDS = {"padding": "Padding", "fusedActivationFunction": "ActivationFunctionType"}


def write_graph(graph: Graph, path: str | os.PathLike[str], description: str) -> Path:
    """Pack ``graph`` as a ``.tflite`` file (one subgraph, a serving_default signature)."""
    schema = _schema()
    aligned_buffer = aligned_buffer_type(schema)
    buffers: list[Any] = [schema.BufferT()]
    index: dict[str, int] = {}
    tensors: list[Any] = []
    for t in graph.tensors.values():
        buffer = 0
        if t.data is not None:
            raw = np.ascontiguousarray(t.data).tobytes()
            buffers.append(aligned_buffer(data=np.frombuffer(raw, dtype=np.uint8)))
            buffer = len(buffers) - 1
        quant = None
        if t.quant is not None:
            quant = schema.QuantizationParametersT(
                scale=[float(s) for s in t.quant.scale],
                zeroPoint=[int(z) for z in t.quant.zero_point],
                quantizedDimension=t.quant.axis,
            )
        signature = None
        if t.batched and t.data is None:
            signature = [-1, *t.shape[1:]]
        index[t.name] = len(tensors)
        tensors.append(
            schema.TensorT(
                shape=list(t.shape),
                shapeSignature=signature,
                type=getattr(schema.TensorType, t.dtype),
                buffer=buffer,
                name=t.name,
                quantization=quant,
                hasRank=True,
            )
        )
    codes: list[str] = []
    operators: list[Any] = []
    for op in graph.ops:
        if op.code not in codes:
            codes.append(op.code)
        options = None
        if op.options is not None:
            options = getattr(schema, f"{op.options}T")()
            for key, value in op.params.items():
                if key in _ENUM_FIELDS:
                    value = getattr(getattr(schema, _ENUM_FIELDS[key]), value)
                setattr(options, key, value)
        operators.append(
            schema.OperatorT(
                opcodeIndex=codes.index(op.code),
                inputs=[index[n] if n else -1 for n in op.inputs],
                outputs=[index[n] for n in op.outputs],
                builtinOptionsType=(
                    0 if op.options is None else getattr(schema.BuiltinOptions, op.options)
                ),
                builtinOptions=options,
            )
        )
    operator_codes = []
    for name in codes:
        code = getattr(schema.BuiltinOperator, name)
        operator_codes.append(
            schema.OperatorCodeT(
                deprecatedBuiltinCode=min(code, 127),
                builtinCode=code,
                version=_version(name, graph),
            )
        )
    subgraph = schema.SubGraphT(
        tensors=tensors,
        inputs=[index[n] for n in graph.inputs],
        outputs=[index[n] for n in graph.outputs],
        operators=operators,
        name="main",
    )
    return write_model(
        schema,
        path,
        subgraph=subgraph,
        operator_codes=operator_codes,
        buffers=buffers,
        description=description,
        inputs={n: index[n] for n in graph.inputs},
        outputs={n: index[n] for n in graph.outputs},
    )


_INT8_VERSIONS = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "ADD": 2,
    "MUL": 2,
    "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2,
    "MEAN": 2,
    "SOFTMAX": 2,
    "LOGISTIC": 2,
    "RESHAPE": 1,
    "TRANSPOSE": 2,
    "PAD": 2,
    "PADV2": 2,
    "CONCATENATION": 2,
    "QUANTIZE": 2,
    "DEQUANTIZE": 2,
}
"""Operator versions as the TFLite converter writes them for int8 kernels (per-channel weights
need version 3 of the convolutions); float graphs use version 1."""


def _version(code: str, graph: Graph) -> int:
    int8 = any(t.dtype == "INT8" for t in graph.tensors.values())
    return _INT8_VERSIONS.get(code, 1) if int8 else 1
