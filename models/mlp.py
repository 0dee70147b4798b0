"""MLP chains: read plain Linear/activation stacks out of ONNX graphs and write them back.

:func:`read_mlp_chain` accepts graphs of Gemm, or MatMul with an optional Add, each followed by an
optional Relu/Tanh/Sigmoid (Softmax after the last), with constant weights: what
``torch.nn.Sequential`` of Linear layers exports. Structured pruning and the LiteRT variant work
on this form; anything else is skipped with the reason this reader gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .backend import ModelError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnx

    F32 = npt.NDArray[np.float32]
    Arrays = Mapping[str, npt.NDArray[Any]]

Activation = Literal["relu", "tanh", "sigmoid", "softmax"]
INSTALL_HINT = "pip install 'edgeagent[optimize]'"

_ACTIVATIONS: dict[str, Activation] = {
    "Relu": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Softmax": "softmax",
}
_ONNX_ACTIVATIONS = {value: key for key, value in _ACTIVATIONS.items()}
_CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})


class OptimizeError(ModelError):
    """The optimizer cannot go on: a missing package, bad data, or no variant meets the rules."""


def require(module: str) -> Any:
    """Import a heavy optional module, or fail with the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptimizeError(f"the optimizer needs {module} ({exc}): {INSTALL_HINT}") from exc


@dataclass(slots=True)
class Dense:
    """One fully connected layer: ``act(x @ weight + bias)``; weight is (inputs, outputs)."""

    weight: F32
    bias: F32
    activation: Activation | None = None


@dataclass(slots=True)
class MLPChain:
    """A model that is a plain stack of dense layers (see the module docstring)."""

    input: str
    output: str
    layers: list[Dense] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(int(d.weight.size + d.bias.size) for d in self.layers)

    @property
    def widths(self) -> list[int]:
        return [int(self.layers[0].weight.shape[0])] + [int(d.weight.shape[1]) for d in self.layers]

    def forward(self, x: F32, upto: int | None = None) -> list[F32]:
        """Activations after each layer (pre-activation for the last one asked for)."""
        import numpy as np

        outs: list[F32] = []
        h = x.astype(np.float32)
        stop = len(self.layers) if upto is None else upto
        for d in self.layers[:stop]:
            h = apply_activation(h @ d.weight + d.bias, d.activation)
            outs.append(h)
        return outs


def apply_activation(z: F32, activation: Activation | None) -> F32:
    import numpy as np

    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        sig: F32 = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        return sig
    if activation == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        soft: F32 = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
        return soft
    return z


def _constants(model: onnx.ModelProto) -> dict[str, npt.NDArray[Any]]:
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the inputs a caller feeds (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def has_conv(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _CONV_OPS for node in model.graph.node)


def _gemm(
    node: onnx.NodeProto, attrs: Mapping[str, onnx.AttributeProto], consts: Arrays, current: str
) -> Dense | str:
    """A Gemm node as a dense layer (weight transposed when ``transB``), or why it is not one."""
    import numpy as np

    if (attrs.get("transA") and attrs["transA"].i) or any(
        name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta")
    ):
        return f"Gemm {node.name} has transA, alpha or beta"
    if node.input[0] != current or len(node.input) < 2 or node.input[1] not in consts:
        return f"Gemm {node.name} has no constant weight"
    w = consts[node.input[1]].astype(np.float32)
    if w.ndim != 2:
        return f"Gemm {node.name} weight is not a matrix"
    if "transB" in attrs and attrs["transB"].i:
        w = w.T
    bias = np.zeros(w.shape[1], np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = np.broadcast_to(consts[node.input[2]].astype(np.float32), bias.shape).copy()
    return Dense(np.ascontiguousarray(w), bias)


def _matmul(node: onnx.NodeProto, consts: Arrays, current: str) -> Dense | str:
    """A MatMul by a constant as a dense layer with a zero bias (an Add may follow), or why not."""
    import numpy as np

    if node.input[0] != current or node.input[1] not in consts:
        return f"MatMul {node.name} has no constant weight on the right"
    w = consts[node.input[1]].astype(np.float32)
    if w.ndim != 2:
        return f"MatMul {node.name} weight is not a matrix"
    return Dense(np.ascontiguousarray(w), np.zeros(w.shape[1], np.float32))


def _add_bias(node: onnx.NodeProto, consts: Arrays, layer: Dense) -> bool:
    """Fold an Add of one constant into ``layer``'s bias; False when it is not a bias."""
    import numpy as np

    other = [name for name in node.input if name in consts]
    if len(other) != 1:
        return False
    try:
        b = np.broadcast_to(consts[other[0]].astype(np.float32), layer.bias.shape)
    except ValueError:
        return False
    layer.bias = layer.bias + b
    return True


def _chain_problem(chain: MLPChain, end: str) -> str | None:
    """Why a chain read up to ``end`` is not a whole, consistent MLP (None when it is)."""
    if end != chain.output or not chain.layers:
        return "the chain does not end at the graph output"
    for before, after in zip(chain.layers, chain.layers[1:], strict=False):
        if before.weight.shape[1] != after.weight.shape[0]:
            return "layer widths do not chain"
    if any(d.activation == "softmax" for d in chain.layers[:-1]):
        return "Softmax before the last layer"
    return None


def read_mlp_chain(model: onnx.ModelProto) -> MLPChain | str:
    """The model as a dense chain, or why it is not one."""
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        return (
            f"{len(inputs)} input(s) and {len(model.graph.output)} output(s); a chain has one each"
        )
    consts = _constants(model)
    chain = MLPChain(input=inputs[0], output=model.graph.output[0].name)
    current = chain.input
    pending_add: Dense | None = None
    for node in model.graph.node:
        op = node.op_type
        if op == "Constant":
            continue
        data = [name for name in node.input if name and name not in consts]
        if data != [current]:
            return f"node {node.name or op} ({op}) does not continue the chain"
        attrs = {a.name: a for a in node.attribute}
        if op in ("Gemm", "MatMul"):
            if op == "Gemm":
                layer = _gemm(node, attrs, consts, current)
            else:
                layer = _matmul(node, consts, current)
            if isinstance(layer, str):
                return layer
            chain.layers.append(layer)
            pending_add = layer if op == "MatMul" else None  # a MatMul's bias is the next Add
        elif op == "Add" and pending_add is not None:
            if not _add_bias(node, consts, pending_add):
                return f"Add {node.name} is not a bias"
            pending_add = None
        elif op in _ACTIVATIONS and chain.layers and chain.layers[-1].activation is None:
            if op == "Softmax" and "axis" in attrs and attrs["axis"].i not in (-1, 1):
                return f"Softmax {node.name} is not over the last axis"
            chain.layers[-1].activation = _ACTIVATIONS[op]
            pending_add = None
        elif op in ("Identity", "Dropout") and len(node.output) >= 1:
            pass
        else:
            return f"node {node.name or op} ({op}) is not Gemm/MatMul/Add/activation"
        current = node.output[0]
    return _chain_problem(chain, current) or chain


def chain_to_onnx(chain: MLPChain, template: onnx.ModelProto) -> onnx.ModelProto:
    """An ONNX model for the chain, keeping the template's input/output names and opset."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    current = chain.input
    for i, d in enumerate(chain.layers):
        last = i == len(chain.layers) - 1
        gemm_out = chain.output if last and d.activation is None else f"dense{i}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(d.weight.T), f"dense{i}.weight"))
        inits.append(numpy_helper.from_array(d.bias.astype(np.float32), f"dense{i}.bias"))
        nodes.append(
            helper.make_node(
                "Gemm",
                [current, f"dense{i}.weight", f"dense{i}.bias"],
                [gemm_out],
                name=f"dense{i}",
                transB=1,
            )
        )
        current = gemm_out
        if d.activation is not None:
            act_out = chain.output if last else f"act{i}"
            extra: dict[str, Any] = {"axis": -1} if d.activation == "softmax" else {}
            op = _ONNX_ACTIVATIONS[d.activation]
            nodes.append(helper.make_node(op, [current], [act_out], name=f"act{i}", **extra))
            current = act_out
    batch = batch_dim(template)
    x = helper.make_tensor_value_info(
        chain.input, TensorProto.FLOAT, [batch, int(chain.layers[0].weight.shape[0])]
    )
    y = helper.make_tensor_value_info(
        chain.output, TensorProto.FLOAT, [batch, int(chain.layers[-1].weight.shape[1])]
    )
    graph = helper.make_graph(nodes, template.graph.name or "mlp", [x], [y], inits)
    opset = max(
        (o.version for o in template.opset_import if o.domain in ("", "ai.onnx")), default=17
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", max(opset, 13))], producer_name="edgeagent"
    )
    model.ir_version = template.ir_version or model.ir_version
    return model


def batch_dim(model: onnx.ModelProto) -> int | str:
    inputs = set(graph_inputs(model))
    for value in model.graph.input:
        if value.name in inputs:
            dims = value.type.tensor_type.shape.dim
            if dims:
                return dims[0].dim_param or dims[0].dim_value or "N"
    return "N"
