"""A LoRA base for a built onnxruntime-genai model, and the model's weights back in torch.

The zoo's tiny LLM is committed as an int4 genai folder; its transformers checkpoint is not
kept, and rebuilding it through the genai builder with a PEFT adapter would re-quantize the
weights and give a *different* model. So the LoRA base is made from the committed ONNX file
itself (:func:`make_lora_base`): every target ``MatMulNBits`` (or ``MatMul``) ``y = x W`` gets a
side path ``y + (x A) B`` whose ``<layer>.lora_A.MatMul.weight`` [in, rank] and
``….lora_B.MatMul.weight`` [rank, out] are graph inputs with rank-0 defaults, the names the
genai builder gives a baked adapter (:mod:`.lora_llm`). With no adapter active ``x A`` is empty
and the side path adds exact zeros: the base generates the plain model's tokens (tested). Pure
protobuf surgery, deterministic: the same model file gives a byte-identical base.

:func:`dequantized_weights` reads the int4 weights back as fp32 (``(nibble - 8) * scale``,
block-wise, as ``MatMulNBits`` computes them), so training (:mod:`.llm_adapt`) runs PEFT on a
transformers model with exactly the weights the device runs.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .lora_base import LoraBaseError, load_base

MODEL_FILE = "model.onnx"
DEFAULT_TARGETS = ("qkv_proj", "o_proj")
"""Layers of each decoder block that get a side path: the attention projections (where the
household's words are read and routed); the MLP is left alone to keep adapters small."""
LORA_DIR = "lora"
"""A zoo LLM's LoRA base: the subfolder of its genai folder (``models/zoo/tinyllm/lora``)."""
_WEIGHT = re.compile(r"^(?P<layer>.+)\.MatMul\.weight(?:_Q4)?$")


def lora_folder(folder: Path) -> Path:
    """The LoRA base of a genai folder: its ``lora/`` subfolder, else the folder itself (a
    base made by :func:`.lora_llm.split_adapter`)."""
    sub = folder / LORA_DIR
    return sub if (sub / "genai_config.json").is_file() else folder


def lora_names(layer: str) -> tuple[str, str]:
    """The graph input names of ``layer``'s LoRA matrices (the genai builder's names)."""
    return f"{layer}.lora_A.MatMul.weight", f"{layer}.lora_B.MatMul.weight"


def _shape(node: Any, model: Any, weight: str) -> tuple[int, int]:
    from onnx import numpy_helper

    if node.op_type == "MatMulNBits":
        attrs = {a.name: a.i for a in node.attribute}
        return int(attrs["K"]), int(attrs["N"])
    for t in model.graph.initializer:
        if t.name == weight:
            k, n = numpy_helper.to_array(t).shape
            return int(k), int(n)
    raise LoraBaseError(f"{weight}: no initializer")


def make_lora_base(model_path: Path, out: Path, targets: Iterable[str] = DEFAULT_TARGETS) -> int:
    """Write ``model_path`` with LoRA side paths on every ``MatMulNBits``/``MatMul`` whose
    weight's layer name ends in one of ``targets`` to ``out``; the number of layers adapted."""
    from onnx import TensorProto, helper, save

    wanted = tuple(targets)
    model = load_base(model_path)
    nodes = list(model.graph.node)
    done = 0
    new_nodes = []
    for node in nodes:
        new_nodes.append(node)
        if node.op_type not in ("MatMulNBits", "MatMul") or len(node.input) < 2:
            continue
        found = _WEIGHT.match(node.input[1])
        if found is None or found["layer"].rsplit(".", 1)[-1] not in wanted:
            continue
        layer = found["layer"]
        k, n = _shape(node, model, node.input[1])
        a_name, b_name = lora_names(layer)
        x, y = node.input[0], node.output[0]
        base_out, xa, xab = f"{y}/lora_base", f"{y}/lora_xA", f"{y}/lora_xAB"
        node.output[0] = base_out
        model.graph.input.append(
            helper.make_tensor_value_info(a_name, TensorProto.FLOAT, [k, "rank"])
        )
        model.graph.input.append(
            helper.make_tensor_value_info(b_name, TensorProto.FLOAT, ["rank", n])
        )
        model.graph.initializer.append(helper.make_tensor(a_name, TensorProto.FLOAT, [k, 0], []))
        model.graph.initializer.append(helper.make_tensor(b_name, TensorProto.FLOAT, [0, n], []))
        prefix = node.name.rsplit("/", 1)[0] + "/lora"
        new_nodes += [
            helper.make_node("MatMul", [x, a_name], [xa], name=f"{prefix}/MatMul_A"),
            helper.make_node("MatMul", [xa, b_name], [xab], name=f"{prefix}/MatMul_B"),
            helper.make_node("Add", [base_out, xab], [y], name=f"{prefix}/Add"),
        ]
        done += 1
    if not done:
        raise LoraBaseError(f"{model_path}: no MatMul layer named like {', '.join(wanted)}")
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(out))
    return done


def make_lora_folder(folder: Path, out: Path, targets: Iterable[str] = DEFAULT_TARGETS) -> Path:
    """A genai folder ``out``: ``folder``'s files with its ``model.onnx`` made a LoRA base."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith((MODEL_FILE, "card.")):
            shutil.copyfile(path, out / path.name)
    make_lora_base(folder / MODEL_FILE, out / MODEL_FILE, targets)
    return out


def dequantized_weights(model_path: Path) -> dict[str, Any]:
    """Every weight of a genai model as fp32 numpy, by layer name (``model.layers.0.attn.
    qkv_proj`` -> [out, in], like a torch ``Linear``), plus norms and the tied embedding."""
    import numpy as np
    from onnx import numpy_helper

    model = load_base(model_path)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if attrs.get("bits") != 4 or (len(node.input) > 3 and node.input[3]):
            raise LoraBaseError(f"{node.name}: only symmetric int4 MatMulNBits is supported")
        found = _WEIGHT.match(node.input[1])
        if found is None:
            continue
        packed, scales = init[node.input[1]], init[node.input[2]]
        n, blocks, _ = packed.shape
        low, high = packed & 0x0F, packed >> 4
        q = np.stack([low, high], axis=-1).reshape(n, blocks, -1).astype(np.float32) - 8.0
        w = q * scales.reshape(n, blocks, 1).astype(np.float32)
        out[found["layer"]] = w.reshape(n, -1)[:, : attrs["K"]]
    for name, value in init.items():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            out[name] = value.astype(np.float32)
    return out
