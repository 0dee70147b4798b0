"""Count the :class:`~edgeagent.devices.workload.Workload` of a ``.tflite`` file at batch 1.

The same classes and rules as :mod:`.workload_onnx`, read from the TFLite flatbuffer with the
schema ``ai_edge_litert`` ships (``schema_py_generated``, object API):

- ``CONV_2D``: weight elements × output positions; 1×1 → pointwise (one position: fc), else
  conv. ``DEPTHWISE_CONV_2D`` → depthwise. ``TRANSPOSE_CONV``: weight elements × input
  positions, conv;
- ``FULLY_CONNECTED``/``BATCH_MATMUL``: one output row → ``fc_mweights`` (K × N), else pointwise;
- free: views and conversions an int8 runtime fuses (:data:`FREE_OPS`); activations are already
  fused into their producers in this format (``fused_activation_function``), as in ncnn;
- every other op: its output elements and a node; op names outside :data:`KNOWN_OPS` are listed
  in ``unknown_ops``.

The workload is int8 when a convolution's or fully connected layer's weights are int8. Only the
first subgraph (the model's ``main``) is counted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..devices.workload import Workload
from .backend import ModelError
from .tflite_writer import _schema

__all__ = ["FREE_OPS", "KNOWN_OPS", "TfliteCountError", "count_tflite"]

MAX_TFLITE_BYTES = 2**31
"""FlatBuffers cannot address more than 2 GiB: anything larger is not a ``.tflite`` file."""

FREE_OPS = frozenset(
    {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "SHAPE"}
)  # fmt: skip
"""Ops that move no data at inference, or conversions an int8 runtime fuses: never nodes."""

KNOWN_OPS = frozenset(
    {"ADD", "SUB", "MUL", "DIV", "RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH",
     "HARD_SWISH", "LEAKY_RELU", "PRELU", "SOFTMAX", "LOG_SOFTMAX", "AVERAGE_POOL_2D",
     "MAX_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD",
     "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE", "STRIDED_SLICE", "SLICE",
     "SPLIT", "SPLIT_V", "GATHER", "CAST", "EXP", "LOG", "SQRT", "RSQRT", "POW",
     "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM", "GELU", "ELU", "L2_NORMALIZATION", "TILE",
     "PACK", "UNPACK",
     "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "ARG_MAX", "ABS", "NEG", "SELECT", "SELECT_V2"}
)  # fmt: skip
"""Op names whose cost is fairly their output size (plus :data:`FREE_OPS` and the matrix ops)."""

_INT8 = 9  # TensorType.INT8
_WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"})


class TfliteCountError(ModelError):
    """A ``.tflite`` file cannot be read or has no graph to count."""


def count_tflite(path: str | Path) -> Workload:
    """Count a ``.tflite`` file's first subgraph at batch 1 (dynamic dimensions as 1)."""
    schema = _schema()
    p = Path(path)
    try:
        if p.stat().st_size > MAX_TFLITE_BYTES:
            raise TfliteCountError(f"{p}: larger than 2 GiB: not a .tflite file")
        data = p.read_bytes()
    except OSError as exc:
        raise TfliteCountError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # flatbuffers raises assorted errors on a corrupt buffer
        raise TfliteCountError(f"{p}: not a TFLite flatbuffer: {exc}") from exc
    if not model.subgraphs:
        raise TfliteCountError(f"{p}: no subgraph")
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if name.isupper()}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes or []]
    return _count(model.subgraphs[0], [names.get(c, f"OP_{c}") for c in codes])


def _shape(tensor: Any) -> list[int]:
    return [max(int(d), 1) for d in (tensor.shape if tensor.shape is not None else [])]


def _count(graph: Any, op_names: list[str]) -> Workload:
    tensors = graph.tensors or []
    conv = pointwise = depthwise = fc = elements = 0.0
    nodes, int8 = 0, False
    unknown: set[str] = set()
    for op in graph.operators or []:
        name = op_names[op.opcodeIndex]
        if name in FREE_OPS:
            continue
        nodes += 1
        inputs = [tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outputs = [tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        if name in _WEIGHTED_OPS and len(inputs) > 1:
            int8 = int8 or inputs[1].type == _INT8  # the weights are input 1 of each
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(inputs) > 1 and outputs:
            weight, out = _shape(inputs[1]), _shape(outputs[0])
            positions = math.prod(out[1:-1])
            macs = math.prod(weight) * positions
            if name == "DEPTHWISE_CONV_2D":
                depthwise += macs
            elif all(k == 1 for k in weight[1:-1]):
                if positions == 1:  # one position: a matrix-vector product
                    fc += macs
                else:
                    pointwise += macs
            else:
                conv += macs
        elif name == "TRANSPOSE_CONV" and len(inputs) > 2:
            # inputs: output shape, weights [O, kh, kw, I], activations
            conv += math.prod(_shape(inputs[1])) * math.prod(_shape(inputs[2])[1:-1])
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL") and len(inputs) > 1 and outputs:
            out = _shape(outputs[0])
            k = _shape(inputs[0])[-1]
            n = out[-1] if out else 1
            rows = math.prod(out) // n if n else 0
            if rows <= 1:
                fc += k * n
            else:
                pointwise += rows * k * n
        else:
            if name not in KNOWN_OPS:
                unknown.add(name)
            elements += sum(math.prod(_shape(t)) for t in outputs)
    return Workload.counted(
        conv=conv,
        pointwise=pointwise,
        depthwise=depthwise,
        fc=fc,
        elements=elements,
        nodes=nodes,
        precision="int8" if int8 else "fp32",
        unknown_ops=unknown,
    )
