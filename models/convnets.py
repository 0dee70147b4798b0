"""Conv nets with random weights, written as ONNX without torch: test and benchmark models.

::

    mobilenet_v1_onnx("mnv1.onnx", alpha=0.25, size=96, classes=10)   # a few hundred KB
    tiny_resnet_onnx("resnet.onnx")                                    # Add, Pad, MaxPool, SE, ...

Weights are He-initialised with a random batch norm folded in (as an exporter folds a trained
one), ReLU6 is ``Clip(0, 6)``, the batch is dynamic, opset 17. The same seed gives the same bytes,
so a test or a benchmark can make its model instead of shipping one. Random weights say nothing
about accuracy; they exercise the converters and give real latency figures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mlp import require

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnx

MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
"""(pointwise output channels, depthwise stride) of the 13 depthwise-separable blocks."""
BN_SHIFT = 1.0
"""Mean of the fitted batch norm's shift, in standard deviations: most units stay active, as in
a trained net; centred at 0 a deep random net is chaotic (int8 noise grows layer by layer)."""


class _Net:
    """An ONNX graph under construction: nodes, initializers, and a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.np = require("numpy")
        self.helper = require("onnx.helper")
        self.numpy_helper = require("onnx.numpy_helper")
        self.rng = self.np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def const(self, value: npt.NDArray[Any], kind: str) -> str:
        name = self.name(kind)
        self.inits.append(self.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        group: int = 1,
        act: str | None = "relu6",
        pad: int | None = None,
    ) -> str:
        """Conv with a folded batch norm (weights and bias), then the activation."""
        np = self.np
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // group, k, k))
        gamma = self.rng.uniform(0.5, 1.5, cout)
        beta = self.rng.normal(0, 0.1, cout)
        mean = self.rng.normal(0, 0.1, cout)
        var = self.rng.uniform(0.5, 1.5, cout)
        scale = gamma / np.sqrt(var + 1e-5)
        weight = (w * scale[:, None, None, None]).astype(np.float32)
        bias = (beta - mean * scale).astype(np.float32)
        p = k // 2 if pad is None else pad
        y = self.node(
            "Conv",
            [x, self.const(weight, "w"), self.const(bias, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            group=group,
        )
        return self.activation(y, act)

    def activation(self, x: str, act: str | None) -> str:
        if act == "relu":
            return self.node("Relu", [x])
        if act == "relu6":
            zero = self.const(self.np.array(0, self.np.float32), "min")
            six = self.const(self.np.array(6, self.np.float32), "max")
            return self.node("Clip", [x, zero, six])
        if act == "hardswish":
            return self.node("HardSwish", [x])
        return x

    def head(self, x: str, width: int, classes: int, softmax: bool) -> str:
        pooled = self.node("GlobalAveragePool", [x])
        flat = self.node("Flatten", [pooled], axis=1)
        np = self.np
        w = self.rng.normal(0, np.sqrt(1 / width), (classes, width)).astype(np.float32)
        b = self.rng.normal(0, 0.01, classes).astype(np.float32)
        logits = self.node("Gemm", [flat, self.const(w, "fc_w"), self.const(b, "fc_b")], transB=1)
        return self.node("Softmax", [logits], axis=-1) if softmax else logits

    def save(self, path: str | os.PathLike[str], name: str, size: int, out: str) -> Path:
        onnx_module = require("onnx")
        helper = self.helper
        f32 = onnx_module.TensorProto.FLOAT
        renamed = self.nodes[-1]
        renamed.output[0] = out
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("image", f32, ["N", 3, size, size])],
            [helper.make_tensor_value_info(out, f32, None)],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeagent"
        )
        model.ir_version = 9
        model = onnx_module.shape_inference.infer_shapes(model)
        onnx_module.checker.check_model(model)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx_module.save(model, str(target))
        return target


def mobilenet_v1_onnx(
    path: str | os.PathLike[str],
    *,
    alpha: float = 1.0,
    size: int = 224,
    classes: int = 1000,
    seed: int = 0,
    softmax: bool = False,
) -> Path:
    """Write MobileNet v1 (width ``alpha``, input ``size``) with random weights at ``path``.

    Input ``image`` is ``N x 3 x size x size``; the output is ``logits`` (or ``probabilities``
    with ``softmax``). 1.0-224 is the published architecture (4.2 M parameters).
    """
    if not 0 < alpha <= 4 or size < 32 or classes < 1:
        raise ValueError(f"alpha {alpha}, size {size}, classes {classes}: out of range")
    net = _Net(seed)

    def width(c: int) -> int:
        return max(8, int(c * alpha))

    c = width(32)
    x = net.conv("image", 3, c, 3, stride=2)
    for cout, stride in MOBILENET_V1_BLOCKS:
        x = net.conv(x, c, c, 3, stride=stride, group=c)
        x = net.conv(x, c, width(cout), 1)
        c = width(cout)
    net.head(x, c, classes, softmax)
    out = "probabilities" if softmax else "logits"
    return net.save(path, f"mobilenet_v1_{alpha:g}_{size}", size, out)


def tiny_resnet_onnx(
    path: str | os.PathLike[str],
    *,
    size: int = 64,
    classes: int = 10,
    seed: int = 0,
    softmax: bool = True,
) -> Path:
    """A small residual net that uses what MobileNet v1 does not: MaxPool with padding, an
    explicit Pad, Add (residual), Mul (a squeeze-excite gate with Sigmoid), HardSwish, Concat,
    AveragePool, ReduceMean, Relu, and a softmax head."""
    np = require("numpy")
    net = _Net(seed)
    x = net.conv("image", 3, 16, 3, stride=2, act="relu")
    x = net.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    # residual block
    y = net.conv(x, 16, 16, 3, act="relu")
    y = net.conv(y, 16, 16, 3, act=None)
    x = net.activation(net.node("Add", [x, y]), "relu")
    # downsampling block: explicit Pad + valid conv; 1x1 stride-2 projection on the skip
    pads = net.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    padded = net.node("Pad", [x, pads], mode="constant")
    y = net.conv(padded, 16, 32, 3, stride=2, act="hardswish", pad=0)
    skip = net.conv(x, 16, 32, 1, stride=2, act=None, pad=0)
    x = net.node("Add", [y, skip])
    # squeeze-excite gate
    squeezed = net.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    gate = net.node("Sigmoid", [net.conv(squeezed, 32, 32, 1, act=None)])
    x = net.node("Mul", [x, gate])
    # two branches concatenated on channels, one averaged
    a = net.conv(x, 32, 16, 1, act="relu6")
    b = net.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    b = net.conv(b, 32, 16, 1, act="relu")
    bias = net.const(np.full((1, 16, 1, 1), 0.1, np.float32), "shift")
    b = net.node("Add", [b, bias])
    x = net.node("Concat", [a, b], axis=1)
    net.head(x, 32, classes, softmax)
    return net.save(path, "tiny_resnet", size, "probabilities" if softmax else "logits")


def fit_batch_norm(
    path: str | os.PathLike[str], images: npt.NDArray[np.float32], *, seed: int = 0
) -> Path:
    """Rescale every Conv of the ONNX file at ``path`` (in place) so that, over ``images``, each
    output channel has a mean drawn from N(0, 0.1) and a standard deviation from U(0.5, 1.5):
    the batch norm a trained network folds in. Without it a deep random net's outputs hardly
    depend on its input (every image gets the same class), which tests nothing about int8."""
    np_ = require("numpy")
    onnx_module = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
    ort = require("onnxruntime")
    model = onnx_module.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    rng = np_.random.default_rng(seed)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    for node in convs:
        (y,) = _probe(ort, onnx_module, model, node.output[0]).run(None, {"image": images})
        mean, std = y.mean(axis=(0, 2, 3)), y.std(axis=(0, 2, 3)) + 1e-6
        gain = rng.uniform(0.5, 1.5, len(mean)) / std
        shift = rng.normal(BN_SHIFT, 0.1, len(mean))
        w = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]])
        new_w = (w * gain[:, None, None, None]).astype(np_.float32)
        new_b = ((b - mean) * gain + shift).astype(np_.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_w, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_b, node.input[2]))
    gemm = next((n for n in model.graph.node if n.op_type == "Gemm"), None)
    if gemm is not None:  # standardize each logit over the images: every class gets its turn
        (z,) = _probe(ort, onnx_module, model, gemm.output[0]).run(None, {"image": images})
        mean, std = z.mean(axis=0), z.std(axis=0) + 1e-6
        w = numpy_helper.to_array(inits[gemm.input[1]])
        b = numpy_helper.to_array(inits[gemm.input[2]])
        inits[gemm.input[1]].CopyFrom(
            numpy_helper.from_array((w / std[:, None]).astype(np_.float32), gemm.input[1])
        )
        inits[gemm.input[2]].CopyFrom(
            numpy_helper.from_array(((b - mean) / std).astype(np_.float32), gemm.input[2])
        )
    onnx_module.save(model, str(path))
    return Path(path)


def _probe(ort: Any, onnx_module: Any, model: onnx.ModelProto, output: str) -> Any:
    """An onnxruntime session of ``model`` whose only output is ``output``."""
    probe = onnx_module.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx_module.helper.make_empty_tensor_value_info(output))
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
