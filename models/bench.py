"""``models bench``: measure one ``.onnx`` or ``.tflite`` file as the optimizer measures a
variant, and keep speed records to calibrate a device profile's speed factor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from ..devices.profile import DeviceProfile
from .card import BenchReport, CalibrationRecord, ModelInfo, VariantRecord
from .data import Progress, choose_metric, load_data, sha256, shown
from .estimate import on_this_device
from .measure import METHOD_NOTES, Measurer, machine, metric_value
from .mlp import OptimizeError
from .variants import Precision

INT8_OPS = (b"DequantizeLinear", b"MatMulInteger", b"ConvInteger", b"QLinear", b"DynamicQuantize")


def _precision(path: Path) -> Precision:
    """int8 if the file holds quantized ops (read from the bytes: no onnx package needed)."""
    if path.suffix.lower() != ".onnx":
        return "fp32"
    data = path.read_bytes()
    return "int8" if any(op in data for op in INT8_OPS) else "fp32"


def read_records(path: Path) -> list[CalibrationRecord]:
    """The speed records kept by ``bench --record`` (a JSON list; missing file: none)."""
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text())
        return [CalibrationRecord.model_validate(item) for item in raw]
    except (ValueError, TypeError) as exc:
        raise OptimizeError(f"--record {path}: not a list of bench records ({exc})") from exc


def bench(
    model: Path,
    profile: DeviceProfile,
    *,
    evaluation: Path | None = None,
    metric: str | None = None,
    runs: int = 1000,
    warmup: int = 50,
    record: Path | None = None,
    reference: bool = False,
    progress: Progress | None = None,
) -> BenchReport:
    """Measure one ``.onnx`` or ``.tflite`` file as the optimizer measures a variant.

    With ``record``, append the measured speed to that JSON file; when the file also holds a
    run of the same model made on the reference machine (``reference=True`` there), report the
    implied speed factor of this machine, which is what a profile's ``speed`` figures mean.
    Needs only numpy and the model's runtime (no onnx package), so it runs on a device.
    """
    from . import load_model

    say = progress or (lambda _msg: None)
    session = load_model(model)  # checks the file and the runtime, gives the signature
    runtime = "litert" if model.suffix.lower() == ".tflite" else "onnxruntime"
    inputs, outputs = list(session.inputs), [str(s) for s in session.outputs]
    del session
    ev = ev_info = None
    if evaluation is not None:
        ev, ev_info = load_data(evaluation, "evaluation", inputs, labels=True)
    metric_name, metric_source = choose_metric(metric, model, None if ev is None else ev["labels"])
    names = [s.name for s in inputs]
    measurer = Measurer(
        profile,
        None if ev is None else {n: ev[n][:1] for n in names},
        {} if ev is None else {"eval": {n: ev[n] for n in names}},
        runs=runs,
        warmup=warmup,
    )
    precision = _precision(model)
    say(f"measuring {model.name} ({runtime}, {precision}, {runs} runs)")
    fig, timing = measurer.measure(model, runtime, precision)
    if ev is not None and metric_name is not None:
        value = metric_value(metric_name, timing.outputs["eval"], ev["labels"])
        fig = fig.model_copy(update={"metric": metric_name, "metric_value": round(value, 6)})
    here = machine()
    digest = sha256(model)
    now = datetime.now(UTC).replace(microsecond=0)
    on_device = on_this_device(profile)
    implied = None
    advice: list[str] = []
    kind = "int8" if precision == "int8" else "fp32"
    stated = profile.speed.int8.value if precision == "int8" else profile.speed.fp32.value
    records = read_records(record) if record is not None else []
    refs = [
        r
        for r in records
        if r.reference and r.model_sha256 == digest and r.runtime == runtime and not reference
    ]
    if refs:
        ref = refs[-1]
        implied = round(fig.p50_ms / ref.p50_ms, 3)
        advice.append(
            f"implied {kind} speed factor of this machine for this model: {implied:g} "
            f"(p50 {fig.p50_ms:.4g} ms here / {ref.p50_ms:.4g} ms on the reference, "
            f"{ref.machine.cpu}); profile {profile.name} says {stated:g}"
        )
    elif reference:
        advice.append(
            "recorded as the reference machine's run: run the same bench with this --record file "
            "on the device to get its speed factor"
        )
    else:
        advice.append(
            "no reference run of this model in the record file: run `edgeagent models bench "
            f"{model.name} --device x86-64 --reference --record FILE` on the reference machine, "
            "then bench here with the same FILE to get the implied speed factor"
        )
    if on_device and record is not None:
        advice.append(
            f"to calibrate {profile.name} on this run (recorded runs override published figures): "
            f"`edgeagent devices calibrate {profile.name} --records {record} --model "
            f"{model.name} -o DIR`, then put DIR on $EDGEAGENT_PROFILES"
        )
    elif on_device:
        advice.append(
            "this machine is the device: add --record FILE to keep this run for "
            f"`edgeagent devices calibrate {profile.name} --records FILE`"
        )
    else:
        advice.append(
            f"this machine is {here.machine}, not a {profile.name}: the latency is this "
            f"machine's at {fig.threads} threads; the estimate is "
            f"{(fig.estimate_basis or 'the profile speed factor').rstrip('.')}"
        )
    if record is not None:
        records.append(
            CalibrationRecord(
                created=now,
                model_sha256=digest,
                model=model.name,
                runtime=runtime,
                precision=precision,
                threads=fig.threads,
                p50_ms=fig.p50_ms,
                p99_ms=fig.p99_ms,
                runs=fig.runs,
                profile=profile.name,
                reference=reference,
                machine=here,
                workload=measurer.workload(model)[0],
            )
        )
        record.parent.mkdir(parents=True, exist_ok=True)
        payload = [r.model_dump(mode="json") for r in records]
        record.write_text(json.dumps(payload, indent=2) + "\n")
        advice.append(f"recorded in {record} ({len(records)} record(s))")
    return BenchReport(
        created=now,
        model=ModelInfo(
            name=model.stem,
            path=shown(model),
            sha256=digest,
            size_bytes=model.stat().st_size,
            inputs=[str(s) for s in inputs],
            outputs=outputs,
        ),
        device=profile.name,
        variant=VariantRecord(
            name=model.name,
            technique="as given",
            precision=precision,
            runtime=runtime,
            file=str(model),
            sha256=digest,
            figures=fig,
            notes=[] if ev_info is None else [f"metric: {metric_name} ({metric_source})"],
        ),
        machine=here,
        method=[n.format(runs=runs, warmup=warmup) for n in METHOD_NOTES],
        on_device=on_device,
        implied_speed_factor=implied,
        calibration=advice,
    )
