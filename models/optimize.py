"""The optimizer: build the variants of a model, measure each, choose one for a device, write it.

::

    card = optimize(Path("digits.onnx"), load_profile("pi4"), Path("out"),
                    calibration=Path("calib.npz"), evaluation=Path("eval.npz"))
    card.choice.variant, card.choice.reason

writes ``out/<model>.onnx`` (or ``.tflite``: the chosen variant), every variant in
``out/variants/``, and ``out/card.json`` + ``out/card.md``. The data files are ``.npz`` archives
with one array per model input, named after it, plus ``labels`` in the evaluation file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices.profile import DeviceProfile
from .backend import TensorSpec
from .card import (
    BenchReport,
    CalibrationRecord,
    DataFile,
    DataInfo,
    ModelCard,
    ModelInfo,
    Reproduce,
    VariantRecord,
    render_markdown,
)
from .choose import choose
from .measure import (
    METHOD_NOTES,
    METRICS,
    Measurer,
    Timing,
    fidelity,
    machine,
    metric_value,
    quality_drop,
    retime_interleaved,
    unit_for,
)
from .mlp import OptimizeError, graph_inputs, require
from .variants import (
    ALL_VARIANTS,
    NEEDS_CALIBRATION,
    Built,
    Precision,
    build_variants,
)

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

Progress = Callable[[str], None]

_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    10: "float16",
    11: "float64",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    wanted = set(graph_inputs(model))
    specs = []
    for value in model.graph.input:
        if value.name not in wanted:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dims, _ONNX_DTYPES.get(tensor.elem_type, "?")))
    return specs


def _outputs(model: onnx.ModelProto) -> list[str]:
    out = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dims = ", ".join(
            str(d.dim_value) if d.HasField("dim_value") else "?" for d in tensor.shape.dim
        )
        out.append(f"{value.name}: {_ONNX_DTYPES.get(tensor.elem_type, '?')}[{dims}]")
    return out


def load_data(
    path: Path, role: str, inputs: Sequence[TensorSpec], *, labels: bool
) -> tuple[dict[str, npt.NDArray[Any]], DataFile]:
    """Read a calibration or evaluation ``.npz``; its arrays must be named after the inputs."""
    np = require("numpy")
    option = "--eval" if role == "evaluation" else "--calibration"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"{option} {path}: not a readable .npz file ({exc})") from exc
    expected = ", ".join(str(s) for s in inputs)
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names and not (labels and k.startswith("labels"))]
    if missing or extra:
        raise OptimizeError(
            f"{option} {path}: arrays {sorted(arrays) or '(none)'} do not match the model's "
            f"inputs ({expected})"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + ("; plus `labels` for evaluation" if labels else "")
        )
    if labels and "labels" not in arrays:
        raise OptimizeError(
            f"--eval {path}: no `labels` array (arrays: {sorted(arrays)}); an evaluation file "
            f"holds the inputs ({expected}) and `labels`"
        )
    counts = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise OptimizeError(f"{option} {path}: arrays differ in sample count: {counts}")
    for spec in inputs:
        a = arrays[spec.name]
        fixed = spec.shape[1:]
        if a.ndim != len(spec.shape) or any(
            w is not None and w != g for w, g in zip(fixed, a.shape[1:], strict=False)
        ):
            raise OptimizeError(
                f"{option} {path}: array {spec.name!r} is shaped {a.shape}; the model expects "
                f"{spec} (first dimension: samples)"
            )
        if a.dtype.kind == "f" and spec.dtype.startswith("float"):
            arrays[spec.name] = a.astype(spec.dtype, copy=False)
        elif a.dtype.name != spec.dtype:
            raise OptimizeError(
                f"{option} {path}: array {spec.name!r} is {a.dtype}; the model expects {spec}"
            )
    info = DataFile(
        path=shown(path),
        sha256=sha256(path),
        samples=next(iter(counts.values())),
        arrays={k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()},
    )
    return arrays, info


def _metric(
    requested: str | None, model_path: Path, labels: npt.NDArray[Any] | None
) -> tuple[str | None, str]:
    if labels is None:
        return None, "no evaluation set"
    if requested:
        if requested not in METRICS:
            raise OptimizeError(f"unknown metric {requested!r}; known: {', '.join(METRICS)}")
        return requested, "--metric"
    card = model_path.parent / "card.json"
    if card.is_file():
        try:
            named = json.loads(card.read_text()).get("metric")
        except (ValueError, AttributeError):
            named = None
        if isinstance(named, str) and named in METRICS:
            return named, f"named by {card}"
    if labels.dtype.kind in "iub":
        return "accuracy", "integer labels: accuracy of the first output's argmax"
    return "mae", "numeric labels: mean absolute error of the first output"


def _retime(
    records: list[VariantRecord],
    out: Path,
    measurer: Measurer,
    source: Mapping[str, Any] | None,
    in_names: Sequence[str],
    say: Callable[[str], None],
) -> list[VariantRecord]:
    """Replace each p50 by an interleaved re-timing of all variants in one process."""
    timed = {r.name: r for r in records if r.figures is not None and r.file is not None}
    if len(timed) < 2:
        return records
    say(f"re-timing {len(timed)} variants interleaved")
    paths = {name: out / str(r.file) for name, r in timed.items()}
    retimed = retime_interleaved(
        {name: (path, measurer.settings(path)) for name, path in paths.items()},
        None if source is None else {n: source[n][:1] for n in in_names},
    )
    result = []
    for r in records:
        fig = r.figures
        if r.name in retimed and fig is not None:
            p50, p99 = (round(v, 6) for v in retimed[r.name])
            factor = fig.speed_factor
            fig = fig.model_copy(
                update={
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "estimate_p50_ms": round(p50 * factor, 6),
                    "estimate_p99_ms": round(p99 * factor, 6),
                }
            )
            r = r.model_copy(update={"figures": fig})
        result.append(r)
    return result


def shown(path: Path) -> str:
    """``path`` relative to the working directory when under it: cards stay portable."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _command(
    model: Path,
    device: str,
    out: Path,
    calibration: Path | None,
    evaluation: Path | None,
    budget: float,
    variants: Sequence[str] | None,
    metric: str | None,
    runs: int,
) -> str:
    args = ["edgeagent", "models", "optimize", shown(model), "--device", device]
    if calibration is not None:
        args += ["--calibration", shown(calibration)]
    if evaluation is not None:
        args += ["--eval", shown(evaluation)]
    args += ["--budget", f"{budget:g}"]
    if variants is not None:
        args += ["--variants", ",".join(variants)]
    if metric is not None:
        args += ["--metric", metric]
    args += ["--runs", str(runs), "-o", shown(out)]
    return shlex.join(args)


def optimize(
    model: Path,
    profile: DeviceProfile,
    out: Path,
    *,
    calibration: Path | None = None,
    evaluation: Path | None = None,
    budget: float = 1.0,
    variants: Sequence[str] | None = None,
    metric: str | None = None,
    runs: int = 1000,
    warmup: int = 50,
    device_arg: str | None = None,
    progress: Progress | None = None,
) -> ModelCard:
    """Build, measure, choose and write; returns the card (also written to ``out``)."""
    onnx = require("onnx")
    require("numpy")
    require("onnxruntime")
    say = progress or (lambda _msg: None)
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise OptimizeError(f"{model}: the optimizer takes an existing fp32 .onnx file")
    try:
        proto = onnx.load(str(model))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OptimizeError(f"{model}: not an ONNX model ({exc})") from exc
    inputs = model_inputs(proto)
    names = list(variants) if variants is not None else list(ALL_VARIANTS)
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        raise OptimizeError(f"unknown variant(s) {unknown}; known: {', '.join(ALL_VARIANTS)}")
    if calibration is None and NEEDS_CALIBRATION & set(names):
        expected = ", ".join(str(s) for s in inputs)
        raise OptimizeError(
            f"{', '.join(sorted(NEEDS_CALIBRATION & set(names)))} need calibration data: pass "
            f"--calibration FILE.npz with a few hundred typical inputs as arrays named after the "
            f"model's inputs ({expected}), or leave them out with --variants"
        )
    cal = cal_info = ev = ev_info = None
    if calibration is not None:
        cal, cal_info = load_data(calibration, "calibration", inputs, labels=False)
    if evaluation is not None:
        ev, ev_info = load_data(evaluation, "evaluation", inputs, labels=True)
    metric_name, metric_source = _metric(metric, model, None if ev is None else ev["labels"])
    checked = ev is not None
    unit = unit_for(metric_name, checked)

    variant_dir = out / "variants"
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    variant_dir.mkdir(parents=True)
    built = build_variants(
        model, variant_dir, cal, names, progress=lambda name: say(f"building {name}")
    )

    in_names = [s.name for s in inputs]
    source = cal if cal is not None else ev
    datasets = {}
    if cal is not None:
        datasets["calibration"] = {n: cal[n] for n in in_names}
    if ev is not None:
        datasets["eval"] = {n: ev[n] for n in in_names}
    measurer = Measurer(
        profile,
        None if source is None else {n: source[n][:1] for n in in_names},
        datasets,
        runs=runs,
        warmup=warmup,
    )
    fidelity_data = "calibration" if cal is not None else "eval"
    records: list[VariantRecord] = []
    reference: Timing | None = None
    fp32_metric: float | None = None
    measurable = [b for b in built if b.path is not None]
    for b in built:
        record = _record(b, out)
        if b.path is None:
            records.append(record)
            continue
        say(f"[{measurable.index(b) + 1}/{len(measurable)}] measuring {b.name}")
        try:
            fig, timing = measurer.measure(b.path, b.runtime, b.precision, b.params)
        except OptimizeError as exc:
            if b.name == "fp32":
                raise OptimizeError(f"{model}: the fp32 model cannot be measured: {exc}") from exc
            records.append(record.model_copy(update={"error": str(exc)}))
            continue
        if reference is None:
            reference = timing
        update: dict[str, Any] = {}
        if fidelity_data in timing.outputs and fidelity_data in reference.outputs:
            update["fidelity"] = fidelity(
                reference.outputs[fidelity_data], timing.outputs[fidelity_data], fidelity_data
            )
        if ev is not None and metric_name is not None:
            value = metric_value(metric_name, timing.outputs["eval"], ev["labels"])
            if fp32_metric is None:
                fp32_metric = value
            update |= {
                "metric": metric_name,
                "metric_value": round(value, 6),
                "drop": quality_drop(metric_name, fp32_metric, value),
            }
        elif "fidelity" in update and update["fidelity"].top1_agreement is not None:
            update["drop"] = round((1 - update["fidelity"].top1_agreement) * 100, 6)
        records.append(record.model_copy(update={"figures": fig.model_copy(update=update)}))

    records = _retime(records, out, measurer, source, in_names, say)
    say("choosing")
    choice = choose(records, profile, budget, budget_unit=unit)
    chosen_file = None
    if choice.variant is not None:
        pick = next(b for b in built if b.name == choice.variant)
        assert pick.path is not None
        target = out / f"{model.stem}{pick.path.suffix}"
        shutil.copyfile(pick.path, target)
        chosen_file = target.name

    method = [note.format(runs=runs, warmup=warmup) for note in METHOD_NOTES]
    here = os.cpu_count() or 1
    if profile.threads > here:
        method.append(
            f"the profile's {profile.threads} threads ran on {here} CPUs here: "
            "multi-threaded latency on this machine is pessimistic"
        )
    if not checked:
        method.append(
            "accuracy was not checked (no --eval): the quality rule uses top-1 disagreement "
            f"with the fp32 outputs on the {fidelity_data} data"
        )
    card = ModelCard(
        created=datetime.now(UTC).replace(microsecond=0),
        model=ModelInfo(
            name=model.stem,
            path=shown(model),
            sha256=sha256(model),
            size_bytes=model.stat().st_size,
            inputs=[str(s) for s in inputs],
            outputs=_outputs(proto),
            params=built[0].params,
        ),
        device=profile,
        data=DataInfo(
            calibration=cal_info,
            eval=ev_info,
            accuracy_checked=checked,
            metric=metric_name,
            metric_source=metric_source,
            budget=budget,
            budget_unit=unit,
        ),
        method=method,
        variants=records,
        choice=choice,
        chosen_file=chosen_file,
        machine=machine(),
        reproduce=Reproduce(
            command=_command(
                model,
                device_arg or profile.name,
                out,
                calibration,
                evaluation,
                budget,
                variants,
                metric,
                runs,
            ),
            notes=[
                "latency and memory are measured, so figures vary from run to run and from "
                "machine to machine; the variant files are deterministic",
            ],
        ),
    )
    write_card(card, out)
    return card


def _record(b: Built, out: Path) -> VariantRecord:
    return VariantRecord(
        name=b.name,
        technique=b.technique,
        precision=b.precision,
        runtime=b.runtime,
        base=b.base,
        file=None if b.path is None else b.path.relative_to(out).as_posix(),
        sha256=None if b.path is None else sha256(b.path),
        notes=list(b.notes),
        skipped=b.skipped,
    )


def write_card(card: ModelCard, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    (out / "card.md").write_text(render_markdown(card))


# --- bench: one model ---------------------------------------------------------------------

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
    metric_name, metric_source = _metric(metric, model, None if ev is None else ev["labels"])
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
    on_device = here.machine == profile.arch
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
        if on_device:
            advice.append(
                f"to calibrate: copy the {profile.name} profile into a directory on "
                f"$EDGEAGENT_PROFILES and set speed.{kind}.value: {implied:g} with source "
                f"'edgeagent models bench {model.name}, {now.date()}, {here.cpu}'"
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
    if not on_device:
        advice.append(
            f"this machine is {here.machine}, not a {profile.name} ({profile.arch}): the latency "
            f"is this machine's; the estimate multiplies it by {profile.name}'s factor"
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
