"""Pruned variants: magnitude (unstructured zeros: a smaller compressed file only) and
structured (hidden units removed from an MLP chain, the only pruning that can lower latency).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mlp import Dense, MLPChain, apply_activation, chain_to_onnx, read_mlp_chain
from .variant_base import Built, count_params, load_onnx, save_onnx

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    F32 = npt.NDArray[np.float32]
    Arrays = Mapping[str, npt.NDArray[Any]]


def build_magnitude(src: Path, out: Path, sparsity: float) -> Built:
    """Zero the smallest |w| of each MatMul/Gemm weight matrix (per tensor), except the last
    layer's when there are several: the output layer is where zeros cost the most accuracy."""
    import numpy as np
    from onnx import numpy_helper

    pct = round(sparsity * 100)
    name = f"magnitude-{pct}"
    technique = f"magnitude pruning {pct}% (unstructured: compressed size only)"
    model = load_onnx(src)
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    weights = [
        node.input[1]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits
    ]
    kept_dense = weights[-1:] if len(weights) > 1 else []
    zeroed = total = 0
    for weight in weights[: len(weights) - len(kept_dense)]:
        i = inits[weight]
        w = numpy_helper.to_array(model.graph.initializer[i])
        if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
            continue
        k = int(sparsity * w.size)
        if k:
            cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            w = np.where(np.abs(w) <= cut, np.zeros_like(w), w)
        zeroed += int((w == 0).sum())
        total += int(w.size)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, weight))
    if not total:
        skip = "no MatMul/Gemm weight matrices to prune"
        return Built(name, technique, "fp32", "onnxruntime", None, skipped=skip)
    save_onnx(model, out)
    notes = [
        f"{zeroed} of {total} weights of the pruned layers are zero; the dense kernels still "
        "multiply them, so raw size and latency do not change"
    ]
    if kept_dense:
        notes.append(f"the output layer ({kept_dense[0]}) is left dense")
    return Built(
        name, technique, "fp32", "onnxruntime", out, count_params(model), notes=tuple(notes)
    )


def prune_chain(
    chain: MLPChain, fraction: float, calibration: F32 | None
) -> tuple[MLPChain, list[str]]:
    """Remove ``fraction`` of every hidden layer's units, the least important first.

    A unit's importance is ‖incoming weights and bias‖₂ · ‖outgoing weights‖₂. With enough
    calibration samples, the layer after each pruned one is refit by ridge least squares so
    that its pre-activations match the unpruned network's on the calibration data.
    """
    import numpy as np

    layers = [Dense(d.weight.copy(), d.bias.copy(), d.activation) for d in chain.layers]
    notes: list[str] = []
    n = 0 if calibration is None else len(calibration)
    refit = n > 0
    ref_pre: list[F32] = []
    if calibration is not None:
        x = calibration.reshape(len(calibration), -1).astype(np.float32)
        h = x
        for d in chain.layers:
            ref_pre.append(h @ d.weight + d.bias)
            h = apply_activation(ref_pre[-1], d.activation)
    widths_before = chain.widths
    for i in range(len(layers) - 1):
        cur, nxt = layers[i], layers[i + 1]
        units = cur.weight.shape[1]
        keep_n = max(1, units - int(fraction * units))
        incoming = np.sqrt((cur.weight**2).sum(axis=0) + cur.bias**2)
        outgoing = np.sqrt((nxt.weight**2).sum(axis=1))
        keep = np.sort(np.argsort(incoming * outgoing)[::-1][:keep_n])
        cur.weight = np.ascontiguousarray(cur.weight[:, keep])
        cur.bias = cur.bias[keep].copy()
        nxt.weight = np.ascontiguousarray(nxt.weight[keep, :])
        if refit and calibration is not None and n >= 2 * (keep_n + 1):
            h = calibration.reshape(len(calibration), -1).astype(np.float32)
            for d in layers[: i + 1]:
                h = apply_activation(h @ d.weight + d.bias, d.activation)
            a = np.hstack([h, np.ones((len(h), 1), np.float32)]).astype(np.float64)
            gram = a.T @ a
            ridge = 1e-3 * float(np.trace(gram)) / len(gram)
            theta = np.linalg.solve(gram + ridge * np.eye(len(gram)), a.T @ ref_pre[i + 1])
            nxt.weight = np.ascontiguousarray(theta[:-1].astype(np.float32))
            nxt.bias = theta[-1].astype(np.float32)
        elif refit:
            refit = False
            notes.append(
                f"too few calibration samples ({n}) to refit the layer after {keep_n} units; "
                "weights only sliced"
            )
    pruned = MLPChain(chain.input, chain.output, layers)
    notes.insert(
        0,
        "hidden units "
        + ", ".join(
            f"{a}→{b}" for a, b in zip(widths_before[1:-1], pruned.widths[1:-1], strict=True)
        )
        + "; ranked by ‖w_in‖·‖w_out‖",
    )
    if refit:
        notes.append(
            f"each following layer refit by ridge least squares on {n} "
            "calibration samples (no retraining)"
        )
    return pruned, notes


def build_structured(
    src: Path, out: Path, fraction: float, calibration: Arrays | None
) -> tuple[Built, MLPChain | None]:
    pct = round(fraction * 100)
    name = f"structured-{pct}"
    technique = f"structured pruning {pct}% of hidden units (smaller matrices)"
    model = load_onnx(src)
    chain = read_mlp_chain(model)
    if isinstance(chain, str):
        skip = f"structured pruning needs an MLP chain (Gemm/MatMul+Add+activation): {chain}"
        return Built(name, technique, "fp32", "onnxruntime", None, skipped=skip), None
    if len(chain.layers) < 2:
        skip = "a single dense layer has no hidden units to remove"
        return Built(name, technique, "fp32", "onnxruntime", None, skipped=skip), None
    data = None if calibration is None else calibration[chain.input]
    pruned, notes = prune_chain(chain, fraction, data)
    save_onnx(chain_to_onnx(pruned, model), out)
    return (
        Built(name, technique, "fp32", "onnxruntime", out, pruned.params, notes=tuple(notes)),
        pruned,
    )
