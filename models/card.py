"""The optimizer's model card: what was built, what was measured, what was chosen and why.

``card.json`` is a :class:`ModelCard` (pydantic; ``ModelCard.model_validate_json`` reads it back);
``card.md`` is :func:`render_markdown` of the same card. ``edgeagent models bench`` prints a
:class:`BenchReport`. Sizes are bytes, memory MiB, times milliseconds; every figure estimated for
the device rather than measured says so in its name (``estimate_…``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..devices.profile import DeviceProfile
from ..devices.workload import Workload


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Fidelity(_Model):
    """How close a variant's first output is to the fp32 model's, on the same inputs."""

    data: str = Field(description="Which inputs: 'calibration' or 'eval'.")
    samples: int = Field(description="Inputs compared.")
    max_abs_diff: float = Field(description="Largest absolute difference of any output value.")
    mean_abs_diff: float = Field(description="Mean absolute difference.")
    top1_agreement: float | None = Field(
        default=None, description="Fraction of inputs with the same argmax (class outputs only)."
    )


class Figures(_Model):
    """What was measured for one variant (on this machine unless named ``estimate_``)."""

    size_bytes: int = Field(description="File size, bytes.")
    size_gzip_bytes: int = Field(description="gzip -9 of the file, bytes (download, storage).")
    params: int | None = Field(default=None, description="Weights and biases.")
    peak_memory_mb: float | None = Field(
        default=None,
        description="Peak RSS of a process that loads the model and runs it at batch 1, minus "
        "that of a process that imports the same runtime without a model, MiB.",
    )
    threads: int = Field(description="Inference threads (the profile's).")
    runs: int = Field(description="Timed runs at batch 1, after warm-up.")
    p50_ms: float = Field(description="Median latency on this machine, ms.")
    p99_ms: float = Field(description="99th percentile latency on this machine, ms.")
    speed_factor: float = Field(
        description="Times slower on the device than here: estimate_p50_ms / p50_ms (the "
        "profile's fp32 or int8 factor when the speed model could not be used)."
    )
    estimate_p50_ms: float = Field(description="Estimated median latency on the device, ms.")
    estimate_p99_ms: float = Field(description="Estimated p99 latency on the device, ms.")
    estimate_low_ms: float | None = Field(
        default=None, description="Low end of the estimate's range on the device, ms."
    )
    estimate_high_ms: float | None = Field(
        default=None, description="High end of the estimate's range on the device, ms."
    )
    estimate_threads: int | None = Field(
        default=None, description="The device's inference threads the estimate is for."
    )
    estimate_basis: str | None = Field(
        default=None,
        description="Where the estimate comes from: measured on the device, the device's speed "
        "model (and what it was fitted to), or the old single factor.",
    )
    estimate_notes: list[str] = Field(
        default_factory=list, description="Why the range is as wide as it is."
    )
    workload: Workload | None = Field(
        default=None, description="What one batch-1 inference asks of a CPU, by operator class."
    )
    metric: str | None = Field(default=None, description="Evaluation metric, if --eval given.")
    metric_value: float | None = Field(default=None, description="The metric on the eval set.")
    drop: float | None = Field(
        default=None,
        description="Quality lost against fp32, in the budget's unit (see DataInfo.budget_unit); "
        "negative when better.",
    )
    fidelity: Fidelity | None = Field(default=None, description="Agreement with fp32 outputs.")


class VariantRecord(_Model):
    """One candidate: how it was made, and its figures (or why there are none)."""

    name: str = Field(description="Variant id, e.g. int8-static or structured-25+int8-static.")
    technique: str = Field(description="What was done to the model.")
    precision: Literal["fp32", "int8"]
    runtime: Literal["onnxruntime", "litert"]
    base: str | None = Field(default=None, description="The fp32 variant it was quantized from.")
    file: str | None = Field(default=None, description="Path relative to the output directory.")
    sha256: str | None = None
    notes: list[str] = Field(default_factory=list)
    skipped: str | None = Field(default=None, description="Why it was not built.")
    error: str | None = Field(default=None, description="Why it could not be measured.")
    figures: Figures | None = None


class ChoiceRecord(_Model):
    """The pick and the rules that led to it."""

    variant: str | None = Field(description="The chosen variant, or None when nothing qualified.")
    reason: str = Field(description="Why this variant, in one sentence.")
    rules: list[str] = Field(description="Each rule, in order, with what it eliminated.")
    eliminated: dict[str, str] = Field(description="Variant → the rule that eliminated it.")
    qualified: list[str] = Field(description="Variants that passed every rule, fastest first.")


class DataFile(_Model):
    path: str
    sha256: str
    samples: int
    arrays: dict[str, str] = Field(description="Array name → dtype[shape].")


class DataInfo(_Model):
    calibration: DataFile | None = None
    eval: DataFile | None = None
    accuracy_checked: bool = Field(description="Whether a labelled evaluation set was used.")
    metric: str | None = Field(default=None, description="Metric on the evaluation set.")
    metric_source: str = Field(description="Where the metric's name comes from.")
    budget: float = Field(description="Largest quality drop allowed, in budget_unit.")
    budget_unit: str = Field(description="What the budget and each variant's `drop` measure.")


class ModelInfo(_Model):
    name: str
    path: str
    sha256: str
    size_bytes: int
    inputs: list[str] = Field(description="name: dtype[shape] of each input.")
    outputs: list[str]
    params: int | None = None


class Machine(_Model):
    """Where the measurements were taken."""

    machine: str = Field(description="platform.machine().")
    cpu: str = Field(description="CPU model name (/proc/cpuinfo) or platform.processor().")
    cores: int = Field(description="os.cpu_count().")
    system: str = Field(description="platform.platform().")
    python: str
    packages: dict[str, str] = Field(description="Versions of the runtimes and tools used.")


class Reproduce(_Model):
    command: str = Field(description="The exact command that made this card.")
    notes: list[str] = Field(default_factory=list)


class ModelCard(_Model):
    kind: Literal["edgeagent.optimizer.card"] = "edgeagent.optimizer.card"
    version: Literal[1] = 1
    created: datetime
    model: ModelInfo
    device: DeviceProfile
    data: DataInfo
    method: list[str] = Field(description="How each figure was measured or estimated.")
    variants: list[VariantRecord]
    choice: ChoiceRecord
    chosen_file: str | None = Field(description="The chosen model, relative to the card.")
    machine: Machine
    reproduce: Reproduce


class CalibrationRecord(_Model):
    """One speed measurement kept by ``bench --record`` to calibrate profiles."""

    created: datetime
    model_sha256: str
    model: str
    runtime: str
    precision: Literal["fp32", "int8"]
    threads: int
    p50_ms: float
    p99_ms: float
    runs: int
    profile: str = Field(description="The --device the run was made for.")
    reference: bool = Field(description="Made on the reference machine (factor 1.0).")
    machine: Machine
    workload: Workload | None = Field(
        default=None,
        description="The model's workload when it could be counted where the run was made "
        "(`devices calibrate --model FILE` counts it otherwise).",
    )


class BenchReport(_Model):
    kind: Literal["edgeagent.bench"] = "edgeagent.bench"
    created: datetime
    model: ModelInfo
    device: str
    variant: VariantRecord
    machine: Machine
    method: list[str]
    on_device: bool = Field(description="This machine's architecture is the profile's.")
    implied_speed_factor: float | None = Field(
        default=None,
        description="This machine's p50 / the reference machine's p50 for the same model, "
        "from the record file; compare with the profile's factor.",
    )
    calibration: list[str] = Field(default_factory=list, description="What to do with it.")


# --- Markdown ------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 2**20:.2f} MiB"


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1000:.1f} µs" if x < 1 else f"{x:.2f} ms"


def _quality(f: Figures, unit: str) -> str:
    if f.metric is not None and f.metric_value is not None:
        value = (
            f"{f.metric_value * 100:.2f}%" if f.metric == "accuracy" else f"{f.metric_value:.4g}"
        )
        drop = "" if f.drop is None else f" ({0.0 - f.drop:+.2f} {unit})"
        return f"{f.metric} {value}{drop}"
    if f.fidelity is not None:
        agree = f.fidelity.top1_agreement
        top = f"top-1 {agree * 100:.1f}%, " if agree is not None else ""
        return f"{top}max |Δ| {f.fidelity.max_abs_diff:.3g} vs fp32"
    return "–"


def estimate_range(f: Figures) -> str:
    """The device estimate as people read it: ``12.3 ms (8.9-16.1)``, the range when known."""
    text = _ms(f.estimate_p50_ms)
    if f.estimate_low_ms is not None and f.estimate_high_ms is not None:
        text += f" ({_ms(f.estimate_low_ms)}–{_ms(f.estimate_high_ms)})"
    return text


def variant_rows(card_variants: list[VariantRecord], device: str, unit: str) -> list[str]:
    """The Markdown table of variants."""
    rows = [
        f"| variant | runtime | params | size | gzip | peak mem | p50 here | p99 here "
        f"| est. p50 on {device} (range) | quality | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for v in card_variants:
        f = v.figures
        if f is None:
            status = f"skipped: {v.skipped}" if v.skipped else f"error: {v.error}"
            rows.append(f"| {v.name} | {v.runtime} | | | | | | | | | {status} |")
            continue
        mem = "–" if f.peak_memory_mb is None else f"{f.peak_memory_mb:.1f} MiB"
        rows.append(
            f"| {v.name} | {v.runtime} | {f.params if f.params is not None else '–'} "
            f"| {_mib(f.size_bytes)} | {_mib(f.size_gzip_bytes)} | {mem} | {_ms(f.p50_ms)} "
            f"| {_ms(f.p99_ms)} | {estimate_range(f)} | {_quality(f, unit)} | measured |"
        )
    return rows


def _estimate_lines(card: ModelCard) -> list[str]:
    """How the device estimates were made: the chosen (else first measured) variant's basis."""
    measured = [v for v in card.variants if v.figures is not None]
    chosen = [v for v in measured if v.name == card.choice.variant] or measured
    f = chosen[0].figures if chosen else None
    if f is None or f.estimate_basis is None:
        d = card.device
        return [
            f"- speed factors (times slower than the reference): fp32 {d.speed.fp32.value:g} "
            f"({d.speed.fp32.source.strip()}); int8 {d.speed.int8.value:g} "
            f"({d.speed.int8.source.strip()})"
        ]
    lines = [f"- device estimates ({chosen[0].name}): {f.estimate_basis}"]
    lines += [f"  - {note}" for note in f.estimate_notes]
    return lines


def render_markdown(card: ModelCard) -> str:
    """``card.md``: the same facts as ``card.json``, for people."""
    d = card.device
    lines = [
        f"# {card.model.name} for {d.name}: optimizer card",
        "",
        f"**Chosen: {card.choice.variant or 'nothing'}**"
        + (f" (`{card.chosen_file}`)" if card.chosen_file else ""),
        "",
        f"Why: {card.choice.reason}",
        "",
        "## Model",
        "",
        f"- file: `{card.model.path}` ({_mib(card.model.size_bytes)}, "
        f"sha256 `{card.model.sha256}`)",
        f"- inputs: {', '.join(card.model.inputs)}; outputs: {', '.join(card.model.outputs)}",
        "",
        "## Device",
        "",
        f"- {d.title} (`{d.name}`, {d.arch}, {d.cpu}); {d.threads} inference threads",
        f"- RAM budget for the model {d.model_budget_mb.value:g} MiB, storage budget "
        f"{d.storage_budget_mb.value:g} MiB; runtimes: {', '.join(d.runtimes)}; int8 dot product: "
        f"{'yes' if d.int8_dot_product else 'no'}",
        *_estimate_lines(card),
        "",
        "## Data",
        "",
    ]
    data = card.data
    for label, file in (("calibration", data.calibration), ("evaluation", data.eval)):
        if file is None:
            lines.append(f"- {label}: none")
        else:
            arrays = ", ".join(f"{k} {v}" for k, v in file.arrays.items())
            lines.append(
                f"- {label}: `{file.path}` ({file.samples} samples: {arrays}; "
                f"sha256 `{file.sha256[:16]}…`)"
            )
    if data.accuracy_checked:
        lines.append(f"- metric: {data.metric} ({data.metric_source})")
    else:
        lines.append(
            "- **accuracy was not checked** (no evaluation set): variants are compared by their "
            "fidelity to the fp32 outputs on the calibration data instead"
        )
    lines.append(f"- budget: {data.budget:g} {data.budget_unit}")
    lines += ["", "## Variants", ""]
    lines += variant_rows(card.variants, d.name, data.budget_unit.split(" ")[0])
    lines += ["", "Notes:", ""]
    for v in card.variants:
        for note in v.notes:
            lines.append(f"- {v.name}: {note}")
    lines += ["", "## Rules applied", ""]
    lines += [f"{i}. {rule}" for i, rule in enumerate(card.choice.rules, 1)]
    lines += ["", "## How the figures were taken", ""]
    lines += [f"- {m}" for m in card.method]
    m = card.machine
    lines += [
        "",
        "## Machine",
        "",
        f"- {m.cpu} ({m.machine}, {m.cores} CPUs), {m.system}, Python {m.python}",
        "- " + ", ".join(f"{k} {v}" for k, v in sorted(m.packages.items())),
        "",
        "## Reproduce",
        "",
        "```sh",
        card.reproduce.command,
        "```",
    ]
    lines += [f"- {n}" for n in card.reproduce.notes]
    return "\n".join(lines) + "\n"
