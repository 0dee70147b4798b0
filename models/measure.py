"""Measuring one model file: latency, peak memory, outputs; quality metrics; the device estimate.

Each measurement runs in a fresh Python process (``python -m edgeagent.models.measure``, a JSON
request on stdin, a JSON answer on stdout) so that its peak RSS (``VmHWM``) belongs to that model
alone. The process imports numpy, edgeagent and the runtime, loads the model with
:func:`edgeagent.models.load_model` and the profile's settings, warms up, times ``runs`` calls of
``Session.run`` at batch 1, reads its peak RSS, and only then computes the outputs on the
evaluation and calibration inputs (written to an ``.npz`` for the parent). A baseline process
does the same imports and reads the same batch-1 sample without loading a model; the model's peak
memory is the difference.

The device estimate is this machine's latency times the profile's speed factor (the int8 factor
for int8 variants): an estimate, exact only when this machine is the reference machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..devices.profile import DeviceProfile
from .backend import RuntimeSettings
from .card import Fidelity, Figures, Machine
from .mlp import OptimizeError, require

if TYPE_CHECKING:
    import numpy.typing as npt

    Arrays = Mapping[str, npt.NDArray[Any]]

RUNTIME_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
}
METRICS: dict[str, Literal["higher", "lower"]] = {
    "accuracy": "higher",
    "mae": "lower",
    "rmse": "lower",
}
"""Evaluation metrics: ``accuracy`` (argmax of the first output against integer ``labels``) and
two for numeric outputs (``mae``, ``rmse`` against ``labels`` of the output's shape)."""
BATCH = 256
WORKER_TIMEOUT_S = 900.0

METHOD_NOTES = (
    "latency: {runs} timed calls of edgeagent's Session.run at batch 1 (input checks included) "
    "after {warmup} warm-up calls, in a fresh process, with the profile's runtime settings; "
    "per-call wall time (time.perf_counter_ns); then every variant is re-timed loaded in one "
    "process, in 7 interleaved rounds of 200 calls in rotating order: p50 is the median of the "
    "round medians and p99 is over those 1400 calls, so that load on the machine falls on all "
    "variants alike and the order between close variants is the real one",
    "peak memory: peak RSS (VmHWM) of the process that loaded and timed the model, minus that "
    "of a baseline process importing the same runtime and data without loading a model",
    "device estimate: latency on this machine × the profile's speed factor (fp32 or int8): "
    "an estimate, as good as the factor and only exact if this machine is the reference machine",
    "size: the file in bytes; gzip: gzip -9 of it (what a download or a compressed bundle costs)",
)


def unit_for(metric: str | None, accuracy_checked: bool) -> str:
    """What a budget of ``1.0`` means for this metric."""
    if accuracy_checked and metric == "accuracy":
        return "points of accuracy"
    if accuracy_checked and metric is not None:
        return f"% relative increase of {metric}"
    return "points of top-1 disagreement with fp32"


def metric_value(metric: str, output: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float:
    import numpy as np

    if metric == "accuracy":
        if output.ndim < 2:
            raise OptimizeError(
                f"accuracy needs class scores, but the first output is {output.shape}"
            )
        return float((output.reshape(len(output), -1).argmax(axis=1) == labels.ravel()).mean())
    diff = output.astype(np.float64).reshape(labels.shape) - labels.astype(np.float64)
    if metric == "mae":
        return float(np.abs(diff).mean())
    if metric == "rmse":
        return float(np.sqrt((diff**2).mean()))
    raise OptimizeError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def quality_drop(metric: str, reference: float, value: float) -> float:
    """Loss against fp32 in the unit :func:`unit_for` names (negative: better than fp32)."""
    if METRICS[metric] == "higher":
        return round((reference - value) * 100, 6)
    return round((value - reference) / max(abs(reference), 1e-12) * 100, 6)


def fidelity(reference: npt.NDArray[Any], output: npt.NDArray[Any], data: str) -> Fidelity:
    import numpy as np

    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = output.astype(np.float64).reshape(len(output), -1)
    if ref.shape != out.shape:
        raise OptimizeError(f"output shape {output.shape} differs from fp32's {reference.shape}")
    diff = np.abs(ref - out)
    agree = None
    if ref.shape[1] > 1:
        agree = float((ref.argmax(axis=1) == out.argmax(axis=1)).mean())
    return Fidelity(
        data=data,
        samples=len(ref),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agree,
    )


def machine() -> Machine:
    """This machine, for the card."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for dist in ("edgeagent", "onnxruntime", "onnx", "ai-edge-litert", "numpy"):
        try:
            packages[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return Machine(
        machine=platform.machine(),
        cpu=cpu,
        cores=os.cpu_count() or 1,
        system=platform.platform(),
        python=platform.python_version(),
        packages=packages,
    )


# --- the parent side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """What a measurement process reports."""

    p50_ms: float
    p99_ms: float
    runs: int
    peak_kb: int
    outputs: dict[str, npt.NDArray[Any]]
    """First output of the model on each dataset given (by dataset name)."""


def _call_worker(request: dict[str, Any]) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgeagent.models.measure"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OptimizeError(f"measurement took longer than {WORKER_TIMEOUT_S:g} s") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if proc.returncode != 0 or "error" in answer or not answer:
        detail = answer.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OptimizeError(f"measurement failed: {detail}")
    return answer


def _write_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    np = require("numpy")
    np.savez(path, **arrays)
    return str(path)


def run_isolated(
    model: Path | None,
    runtime: str,
    settings: RuntimeSettings,
    sample: Arrays | None,
    datasets: Mapping[str, Arrays] | None = None,
    *,
    runs: int = 1000,
    warmup: int = 50,
) -> Timing:
    """Measure ``model`` in a fresh process (``model=None``: the baseline process)."""
    np = require("numpy")
    with tempfile.TemporaryDirectory(prefix="edgeagent-measure-") as tmp:
        work = Path(tmp)
        request: dict[str, Any] = {
            "model": None if model is None else str(model),
            "runtime": runtime,
            "settings": asdict(settings),
            "sample": None if sample is None else _write_npz(work / "sample.npz", sample),
            "runs": runs,
            "warmup": warmup,
            "datasets": {},
            "outputs": str(work / "outputs.npz"),
        }
        for name, arrays in (datasets or {}).items():
            request["datasets"][name] = _write_npz(work / f"{name}.npz", arrays)
        answer = _call_worker(request)
        outputs: dict[str, npt.NDArray[Any]] = {}
        if model is not None and request["datasets"]:
            with np.load(request["outputs"]) as saved:
                outputs = {key: saved[key] for key in saved.files}
    return Timing(
        p50_ms=float(answer.get("p50_ms", 0.0)),
        p99_ms=float(answer.get("p99_ms", 0.0)),
        runs=int(answer.get("runs", 0)),
        peak_kb=int(answer["peak_kb"]),
        outputs=outputs,
    )


def speed_factor(profile: DeviceProfile, precision: str) -> float:
    return profile.speed.int8.value if precision == "int8" else profile.speed.fp32.value


class Measurer:
    """Measures model files for one device profile on the same inputs (see the module doc)."""

    def __init__(
        self,
        profile: DeviceProfile,
        sample: Arrays | None,
        datasets: Mapping[str, Arrays] | None = None,
        *,
        runs: int = 1000,
        warmup: int = 50,
    ) -> None:
        self.profile = profile
        self.sample = sample
        self.datasets = dict(datasets or {})
        self.runs = runs
        self.warmup = warmup
        self._baselines: dict[tuple[str, RuntimeSettings], int] = {}

    def settings(self, path: Path) -> RuntimeSettings:
        from . import settings_for

        return settings_for(self.profile, path.stat().st_size)

    def baseline_kb(self, runtime: str, settings: RuntimeSettings) -> int:
        key = (runtime, settings)
        if key not in self._baselines:
            timing = run_isolated(None, runtime, settings, self.sample, runs=0, warmup=0)
            self._baselines[key] = timing.peak_kb
        return self._baselines[key]

    def measure(
        self, path: Path, runtime: str, precision: str, params: int | None = None
    ) -> tuple[Figures, Timing]:
        """Size, memory, latency and the device estimate (quality is the caller's)."""
        from .variants import gzip_size

        settings = self.settings(path)
        baseline = self.baseline_kb(runtime, settings)
        timing = run_isolated(
            path,
            runtime,
            settings,
            self.sample,
            self.datasets,
            runs=self.runs,
            warmup=self.warmup,
        )
        factor = speed_factor(self.profile, precision)
        peak = max(0, timing.peak_kb - baseline) / 1024
        p50, p99 = round(timing.p50_ms, 6), round(timing.p99_ms, 6)
        fig = Figures(
            size_bytes=path.stat().st_size,
            size_gzip_bytes=gzip_size(path),
            params=params,
            peak_memory_mb=round(peak, 2),
            threads=settings.threads,
            runs=timing.runs,
            p50_ms=p50,
            p99_ms=p99,
            speed_factor=factor,
            estimate_p50_ms=round(p50 * factor, 6),
            estimate_p99_ms=round(p99 * factor, 6),
        )
        return fig, timing


# --- the measurement process ----------------------------------------------------------------


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


def _worker(request: dict[str, Any]) -> dict[str, Any]:
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


def main() -> None:
    """``python -m edgeagent.models.measure``: one measurement, JSON in and out."""
    request = json.loads(sys.stdin.read())
    try:
        answer = _worker(request)
    except Exception as exc:  # reported to the parent, which names the variant
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
