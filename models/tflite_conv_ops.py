"""How each ONNX op becomes TFLite builtins, for :mod:`.tflite_conv` (which owns the pass).

Each function takes the pass state (``_Lowering``: constants, shapes, layouts, the graph being
built) and one node; it emits ops or raises :class:`UnsupportedOp` naming the op and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import ModelError
from .mlp import require
from .tflite_graph import Op

if TYPE_CHECKING:
    import onnx

    from .tflite_conv import _Lowering

NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
"""An NCHW axis -> the same axis in NHWC."""


class UnsupportedOp(ModelError):
    """The graph uses an op (or an op's setting) the converter does not lower."""

    def __init__(self, op: str, node: str, why: str = "") -> None:
        self.op = op
        detail = f": {why}" if why else ""
        super().__init__(f"the LiteRT converter does not support {op} (node {node!r}){detail}")


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    helper = require("onnx.helper")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    w = lw.const(node, 1).astype(np.float32)
    if w.ndim != 4:
        raise UnsupportedOp("Conv", node.name, f"{w.ndim - 2}-D convolution")
    cout, cin_g, kh, kw = w.shape
    group = int(a.get("group", 1))
    bias = (
        lw.const(node, 2).astype(np.float32) if len(node.input) > 2 else np.zeros(cout, np.float32)
    )
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    x, mode = lw.windowed_input(node, [kh, kw], strides, dil, None)
    cin = lw.out.tensors[x].shape[3]
    act, out = lw.fused(node)
    y = lw.result(out, "nhwc")
    base = node.output[0]
    params: dict[str, Any] = {
        "padding": mode,
        "strideH": strides[0],
        "strideW": strides[1],
        "dilationHFactor": dil[0],
        "dilationWFactor": dil[1],
        "fusedActivationFunction": act,
    }
    b = lw.out.const(f"{base}/bias", bias)
    if group == 1:
        wt = lw.out.const(f"{base}/weights", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
        lw.out.add(Op("CONV_2D", [x, wt, b], [y], "Conv2DOptions", params, weight_axis=0))
    elif group == cin and cin_g == 1:
        wt = lw.out.const(f"{base}/weights", np.ascontiguousarray(w.transpose(1, 2, 3, 0)))
        params["depthMultiplier"] = cout // cin
        lw.out.add(
            Op(
                "DEPTHWISE_CONV_2D",
                [x, wt, b],
                [y],
                "DepthwiseConv2DOptions",
                params,
                weight_axis=3,
            )
        )
    else:
        raise UnsupportedOp("Conv", node.name, f"grouped convolution (group {group} of {cin})")


def _pool(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
        raise UnsupportedOp(node.op_type, node.name, "ceil_mode or dilations")
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOp(node.op_type, node.name, "the Indices output")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1, 1]))
    is_max = node.op_type == "MaxPool"
    fill = float(np.finfo(np.float32).min) if is_max else None
    x, mode = lw.windowed_input(node, kernel, strides, [1, 1], fill)
    if not is_max and x != lw.ir(node.input[0]) and not a.get("count_include_pad", 0):
        raise UnsupportedOp(node.op_type, node.name, "explicit pads that exclude the padding")
    y = lw.result(node.output[0], "nhwc")
    params = {
        "padding": mode,
        "strideH": strides[0],
        "strideW": strides[1],
        "filterHeight": kernel[0],
        "filterWidth": kernel[1],
        "fusedActivationFunction": "NONE",
    }
    code = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    lw.out.add(Op(code, [x], [y], "Pool2DOptions", params))
    lw.out.ties.append((x, y))


def _mean(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    if node.op_type == "GlobalAveragePool":
        axes, keep = [2, 3], 1
    else:
        axes = list(a["axes"]) if "axes" in a else [int(v) for v in lw.const(node, 1)]
        keep = int(a.get("keepdims", 1))
    if lw.layout[node.input[0]] != "nhwc" or sorted(d % 4 for d in axes) != [2, 3]:
        raise UnsupportedOp(node.op_type, node.name, f"axes {axes} (only H, W of 4-D)")
    x = lw.ir(node.input[0])
    y = lw.result(node.output[0], "nhwc" if keep else "plain")
    ax = lw.out.const(f"{node.output[0]}/axes", np.array([1, 2], np.int32))
    lw.out.add(Op("MEAN", [x, ax], [y], "ReducerOptions", {"keepDims": bool(keep)}))


def _flatten(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    out_shape = lw.nhwc_shape(node.output[0])
    x = lw.ir(node.input[0])
    if node.op_type == "Flatten" and int(a.get("axis", 1)) != 1:
        raise UnsupportedOp("Flatten", node.name, f"axis {a.get('axis')}")
    if node.op_type == "Reshape":
        target = [int(v) for v in lw.const(node, 1)]
        if len(out_shape) != 2 and lw.layout[node.input[0]] == "nhwc":
            raise UnsupportedOp("Reshape", node.name, f"to {target} from a 4-D tensor")
    if lw.layout[node.input[0]] == "nhwc":
        _, h, w, c = lw.out.tensors[x].shape
        if h * w != 1:  # NCHW order before flattening, as ONNX flattens
            t = lw.out.activation(lw.name(node.output[0], "nchw"), (1, c, h, w), lw.batched, "")
            perm = lw.out.const(lw.name(node.output[0], "perm"), np.array([0, 3, 1, 2], np.int32))
            lw.out.add(Op("TRANSPOSE", [x, perm], [t]))
            lw.out.ties.append((x, t))
            x = t
    y = lw.result(node.output[0], "plain")
    shape = [-1 if lw.batched else out_shape[0], *out_shape[1:]]
    s = lw.out.const(f"{node.output[0]}/shape", np.array(shape, np.int32))
    lw.out.add(Op("RESHAPE", [x, s], [y]))
    lw.out.ties.append((x, y))


def _dense(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    w = lw.const(node, 1).astype(np.float32)
    if lw.layout[node.input[0]] != "plain" or w.ndim != 2:
        raise UnsupportedOp(node.op_type, node.name, "only 2-D inputs with constant 2-D weights")
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UnsupportedOp("Gemm", node.name, "transA, alpha or beta")
        weight = w if a.get("transB", 0) else w.T
        bias = lw.const(node, 2).reshape(-1) if len(node.input) > 2 and node.input[2] else None
    else:
        weight, bias = w.T, None
    end = node
    users = lw.consumers.get(node.output[0], [])
    if bias is None and len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other in lw.consts and lw.consts[other].size == weight.shape[0]:
            bias, end = lw.consts[other].reshape(-1), add
            lw.skip.add(add.output[0])
    if bias is None:
        bias = np.zeros(weight.shape[0], np.float32)
    act, out = lw.fused(end)
    y = lw.result(out, "plain")
    wt = lw.out.const(f"{out}/weights", np.ascontiguousarray(weight, np.float32))
    b = lw.out.const(f"{out}/bias", np.ascontiguousarray(bias, np.float32))
    params = {"fusedActivationFunction": act}
    lw.out.add(
        Op(
            "FULLY_CONNECTED",
            [lw.ir(node.input[0]), wt, b],
            [y],
            "FullyConnectedOptions",
            params,
            weight_axis=0,
        )
    )


def _binary(lw: _Lowering, node: onnx.NodeProto) -> None:
    layouts = {lw.layout[n] for n in node.input if n not in lw.consts}
    if len(layouts) != 1:
        raise UnsupportedOp(node.op_type, node.name, "operands of different ranks")
    layout = layouts.pop()
    inputs = []
    for i, n in enumerate(node.input):
        if n in lw.consts:
            v = lw.consts[n].astype(np.float32)
            if layout == "nhwc":
                v = v.reshape((1,) * (4 - v.ndim) + v.shape).transpose(0, 2, 3, 1)
            inputs.append(lw.out.const(f"{node.output[0]}/operand{i}", np.ascontiguousarray(v)))
        else:
            inputs.append(lw.ir(n))
    act, out = lw.fused(node)
    y = lw.result(out, layout)
    options = "AddOptions" if node.op_type == "Add" else "MulOptions"
    code = node.op_type.upper()
    lw.out.add(Op(code, inputs, [y], options, {"fusedActivationFunction": act}))


def _unary(lw: _Lowering, node: onnx.NodeProto) -> None:
    code = {"Sigmoid": "LOGISTIC", "HardSwish": "HARD_SWISH"}.get(node.op_type)
    if code is None:
        act = lw.activation_kind(node)
        if act is None:
            raise UnsupportedOp(node.op_type, node.name, "only Clip(0, 6) and Clip(0, inf)")
        code = act
    y = lw.result(node.output[0], lw.layout[node.input[0]])
    lw.out.add(Op(code, [lw.ir(node.input[0])], [y]))


def _softmax(lw: _Lowering, node: onnx.NodeProto) -> None:
    layout = lw.layout[node.input[0]]
    rank = len(lw.out.tensors[lw.ir(node.input[0])].shape)
    axis = int(attrs(node).get("axis", -1)) % rank
    if (layout == "plain" and axis != rank - 1) or (layout == "nhwc" and axis != 1):
        raise UnsupportedOp("Softmax", node.name, f"axis {axis} of a rank-{rank} tensor")
    y = lw.result(node.output[0], layout)
    lw.out.add(Op("SOFTMAX", [lw.ir(node.input[0])], [y], "SoftmaxOptions", {"beta": 1.0}))


def _concat(lw: _Lowering, node: onnx.NodeProto) -> None:
    layout = lw.layout[node.input[0]]
    rank = len(lw.out.tensors[lw.ir(node.input[0])].shape)
    axis = int(attrs(node)["axis"]) % rank
    if any(n in lw.consts for n in node.input):
        raise UnsupportedOp("Concat", node.name, "constant operands")
    if layout == "nhwc":
        axis = NHWC_AXIS[axis]
    y = lw.result(node.output[0], layout)
    inputs = [lw.ir(n) for n in node.input]
    params = {"axis": axis, "fusedActivationFunction": "NONE"}
    lw.out.add(Op("CONCATENATION", inputs, [y], "ConcatenationOptions", params))
    lw.out.ties.extend((x, y) for x in inputs)


def _pad(lw: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    mode = a.get("mode", b"constant")
    value = lw.const(node, 2) if len(node.input) > 2 and node.input[2] else np.zeros(())
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or np.any(value != 0):
        raise UnsupportedOp("Pad", node.name, "only constant zero padding")
    if len(node.input) > 3 and node.input[3]:
        raise UnsupportedOp("Pad", node.name, "the axes input")
    pads = [int(p) for p in lw.const(node, 1)]
    rank = len(pads) // 2
    pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
    if lw.layout[node.input[0]] == "nhwc":
        pairs = [pairs[0], pairs[2], pairs[3], pairs[1]]
    if pairs[0] != (0, 0):
        raise UnsupportedOp("Pad", node.name, "padding the batch")
    p = lw.pad(lw.ir(node.input[0]), pairs, None, node.output[0])
    lw.alias[node.output[0]] = p
    lw.layout[node.output[0]] = lw.layout[node.input[0]]
    lw.out.source[p] = node.output[0]


def _identity(lw: _Lowering, node: onnx.NodeProto) -> None:
    lw.alias[node.output[0]] = lw.ir(node.input[0])
    lw.layout[node.output[0]] = lw.layout[node.input[0]]


LOWER = {
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _mean,
    "ReduceMean": _mean,
    "Flatten": _flatten,
    "Reshape": _flatten,
    "Gemm": _dense,
    "MatMul": _dense,
    "Add": _binary,
    "Mul": _binary,
    "Relu": _unary,
    "Clip": _unary,
    "Sigmoid": _unary,
    "HardSwish": _unary,
    "Softmax": _softmax,
    "Concat": _concat,
    "Pad": _pad,
    "Identity": _identity,
    "Dropout": _identity,
}
SUPPORTED_OPS = frozenset(LOWER)
