"""ONNX conv nets to ``.tflite`` without TensorFlow: fp32, or full-integer int8.

::

    onnx_to_tflite("mobilenet.onnx", "mobilenet.tflite")
    onnx_to_tflite("mobilenet.onnx", "mobilenet.int8.tflite", calibration={"image": x})

The ONNX graph (after shape inference) is lowered op by op to TFLite builtins in NHWC: the model
keeps the ONNX input layout (NCHW) and starts with one TRANSPOSE, so callers feed what they fed
the ONNX model; 4-D outputs are transposed back. Conv (group 1) becomes CONV_2D, depthwise Conv
DEPTHWISE_CONV_2D, a Relu or Clip(0, 6) right after a Conv/Gemm/MatMul/Add/Mul is fused; pads
become SAME or VALID when they match exactly, else an explicit PAD. Also: MaxPool, AveragePool,
GlobalAveragePool/ReduceMean (MEAN), Add, Mul, HardSwish, Sigmoid, Flatten/Reshape, Gemm/MatMul
with constant weights (FULLY_CONNECTED), Softmax, Concat, Pad. Any other op is refused with
:class:`UnsupportedOp` naming it; nothing is approximated.

With ``calibration`` the graph is quantized (:mod:`.tflite_conv_quant`): int8 activations and
weights, float input and output through QUANTIZE/DEQUANTIZE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import ModelError
from .mlp import require
from .tflite_conv_ops import LOWER, SUPPORTED_OPS, UnsupportedOp, attrs
from .tflite_graph import Graph, Op, write_graph

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

__all__ = ["SUPPORTED_OPS", "UnsupportedOp", "lower_onnx", "onnx_to_tflite"]


class _Lowering:
    """One pass over the ONNX nodes (topologically ordered, as ONNX requires)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        onnx_module = require("onnx")
        numpy_helper = require("onnx.numpy_helper")
        model = onnx_module.shape_inference.infer_shapes(model)
        g = model.graph
        self.consts: dict[str, npt.NDArray[Any]] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer
        }
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in dims
            )
        self.nodes = list(g.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = [o.name for o in g.output]
        self.layout: dict[str, str] = {}
        """ONNX tensor -> "nhwc" (a 4-D tensor held transposed) or "plain"."""
        self.alias: dict[str, str] = {}
        self.skip: set[str] = set()
        self.out = Graph()
        self.batched = False
        self._n = 0

    # --- helpers ----------------------------------------------------------------------------

    def name(self, base: str, what: str) -> str:
        self._n += 1
        return f"{base}/{what}_{self._n}"

    def ir(self, onnx_name: str) -> str:
        return self.alias.get(onnx_name, onnx_name)

    def nhwc_shape(self, onnx_name: str) -> tuple[int, ...]:
        dims = self.shapes.get(onnx_name)
        if dims is None or any(d is None for d in dims[1:]):
            raise ModelError(f"shape inference gave no static shape for {onnx_name!r}")
        full = tuple(1 if d is None else d for d in dims)
        if len(full) == 4:
            return (full[0], full[2], full[3], full[1])
        return full

    def result(self, onnx_name: str, layout: str, src: str | None = None) -> str:
        """The IR tensor for an ONNX output (renamed when it must be transposed back)."""
        self.layout[onnx_name] = layout
        name = onnx_name
        if onnx_name in self.graph_outputs and layout == "nhwc":
            name = f"{onnx_name}/nhwc"
            self.alias[onnx_name] = name
        self.out.activation(name, self.nhwc_shape(onnx_name), self.batched, src or onnx_name)
        return name

    def const(self, node: onnx.NodeProto, i: int) -> npt.NDArray[Any]:
        if i >= len(node.input) or node.input[i] not in self.consts:
            raise UnsupportedOp(node.op_type, node.name, f"input {i} must be a constant")
        return self.consts[node.input[i]]

    def fused(self, node: onnx.NodeProto) -> tuple[str, str]:
        """(activation name, ONNX output) for a Relu/Clip(0, 6) that only follows ``node``."""
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out in self.graph_outputs or len(users) != 1:
            return "NONE", out
        act = self.activation_kind(users[0])
        if act is None:
            return "NONE", out
        self.skip.add(users[0].output[0])
        return act, users[0].output[0]

    def activation_kind(self, node: onnx.NodeProto) -> str | None:
        if node.op_type == "Relu":
            return "RELU"
        if node.op_type != "Clip":
            return None
        lo = self.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if lo is not None and float(lo) == 0 and hi is not None and float(hi) == 6:
            return "RELU6"
        if lo is not None and float(lo) == 0 and hi is None and len(node.input) < 3:
            return "RELU"
        return None

    def padding(
        self, node: onnx.NodeProto, x: str, kernel: list[int], strides: list[int], dil: list[int]
    ) -> tuple[str, str, list[int] | None]:
        """(input, SAME/VALID, explicit [t, l, b, r] or None) for a windowed op."""
        a = attrs(node)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        _, h, w, _ = self.out.tensors[x].shape
        if auto == "VALID":
            return x, "VALID", None
        if auto == "SAME_UPPER":
            return x, "SAME", None
        if auto != "NOTSET":
            raise UnsupportedOp(node.op_type, node.name, f"auto_pad {auto}")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if not any(pads):
            return x, "VALID", None
        same = []
        for size, k, s, d in zip((h, w), kernel, strides, dil, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        if [same[0][0], same[1][0], same[0][1], same[1][1]] == pads:
            return x, "SAME", None
        return x, "VALID", pads

    def pad(self, x: str, begin_end: list[tuple[int, int]], value: float | None, src: str) -> str:
        """An explicit PAD (zeros) or PADV2 (``value``) of NHWC ``x``; returns the new tensor."""
        t = self.out.tensors[x]
        shape = tuple(n + b + e for n, (b, e) in zip(t.shape, begin_end, strict=True))
        name = self.out.activation(self.name(src, "pad"), shape, t.batched, "")
        pads = self.out.const(self.name(src, "paddings"), np.array(begin_end, np.int32))
        inputs = [x, pads]
        code = "PAD"
        if value is not None:
            code = "PADV2"
            inputs.append(
                self.out.const(self.name(src, "pad_value"), np.array([value], np.float32))
            )
        self.out.add(Op(code, inputs, [name]))
        self.out.ties.append((x, name))
        return name

    def windowed_input(
        self,
        node: onnx.NodeProto,
        kernel: list[int],
        strides: list[int],
        dil: list[int],
        fill: float | None,
    ) -> tuple[str, str]:
        x = self.ir(node.input[0])
        x, mode, pads = self.padding(node, x, kernel, strides, dil)
        if pads is not None:
            t, left, b, r = pads
            x = self.pad(x, [(0, 0), (t, b), (left, r), (0, 0)], fill, node.output[0])
        return x, mode

    # --- the pass ---------------------------------------------------------------------------

    def run(self, model_inputs: list[onnx.ValueInfoProto]) -> Graph:
        for vi in model_inputs:
            if vi.name in self.consts:
                continue
            dims = self.shapes[vi.name]
            self.batched = len(dims) > 0 and dims[0] is None
            shape = tuple(1 if d is None else d for d in dims)
            self.out.activation(vi.name, shape, self.batched, vi.name)
            self.out.inputs.append(vi.name)
            if len(shape) == 4:
                nhwc = self.out.activation(
                    f"{vi.name}/nhwc", self.nhwc_shape(vi.name), self.batched, vi.name
                )
                perm = self.out.const(f"{vi.name}/perm", np.array([0, 2, 3, 1], np.int32))
                self.out.add(Op("TRANSPOSE", [vi.name, perm], [nhwc]))
                self.alias[vi.name] = nhwc
                self.layout[vi.name] = "nhwc"
            else:
                self.layout[vi.name] = "plain"
        for node in self.nodes:
            if node.output[0] in self.skip:
                continue
            if node.op_type == "Constant":
                numpy_helper = require("onnx.numpy_helper")
                self.consts[node.output[0]] = numpy_helper.to_array(attrs(node)["value"])
                continue
            lower = LOWER.get(node.op_type)
            if lower is None:
                raise UnsupportedOp(node.op_type, node.name)
            lower(self, node)
        for name in self.graph_outputs:
            ir = self.ir(name)
            if self.layout.get(name) == "nhwc":
                t = self.out.tensors[ir]
                n, h, w, c = t.shape
                self.out.activation(name, (n, c, h, w), self.batched, name)
                perm = self.out.const(f"{name}/perm", np.array([0, 3, 1, 2], np.int32))
                self.out.add(Op("TRANSPOSE", [ir, perm], [name]))
                self.out.ties.append((ir, name))
            self.out.outputs.append(name)
        return self.out


def lower_onnx(model: onnx.ModelProto) -> Graph:
    """The float TFLite graph of ``model``; raises :class:`UnsupportedOp` for what it cannot.

    A graph the pass cannot follow (a tensor without an inferred shape, an op fed by something
    that was not lowered) is a :class:`ModelError` too: the optimizer skips the variant with
    that reason instead of stopping."""
    try:
        return _Lowering(model).run(list(model.graph.input))
    except (KeyError, IndexError, ValueError) as exc:
        raise ModelError(f"the LiteRT converter cannot follow the graph: {exc!r}") from exc


def onnx_to_tflite(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    calibration: Mapping[str, npt.NDArray[Any]] | None = None,
    max_samples: int = 128,
) -> Path:
    """Convert the ONNX file ``src`` to ``out``: fp32, or int8 when ``calibration`` is given
    (arrays named after the model's inputs; at most ``max_samples`` of them are used)."""
    onnx_module = require("onnx")
    try:
        model = onnx_module.load(os.fspath(src))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{src}: not an ONNX model ({exc})") from exc
    graph = lower_onnx(model)
    description = "edgeagent conv net (fp32)"
    if calibration is not None:
        from .tflite_conv_quant import calibrate, quantize

        ranges = calibrate(model, calibration, max_samples)
        graph = quantize(graph, ranges)
        description = "edgeagent conv net (int8, float input and output)"
    return write_graph(graph, out, description)
