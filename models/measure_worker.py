"""The measurement process (``python -m edgeagent.models.measure`` runs :func:`measure_request`)
and the in-process interleaved re-timing of several models.

The process imports the runtime, loads the model, warms up, times ``runs`` calls at batch 1,
reads its peak RSS, and only then computes the outputs on the datasets, so the outputs' memory
does not count as the model's. See :mod:`edgeagent.models.measure` for the parent side.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import RuntimeSettings
from .mlp import OptimizeError, require

if TYPE_CHECKING:
    import numpy.typing as npt

    Arrays = Mapping[str, npt.NDArray[Any]]

RUNTIME_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
}


BATCH = 256


def _peak_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024 if sys.platform == "darwin" else peak)


def _import_runtime(runtime: str) -> None:
    import importlib

    errors = []
    for name in RUNTIME_MODULES[runtime]:
        try:
            importlib.import_module(name)
            return
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise OptimizeError(f"{runtime} is not available ({'; '.join(errors)})")


def measure_request(request: dict[str, Any]) -> dict[str, Any]:
    import time

    import numpy as np

    from . import load_model

    _import_runtime(request["runtime"])
    sample: dict[str, Any] = {}
    if request["sample"] is not None:
        with np.load(request["sample"]) as loaded:
            sample = {key: loaded[key] for key in loaded.files}
    if request["model"] is None:
        return {"peak_kb": _peak_kb()}
    session = load_model(request["model"], RuntimeSettings(**request["settings"]))
    specs = session.inputs
    names = [s.name for s in specs]
    if set(names) != set(sample) and len(names) == len(sample):
        sample = dict(zip(names, sample.values(), strict=True))  # LiteRT may rename inputs

    def feeds(arrays: Mapping[str, Any], rows: slice) -> dict[str, Any]:
        return {s.name: np.ascontiguousarray(arrays[s.name][rows], dtype=s.dtype) for s in specs}

    if not sample:  # zeros of the input signature, dynamic dimensions as 1
        sample = {s.name: np.zeros([d or 1 for d in s.shape], dtype=s.dtype) for s in specs}
    one = feeds(sample, slice(0, 1))
    run = session.run
    for _ in range(request["warmup"]):
        run(one)
    clock = time.perf_counter_ns
    times = []
    for _ in range(request["runs"]):
        start = clock()
        run(one)
        times.append(clock() - start)
    peak = _peak_kb()
    ms = np.asarray(times, dtype=np.float64) / 1e6
    blocks = min(10, max(1, len(ms) // 10))
    size = len(ms) // blocks
    medians = np.median(ms[: blocks * size].reshape(blocks, size), axis=1)
    outputs: dict[str, Any] = {}
    first = session.outputs[0].name
    for name, path in request["datasets"].items():
        with np.load(path) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
        if set(names) != set(arrays) and len(names) == len(arrays):
            arrays = dict(zip(names, arrays.values(), strict=True))
        n = len(next(iter(arrays.values())))
        step = BATCH if all(s.shape and s.shape[0] is None for s in specs) else 1
        parts = [run(feeds(arrays, slice(i, i + step)))[first] for i in range(0, n, step)]
        outputs[name] = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    if outputs:
        np.savez(request["outputs"], **outputs)
    return {
        "peak_kb": peak,
        "runs": len(times),
        "p50_ms": float(medians.min()),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def retime_interleaved(
    models: Mapping[str, tuple[Path, RuntimeSettings]],
    sample: Arrays | None,
    *,
    rounds: int = 7,
    block: int = 200,
) -> dict[str, tuple[float, float]]:
    """(p50, p99) in ms of each model, timed in one process in interleaved, rotating rounds.

    Measuring variants one after another lets a burst of load on the machine land on one of them;
    interleaving spreads it over all, so the order between close variants is the real one. Each
    round times ``block`` calls per model; p50 is the median of the per-round medians, p99 is
    over all the calls.
    """
    np = require("numpy")
    from . import load_model

    sessions = {name: load_model(path, settings) for name, (path, settings) in models.items()}
    feeds: dict[str, dict[str, Any]] = {}
    for name, session in sessions.items():
        specs = session.inputs
        if sample and len(sample) == len(specs):
            arrays = list(sample.values())
            feeds[name] = {
                s.name: np.ascontiguousarray(a[:1], dtype=s.dtype)
                for s, a in zip(specs, arrays, strict=True)
            }
        else:
            feeds[name] = {s.name: np.zeros([d or 1 for d in s.shape], s.dtype) for s in specs}
        for _ in range(20):
            session.run(feeds[name])
    names = list(sessions)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    every: dict[str, list[int]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, one = sessions[name].run, feeds[name]
            times = []
            for _ in range(block):
                start = clock()
                run(one)
                times.append(clock() - start)
            per_round[name].append(float(np.median(times)) / 1e6)
            every[name] += times
    return {
        n: (float(np.median(per_round[n])), float(np.percentile(every[n], 99)) / 1e6) for n in names
    }
