"""The three comparisons of ``bench_models``: quantization (plain ``onnxruntime.quantization``
against the optimizer's int8 variants: size and accuracy), choice (every variant timed, the chosen
one against the best) and per-call overhead (bare runtimes against edgeagent's sessions, the
digit-reading skill and its dispatch without MQTT). Apart from the script: each function returns
its part of the JSON report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as common
from benchmarks.models_parts import (
    EXAMPLES,
    MQTT_DEVICE,
    TARGET_CHOICE_RATIO,
    TARGET_OVERHEAD_PLUS_US,
    TARGET_OVERHEAD_RATIO,
    TARGET_SIZE_RATIO,
    Feeds,
    interleaved,
    load_ort,
    onnx_accuracy,
    plain_dynamic,
    plain_static,
    say,
)

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent.devices.profile import (  # type: ignore[import-not-found, unused-ignore]
    DeviceProfile,
)
from edgeagent.models import (  # type: ignore[import-not-found, unused-ignore]
    RuntimeSettings,
    load_model,
    settings_for,
)
from edgeagent.models.card import ModelCard  # type: ignore[import-not-found, unused-ignore]
from edgeagent.skills import (  # type: ignore[import-not-found, unused-ignore]
    SkillContext,
    collect_skills,
)

# 1. Quantization --------------------------------------------------------------------------------


def quantization(
    label: str,
    src: Path,
    card: ModelCard,
    opt_dir: Path,
    cal: Feeds,
    ev: Feeds,
    input_name: str,
    work: Path,
    budget: float,
) -> dict[str, Any]:
    """Plain onnxruntime.quantization against the optimizer's int8 variants, on one model."""
    static, dynamic = work / f"{label}.plain-static.onnx", work / f"{label}.plain-dynamic.onnx"
    plain_static(src, static, cal, input_name)
    plain_dynamic(src, dynamic)
    fp32_size = src.stat().st_size
    fp32_acc = onnx_accuracy(src, ev, input_name)
    rows: list[dict[str, Any]] = []

    def add(name: str, path: Path, source: str, card_acc: float | None = None) -> None:
        acc = onnx_accuracy(path, ev, input_name) if path.suffix == ".onnx" else card_acc
        assert acc is not None
        drop = round((fp32_acc - acc) * 100, 3)
        size = path.stat().st_size
        rows.append(
            {
                "name": name,
                "source": source,
                "size_bytes": size,
                "size_ratio": round(size / fp32_size, 4),
                "accuracy": round(acc, 4),
                "card_accuracy": card_acc,
                "drop_points": drop,
                "accuracy_holds": drop <= budget + 1e-9,
            }
        )

    add("fp32 (the input model)", src, "–")
    add("quantize_static QDQ per-channel", static, "plain onnxruntime")
    add("quantize_dynamic", dynamic, "plain onnxruntime")
    records = {v.name: v for v in card.variants}
    for name in ("int8-static", "int8-dynamic"):
        v = records.get(name)
        if v is not None and v.file is not None and v.figures is not None:
            add(name, opt_dir / v.file, "edgeagent optimizer", v.figures.metric_value)
    holding = [
        v
        for v in card.variants
        if v.precision == "int8"
        and v.figures is not None
        and v.file is not None
        and v.figures.drop is not None
        and v.figures.drop <= budget + 1e-9
    ]
    smallest = min(holding, key=lambda v: v.figures.size_bytes if v.figures else 0, default=None)
    if smallest is not None and smallest.name not in ("int8-static", "int8-dynamic"):
        assert smallest.file is not None
        assert smallest.figures is not None
        add(
            f"{smallest.name} (smallest int8 within budget)",
            opt_dir / smallest.file,
            "edgeagent optimizer",
            smallest.figures.metric_value,
        )
    chosen = card.choice.variant
    ours = next((r for r in rows if r["name"] == "int8-static"), None)
    return {
        "model": label,
        "fp32_bytes": fp32_size,
        "fp32_accuracy": round(fp32_acc, 4),
        "params": card.model.params,
        "chosen": chosen,
        "rows": rows,
        "ours_int8_static_ratio": None if ours is None else ours["size_ratio"],
        "ours_int8_static_holds": None if ours is None else ours["accuracy_holds"],
        "target_ok": None
        if ours is None
        else bool(ours["accuracy_holds"] and ours["size_ratio"] <= TARGET_SIZE_RATIO),
    }


# 2. Choice --------------------------------------------------------------------------------------


def _sample_feeds(session: Any, cal: Feeds) -> Feeds:
    """Batch-1 feeds of the first calibration sample (what the optimizer times), in input order:
    LiteRT may name its inputs differently."""
    arrays = list(cal.values())
    return {
        spec.name: np.ascontiguousarray(arrays[i][:1], dtype=spec.dtype)
        for i, spec in enumerate(session.inputs)
    }


def _bind(run: Callable[[Feeds], object], feeds: Feeds) -> Callable[[], object]:
    return lambda: run(feeds)


def choice(
    label: str,
    card: ModelCard,
    opt_dir: Path,
    profile: DeviceProfile,
    cal: Feeds,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every measured variant, timed here, interleaved; chosen against best."""
    fns: dict[str, Callable[[], object]] = {}
    for v in card.variants:
        if v.figures is None or v.file is None:
            continue
        path = opt_dir / v.file
        session = load_model(path, settings_for(profile, path.stat().st_size))
        feeds = _sample_feeds(session, cal)
        fns[v.name] = _bind(session.run, feeds)
    say(args, f"{label}: timing {len(fns)} variants, {args.rounds} interleaved rounds")
    rounds = interleaved(fns, args.rounds, args.runs, per_call=True)
    qualified = set(card.choice.qualified)
    budget = card.data.budget
    rows: list[dict[str, Any]] = []
    for v in card.variants:
        if v.name not in rounds or v.figures is None:
            continue
        here = common.median(rounds[v.name])
        rows.append(
            {
                "name": v.name,
                "runtime": v.runtime,
                "precision": v.precision,
                "here_us": round(here, 3),
                "rounds_us": [round(x, 3) for x in rounds[v.name]],
                "speed_factor": v.figures.speed_factor,
                "estimate_us": round(here * v.figures.speed_factor, 3),
                "optimizer_p50_us": round(v.figures.p50_ms * 1000, 3),
                "drop_points": v.figures.drop,
                "within_budget": v.figures.drop is None or v.figures.drop <= budget + 1e-9,
                "qualified": v.name in qualified,
            }
        )
    chosen = card.choice.variant
    pick = next((r for r in rows if r["name"] == chosen), None)

    ratios: dict[str, Any] = {}
    if pick is not None:
        for key, tag in (("here_us", "here"), ("estimate_us", "estimate")):
            for scope in ("all", "within_budget"):
                pool = [r for r in rows if scope == "all" or r["within_budget"]]
                b = min(pool, key=lambda r: r[key])
                ratios[f"{tag}_{scope}"] = {
                    "best": b["name"],
                    "ratio": round(pick[key] / b[key], 3),
                    "target_ok": pick[key] / b[key] <= TARGET_CHOICE_RATIO,
                }
    return {
        "model": label,
        "device": profile.name,
        "threads": profile.threads,
        "chosen": chosen,
        "reason": card.choice.reason,
        "rows": rows,
        "ratios": ratios,
    }


# 3. Per-call overhead ---------------------------------------------------------------------------


def bare_ort(path: Path, settings: RuntimeSettings) -> Any:
    """An InferenceSession with exactly the options OnnxSession sets."""
    ort = load_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.spin else "0"
    )
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def bare_litert(path: Path, settings: RuntimeSettings) -> Any:
    interpreter_module = importlib.import_module("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=settings.threads)
    interpreter.allocate_tensors()
    return interpreter


def _pair(
    name: str, bare: Callable[[], object], ours: Callable[[], object], args: argparse.Namespace
) -> dict[str, Any]:
    say(args, f"overhead: {name}")
    rounds = interleaved({"bare": bare, "ours": ours}, args.rounds, args.runs)
    b, o = common.median(rounds["bare"]), common.median(rounds["ours"])
    limit = TARGET_OVERHEAD_RATIO * b + TARGET_OVERHEAD_PLUS_US
    return {
        "name": name,
        "bare_us": round(b, 3),
        "ours_us": round(o, 3),
        "ratio": round(o / b, 3),
        "overhead_us": round(o - b, 3),
        "round_ratios": [
            round(x / y, 3) for x, y in zip(rounds["ours"], rounds["bare"], strict=True)
        ],
        "limit_us": round(limit, 3),
        "target_ok": o <= limit,
    }


def overhead(
    src: Path,
    card: ModelCard,
    opt_dir: Path,
    profile: DeviceProfile,
    cal: Feeds,
    label: str,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Bare runtime against our backends and our skill path. Returns the rows and what the MQTT
    comparison needs."""
    rows = []
    settings = settings_for(profile, src.stat().st_size)
    ours = load_model(src, settings)
    feeds = _sample_feeds(ours, cal)
    sess = bare_ort(src, settings)
    names = [o.name for o in sess.get_outputs()]
    bare_run, ours_run = sess.run, ours.run
    want: Any = bare_run(names, feeds)[0]
    np.testing.assert_allclose(want, np.asarray(ours_run(feeds)[names[0]]), rtol=1e-6)
    rows.append(
        _pair(
            f"ONNX Runtime, {src.name} (fp32)",
            lambda: bare_run(names, feeds),
            lambda: ours_run(feeds),
            args,
        )
    )
    litert = next(
        (v for v in card.variants if v.name == "litert-fp32" and v.file and v.figures), None
    )
    if litert is not None and litert.file is not None:
        path = opt_dir / litert.file
        lsettings = settings_for(profile, path.stat().st_size)
        lours = load_model(path, lsettings)
        lfeeds = _sample_feeds(lours, cal)
        interp = bare_litert(path, lsettings)
        slots = [(d["index"], lfeeds[str(d["name"])]) for d in interp.get_input_details()]
        out_index = interp.get_output_details()[0]["index"]
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor

        def bare_lite() -> object:
            for index, value in slots:
                set_tensor(index, value)
            invoke()
            return get_tensor(out_index)

        lrun = lours.run
        rows.append(_pair(f"LiteRT, {path.name} (fp32)", bare_lite, lambda: lrun(lfeeds), args))
    skill_info: dict[str, Any] = {}
    if label == "digits":
        skill_rows, skill_info = skill_path(src, profile, cal, args)
        rows += skill_rows
    return rows, skill_info


def skill_path(
    src: Path, profile: DeviceProfile, cal: Feeds, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``DigitReader.read_digit`` (the example meter skill) against the same work done bare."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    meter = importlib.import_module("smarthome.meter")
    featurize = importlib.import_module("edgeagent.models.zoo.digits").featurize
    reader = meter.DigitReader(model=str(src), profile=profile.name)
    settings = settings_for(profile, src.stat().st_size)
    sess = bare_ort(src, settings)
    run = sess.run
    out_names = ["logits"]
    pixels = [float(v) for v in np.rint(cal["pixels"][0] * 16)]
    req = meter.Image8x8(pixels=pixels)
    digit_cls = meter.Digit

    def bare_direct() -> object:
        x = featurize(req.pixels)[None, :]
        logits = run(out_names, {"pixels": x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        return digit_cls(digit=best, confidence=round(float(p[best]), 4))

    read_digit = reader.read_digit
    assert bare_direct() == read_digit(req)
    rows = [
        _pair(
            "skill: DigitReader.read_digit(Image8x8), direct call",
            bare_direct,
            lambda: read_digit(req),
            args,
        )
    ]

    (skill,) = [s for s in collect_skills(reader) if s.name == "read_digit"]
    payload = json.dumps({"pixels": pixels}, separators=(",", ":")).encode()
    log = logging.getLogger("bench.skill")

    def emit(name: str, data: Any = None) -> None:
        return None

    def ours_dispatch() -> bytes:
        value = skill.validate_input(payload)
        ctx = SkillContext(
            device=MQTT_DEVICE, skill="read_digit", trace=None, deadline=None, emit=emit, log=log
        )
        result = skill.invoke(value, ctx)
        return b'{"type":"ok","output":' + bytes(skill.dump_output(result)) + b"}"

    def bare_dispatch() -> bytes:
        body = json.loads(payload)
        x = featurize(body["pixels"])[None, :]
        logits = run(out_names, {"pixels": x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        output = {"digit": best, "confidence": round(float(p[best]), 4)}
        return json.dumps({"type": "ok", "output": output}, separators=(",", ":")).encode()

    assert json.loads(ours_dispatch()) == json.loads(bare_dispatch())
    rows.append(
        _pair(
            "skill dispatch without MQTT: JSON request → validate → invoke → JSON reply",
            bare_dispatch,
            ours_dispatch,
            args,
        )
    )
    return rows, {"pixels": pixels, "bare_dispatch": bare_dispatch}
