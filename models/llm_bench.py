"""``models bench`` for a language model: tokens/s, first-token latency, peak memory, estimate.

The measurement is :func:`edgeagent.models.llm_measure.measure_llm` (the one shared with the
zoo's cards and the LLM optimizer): a fresh process loads the folder with the profile's threads,
generates greedily ``warmup`` times, then ``runs`` times, and reports each run's first-token
latency and decode rate and its peak RSS (``VmHWM``) over its RSS before the model was loaded.
The device estimate comes from :func:`edgeagent.models.llm_estimate.estimate` on these figures.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from ..devices.profile import DeviceProfile
from .backend import ModelError
from .card import Machine
from .llm_estimate import LlmEstimate, LlmMeasured, Precision, estimate
from .llm_folder import resolve_llm
from .llm_measure import measure_llm

WORKER_TIMEOUT_S = 900.0
BENCH_MESSAGES = [
    {"role": "system", "content": "You control a smart home. Answer briefly."},
    {"role": "user", "content": "Turn off the kitchen lights and tell me if the door is locked."},
]
"""The bench's prompt: a short chat request, like the ones a device's assistant gets."""
METHOD = (
    "{runs} greedy generations of up to {max_tokens} tokens after {warmup} warm-up ones, in a "
    "fresh process ({threads} threads, edgeagent.models.llm_measure); first token: from "
    "tokenizing the prompt to the first generated token (the prompt's prefill included); "
    "tokens/s: decode rate after the first token",
    "peak memory: peak RSS (VmHWM) of that process minus its RSS once the runtime was imported "
    "and before the model was loaded",
    "device estimate: edgeagent.models.llm_estimate (measured figures / the profile's speed "
    "factor, with its range)",
)


def is_llm(spec: str) -> bool:
    """True for a genai folder, or ``zoo:NAME``/``NAME`` of a zoo language model (committed in
    ``models/zoo/NAME/``, or built by a recipe module that has ``resolve_folder``)."""
    path = Path(spec)
    if path.is_dir():
        return (path / "genai_config.json").is_file()
    if path.exists():
        return False
    name = spec.removeprefix("zoo:")
    if not name.isidentifier():
        return False
    if (Path(__file__).resolve().parent / "zoo" / name / "genai_config.json").is_file():
        return True
    try:
        module = importlib.import_module(f"edgeagent.models.zoo.{name}")
    except ImportError:
        return False
    return hasattr(module, "resolve_folder")


def precision_of(folder: Path) -> Precision:
    """int4 or int8 from the ``bits`` of the graph's ``MatMulNBits`` (the builder's weight-only
    quantization writes both), int8 for other quantized ops, else fp32. Without the onnx
    package, a ``MatMulNBits`` graph counts as int4 (the builder's default for CPU)."""
    config = json.loads((folder / "genai_config.json").read_text())
    path = folder / config["model"]["decoder"]["filename"]
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        onnx = None
    if onnx is not None:
        graph = onnx.load(str(path), load_external_data=False).graph
        bits = {
            a.i
            for n in graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "bits"
        }
        ops = {n.op_type for n in graph.node}
        if bits or "MatMulNBits" in ops:
            return "int8" if bits and min(bits) >= 8 else "int4"
        return "int8" if ops & {"DequantizeLinear", "MatMulInteger"} else "fp32"
    data = path.read_bytes()
    if b"MatMulNBits" in data:
        return "int4"
    return "int8" if b"DequantizeLinear" in data or b"MatMulInteger" in data else "fp32"


class Span(BaseModel):
    low: float
    mid: float
    high: float


class LlmDeviceEstimate(BaseModel):
    profile: str
    runs: bool = Field(description="Fits in memory and storage, and the runtime exists there.")
    reason: str
    memory_mb: float
    budget_mb: float
    speed_factor: float
    tokens_per_s: Span
    first_token_ms: Span


class LlmBenchReport(BaseModel):
    created: datetime
    model: str
    version: str
    folder: str
    size_bytes: int = Field(description="All files of the folder, bytes.")
    precision: Precision
    machine: Machine
    threads: int
    runs: int
    max_tokens: int
    prompt_tokens: int
    tokens_mean: float = Field(description="Tokens generated per run, on average.")
    tokens_per_s_p50: float
    tokens_per_s_min: float
    tokens_per_s_max: float
    first_token_p50_ms: float
    first_token_max_ms: float
    peak_memory_mb: float = Field(
        description="Peak RSS of the measuring process over its RSS before loading the model, MiB."
    )
    estimate: LlmDeviceEstimate
    method: list[str]


def device_estimate(est: LlmEstimate) -> LlmDeviceEstimate:
    """The report's form of an :class:`~.llm_estimate.LlmEstimate` (also the LLM optimizer's)."""
    return LlmDeviceEstimate(
        profile=est.profile,
        runs=est.runs,
        reason=est.reason,
        memory_mb=round(est.memory_mb, 2),
        budget_mb=est.budget_mb,
        speed_factor=est.factor,
        tokens_per_s=Span(
            low=est.tokens_per_s.low, mid=est.tokens_per_s.mid, high=est.tokens_per_s.high
        ),
        first_token_ms=Span(
            low=est.first_token_ms.low, mid=est.first_token_ms.mid, high=est.first_token_ms.high
        ),
    )


def bench_llm(
    spec: str,
    profile: DeviceProfile,
    *,
    runs: int = 10,
    warmup: int = 2,
    max_tokens: int = 64,
    threads: int | None = None,
) -> LlmBenchReport:
    """Measure a language model (``zoo:NAME`` or a genai folder) and estimate it on ``profile``."""
    from .measure import machine

    if runs < 1 or warmup < 0 or not 1 <= max_tokens <= 1024:
        raise ModelError("bench: runs >= 1, warmup >= 0 and max_tokens in 1..1024")
    resolved = resolve_llm(spec)
    folder = resolved.folder
    threads = threads or max(1, min(profile.threads, os.cpu_count() or 1))
    m = measure_llm(
        folder,
        [BENCH_MESSAGES],
        threads=threads,
        warmup=warmup,
        repeats=runs,
        max_new_tokens=max_tokens,
        timeout_s=WORKER_TIMEOUT_S,
    )
    rates = [r.tokens_per_s for r in m.runs if r.tokens_per_s is not None]
    firsts = [r.first_token_ms for r in m.runs]
    if not rates or not firsts:
        raise ModelError(f"{folder}: generated fewer than 2 tokens per run: no decode rate")
    peak = m.model_memory_mb
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    precision = precision_of(folder)
    here = machine()
    measured = LlmMeasured(
        tokens_per_s=statistics.median(rates),
        first_token_ms=statistics.median(firsts),
        peak_memory_mb=max(peak, 0.1),
        model_bytes=size,
        precision=precision,
        machine=here.cpu,
    )
    est = estimate(measured, profile)
    return LlmBenchReport(
        created=datetime.now(UTC).replace(microsecond=0),
        model=resolved.name,
        version=resolved.version,
        folder=str(folder),
        size_bytes=size,
        precision=precision,
        machine=here,
        threads=threads,
        runs=runs,
        max_tokens=max_tokens,
        prompt_tokens=m.runs[0].prompt_tokens,
        tokens_mean=round(statistics.mean(len(r.tokens) for r in m.runs), 2),
        tokens_per_s_p50=round(statistics.median(rates), 2),
        tokens_per_s_min=round(min(rates), 2),
        tokens_per_s_max=round(max(rates), 2),
        first_token_p50_ms=round(statistics.median(firsts), 3),
        first_token_max_ms=round(max(firsts), 3),
        peak_memory_mb=round(peak, 2),
        estimate=device_estimate(est),
        method=[
            m.format(runs=runs, warmup=warmup, max_tokens=max_tokens, threads=threads)
            for m in METHOD
        ],
    )


def format_report(r: LlmBenchReport) -> list[str]:
    """The report for people (``models bench`` without ``--json``)."""
    e = r.estimate
    mb = r.size_bytes / 2**20
    return [
        f"{r.model} v{r.version} (onnxruntime-genai, {r.precision}, {mb:.1f} MiB) "
        f"on {r.machine.cpu}:",
        f"  decode          {r.tokens_per_s_p50:.1f} tokens/s p50 (min {r.tokens_per_s_min:.1f}, "
        f"max {r.tokens_per_s_max:.1f}; {r.runs} runs, {r.tokens_mean:g} tokens each on "
        f"average, {r.threads} threads)",
        f"  first token     p50 {r.first_token_p50_ms:.1f} ms, max {r.first_token_max_ms:.1f} ms "
        f"(prompt of {r.prompt_tokens} tokens)",
        f"  peak memory     {r.peak_memory_mb:.1f} MiB over the runtime's baseline",
        f"  est. {e.profile:<10} {'runs' if e.runs else 'does not run'}: {e.reason}; "
        f"~{e.tokens_per_s.mid:.3g} tokens/s ({e.tokens_per_s.low:.3g}-{e.tokens_per_s.high:.3g}), "
        f"first token ~{e.first_token_ms.mid:.0f} ms "
        f"(× {e.speed_factor:g}, an estimate)",
    ]
