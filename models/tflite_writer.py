"""Write a multilayer perceptron as a ``.tflite`` file, without TensorFlow.

``ai_edge_litert`` ships the TFLite flatbuffer schema (``schema_py_generated``, with the object
API), which is all a small dense model needs::

    write_mlp_tflite([(w1, b1), (w2, b2)], ["relu", "none"], "digits.tflite")

Each layer ``(W, b)`` (``W`` shaped ``(out, in)`` as in PyTorch's ``nn.Linear``) becomes one
FULLY_CONNECTED op with a fused RELU or none; an optional SOFTMAX ends the graph. The batch
dimension is dynamic (``shape_signature`` -1) unless ``dynamic_batch=False``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .backend import RuntimeMissing

try:
    import numpy as np
    import numpy.typing as npt
except ModuleNotFoundError as exc:  # numpy comes with the extra
    raise RuntimeMissing("numpy is not installed: pip install 'edgeagent[tflite]'") from exc

Activation = Literal["relu", "none"]

SCHEMA_VERSION = 3
BUFFER_ALIGNMENT = 16
"""Constant buffers start on this boundary (as the TFLite converter writes them), so kernels
may read weights with aligned SIMD loads straight from the mapped file."""


def _schema() -> Any:
    try:
        from ai_edge_litert import (  # type: ignore[import-untyped, unused-ignore]
            schema_py_generated,
        )
    except ImportError as exc:
        raise RuntimeMissing(
            f"writing .tflite needs ai-edge-litert's schema ({exc}): "
            "pip install 'edgeagent[tflite]'"
        ) from exc
    return schema_py_generated


def write_mlp_tflite(
    layers: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    activations: Sequence[Activation],
    path: str | os.PathLike[str],
    input_name: str = "x",
    output_name: str | None = None,
    softmax: bool = False,
    *,
    dynamic_batch: bool = True,
    description: str = "edgeagent MLP",
) -> Path:
    """Write ``layers`` as a float32 ``.tflite`` model at ``path`` and return the path.

    ``output_name`` defaults to ``"probabilities"`` with ``softmax`` and ``"logits"`` without.
    Raises ``ValueError`` for weights whose shapes do not chain or an unknown activation.
    """
    schema = _schema()
    if output_name is None:
        output_name = "probabilities" if softmax else "logits"
    if input_name == output_name:
        raise ValueError(f"input and output are both named {input_name!r}")
    weights = _check_layers(layers, activations)
    fused = {"relu": schema.ActivationFunctionType.RELU, "none": schema.ActivationFunctionType.NONE}
    f32 = schema.TensorType.FLOAT32

    aligned_buffer = aligned_buffer_type(schema)
    buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty sentinel, by convention
    tensors: list[Any] = []

    def constant(name: str, value: npt.NDArray[np.float32]) -> int:
        buffers.append(aligned_buffer(data=np.frombuffer(value.tobytes(), dtype=np.uint8)))
        tensors.append(
            schema.TensorT(
                shape=list(value.shape), type=f32, buffer=len(buffers) - 1, name=name, hasRank=True
            )
        )
        return len(tensors) - 1

    def activation(name: str, width: int) -> int:
        tensors.append(
            schema.TensorT(
                shape=[1, width],
                shapeSignature=[-1, width] if dynamic_batch else None,
                type=f32,
                buffer=0,
                name=name,
                hasRank=True,
            )
        )
        return len(tensors) - 1

    codes = [schema.BuiltinOperator.FULLY_CONNECTED]
    if softmax:
        codes.append(schema.BuiltinOperator.SOFTMAX)
    operator_codes = [
        schema.OperatorCodeT(deprecatedBuiltinCode=code, builtinCode=code, version=1)
        for code in codes
    ]

    operators: list[Any] = []
    x = first = activation(input_name, weights[0][0].shape[1])
    for i, ((w, b), act) in enumerate(zip(weights, activations, strict=True)):
        last = i == len(weights) - 1
        if not last:
            name = f"dense_{i}/out"
        elif not softmax:
            name = output_name
        else:  # the softmax's input
            name = "logits" if output_name != "logits" else f"dense_{i}/out"
        w_index = constant(f"dense_{i}/weights", w)
        b_index = constant(f"dense_{i}/bias", b)
        y = activation(name, w.shape[0])
        operators.append(
            schema.OperatorT(
                opcodeIndex=0,
                inputs=[x, w_index, b_index],
                outputs=[y],
                builtinOptionsType=schema.BuiltinOptions.FullyConnectedOptions,
                builtinOptions=schema.FullyConnectedOptionsT(fusedActivationFunction=fused[act]),
            )
        )
        x = y
    if softmax:
        y = activation(output_name, weights[-1][0].shape[0])
        operators.append(
            schema.OperatorT(
                opcodeIndex=1,
                inputs=[x],
                outputs=[y],
                builtinOptionsType=schema.BuiltinOptions.SoftmaxOptions,
                builtinOptions=schema.SoftmaxOptionsT(beta=1.0),
            )
        )
        x = y

    subgraph = schema.SubGraphT(
        tensors=tensors, inputs=[first], outputs=[x], operators=operators, name="main"
    )
    return write_model(
        schema,
        path,
        subgraph=subgraph,
        operator_codes=operator_codes,
        buffers=buffers,
        description=description,
        inputs={input_name: first},
        outputs={output_name: x},
    )


def aligned_buffer_type(schema: Any) -> Any:
    """``schema.BufferT`` whose data starts on :data:`BUFFER_ALIGNMENT` in the file."""
    buffer_t: Any = schema.BufferT

    class AlignedBufferT(buffer_t):  # type: ignore[misc]
        def Pack(self, builder: Any) -> Any:  # the generated API's name
            if self.data is not None:
                # Pad so that the vector's data (written next, back to front) starts aligned.
                builder.Prep(BUFFER_ALIGNMENT, len(self.data))
            return super().Pack(builder)

    return AlignedBufferT


def write_model(
    schema: Any,
    path: str | os.PathLike[str],
    *,
    subgraph: Any,
    operator_codes: list[Any],
    buffers: list[Any],
    description: str,
    inputs: dict[str, int],
    outputs: dict[str, int],
) -> Path:
    """Wrap one subgraph in a model with a ``serving_default`` signature (name → tensor index)
    and write it as a ``.tflite`` flatbuffer at ``path`` (parent folders made)."""
    signature = schema.SignatureDefT(
        inputs=[schema.TensorMapT(name=n, tensorIndex=i) for n, i in inputs.items()],
        outputs=[schema.TensorMapT(name=n, tensorIndex=i) for n, i in outputs.items()],
        signatureKey="serving_default",
        subgraphIndex=0,
    )
    model = schema.ModelT(
        version=SCHEMA_VERSION,
        operatorCodes=operator_codes,
        subgraphs=[subgraph],
        description=description,
        buffers=buffers,
        signatureDefs=[signature],
    )
    # A dependency of ai-edge-litert: present whenever the schema is.
    import flatbuffers  # type: ignore[import-untyped, unused-ignore]

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(builder.Output()))
    return out


def _check_layers(
    layers: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]], activations: Sequence[str]
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    if not layers:
        raise ValueError("an MLP needs at least one layer")
    if len(activations) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(activations)} activations")
    checked: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    width: int | None = None
    for i, ((w_in, b_in), act) in enumerate(zip(layers, activations, strict=True)):
        if act not in ("relu", "none"):
            raise ValueError(f"layer {i}: activation {act!r} is not one of 'relu', 'none'")
        w = np.ascontiguousarray(w_in, dtype=np.float32)
        b = np.ascontiguousarray(b_in, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"layer {i}: weights must be 2-D (out, in), not shaped {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: bias shaped {b.shape}, expected ({w.shape[0]},)")
        if width is not None and w.shape[1] != width:
            raise ValueError(
                f"layer {i}: weights take {w.shape[1]} inputs but layer {i - 1} gives {width}"
            )
        width = w.shape[0]
        checked.append((w, b))
    return checked
