"""A LoRA-capable base model: every dense (Gemm) layer of a trained ONNX model gets a low-rank
side path whose weights are graph inputs with zero defaults.

For each Gemm ``y = x @ W.T + b`` with a constant weight named ``<layer>.weight`` the base computes
``y = x @ W.T + b + (x @ A) @ B`` where ``A = <layer>.lora_A`` [in, rank] and
``B = <layer>.lora_B`` [rank, out] are graph inputs whose initializers (the defaults) have rank 0.
ONNX Runtime fills such inputs from an active adapter (``RunOptions.add_active_adapter``); with
none, ``x @ A`` is [N, 0] and the side path adds exactly zero, so the base *is* the plain model
(same outputs, bit for bit on the CPU provider) for 3.5 KB more on the intent model. Rank 0
defaults, not zero matrices of some rank, keep the base small and let each adapter choose its
own rank.

Pure ONNX graph surgery (``onnx`` only, no runtime): :func:`make_lora_base` builds the model,
:func:`lora_targets` lists a base's adaptable layers, :func:`write_lora_base` writes the file the
zoo recipe commits next to its plain model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .backend import ModelError

if TYPE_CHECKING:
    import onnx

LORA_A = ".lora_A"
LORA_B = ".lora_B"
SIDE_NODE = "/lora_"
"""Node names of the side path contain this (the trainer skips those nodes)."""
META_SOURCE = "edgeagent.lora.source"
META_TARGETS = "edgeagent.lora.targets"


class LoraBaseError(ModelError):
    """A model cannot be made LoRA-capable, or a file is not a LoRA base."""


@dataclass(frozen=True, slots=True)
class LoraTarget:
    """One adaptable layer: its name (the weight's name without ``.weight``) and widths."""

    name: str
    inputs: int
    outputs: int

    @property
    def a_name(self) -> str:
        return self.name + LORA_A

    @property
    def b_name(self) -> str:
        return self.name + LORA_B

    def parameters(self, rank: int) -> int:
        """Numbers an adapter of ``rank`` stores for this layer."""
        return rank * (self.inputs + self.outputs)


def _layer_name(weight: str) -> str:
    return weight.removesuffix(".weight")


def make_lora_base(plain: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """``plain`` with a zero-default LoRA side path on every Gemm layer (see the module doc).

    ``source`` names the plain model in the base's metadata (e.g. ``"intent"``). Raises
    :class:`LoraBaseError` when a Gemm is not ``x @ W.T + b`` with a constant 2-D weight, or
    when the model has no Gemm layer at all.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in plain.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    new_inits = list(plain.graph.initializer)
    inputs = list(plain.graph.input)
    targets: list[str] = []
    for node in plain.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: a for a in node.attribute}
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2:
            raise LoraBaseError(f"Gemm {node.name}: no constant 2-D weight to adapt")
        if ("transA" in attrs and attrs["transA"].i) or not (
            "transB" in attrs and attrs["transB"].i
        ):
            raise LoraBaseError(f"Gemm {node.name}: expected transB=1 and no transA (a Linear)")
        if any(k in attrs and attrs[k].f != 1.0 for k in ("alpha", "beta")):
            raise LoraBaseError(f"Gemm {node.name}: alpha/beta other than 1")
        outputs, width = (int(d) for d in weight.dims)
        layer = LoraTarget(_layer_name(weight.name), width, outputs)
        targets.append(layer.name)
        rank = f"rank_{layer.name}"
        sides: tuple[tuple[str, list[str | int], tuple[int, int]], ...] = (
            (layer.a_name, [width, rank], (width, 0)),
            (layer.b_name, [rank, outputs], (0, outputs)),
        )
        for name, shape, default in sides:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
            new_inits.append(numpy_helper.from_array(np.zeros(default, np.float32), name))
        out = node.output[0]
        nodes.append(helper.make_node("Gemm", list(node.input), [out + "_base"], name=node.name,
                                      transB=1))  # fmt: skip
        nodes.append(
            helper.make_node("MatMul", [node.input[0], layer.a_name], [out + "_xa"],
                             name=layer.name + SIDE_NODE + "A")
        )  # fmt: skip
        nodes.append(
            helper.make_node("MatMul", [out + "_xa", layer.b_name], [out + "_xab"],
                             name=layer.name + SIDE_NODE + "B")
        )  # fmt: skip
        nodes.append(
            helper.make_node("Add", [out + "_base", out + "_xab"], [out],
                             name=layer.name + SIDE_NODE + "add")
        )  # fmt: skip
    if not targets:
        raise LoraBaseError("the model has no Gemm (dense) layer to adapt")
    graph = helper.make_graph(
        nodes, (plain.graph.name or "model") + "_lora", inputs, list(plain.graph.output), new_inits
    )
    model = helper.make_model(
        graph, opset_imports=list(plain.opset_import), producer_name="edgeagent"
    )
    model.ir_version = plain.ir_version
    helper.set_model_props(model, {META_SOURCE: source, META_TARGETS: ",".join(targets)})
    return model


def lora_targets(base: onnx.ModelProto) -> list[LoraTarget]:
    """The adaptable layers of a LoRA base, in graph order; :class:`LoraBaseError` when the
    model has none (a plain model, not a base)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
    found: list[LoraTarget] = []
    for node in base.graph.node:
        if node.op_type == "Gemm" and len(node.input) > 1:
            layer = _layer_name(node.input[1])
            if layer + LORA_A in inits and layer + LORA_B in inits:
                weight = inits[node.input[1]]
                found.append(LoraTarget(layer, int(weight.shape[1]), int(weight.shape[0])))
    if not found:
        raise LoraBaseError(
            "not a LoRA base (no layer has lora_A/lora_B inputs); adapters need the base built "
            "by edgeagent.models.lora_base.make_lora_base, e.g. zoo:intent's intent-lora.onnx"
        )
    return found


def source_name(base: onnx.ModelProto) -> str:
    """The plain model the base was made from (its metadata), or the graph name."""
    props = {p.key: p.value for p in base.metadata_props}
    return props.get(META_SOURCE) or base.graph.name


def load_base(path: Path) -> onnx.ModelProto:
    """Read an ONNX file (``onnx`` needed), with a :class:`LoraBaseError` naming the file."""
    try:
        import onnx
    except ImportError as exc:
        raise LoraBaseError(
            f"reading {path} needs the onnx package: pip install 'edgeagent[train]'"
        ) from exc
    try:
        return onnx.load(str(path))
    except Exception as exc:  # OSError, or protobuf's DecodeError (an Exception only)
        raise LoraBaseError(f"{path}: cannot read ONNX model: {exc}") from exc


def write_lora_base(plain_path: Path, out: Path, source: str) -> Path:
    """Build the LoRA base of ``plain_path`` and write it to ``out`` (the zoo recipe's step)."""
    import onnx

    model = make_lora_base(load_base(plain_path), source)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out
