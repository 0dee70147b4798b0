"""Count the workloads of the models behind the published figures: ``workloads.yaml``.

::

    python -m edgeagent.devices.calibration.workloads --ncnn-repo ~/src/ncnn \\
        -o devices/calibration/workloads.yaml

``--ncnn-repo`` is a git checkout of Tencent/ncnn (files are read with ``git show HEAD:...``, and
the commit is recorded) or a plain directory holding ``benchncnn.cpp`` and the ``.param`` files.
Every model benchncnn runs by default is counted from its ``.param`` at benchncnn's input size.
XNNPACK's names map onto graphs as follows:

- ``mobilenet_v1`` → ncnn ``mobilenet`` (the same 569 MMAC network);
- ``mobilenet_v2`` → ncnn ``mobilenet_v2``, which is the Caffe port with a 1×1 expansion in its
  first block (+12.8 MMAC pointwise, 4 % over torchvision's and TFLite's graph);
- ``mobilenet_v3_large`` and ``mobilenet_v3_small`` → torchvision 0.28's graphs (random weights,
  exported to ONNX, :func:`~edgeagent.models.workload_onnx.count_onnx`): ncnn's ``mobilenet_v3``
  has MobileNetV3-Large's widths but runs its 160-channel stage at 14×14 instead of 7×7 and other
  SE widths (246 against 217 MMAC), so it is kept under its own name only.

The torchvision part needs torch and onnx (the ``train`` extra) and torchvision, which no extra
installs: PyPI's torchvision 0.28 is a CUDA build, and beside the CPU torch it breaks
``transformers`` (which imports it) for the whole environment. Install it by hand in a separate
virtual environment to regenerate those rows: ``pip install --no-deps torchvision==0.28.0 pillow``.
It runs at calibration time only.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..ncnn_param import NcnnParamError, count_param
from ..workload import WORK_CLASSES, Workload
from . import ModelWorkload, WorkloadTable

__all__ = [
    "TORCHVISION_MODELS",
    "XNNPACK_TO_NCNN",
    "benchncnn_inputs",
    "import_torchvision",
    "main",
    "ncnn_workloads",
    "torchvision_workload",
]

XNNPACK_TO_NCNN = {"mobilenet_v1": "mobilenet"}
"""XNNPACK model names counted from an ncnn graph of another name (``mobilenet_v2`` is shared)."""

TORCHVISION_MODELS = ("mobilenet_v3_large", "mobilenet_v3_small")
"""XNNPACK model names counted from torchvision's graph."""

GRAPH_NOTES = {
    "mobilenet_v2": "Caffe port: a 1x1 expansion in the first block, +12.8 MMAC pointwise over "
    "torchvision's/TFLite's graph",
    "mobilenet_v3": "MobileNetV3-Large widths, but the 160-channel stage runs at 14x14 and SE "
    "widths differ: 246 MMAC against torchvision's 217; not used for XNNPACK's v3 Large",
    "alexnet": "conv2, conv4 and conv5 are grouped (group 2), so counted as depthwise by the "
    "class rules although each group is a dense convolution",
}
"""What a reader of the calibration should know about particular ncnn graphs (checked by hand
against torchvision's graphs with the ONNX counter)."""

TORCHVISION_VERSION = "0.28"
_BENCH = re.compile(r'benchmark\("([^"]+)",\s*ncnn::Mat\((\d+),\s*(\d+),\s*(\d+)\)')

Reader = Callable[[str], str]
"""Reads a file of the ncnn tree by its path relative to the repository root."""


def benchncnn_inputs(source: str) -> dict[str, tuple[int, int, int]]:
    """Models ``benchncnn.cpp`` runs by default (not commented out) and their input (w, h, c)."""
    live = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _BENCH.finditer(live)}


def ncnn_workloads(read: Reader, where: str) -> dict[str, ModelWorkload]:
    """Count every default benchncnn model; ``where`` names the tree in each ``source``."""
    inputs = benchncnn_inputs(read("benchmark/benchncnn.cpp"))
    if not inputs:
        raise NcnnParamError("benchmark/benchncnn.cpp: no benchmark(...) calls found")
    counted: dict[str, ModelWorkload] = {}
    for name, size in inputs.items():
        path = f"benchmark/models/{name}.param"
        try:
            count = count_param(read(path), input_shape=size)
        except NcnnParamError as exc:
            raise NcnnParamError(f"{path}: {exc}") from exc
        notes = []
        if count.inferred:
            notes.append(f"{len(count.inferred)} layers without shape hints: shapes inferred")
        if count.unknown_shape:
            notes.append(f"not counted (no shape): {', '.join(count.unknown_shape)}")
        counted[name] = ModelWorkload(
            workload=_rounded(count.workload),
            input="x".join(map(str, size)),
            source=f"{where}/{path}",
            notes="; ".join(notes) or None,
        )
    for alias, name in XNNPACK_TO_NCNN.items():
        counted[alias] = counted[name].model_copy(update={"notes": f"ncnn's {name} graph"})
    for name, note in GRAPH_NOTES.items():
        if name in counted:
            old = counted[name].notes
            counted[name] = counted[name].model_copy(
                update={"notes": f"{note}; {old}" if old else note}
            )
    return counted


def _rounded(work: Workload) -> Workload:
    """Six decimals (1 MAC resolution): the YAML stays readable and diffs stay small."""
    amounts = {name: round(float(getattr(work, name)), 6) for name in WORK_CLASSES}
    return work.model_copy(update=amounts)


def import_torchvision() -> Any:
    """Import torchvision, also when its compiled ops cannot load.

    The torchvision wheel pinned for the ``train`` extra is a CUDA build; next to a CPU torch its
    ``_C`` extension does not load and ``import torchvision`` fails registering fake kernels for
    ``torchvision::nms``/``qnms``. The model definitions need neither, so the two schemas are
    declared and the import retried.
    """
    import torch

    try:
        return importlib.import_module("torchvision")
    except RuntimeError:
        library_class: Any = torch.library.Library  # untyped in torch
        library = library_class("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(library)
        return importlib.import_module("torchvision")


_KEEP: list[Any] = []
"""Holds the stand-in op library: torch drops the definitions when it is collected."""


def export_torchvision_onnx(name: str, path: Path, size: int = 224) -> Path:
    """Export a torchvision classifier with random weights to ONNX (TorchScript exporter)."""
    import torch

    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with warnings.catch_warnings():
        # The TorchScript exporter (and what it calls) is deprecated in favour of dynamo's, which
        # needs onnxscript (not a dependency); it writes the plain op-per-layer graph counted here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["x"]
        )
    return path


def torchvision_workload(name: str) -> ModelWorkload:
    """The workload of a torchvision classifier at 224×224, counted from its ONNX export."""
    from ...models.workload_onnx import count_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = count_onnx(export_torchvision_onnx(name, Path(tmp) / f"{name}.onnx"))
    return ModelWorkload(
        workload=_rounded(work),
        input="224x224x3",
        source=f"torchvision {TORCHVISION_VERSION} {name}, random weights, exported to ONNX "
        "(torch.onnx.export, dynamo=False) and counted by edgeagent.models.workload_onnx",
    )


def _reader(root: Path) -> tuple[Reader, str]:
    """A reader of the tree and how ``source`` names it (GitHub URL at the commit, or the dir)."""
    if (root / ".git").exists() or (root / "HEAD").is_file():
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

        def read_git(path: str) -> str:
            return subprocess.run(
                ["git", "-C", str(root), "show", f"HEAD:{path}"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip

        return read_git, f"https://github.com/Tencent/ncnn/blob/{commit}"

    def read_dir(path: str) -> str:
        for candidate in (root / path, root / Path(path).name):
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
        raise FileNotFoundError(f"{root}: neither {path} nor {Path(path).name}")

    return read_dir, str(root)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: count the graphs, write the YAML table."""
    parser = argparse.ArgumentParser(description="Count the calibration models' workloads.")
    parser.add_argument("--ncnn-repo", type=Path, required=True, help="ncnn checkout or dir")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    read, where = _reader(args.ncnn_repo)
    try:
        models = ncnn_workloads(read, where)
    except (OSError, subprocess.CalledProcessError, NcnnParamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in TORCHVISION_MODELS:
        models[name] = torchvision_workload(name)
    table = WorkloadTable(models=models)
    header = (
        "# Batch-1 workloads of the models behind devices/calibration/published.yaml.\n"
        "# Generated by python -m edgeagent.devices.calibration.workloads: do not edit by hand.\n"
    )
    body = yaml.safe_dump(table.model_dump(mode="json", exclude_none=True), sort_keys=False)
    args.output.write_text(header + body, encoding="utf-8")
    print(f"{len(models)} models -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
