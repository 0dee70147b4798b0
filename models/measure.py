"""Measuring one model file: latency, peak memory, outputs; quality metrics; the device estimate.

Each measurement runs in a fresh Python process (``python -m edgeagent.models.measure``, a JSON
request on stdin, a JSON answer on stdout) so that its peak RSS (``VmHWM``) belongs to that model
alone. The process imports numpy, edgeagent and the runtime, loads the model with
:func:`edgeagent.models.load_model` and the profile's settings, warms up, times ``runs`` calls of
``Session.run`` at batch 1, reads its peak RSS, and only then computes the outputs on the
evaluation and calibration inputs (written to an ``.npz`` for the parent). A baseline process
does the same imports and reads the same batch-1 sample without loading a model; the model's peak
memory is the difference.

The device estimate comes from :mod:`.estimate`: the device's speed model applied to the model's
graph (independent of this machine's timing), measured when this machine is the device, and the
old "this machine's latency × the profile's factor" only as a fallback with a wide range.

Quality metrics live in :mod:`.quality`, the measurement process and the interleaved re-timing
in :mod:`.measure_worker`; their names are re-exported here, where they lived before.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices.profile import DeviceProfile
from ..devices.workload import Workload
from .backend import RuntimeSettings
from .card import Figures, Machine
from .estimate import DeviceEstimate, device_estimate, local_threads, workload_of
from .measure_worker import BATCH, RUNTIME_MODULES, measure_request, retime_interleaved
from .mlp import OptimizeError, require
from .quality import METRICS, fidelity, metric_value, quality_drop, unit_for

if TYPE_CHECKING:
    import numpy.typing as npt

    Arrays = Mapping[str, npt.NDArray[Any]]

__all__ = [
    "BATCH",
    "METHOD_NOTES",
    "METRICS",
    "RUNTIME_MODULES",
    "WORKER_TIMEOUT_S",
    "Measurer",
    "Timing",
    "fidelity",
    "machine",
    "main",
    "metric_value",
    "quality_drop",
    "retime_interleaved",
    "run_isolated",
    "speed_factor",
    "unit_for",
    "with_estimate",
]

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
    "device estimate: the device's speed model (per operator class, per precision, at the "
    "device's threads, fitted to published real-device figures or recorded runs) applied to the "
    "model's graph, with its range; measured when this machine is the device; this machine's "
    "latency × the profile's speed factor only when the graph cannot be counted (range 2× either "
    "way). Local timing uses at most this machine's CPUs",
    "size: the file in bytes; gzip: gzip -9 of it (what a download or a compressed bundle costs)",
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


def run_json_module(
    module: str, request: dict[str, Any], timeout_s: float
) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m module`` with ``request`` as JSON on stdin; its exit code, the JSON object
    on its last stdout line ({} when there is none) and its stderr. Raises
    :class:`subprocess.TimeoutExpired` past ``timeout_s``. The measurement children (this module's
    and :mod:`edgeagent.models.llm_measure`) answer this way."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    return proc.returncode, answer if isinstance(answer, dict) else {}, proc.stderr


def _call_worker(request: dict[str, Any]) -> dict[str, Any]:
    try:
        code, answer, stderr = run_json_module(
            "edgeagent.models.measure", request, WORKER_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise OptimizeError(f"measurement took longer than {WORKER_TIMEOUT_S:g} s") from exc
    if code != 0 or "error" in answer or not answer:
        detail = answer.get("error") or (stderr.strip().splitlines() or ["no output"])[-1]
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
        self._workloads: dict[Path, tuple[Workload | None, str | None]] = {}

    def settings(self, path: Path) -> RuntimeSettings:
        """The profile's runtime settings, timed at no more threads than this machine has."""
        from . import settings_for

        settings = settings_for(self.profile, path.stat().st_size)
        return replace(settings, threads=local_threads(self.profile))

    def workload(self, path: Path) -> tuple[Workload | None, str | None]:
        """The file's workload (counted once per path), or why there is none."""
        if path not in self._workloads:
            self._workloads[path] = workload_of(path)
        return self._workloads[path]

    def estimate(
        self, path: Path, precision: str, runtime: str, p50_ms: float, p99_ms: float
    ) -> DeviceEstimate:
        """The device estimate for ``path`` measured at ``p50_ms`` / ``p99_ms`` here."""
        workload, why = self.workload(path)
        return device_estimate(
            self.profile,
            precision="int8" if precision == "int8" else "fp32",
            runtime=runtime,
            p50_ms=p50_ms,
            p99_ms=p99_ms,
            workload=workload,
            why_no_workload=why,
        )

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
            speed_factor=1.0,
            estimate_p50_ms=p50,
            estimate_p99_ms=p99,
            workload=self.workload(path)[0],
        )
        return with_estimate(fig, self.estimate(path, precision, runtime, p50, p99)), timing


def with_estimate(fig: Figures, est: DeviceEstimate) -> Figures:
    """``fig`` with the device estimate's fields set from ``est`` (p50/p99 here unchanged)."""
    return fig.model_copy(
        update={
            "speed_factor": est.factor(fig.p50_ms),
            "estimate_p50_ms": round(est.p50_ms, 6),
            "estimate_p99_ms": round(est.p99_ms, 6),
            "estimate_low_ms": round(est.low_ms, 6),
            "estimate_high_ms": round(est.high_ms, 6),
            "estimate_threads": est.threads,
            "estimate_basis": est.basis,
            "estimate_notes": list(est.notes),
        }
    )


def main() -> None:
    """``python -m edgeagent.models.measure``: one measurement, JSON in and out."""
    request = json.loads(sys.stdin.read())
    try:
        answer = measure_request(request)
    except Exception as exc:  # reported to the parent, which names the variant
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
