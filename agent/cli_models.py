"""``edgeagent models …``: optimize a model for a device, benchmark one, list the zoo.

A thin click layer over :mod:`edgeagent.models.optimize`; registered on the main command with
``main.add_command(models)``. Errors are one line, ``error: …``, and exit status 1. Progress goes
to stderr, so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import EdgeAgentError

if TYPE_CHECKING:
    from .devices.profile import DeviceProfile
    from .models.card import Figures, VariantRecord

METRIC_CHOICES = ("accuracy", "mae", "rmse")
CALIBRATION_SAMPLES = 256


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled:
        return None
    return lambda message: click.echo(f"… {message}", err=True)


def _profile(name: str) -> DeviceProfile:
    from .devices import load_profile

    return load_profile(name)


def _zoo_recipe(name: str) -> Any | None:
    """The zoo recipe called ``name``, if the zoo is importable and has one."""
    try:
        zoo = importlib.import_module("edgeagent.models.zoo")
    except ImportError:
        return None
    return zoo.RECIPES.get(name)


def _resolve_model(model: str) -> tuple[Path, Any | None]:
    path = Path(model)
    if path.is_file():
        return path, None
    recipe = _zoo_recipe(model)
    if recipe is None:
        _fail(f"{model}: no such model file (and no zoo model of that name)")
    onnx_path: Path = recipe.onnx_path
    if not onnx_path.is_file():
        _fail(
            f"zoo model {model} has no trained file {onnx_path}: "
            f"python -m edgeagent.models.zoo train {model}"
        )
    return onnx_path, recipe


def _zoo_data(recipe: Any, out: Path, want_cal: bool, want_eval: bool) -> tuple[Path | None, ...]:
    """Write the recipe's calibration and evaluation sets to ``out/data`` (seed 0)."""
    import numpy as np

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    cal = ev = None
    if want_cal:
        cal = data / "calibration.npz"
        np.savez(cal, **recipe.make_calibration(0, CALIBRATION_SAMPLES))
    if want_eval:
        ev = data / "eval.npz"
        np.savez(ev, **recipe.make_eval(0))
    return cal, ev


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} µs" if x < 1 else f"{x:.2f} ms"


def estimate_range(f: Figures) -> str:
    from .models.card import estimate_range as text

    return text(f)


def _quality(f: Figures) -> str:
    if f.metric_value is not None:
        value = f"{f.metric_value:.2%}" if f.metric == "accuracy" else f"{f.metric_value:.4g}"
        return value if f.drop is None else f"{value} (drop {f.drop:+.2f})"
    if f.fidelity is not None and f.fidelity.top1_agreement is not None:
        return f"top-1 = fp32 {f.fidelity.top1_agreement:.1%}"
    return "–"


def _table(variants: list[VariantRecord], device: str, chosen: str | None) -> list[str]:
    head = (
        f"  {'variant':<27} {'runtime':<11} {'size':>9} {'gzip':>9} {'mem MiB':>8} "
        f"{'p50 here':>9} {'p99 here':>9} {'est. ' + device:>12}  quality"
    )
    lines = [head]
    for v in variants:
        mark = "*" if v.name == chosen else " "
        f = v.figures
        if f is None:
            why = f"skipped: {v.skipped}" if v.skipped else f"error: {v.error}"
            lines.append(f"{mark} {v.name:<27} {v.runtime:<11} {why}")
            continue
        mem = "–" if f.peak_memory_mb is None else f"{f.peak_memory_mb:.1f}"
        lines.append(
            f"{mark} {v.name:<27} {v.runtime:<11} {f.size_bytes:>9} {f.size_gzip_bytes:>9} "
            f"{mem:>8} {_ms(f.p50_ms):>9} {_ms(f.p99_ms):>9} {estimate_range(f):>12}  "
            f"{_quality(f)}"
        )
    return lines


@click.group("models")
def models() -> None:
    """Optimize models for a device class, benchmark them, list the model zoo."""


def _register_adapt() -> None:
    from .cli_adapt import adapt

    models.add_command(adapt)


_register_adapt()


@models.command("optimize")
@click.argument("model")
@click.option("--device", "-d", "device", required=True, metavar="PROFILE", help="Device profile.")
@click.option(
    "--calibration",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Calibration .npz: typical inputs, one array per model input, named after it.",
)
@click.option(
    "--eval",
    "evaluation",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Evaluation .npz: the model's inputs plus `labels`.",
)
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Largest quality drop against fp32, points [default: 1 for a model file, 5 for a "
    "language model].",
)
@click.option(
    "--min-quality",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="Language models: the lowest quality accepted (0..1), instead of fp32's minus --budget.",
)
@click.option(
    "--variants",
    default=None,
    metavar="A,B,…",
    help="Variants to build (default: all that apply).",
)
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default=None, help="Eval metric.")
@click.option(
    "--runs",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Timed runs per variant.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output directory [default: ./<model>-<device>].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def optimize_cmd(
    model: str,
    device: str,
    calibration: Path | None,
    evaluation: Path | None,
    budget: float | None,
    min_quality: float | None,
    variants: str | None,
    metric: str | None,
    runs: int,
    out: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build quantized, pruned and LiteRT variants of MODEL, measure each, and keep the one
    that suits the device: accuracy within the budget, fits its RAM and storage, fastest.

    MODEL is an fp32 .onnx file, or the name of a zoo model (whose calibration and evaluation
    sets are then used unless given). Writes OUT/<model>.onnx|.tflite (the choice),
    OUT/variants/, OUT/card.json and OUT/card.md.

    A language model (zoo:tinyllm, zoo:smollm2 or a transformers checkpoint folder): fp32, int8
    and int4 onnxruntime-genai variants, measured (tokens/s, first token, peak memory, quality)
    and estimated for the device; OUT is the chosen variant's genai folder, with its card.
    """
    from .cli_models_llm import is_llm_spec, optimize_llm_cmd

    if is_llm_spec(model):
        bad = calibration or evaluation or metric
        optimize_llm_cmd(model, device, budget, min_quality, variants, out, as_json, quiet, bad)
        return
    if min_quality is not None:
        _fail("--min-quality is for language models; model files use --budget")
    budget = 1.0 if budget is None else budget
    try:
        from .models.optimize import optimize
        from .models.variants import ALL_VARIANTS

        path, recipe = _resolve_model(model)
        profile = _profile(device)
        target = out or Path(f"{path.stem}-{profile.name}")
        names = None
        if variants is not None:
            names = ALL_VARIANTS if variants == "all" else [v.strip() for v in variants.split(",")]
        if recipe is not None and (calibration is None or evaluation is None):
            cal, ev = _zoo_data(recipe, target, calibration is None, evaluation is None)
            calibration = calibration or cal
            evaluation = evaluation or ev
        card = optimize(
            path,
            profile,
            target,
            calibration=calibration,
            evaluation=evaluation,
            budget=budget,
            variants=names,
            metric=metric,
            runs=runs,
            device_arg=device,
            progress=_progress(not quiet),
        )
    except EdgeAgentError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(card.model_dump_json(indent=2))
    else:
        click.echo(f"{card.model.name} for {profile.title} ({profile.name}):")
        for line in _table(card.variants, profile.name, card.choice.variant):
            click.echo(line)
        click.echo("")
        for i, rule in enumerate(card.choice.rules, 1):
            click.echo(f"  {i}. {rule}")
        click.echo("")
        click.echo(f"chosen: {card.choice.reason}")
        if not card.data.accuracy_checked:
            click.echo("accuracy was not checked (no --eval): fidelity to fp32 was used")
        click.echo(f"wrote {target / (card.chosen_file or '')}, card.json, card.md, variants/")
    if card.choice.variant is None:
        _fail(card.choice.reason)


@models.command("bench")
@click.argument("model")
@click.option("--device", "-d", "device", required=True, metavar="PROFILE", help="Device profile.")
@click.option(
    "--eval",
    "evaluation",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Evaluation .npz (the model's inputs plus `labels`) to measure accuracy too.",
)
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default=None, help="Eval metric.")
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=None,
    help="Timed runs: default 1000 calls (at least 10) for a model file, 10 generations for a "
    "language model.",
)
@click.option(
    "--record",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Append the measured speed (and the model's workload) to this JSON file: on a real "
    "device, `edgeagent devices calibrate PROFILE --records FILE` fits the board's speed model "
    "to it.",
)
@click.option(
    "--reference",
    is_flag=True,
    help="This machine is the reference machine (speed factor 1.0) for --record.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def bench_cmd(
    model: str,
    device: str,
    evaluation: Path | None,
    metric: str | None,
    runs: int | None,
    record: Path | None,
    reference: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure MODEL (.onnx or .tflite) as the optimizer measures a variant: size, peak memory,
    latency here (at the profile's threads, at most this machine's CPUs), the estimate for the
    device with its range and basis (the device's speed model on the counted graph; see
    docs/device-speed.md), and accuracy with --eval.

    Run it on a real device with --record FILE to keep the measured speed for `edgeagent devices
    calibrate`; with a reference run of the same model in FILE (made with --reference), it also
    reports the single speed factor this machine implies.

    A language model (an onnxruntime-genai folder, zoo:tinyllm, zoo:smollm2): tokens/s, first-token
    latency, peak memory and the estimate for the device (--eval and --record do not apply).
    """
    from .models.llm_bench import is_llm

    if is_llm(model):
        _bench_llm(
            model, device, runs or 10, as_json, bad=evaluation or metric or record or reference
        )
        return
    if runs is not None and runs < 10:
        _fail("--runs: at least 10 for a model file")
    try:
        from .models.optimize import bench

        path, _ = _resolve_model(model)
        profile = _profile(device)
        report = bench(
            path,
            profile,
            evaluation=evaluation,
            metric=metric,
            runs=runs or 1000,
            record=record,
            reference=reference,
            progress=_progress(not quiet),
        )
    except EdgeAgentError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    f = report.variant.figures
    assert f is not None
    m = report.machine
    click.echo(f"{path.name} ({report.variant.runtime}, {report.variant.precision}) on {m.cpu}:")
    click.echo(f"  size            {f.size_bytes} bytes ({f.size_gzip_bytes} gzipped)")
    if f.peak_memory_mb is not None:
        click.echo(f"  peak memory     {f.peak_memory_mb:.1f} MiB over the runtime's baseline")
    click.echo(
        f"  latency here    p50 {_ms(f.p50_ms)}, p99 {_ms(f.p99_ms)} "
        f"({f.runs} runs, {f.threads} threads)"
    )
    click.echo(
        f"  est. {profile.name:<10} p50 {estimate_range(f)}, p99 {_ms(f.estimate_p99_ms)} "
        f"at {f.estimate_threads or profile.threads} threads (an estimate)"
    )
    if f.estimate_basis:
        click.echo(f"  basis           {f.estimate_basis}")
    for note in f.estimate_notes:
        click.echo(f"                  - {note}")
    if f.metric_value is not None:
        click.echo(f"  {f.metric:<15} {_quality(f)}")
    for line in report.calibration:
        click.echo(f"- {line}")


def _bench_llm(model: str, device: str, runs: int, as_json: bool, bad: object) -> None:
    """``models bench`` of a language model (:mod:`edgeagent.models.llm_bench`)."""
    from .models.llm_bench import bench_llm, format_report

    if bad:
        _fail("--eval, --metric, --record and --reference are for model files, not language models")
    try:
        report = bench_llm(model, _profile(device), runs=runs)
    except EdgeAgentError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    for line in format_report(report):
        click.echo(line)


@models.command("zoo")
@click.option("--json", "as_json", is_flag=True, help="Print the recipes as JSON.")
def zoo_cmd(as_json: bool) -> None:
    """List the model zoo's recipes and whether their trained files are present."""
    try:
        recipes: dict[str, Any] = importlib.import_module("edgeagent.models.zoo").RECIPES
    except ImportError as exc:
        _fail(f"the model zoo is not available ({exc})")
    except EdgeAgentError as exc:
        _fail(str(exc))
    rows = [
        {
            "name": r.name,
            "description": r.description,
            "version": r.version,
            "inputs": [str(s) for s in r.inputs],
            "outputs": [str(s) for s in r.outputs],
            "file": str(r.onnx_path),
            "trained": r.onnx_path.is_file(),
        }
        for r in recipes.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "trained" if row["trained"] else "not trained"
        click.echo(f"{row['name']:<12} {state:<12} {row['description']}")
        click.echo(f"{'':<12} {', '.join(row['inputs'])} → {', '.join(row['outputs'])}")
