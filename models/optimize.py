"""The optimizer: build the variants of a model, measure each, choose one for a device, write it.

::

    card = optimize(Path("digits.onnx"), load_profile("pi4"), Path("out"),
                    calibration=Path("calib.npz"), evaluation=Path("eval.npz"))
    card.choice.variant, card.choice.reason

writes ``out/<model>.onnx`` (or ``.tflite``: the chosen variant), every variant in
``out/variants/``, and ``out/card.json`` + ``out/card.md``. The data files are ``.npz`` archives
with one array per model input, named after it, plus ``labels`` in the evaluation file.

The model's signature and data files are read by :mod:`.data`; ``models bench`` (one file) is
:mod:`.bench`. Both are re-exported here, where they lived before.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..devices.profile import DeviceProfile
from .bench import INT8_OPS, bench, read_records
from .card import (
    DataInfo,
    ModelCard,
    ModelInfo,
    Reproduce,
    VariantRecord,
    render_markdown,
)
from .choose import choose
from .data import (
    Progress,
    choose_metric,
    load_data,
    model_inputs,
    model_outputs,
    sha256,
    shown,
)
from .measure import (
    METHOD_NOTES,
    Measurer,
    Timing,
    fidelity,
    machine,
    metric_value,
    quality_drop,
    retime_interleaved,
    unit_for,
    with_estimate,
)
from .mlp import OptimizeError, require
from .variants import ALL_VARIANTS, NEEDS_CALIBRATION, Built, build_variants

__all__ = [
    "INT8_OPS",
    "Progress",
    "bench",
    "load_data",
    "model_inputs",
    "optimize",
    "read_records",
    "sha256",
    "shown",
    "write_card",
]


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
            est = measurer.estimate(paths[r.name], r.precision, r.runtime, p50, p99)
            fig = with_estimate(fig.model_copy(update={"p50_ms": p50, "p99_ms": p99}), est)
            r = r.model_copy(update={"figures": fig})
        result.append(r)
    return result


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


def _load_onnx(onnx: Any, model: Path) -> Any:
    """The fp32 model as an ONNX proto, or an error that says what ``model`` is instead."""
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise OptimizeError(f"{model}: the optimizer takes an existing fp32 .onnx file")
    try:
        return onnx.load(str(model))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OptimizeError(f"{model}: not an ONNX model ({exc})") from exc


def _variant_names(
    variants: Sequence[str] | None, calibrated: bool, inputs: Sequence[object]
) -> list[str]:
    """The variants to build (all when None): known ones, with calibration data if they need it."""
    names = list(variants) if variants is not None else list(ALL_VARIANTS)
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        raise OptimizeError(f"unknown variant(s) {unknown}; known: {', '.join(ALL_VARIANTS)}")
    if not calibrated and NEEDS_CALIBRATION & set(names):
        expected = ", ".join(str(s) for s in inputs)
        raise OptimizeError(
            f"{', '.join(sorted(NEEDS_CALIBRATION & set(names)))} need calibration data: pass "
            f"--calibration FILE.npz with a few hundred typical inputs as arrays named after the "
            f"model's inputs ({expected}), or leave them out with --variants"
        )
    return names


def _method(
    runs: int, warmup: int, profile: DeviceProfile, checked: bool, fidelity_data: str
) -> list[str]:
    """How the figures were made, and what limits them on this machine, for the card."""
    method = [note.format(runs=runs, warmup=warmup) for note in METHOD_NOTES]
    here = os.cpu_count() or 1
    if profile.threads > here:
        method.append(
            f"timed here at {here} threads (this machine's CPUs), not the profile's "
            f"{profile.threads}: more threads than CPUs only adds noise; the device estimate is "
            f"for {profile.threads} threads"
        )
    if not checked:
        method.append(
            "accuracy was not checked (no --eval): the quality rule uses top-1 disagreement "
            f"with the fp32 outputs on the {fidelity_data} data"
        )
    return method


def _measurer(
    profile: DeviceProfile,
    cal: Mapping[str, Any] | None,
    ev: Mapping[str, Any] | None,
    in_names: list[str],
    *,
    runs: int,
    warmup: int,
) -> Measurer:
    """A measurer fed one sample of the calibration data (else of the evaluation data) for
    timing, and the whole of both data sets for the outputs it compares."""
    source = cal if cal is not None else ev
    datasets = {}
    if cal is not None:
        datasets["calibration"] = {n: cal[n] for n in in_names}
    if ev is not None:
        datasets["eval"] = {n: ev[n] for n in in_names}
    return Measurer(
        profile,
        None if source is None else {n: source[n][:1] for n in in_names},
        datasets,
        runs=runs,
        warmup=warmup,
    )


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
    proto = _load_onnx(onnx, model)
    inputs = model_inputs(proto)
    names = _variant_names(variants, calibration is not None, inputs)
    cal = cal_info = ev = ev_info = None
    if calibration is not None:
        cal, cal_info = load_data(calibration, "calibration", inputs, labels=False)
    if evaluation is not None:
        ev, ev_info = load_data(evaluation, "evaluation", inputs, labels=True)
    metric_name, metric_source = choose_metric(metric, model, None if ev is None else ev["labels"])
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
    measurer = _measurer(profile, cal, ev, in_names, runs=runs, warmup=warmup)
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

    method = _method(runs, warmup, profile, checked, fidelity_data)
    card = ModelCard(
        created=datetime.now(UTC).replace(microsecond=0),
        model=ModelInfo(
            name=model.stem,
            path=shown(model),
            sha256=sha256(model),
            size_bytes=model.stat().st_size,
            inputs=[str(s) for s in inputs],
            outputs=model_outputs(proto),
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
