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
    litert-fp32               the same weights as a .tflite file: MLP chains by the MLP writer,
                              conv nets by the ONNX converter (tflite_conv)
    litert-structured-25, -50 MLP chains only: the pruned weights as a .tflite file
    litert-int8               full-integer int8 .tflite (float input/output), calibrated on
                              --calibration; any graph the converter handles

A builder that cannot apply to a model returns a :class:`Built` with ``skipped`` set to the
reason; it never guesses. The MLP chain reader lives in :mod:`edgeagent.models.mlp`; it accepts
graphs of Gemm, or MatMul with an optional Add, each followed by an optional activation,
with constant weights: what ``torch.nn.Sequential`` of Linear layers exports.

The builders live by technique: :mod:`.variant_base` (``Built``, fp32, file helpers),
:mod:`.variant_quant` (int8), :mod:`.variant_prune` (magnitude, structured) and
:mod:`.variant_litert` (LiteRT); this module is the plan that combines them, and re-exports
their names from where they lived before.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mlp import MLPChain, OptimizeError
from .variant_base import (
    Built,
    Precision,
    VariantRuntime,
    build_fp32,
    count_params,
    gzip_size,
)
from .variant_litert import build_litert, build_litert_int8
from .variant_prune import build_magnitude, build_structured, prune_chain
from .variant_quant import build_int8_dynamic, build_int8_static

if TYPE_CHECKING:
    import numpy.typing as npt

    Arrays = Mapping[str, npt.NDArray[Any]]

__all__ = [
    "ALL_VARIANTS",
    "NEEDS_CALIBRATION",
    "Built",
    "Precision",
    "VariantRuntime",
    "build_fp32",
    "build_int8_dynamic",
    "build_int8_static",
    "build_litert",
    "build_litert_int8",
    "build_magnitude",
    "build_structured",
    "build_variants",
    "count_params",
    "gzip_size",
    "prune_chain",
]

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
    "litert-int8",
    "litert-structured-25",
    "litert-structured-50",
)
NEEDS_CALIBRATION = frozenset(
    name for name in ALL_VARIANTS if "int8-static" in name or name == "litert-int8"
)


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
                if pruned == "int8":
                    if calibration is None:
                        raise OptimizeError("litert-int8 needs calibration data (--calibration)")
                    b = build_litert_int8(src, path(name, ".tflite"), calibration)
                    base = "litert-fp32" if "litert-fp32" in wanted else "fp32"
                    built[name] = replace(b, base=base)
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
