"""Count the :class:`~edgeagent.devices.workload.Workload` of an ONNX graph at batch 1.

The device speed model prices work per operator class (see :mod:`edgeagent.devices.workload`),
and it is calibrated on ncnn's published figures counted by :mod:`edgeagent.devices.ncnn_param`;
this counter applies the same rules to the ONNX files users bring, so one calibration prices both.

How ops are counted, and why:

- shapes come from ``onnx.shape_inference`` after every symbolic input dimension is set to 1;
- ``Conv``/``ConvInteger``/``QLinearConv``: MACs = weight elements × output positions; group 1
  with an all-ones kernel → pointwise, group 1 → conv, group > 1 → depthwise. ``ConvTranspose``:
  weight elements × input positions, conv;
- ``Gemm``/``MatMul`` (and their integer forms): one output row → ``fc_mweights`` (K × N weights
  read), else pointwise (rows × K × N);
- free (not nodes): constants, shape arithmetic (any op whose inputs are all constant or derived
  from ``Shape``: a runtime folds it once), views (:data:`FREE_OPS`), ``QuantizeLinear`` and
  ``DequantizeLinear`` (an int8 runtime fuses them into the int8 kernels), a
  ``BatchNormalization`` fed by a convolution (folded into its weights), and an activation that
  is a convolution's only consumer (fused into it by ONNX Runtime, XNNPACK and ncnn alike: the
  ncnn graphs the speed model is calibrated on carry it as the convolution's ``9=`` parameter);
- every other op: the elements it writes and one node; op types outside :data:`KNOWN_OPS` are
  listed in ``unknown_ops`` (their cost is a guess).

A QDQ graph (a ``DequantizeLinear`` feeding a convolution or matrix product) or an integer
convolution/matrix op makes the workload int8. ``onnx`` is imported when counting (the
``optimize`` extra), never when this module is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices.workload import Workload
from .backend import ModelError, RuntimeMissing

if TYPE_CHECKING:
    import onnx

__all__ = ["FREE_OPS", "KNOWN_OPS", "WorkloadCountError", "count_onnx"]

EXTRA = "pip install 'edgeagent[optimize]'"

FREE_OPS = frozenset(
    {"Constant", "Shape", "Size", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity",
     "Dropout", "QuantizeLinear", "DequantizeLinear"}
)  # fmt: skip
"""Ops that move no data at inference (or are fused away): never nodes."""

CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})
MATMUL_OPS = frozenset({"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"})
_INTEGER_OPS = frozenset({"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"})
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}
"""Index of the weight (second matrix) input where it is not 1."""
_FUSABLE_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"}
)

KNOWN_OPS = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Add", "Sub", "Div", "MaxPool",
     "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum",
     "Concat", "Softmax", "LogSoftmax", "Pad", "Resize", "Upsample", "Transpose", "Tanh",
     "LeakyRelu", "PRelu", "Erf", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal",
     "LayerNormalization", "BatchNormalization", "InstanceNormalization", "Split", "Slice",
     "Gather", "Cast", "Expand", "Tile", "Where", "Equal", "Less", "Greater", "Min", "Max",
     "Sum", "Mean", "Gelu", "Elu", "Selu", "Softplus", "Softsign", "Mish", "ArgMax", "TopK",
     "DepthToSpace", "SpaceToDepth", "DynamicQuantizeLinear", "ConvTranspose",
     "SimplifiedLayerNormalization", "Einsum", "CumSum", "Not", "And", "Or", "Floor", "Ceil",
     "Round", "Sin", "Cos", "ReduceL2", "LRN", "LpNormalization", "Trilu", "ScatterND",
     "GatherElements", "NonZero", "Range", "ConstantOfShape"}
)  # fmt: skip
"""Op types whose cost is fairly their output size (plus :data:`FREE_OPS` and the matrix ops)."""


class WorkloadCountError(ModelError):
    """An ONNX graph cannot be counted (unreadable, or shape inference fails)."""


def _onnx() -> Any:
    try:
        import onnx
        import onnx.shape_inference
    except ModuleNotFoundError as exc:
        raise RuntimeMissing(f"counting an ONNX workload needs onnx: {EXTRA}") from exc
    return onnx


def count_onnx(model: str | Path | onnx.ModelProto) -> Workload:
    """Count an ONNX file or ``ModelProto`` at batch 1 (symbolic dimensions set to 1)."""
    onnx_mod = _onnx()
    if isinstance(model, str | Path):
        from google.protobuf.message import (  # type: ignore[import-untyped, unused-ignore]
            DecodeError,  # protobuf comes with onnx
        )

        try:
            proto = onnx_mod.load(str(model), load_external_data=False)
        except (OSError, ValueError, DecodeError) as exc:
            raise WorkloadCountError(f"{model}: cannot read the ONNX graph: {exc}") from exc
        where = str(model)
    else:
        proto = onnx_mod.ModelProto()
        proto.CopyFrom(model)
        where = proto.graph.name or "<ModelProto>"
    _fix_dynamic_dims(proto)
    try:
        inferred = onnx_mod.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # onnx raises its own InferenceError and plain RuntimeErrors
        raise WorkloadCountError(f"{where}: ONNX shape inference failed: {exc}") from exc
    return _count_graph(inferred.graph)


def _fix_dynamic_dims(proto: onnx.ModelProto) -> None:
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = 1


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            shapes.setdefault(value.name, None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        shapes[value.name] = dims if all(d > 0 for d in dims) or not dims else None
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


class _Counter:
    """Walks one graph's nodes, in order, summing raw counts."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.shapes = _shapes(graph)
        self.static: set[str] = {init.name for init in graph.initializer}
        self.producer: dict[str, str] = {}
        self.conv_out: set[str] = set()
        """Outputs of convolutions (and of what was fused into them)."""
        self.consumers: Counter[str] = Counter()
        for node in graph.node:
            for name in node.input:
                self.consumers[name] += 1
        for out in graph.output:
            self.consumers[out.name] += 1
        self.conv = self.pointwise = self.depthwise = self.fc = self.elements = 0.0
        self.nodes = 0
        self.int8 = False
        self.unknown: set[str] = set()

    def shape(self, name: str) -> list[int] | None:
        return self.shapes.get(name)

    def visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        inputs = [name for name in node.input if name]
        for out in node.output:
            self.producer[out] = op
        if op in ("Constant", "Shape", "Size") or (
            inputs and all(name in self.static for name in inputs)
        ):
            self.static.update(node.output)  # folded once by the runtime: no work per inference
            return
        if op in FREE_OPS or self._fused(node, inputs):
            return
        self.nodes += 1
        if op in _INTEGER_OPS or (
            (op in CONV_OPS or op in MATMUL_OPS)
            and inputs
            and self.producer.get(inputs[0]) == "DequantizeLinear"
        ):
            self.int8 = True  # integer kernels, or a QDQ pair an int8 runtime turns into one
        if op in CONV_OPS or op == "ConvTranspose":
            self.conv_out.update(node.output)
            self._conv(node, inputs)
        elif op in MATMUL_OPS:
            self._matmul(node, inputs)
        else:
            if op not in KNOWN_OPS:
                self.unknown.add(op)
            self.elements += sum(math.prod(s) for s in map(self.shape, node.output) if s)

    def _fused(self, node: onnx.NodeProto, inputs: Sequence[str]) -> bool:
        """A BatchNormalization or activation that only post-processes a convolution's output."""
        if not inputs or inputs[0] not in self.conv_out or self.consumers[inputs[0]] != 1:
            return False
        if node.op_type == "BatchNormalization" or node.op_type in _FUSABLE_ACTIVATIONS:
            self.conv_out.update(node.output)  # conv + BN + activation still fuse into one
            return True
        return False

    def _conv(self, node: onnx.NodeProto, inputs: Sequence[str]) -> None:
        op = node.op_type
        w_index = _WEIGHT_INPUT.get(op, 1)
        weight = self.shape(inputs[w_index]) if len(inputs) > w_index else None
        if weight is None or len(weight) < 3:
            return
        transpose = op == "ConvTranspose"
        positions_of = self.shape(inputs[0] if transpose else node.output[0])
        if positions_of is None or len(positions_of) < 3:
            return
        macs = math.prod(weight) * math.prod(positions_of[2:])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if transpose:
            self.conv += macs
        elif group > 1:
            self.depthwise += macs
        elif all(k == 1 for k in weight[2:]):
            if math.prod(positions_of[2:]) == 1:  # one position: a matrix-vector product (SE)
                self.fc += macs
            else:
                self.pointwise += macs
        else:
            self.conv += macs

    def _matmul(self, node: onnx.NodeProto, inputs: Sequence[str]) -> None:
        op = node.op_type
        a = self.shape(inputs[0]) if inputs else None
        y = self.shape(node.output[0])
        if a is None or y is None or not y:
            return
        trans_a = op == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
        k = a[0] if trans_a and len(a) == 2 else a[-1]
        n = y[-1]
        rows = math.prod(y) // n if n else 0
        if rows == 1:
            self.fc += k * n
        else:
            self.pointwise += rows * k * n

    def workload(self) -> Workload:
        return Workload.counted(
            conv=self.conv,
            pointwise=self.pointwise,
            depthwise=self.depthwise,
            fc=self.fc,
            elements=self.elements,
            nodes=self.nodes,
            precision="int8" if self.int8 else "fp32",
            unknown_ops=self.unknown,
        )


def _count_graph(graph: onnx.GraphProto) -> Workload:
    counter = _Counter(graph)
    for node in graph.node:
        counter.visit(node)
    return counter.workload()
