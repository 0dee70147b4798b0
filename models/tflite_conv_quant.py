"""Full-integer int8 quantization of a lowered TFLite graph (:mod:`.tflite_conv`).

Calibration runs the float ONNX model on onnxruntime with every intermediate tensor as an
output, over at most ``max_samples`` calibration inputs, and keeps each tensor's min/max.
Then, as the TFLite converter does:

- activations: int8, asymmetric, per tensor, from the calibrated range widened to include 0;
  tensors that TFLite's int8 kernels pass through without rescaling (transpose, reshape, pad,
  pooling, concatenation) share one range; SOFTMAX and LOGISTIC outputs are fixed at 1/256, -128;
- conv weights: int8 symmetric per output channel (axis 0 for CONV_2D, 3 for DEPTHWISE_CONV_2D);
  fully connected weights per tensor (what every LiteRT version's kernel accepts);
- biases: int32 with scale ``input_scale * weight_scale`` (per channel), zero point 0;
- the float inputs go through QUANTIZE and the outputs through DEQUANTIZE, so callers feed and
  read the same floats as with the fp32 model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import ModelError
from .mlp import require
from .tflite_graph import Graph, Op, Quant, Tensor

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

Ranges = dict[str, tuple[float, float]]
BATCH = 16
"""Calibration inputs per onnxruntime run (when the batch is dynamic)."""
FIXED_OUTPUT = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128)}


def calibrate(
    model: onnx.ModelProto, calibration: Mapping[str, npt.NDArray[Any]], max_samples: int
) -> Ranges:
    """min/max of every tensor of ``model`` over the first ``max_samples`` calibration inputs."""
    onnx_module = require("onnx")
    ort = require("onnxruntime")
    inferred = onnx_module.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ModelError(f"calibration data has no array for input(s) {', '.join(missing)}")
    n = min(max_samples, *(len(calibration[k]) for k in names))
    if n < 1:
        raise ModelError("calibration data is empty")
    known = {o.name for o in g.output}
    for vi in g.value_info:
        if vi.name not in known and vi.type.tensor_type.elem_type == onnx_module.TensorProto.FLOAT:
            g.output.append(vi)
            known.add(vi.name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        inferred.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    dims = g.input[0].type.tensor_type.shape.dim
    step = 1 if dims and dims[0].HasField("dim_value") else BATCH
    ranges: Ranges = {}
    for start in range(0, n, step):
        feeds = {k: np.asarray(calibration[k][start : min(n, start + step)]) for k in names}
        values = session.run(outputs, feeds)
        for name, v in [*zip(outputs, values, strict=True), *feeds.items()]:
            lo, hi = float(np.min(v)), float(np.max(v))
            if name in ranges:
                lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
            ranges[name] = (lo, hi)
    return ranges


def _groups(graph: Graph) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for a, b in graph.ties:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    return {name: find(name) for name in graph.tensors}


def _affine(lo: float, hi: float) -> Quant:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255, 1e-8)
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant(np.array([scale]), np.array([zp]))


def _activation_quant(graph: Graph, ranges: Ranges) -> dict[str, Quant]:
    group = _groups(graph)
    span: dict[str, tuple[float, float]] = {}
    for name, t in graph.tensors.items():
        if t.data is not None:
            continue
        src = graph.source.get(name)
        if src is None:
            continue
        if src not in ranges:
            raise ModelError(f"calibration gave no range for {src!r}")
        lo, hi = ranges[src]
        root = group[name]
        if root in span:
            lo, hi = min(lo, span[root][0]), max(hi, span[root][1])
        span[root] = (lo, hi)
    quant: dict[str, Quant] = {}
    for op in graph.ops:
        if op.code in FIXED_OUTPUT:
            scale, zp = FIXED_OUTPUT[op.code]
            quant[op.outputs[0]] = Quant(np.array([scale]), np.array([zp]))
    for name, t in graph.tensors.items():
        if t.data is None and name not in quant:
            root = group[name]
            if root not in span:
                raise ModelError(f"no calibrated range reaches {name!r}")
            quant[name] = _affine(*span[root])
    return quant


def _weights(w: npt.NDArray[np.float32], axis: int | None) -> tuple[npt.NDArray[np.int8], Quant]:
    """Symmetric int8, per channel along ``axis`` (or per tensor when None)."""
    if axis is None:
        amax = np.array([float(np.abs(w).max())])
    else:
        amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    scale = np.maximum(amax.astype(np.float64), 1e-12) / 127
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, Quant(scale, np.zeros(len(scale), np.int64), 0 if axis is None else axis)


def quantize(graph: Graph, ranges: Ranges) -> Graph:
    """The int8 version of the float ``graph`` (a new graph; ``graph`` is not changed)."""
    act = _activation_quant(graph, ranges)
    out = Graph(source=dict(graph.source), ties=list(graph.ties))
    for name in graph.inputs:
        t = graph.tensors[name]
        out.tensors[name] = Tensor(name, t.shape, batched=t.batched)
        out.inputs.append(name)
    renamed = {name: f"{name}/int8" for name in [*graph.inputs, *graph.outputs]}
    for name, t in graph.tensors.items():
        if t.data is None:
            new = renamed.get(name, name)
            out.tensors[new] = Tensor(new, t.shape, "INT8", None, t.batched, act[name])
    for name in graph.inputs:
        out.add(Op("QUANTIZE", [name], [renamed[name]]))
    for op in graph.ops:
        inputs = [renamed.get(n, n) for n in op.inputs]
        outputs = [renamed.get(n, n) for n in op.outputs]
        in_q = act[op.inputs[0]]
        for i, name in enumerate(op.inputs):
            c = graph.tensors.get(name)
            if c is None or c.data is None or name in out.tensors:
                continue
            out.tensors[name] = _constant(op, i, c, in_q, act[op.outputs[0]], out)
        out.add(Op(op.code, inputs, outputs, op.options, dict(op.params), op.weight_axis))
    for name in graph.outputs:
        t = graph.tensors[name]
        out.tensors[name] = Tensor(name, t.shape, batched=t.batched)
        out.add(Op("DEQUANTIZE", [renamed[name]], [name]))
        out.outputs.append(name)
    return out


def _constant(op: Op, i: int, t: Tensor, in_q: Quant, out_q: Quant, graph: Graph) -> Tensor:
    """The int8/int32 form of constant input ``i`` of ``op``."""
    assert t.data is not None
    if t.dtype != "FLOAT32":  # shapes, axes, permutations, paddings
        return t
    data = t.data.astype(np.float32)
    if op.weight_axis is not None and i == 1:
        axis = None if op.code == "FULLY_CONNECTED" else op.weight_axis
        q, quant = _weights(data, axis)
        return Tensor(t.name, t.shape, "INT8", q, quant=quant)
    if op.weight_axis is not None and i == 2:
        w = graph.tensors[op.inputs[1]]
        assert w.quant is not None
        scale = float(in_q.scale[0]) * w.quant.scale
        if len(scale) == 1:
            scale = np.full(len(data), scale[0])
        q32 = np.round(data / scale).astype(np.int32)
        return Tensor(
            t.name, t.shape, "INT32", q32, quant=Quant(scale, np.zeros(len(scale), np.int64))
        )
    if op.code == "PADV2":  # the fill value, in the output's quantization
        qv = np.clip(np.round(data / out_q.scale[0] + out_q.zero_point[0]), -128, 127)
        return Tensor(t.name, t.shape, "INT8", qv.astype(np.int8), quant=out_q)
    quant = _affine(float(data.min()), float(data.max()))
    qv = np.clip(np.round(data / quant.scale[0] + quant.zero_point[0]), -128, 127)
    return Tensor(t.name, t.shape, "INT8", qv.astype(np.int8), quant=quant)
