"""Variant builders for the optimizer: each turns an fp32 ONNX file into one candidate.

::

    fp32                      the model as given (a copy)
    int8-static               QDQ, per-channel int8 weights, activations calibrated on --calibration
    int8-dynamic              int8 weights, activations quantized at run time (MatMul/Gemm only;
                              skipped for graphs with convolutions: ConvInteger is several times
                              slower than fp32)
    magnitude-50, -80         unstructured: the smallest |w| of MatMul/Gemm weights set to zero.
                              Same raw size and speed, smaller compressed file
    structured-25, -50        MLP chains only: the hidden units with the smallest weight norms
                              removed, so the matrices really shrink (the only pruning that can
                              lower latency)
    <pruned>+int8-static      the two combined
    litert-fp32, litert-structured-25, -50
                              MLP chains only: the same weights written as a .tflite file

A builder that cannot apply to a model returns a :class:`Built` with ``skipped`` set to the
reason; it never guesses. The MLP chain reader lives in :mod:`edgeagent.models.mlp`; it accepts
graphs of Gemm, or MatMul with an optional Add, each followed by an optional activation,
with constant weights: what ``torch.nn.Sequential`` of Linear layers exports.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .backend import ModelError
from .mlp import (
    Dense,
    MLPChain,
    OptimizeError,
    apply_activation,
    batch_dim,
    chain_to_onnx,
    graph_inputs,
    has_conv,
    read_mlp_chain,
    require,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnx

    F32 = npt.NDArray[np.float32]
    Arrays = Mapping[str, npt.NDArray[Any]]

Precision = Literal["fp32", "int8"]
VariantRuntime = Literal["onnxruntime", "litert"]


ALL_VARIANTS: tuple[str, ...] = (
    "fp32",
    "int8-static",
    "int8-dynamic",
    "magnitude-50",
    "magnitude-80",
    "magnitude-80+int8-static",
    "structured-25",
    "structured-50",
    "structured-25+int8-static",
    "structured-50+int8-static",
    "litert-fp32",
    "litert-structured-25",
    "litert-structured-50",
)
NEEDS_CALIBRATION = frozenset(name for name in ALL_VARIANTS if "int8-static" in name)


@dataclass(frozen=True, slots=True)
class Built:
    """One candidate model, or the reason it could not be built."""

    name: str
    technique: str
    precision: Precision
    runtime: VariantRuntime
    path: Path | None
    params: int | None = None
    """Weights and biases in the fp32 model the variant was made from (quantization keeps it)."""
    base: str | None = None
    """The fp32 variant an int8 variant was quantized from (the "slower than fp32" rule)."""
    notes: tuple[str, ...] = ()
    skipped: str | None = None


# --- builders -----------------------------------------------------------------------------


def _load(path: Path) -> onnx.ModelProto:
    onnx_module = require("onnx")
    try:
        model: onnx.ModelProto = onnx_module.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OptimizeError(f"{path}: not an ONNX model ({exc})") from exc
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx_module = require("onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_module.save(model, str(path))
    return path


def count_params(model: onnx.ModelProto) -> int:
    """Elements of float initializers (weights and biases)."""
    from onnx import TensorProto

    total = 0
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            n = 1
            for d in t.dims:
                n *= int(d)
            total += n
    return total


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it out of our output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def build_fp32(src: Path, out: Path) -> Built:
    model = _load(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    return Built("fp32", "the model as given", "fp32", "onnxruntime", out, count_params(model))


def _preprocess(src: Path, work: Path) -> Path:
    shape_inference = require("onnxruntime.quantization.shape_inference")
    pre = work / f"{src.stem}.pre.onnx"
    if not pre.exists():
        with _quiet_quantizer():
            shape_inference.quant_pre_process(str(src), str(pre))
    return pre


def _calibration_batches(
    model: onnx.ModelProto, calibration: Arrays
) -> list[dict[str, npt.NDArray[Any]]]:
    names = graph_inputs(model)
    n = len(calibration[names[0]])
    step = 32 if batch_dim(model) != 1 else 1
    return [{name: calibration[name][i : i + step] for name in names} for i in range(0, n, step)]


def build_int8_static(
    src: Path, out: Path, calibration: Arrays, work: Path, *, name: str = "int8-static"
) -> Built:
    q = require("onnxruntime.quantization")
    model = _load(src)
    batches = _calibration_batches(model, calibration)

    reader_base: Any = q.CalibrationDataReader

    class Reader(reader_base):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
            return next(self._it, None)

    pre = _preprocess(src, work)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_quantizer():
        q.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
        )
    n = sum(len(next(iter(b.values()))) for b in batches)
    return Built(
        name,
        "int8 static: QDQ, per-channel int8 weights, int8 activations (MinMax calibration)",
        "int8",
        "onnxruntime",
        out,
        count_params(model),
        notes=(f"calibrated on {n} samples",),
    )


def build_int8_dynamic(src: Path, out: Path, work: Path) -> Built:
    technique = "int8 dynamic: int8 weights, activations quantized at run time"
    model = _load(src)
    if has_conv(model):
        return Built(
            "int8-dynamic",
            technique,
            "int8",
            "onnxruntime",
            None,
            skipped="the graph has convolutions: dynamic quantization (ConvInteger) is several "
            "times slower than fp32 there; int8-static is the int8 variant for it",
        )
    q = require("onnxruntime.quantization")
    pre = _preprocess(src, work)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_quantizer():
        q.quantize_dynamic(str(pre), str(out), weight_type=q.QuantType.QInt8)
    return Built("int8-dynamic", technique, "int8", "onnxruntime", out, count_params(model))


def build_magnitude(src: Path, out: Path, sparsity: float) -> Built:
    """Zero the smallest |w| of each MatMul/Gemm weight matrix (per tensor), except the last
    layer's when there are several: the output layer is where zeros cost the most accuracy."""
    import numpy as np
    from onnx import numpy_helper

    pct = round(sparsity * 100)
    name = f"magnitude-{pct}"
    technique = f"magnitude pruning {pct}% (unstructured: compressed size only)"
    model = _load(src)
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
    _save(model, out)
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
    model = _load(src)
    chain = read_mlp_chain(model)
    if isinstance(chain, str):
        skip = f"structured pruning needs an MLP chain (Gemm/MatMul+Add+activation): {chain}"
        return Built(name, technique, "fp32", "onnxruntime", None, skipped=skip), None
    if len(chain.layers) < 2:
        skip = "a single dense layer has no hidden units to remove"
        return Built(name, technique, "fp32", "onnxruntime", None, skipped=skip), None
    data = None if calibration is None else calibration[chain.input]
    pruned, notes = prune_chain(chain, fraction, data)
    _save(chain_to_onnx(pruned, model), out)
    return (
        Built(name, technique, "fp32", "onnxruntime", out, pruned.params, notes=tuple(notes)),
        pruned,
    )


def build_litert(
    src: Path, out: Path, *, name: str = "litert-fp32", chain: MLPChain | None = None
) -> Built:
    """Write the MLP chain's weights as a .tflite file (``write_mlp_tflite``)."""
    technique = "LiteRT (TFLite flatbuffer), fp32 weights"
    if chain is None:
        found = read_mlp_chain(_load(src))
        if isinstance(found, str):
            skip = f"the LiteRT writer handles MLP chains only: {found}"
            return Built(name, technique, "fp32", "litert", None, skipped=skip)
        chain = found
    try:
        writer = require("edgeagent.models.tflite_writer")
    except OptimizeError as exc:
        return Built(name, technique, "fp32", "litert", None, skipped=str(exc))
    acts = [d.activation for d in chain.layers]
    softmax = acts[-1] == "softmax"
    if softmax:
        acts[-1] = None
    unsupported = sorted({a for a in acts if a not in (None, "relu")})
    if unsupported:
        skip = f"the LiteRT writer fuses ReLU only, not {', '.join(map(str, unsupported))}"
        return Built(name, technique, "fp32", "litert", None, skipped=skip)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_mlp_tflite(
            [(d.weight.T.copy(), d.bias.copy()) for d in chain.layers],
            ["none" if a is None else a for a in acts],
            out,
            input_name=chain.input,
            output_name=chain.output,
            softmax=softmax,
        )
    except (ValueError, ModelError) as exc:
        return Built(name, technique, "fp32", "litert", None, skipped=f"writer refused: {exc}")
    return Built(
        name,
        technique,
        "fp32",
        "litert",
        out,
        chain.params,
        notes=("weights copied from the ONNX model; runs on the LiteRT interpreter",),
    )


# --- the plan -----------------------------------------------------------------------------


def build_variants(
    src: Path,
    out_dir: Path,
    calibration: Arrays | None,
    names: Sequence[str] = ALL_VARIANTS,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """Build the named variants of ``src`` into ``out_dir`` (fp32 always first)."""
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        raise OptimizeError(f"unknown variant(s) {', '.join(unknown)}; known: {ALL_VARIANTS}")
    wanted = ["fp32", *[n for n in ALL_VARIANTS if n in names and n != "fp32"]]
    for name in list(wanted):  # a combined variant is compared with the one it was made from
        base_name = name.partition("+")[0]
        if base_name != name and base_name not in wanted:
            wanted.insert(wanted.index(name), base_name)
    stem = src.stem
    built: dict[str, Built] = {}
    chains: dict[str, MLPChain | None] = {}

    def path(name: str, suffix: str = ".onnx") -> Path:
        return out_dir / f"{stem}.{name}{suffix}"

    with tempfile.TemporaryDirectory(prefix="edgeagent-opt-") as tmp:
        work = Path(tmp)
        for name in wanted:
            if progress is not None:
                progress(name)
            base_name, _, quant = name.partition("+")
            if name.startswith("litert-"):
                pruned = name.removeprefix("litert-")
                if pruned == "fp32":
                    built[name] = build_litert(src, path(name, ".tflite"))
                    continue
                parent = _ensure(pruned, built, chains, src, path, calibration, work)
                if parent.skipped or parent.path is None:
                    built[name] = _skipped_from(name, "litert", parent)
                else:
                    b = build_litert(
                        parent.path, path(name, ".tflite"), name=name, chain=chains.get(pruned)
                    )
                    built[name] = replace(
                        b,
                        technique=f"{parent.technique}, as LiteRT",
                        notes=parent.notes + b.notes,
                    )
                continue
            if quant:
                parent = _ensure(base_name, built, chains, src, path, calibration, work)
                if parent.skipped or parent.path is None:
                    built[name] = _skipped_from(name, "onnxruntime", parent)
                    continue
                assert calibration is not None
                b = build_int8_static(parent.path, path(name), calibration, work, name=name)
                built[name] = replace(
                    b,
                    technique=f"{parent.technique} + int8 static QDQ",
                    base=base_name,
                    params=parent.params,
                    notes=parent.notes + b.notes,
                )
                continue
            _ensure(name, built, chains, src, path, calibration, work)
    return [built[name] for name in wanted]


def _skipped_from(name: str, runtime: VariantRuntime, parent: Built) -> Built:
    return Built(
        name, parent.technique, "fp32", runtime, None, skipped=f"{parent.name}: {parent.skipped}"
    )


def _ensure(
    name: str,
    built: dict[str, Built],
    chains: dict[str, MLPChain | None],
    src: Path,
    path: Callable[[str], Path],
    calibration: Arrays | None,
    work: Path,
) -> Built:
    """Build a single-step variant once (the combined ones reuse it)."""
    if name in built:
        return built[name]
    if name == "fp32":
        b = build_fp32(src, path(name))
    elif name == "int8-static":
        if calibration is None:
            raise OptimizeError("int8-static needs calibration data (--calibration F.npz)")
        b = replace(build_int8_static(src, path(name), calibration, work), base="fp32")
    elif name == "int8-dynamic":
        b = replace(build_int8_dynamic(src, path(name), work), base="fp32")
    elif name.startswith("magnitude-"):
        b = build_magnitude(src, path(name), int(name.split("-")[1]) / 100)
    elif name.startswith("structured-"):
        b, chains[name] = build_structured(
            src, path(name), int(name.split("-")[1]) / 100, calibration
        )
    else:  # pragma: no cover - guarded by ALL_VARIANTS
        raise OptimizeError(f"no builder for {name}")
    built[name] = b
    return b
