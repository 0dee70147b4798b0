"""Models: edgeagent's optimizer and inference path against plain onnxruntime and LiteRT.

One run, one zoo model (``--model``, default digits), one device profile (``--device``, default
pi4), three comparisons:

1. **Quantization.** Plain ``onnxruntime.quantization``: ``quantize_static`` (QDQ, per-channel
   int8 weights, int8 activations, the same calibration samples) and ``quantize_dynamic``, on the
   zoo's fp32 model, against the optimizer (``edgeagent.models.optimize.optimize``) on the same
   model, profile and data. For each file: its size against fp32 and its accuracy on the recipe's
   evaluation set. The same again for a larger MLP (``--large-hidden``, default 64-1024-1024-10,
   about 1.1 M parameters) trained here on the digits data, where the fixed cost of a QDQ graph
   no longer dominates the file.
2. **Choice.** Every variant the optimizer built is loaded in this process with the profile's
   runtime settings (``settings_for``: the same threads the optimizer used) and timed, all
   interleaved; the chosen variant's time against the best variant's.
3. **Per-call overhead.** Bare ``InferenceSession.run`` against ``OnnxSession.run``; bare LiteRT
   ``set_tensor``/``invoke``/``get_tensor`` against ``LiteRTSession.run``; the digit-reading
   skill, ``DigitReader.read_digit`` called directly, against the same code on a bare session;
   and the agent's dispatch without MQTT (validate the JSON request, invoke, serialize the
   reply) against ``json.loads`` + the bare runtime + ``json.dumps``. For information, the
   end-to-end ``Fleet.call`` of ``read_digit`` through a private mosquitto to an
   ``edgeagent agent run`` subprocess.

Timing: a comparison's callables are timed in ``--rounds`` rounds (default 7). In a round each
callable runs ``--runs`` calls (default 2000; fewer for calls slower than 100 µs) in 20 blocks;
the blocks of all the callables are interleaved, in an order that rotates every round and
reverses every block, so a burst of other work hits all of them alike. A round's figure is the
median over its blocks of the mean time per call; the report gives the median over the rounds.

    python benchmarks/bench_models.py [--model digits] [--device pi4] [--runs 2000]
                                      [--rounds 7] [--json] [--no-large] [--no-mqtt]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import Fleet  # type: ignore[import-not-found, unused-ignore]
from edgeagent.devices import load_profile  # type: ignore[import-not-found, unused-ignore]
from edgeagent.devices.profile import (  # type: ignore[import-not-found, unused-ignore]
    DeviceProfile,
)
from edgeagent.models import (  # type: ignore[import-not-found, unused-ignore]
    RuntimeSettings,
    load_model,
    settings_for,
)
from edgeagent.models.card import ModelCard  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.optimize import optimize  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.zoo import RECIPES, Recipe  # type: ignore[import-not-found, unused-ignore]
from edgeagent.skills import (  # type: ignore[import-not-found, unused-ignore]
    SkillContext,
    collect_skills,
)

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is on sys.path, the repo is not
    import _common as common  # type: ignore[import-not-found, no-redef, unused-ignore]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "smart-home"
CALIBRATION_SAMPLES = 256  # what `edgeagent models optimize ZOO_MODEL` uses
DATA_SEED = 0
BLOCKS = 20
SLOW_CALL_S = 100e-6
SLOW_ROUND_S = 0.2
TARGET_CHOICE_RATIO = 1.05
TARGET_SIZE_RATIO = 0.3
TARGET_OVERHEAD_RATIO = 1.3
TARGET_OVERHEAD_PLUS_US = 3.0
""""1.3 times plus a few microseconds": ours ≤ 1.3 × bare + 3 µs."""
MQTT_DEVICE = "meter-bench"
CALL_TIMEOUT_S = 10.0

Feeds = dict[str, npt.NDArray[Any]]


def _say(args: argparse.Namespace, line: str) -> None:
    common.progress(args.quiet, f"… {line}")


# Timing -----------------------------------------------------------------------------------------


def _block_calls(fn: Callable[[], object], runs: int) -> int:
    """Calls per block: ``runs / BLOCKS``, fewer for slow calls (a round stays ≲ 0.2 s)."""
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    per_call = (time.perf_counter() - t0) / 20
    calls = runs
    if per_call > SLOW_CALL_S:
        calls = max(BLOCKS * 5, min(runs, int(SLOW_ROUND_S / per_call)))
    return max(1, calls // BLOCKS)


def interleaved(
    fns: Mapping[str, Callable[[], object]], rounds: int, runs: int, *, per_call: bool = False
) -> dict[str, list[float]]:
    """Per callable, one figure per round, in µs: the median over the round's blocks of the mean
    time per call; with ``per_call``, the median of the round's individually timed calls (a p50;
    each time then includes one clock read, about 0.05 µs, alike for every callable)."""
    names = list(fns)
    sizes = {name: _block_calls(fn, runs) for name, fn in fns.items()}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for r in range(rounds):
        order = common.rotation(names, r)
        samples: dict[str, list[float]] = {name: [] for name in names}
        gc.collect()
        for b in range(BLOCKS):
            for name in order if b % 2 == 0 else order[::-1]:
                fn, n, out = fns[name], sizes[name], samples[name]
                if per_call:
                    for _ in range(n):
                        t0 = clock()
                        fn()
                        out.append((clock() - t0) / 1000)
                else:
                    t0 = clock()
                    for _ in range(n):
                        fn()
                    out.append((clock() - t0) / n / 1000)
        for name in names:
            per_round[name].append(statistics.median(samples[name]))
    return per_round


# Data and models --------------------------------------------------------------------------------


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_data(recipe: Recipe, work: Path) -> tuple[Path, Path, Feeds, Feeds]:
    """The recipe's calibration (seed 0, 256 samples) and evaluation sets, as the CLI writes
    them (``np.savez``)."""
    cal = recipe.make_calibration(DATA_SEED, CALIBRATION_SAMPLES)
    ev = recipe.make_eval(DATA_SEED)
    cal_path, ev_path = work / "calibration.npz", work / "eval.npz"
    savez: Callable[..., None] = np.savez
    savez(cal_path, **cal)
    savez(ev_path, **ev)
    return cal_path, ev_path, cal, ev


def train_large(path: Path, hidden: Sequence[int], epochs: int) -> dict[str, Any]:
    """An MLP 64-hidden…-10 on the digits data (the zoo recipe's split, seed 0), as ONNX."""
    # The zoo's training helpers have no public name yet (deterministic_torch, fit, export_onnx).
    zoo_base = importlib.import_module("edgeagent.models.zoo._base")
    digits = importlib.import_module("edgeagent.models.zoo.digits")
    x_train, y_train, _, _ = digits.load(DATA_SEED)
    t0 = time.perf_counter()
    with zoo_base.deterministic_torch(DATA_SEED):
        import torch

        layers: list[torch.nn.Module] = []
        width = int(x_train.shape[1])
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 10))
        model = torch.nn.Sequential(*layers)
        zoo_base.fit(model, x_train, [y_train], seed=DATA_SEED, epochs=epochs, lr=1e-3)
        zoo_base.export_onnx(model, path, digits.RECIPE)
        params = int(sum(p.numel() for p in model.parameters()))
    widths = "-".join(str(w) for w in [int(x_train.shape[1]), *hidden, 10])
    return {
        "architecture": f"MLP {widths}, ReLU",
        "params": params,
        "epochs": epochs,
        "train_s": round(time.perf_counter() - t0, 1),
    }


def _ort() -> Any:
    import onnxruntime  # type: ignore[import-untyped, unused-ignore]

    return onnxruntime


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def plain_static(src: Path, out: Path, cal: Feeds, input_name: str) -> None:
    """What a user of onnxruntime.quantization writes: QDQ, per-channel, the same samples."""
    q = importlib.import_module("onnxruntime.quantization")
    x = cal[input_name]
    batches = [{input_name: x[i : i + 32]} for i in range(0, len(x), 32)]
    base: Any = q.CalibrationDataReader

    class Reader(base):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> Feeds | None:
            return next(self._it, None)

    with _quiet_root():
        q.quantize_static(
            str(src),
            str(out),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
        )


def plain_dynamic(src: Path, out: Path) -> None:
    q = importlib.import_module("onnxruntime.quantization")
    with _quiet_root():
        q.quantize_dynamic(str(src), str(out), weight_type=q.QuantType.QInt8)


def onnx_accuracy(path: Path, ev: Feeds, input_name: str) -> float:
    """Accuracy of the first output's argmax, with a bare InferenceSession, batch = whole set."""
    sess = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {input_name: ev[input_name].astype(np.float32)})[0]
    return float((np.asarray(logits).argmax(axis=1) == ev["labels"].ravel()).mean())


def run_optimizer(
    src: Path,
    profile: DeviceProfile,
    out: Path,
    cal_path: Path,
    ev_path: Path,
    args: argparse.Namespace,
) -> ModelCard:
    return optimize(
        src,
        profile,
        out,
        calibration=cal_path,
        evaluation=ev_path,
        runs=args.opt_runs,
        device_arg=args.device,
        progress=None if args.quiet else (lambda m: print(f"…   {m}", file=sys.stderr)),
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
    _say(args, f"{label}: timing {len(fns)} variants, {args.rounds} interleaved rounds")
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
    ort = _ort()
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
    _say(args, f"overhead: {name}")
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


# 3b. End to end over MQTT (information) ---------------------------------------------------------


@contextlib.contextmanager
def meter_agent(
    url: str, model: Path, profile: str, work: Path, log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgeagent agent run`` serving DigitReader on ``model`` (a subprocess we stop)."""
    config = work / "meter-bench.yaml"
    config.write_text(
        json.dumps(
            {
                "device": MQTT_DEVICE,
                "fleet": "home",
                "broker": url,
                "profile": profile,
                "skills": [
                    {
                        "module": "smarthome.meter:DigitReader",
                        "options": {"model": str(model), "profile": profile},
                    }
                ],
            }
        )
    )
    cmd = common.agent_command(url, config)
    with common.spawn(cmd, log, common.with_pythonpath(EXAMPLES)) as proc:
        yield proc


async def _mqtt_rounds(
    url: str, pixels: list[float], bare: Callable[[], object], args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Per round: p50 of sequential ``Fleet.call``s, and the bare dispatch's time per call."""
    calls = max(100, args.runs // 2)
    body = {"pixels": pixels}
    mqtt_p50: list[float] = []
    bare_us: list[float] = []
    await common.wait_online(url, "home", (MQTT_DEVICE,), timeout=60)
    async with Fleet(url, fleet="home") as fleet:
        for _ in range(100):
            await fleet.call(MQTT_DEVICE, "read_digit", body, timeout=CALL_TIMEOUT_S)
        for _ in range(args.rounds):
            gc.collect()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                await fleet.call(MQTT_DEVICE, "read_digit", body, timeout=CALL_TIMEOUT_S)
                times.append((time.perf_counter_ns() - t0) / 1000)
            mqtt_p50.append(statistics.median(times))
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                bare()
            bare_us.append((time.perf_counter_ns() - t0) / calls / 1000)
    return mqtt_p50, bare_us


def mqtt_end_to_end(
    src: Path, profile: DeviceProfile, info: Mapping[str, Any], work: Path, args: argparse.Namespace
) -> dict[str, Any] | None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        _say(args, "mosquitto is not installed: skipping the MQTT end-to-end call")
        return None
    _say(args, "MQTT: Fleet.call → private mosquitto → edgeagent agent run (DigitReader)")
    with (
        tempfile.TemporaryFile() as agent_log,
        common.private_broker() as broker,
        meter_agent(broker.url, src, profile.name, work, agent_log) as agent,
    ):
        try:
            mqtt_p50, bare_us = asyncio.run(
                _mqtt_rounds(broker.url, info["pixels"], info["bare_dispatch"], args)
            )
        except TimeoutError:
            agent_log.seek(0)
            sys.stderr.write(agent_log.read().decode(errors="replace"))
            raise SystemExit("the meter agent did not come online") from None
        if agent.poll() is not None:
            raise SystemExit(f"the meter agent exited with {agent.returncode}")
    m, b = common.median(mqtt_p50), common.median(bare_us)
    return {
        "calls_per_round": max(100, args.runs // 2),
        "fleet_call_p50_us": round(m, 1),
        "bare_dispatch_us": round(b, 2),
        "ratio": round(m / b, 1),
        "rounds_p50_us": [round(x, 1) for x in mqtt_p50],
    }


# Orchestration ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """The common description, with the CPU's int8 instructions and the runtimes' versions."""
    return {
        **common.machine_info(),
        "int8_flags": common.cpu_flags(("avx2", "avx512_vnni", "avx_vnni", "avx512f")),
        "packages": {
            d: common.package_version(d)
            for d in ("edgeagent", "onnxruntime", "onnx", "ai-edge-litert", "numpy", "torch")
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = common.CLOCK.monotonic()
    recipe = RECIPES.get(args.model)
    if recipe is None:
        raise SystemExit(f"--model: no zoo recipe {args.model!r} (known: {', '.join(RECIPES)})")
    profile = load_profile(args.device)
    src = recipe.onnx_path
    budget = 1.0  # the optimizer's default --budget: accuracy points
    report: dict[str, Any] = {
        "machine": machine_info(),
        "code": common.code_state(),
        "config": {
            "model": args.model,
            "device": profile.name,
            "threads": profile.threads,
            "rounds": args.rounds,
            "runs": args.runs,
            "optimizer_runs": args.opt_runs,
            "budget_points": budget,
        },
    }
    work_ctx: Any = (
        contextlib.nullcontext(args.keep)
        if args.keep
        else tempfile.TemporaryDirectory(prefix="bench-models-")
    )
    with work_ctx as work_name:
        work = Path(work_name)
        work.mkdir(parents=True, exist_ok=True)
        data = {args.model: write_data(recipe, _mkdir(work / f"data-{args.model}"))}
        models: list[tuple[str, Path, str]] = [(args.model, src, args.model)]
        if not args.no_large:
            large = work / "digits_large.onnx"
            _say(args, f"training the large MLP (64-{args.large_hidden}-10) on the digits data")
            hidden = [int(h) for h in args.large_hidden.split("-")]
            report["large_model"] = train_large(large, hidden, args.large_epochs)
            models.append(("digits-large", large, "digits"))
            if "digits" not in data:
                data["digits"] = write_data(RECIPES["digits"], _mkdir(work / "data-digits"))
        quant, choices = [], []
        cards: dict[str, ModelCard] = {}
        for label, path, data_name in models:
            cal_path, ev_path, cal, ev = data[data_name]
            out = work / f"opt-{label}"
            _say(args, f"{label}: edgeagent optimizer ({args.device}, --runs {args.opt_runs})")
            t0 = common.CLOCK.monotonic()
            card = run_optimizer(path, profile, out, cal_path, ev_path, args)
            opt_s = round(common.CLOCK.monotonic() - t0, 1)
            cards[label] = card
            _say(args, f"{label}: plain onnxruntime.quantization")
            q = quantization(label, path, card, out, cal, ev, next(iter(cal)), work, budget)
            q["optimizer_s"] = opt_s
            quant.append(q)
            choices.append(choice(label, card, out, profile, cal, args))
        report["quantization"] = quant
        report["choice"] = choices
        cal = data[args.model][2]
        rows, info = overhead(
            src, cards[args.model], work / f"opt-{args.model}", profile, cal, args.model, args
        )
        report["overhead"] = rows
        report["mqtt"] = None
        if info and not args.no_mqtt:
            report["mqtt"] = mqtt_end_to_end(src, profile, info, work, args)
    report["elapsed_s"] = round(common.CLOCK.monotonic() - started, 1)
    return report


# Output -----------------------------------------------------------------------------------------


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("met" if flag else "MISSED")


def _us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def print_tables(report: dict[str, Any]) -> None:
    m, cfg = report["machine"], report["config"]
    pk = m["packages"]
    print(
        f"{m['cpus']} × {m['cpu_model']} ({', '.join(m['int8_flags']) or 'no AVX2/VNNI'}), "
        f"load {' '.join(m['loadavg'])}; Python {m['python']}, onnxruntime {pk['onnxruntime']}, "
        f"onnx {pk['onnx']}, ai-edge-litert {pk['ai-edge-litert']}, numpy {pk['numpy']}"
    )
    print(
        f"model {cfg['model']}, device {cfg['device']} ({cfg['threads']} threads), "
        f"{cfg['runs']} calls × {cfg['rounds']} interleaved rounds, optimizer --runs "
        f"{cfg['optimizer_runs']}, budget {cfg['budget_points']:g} accuracy point"
    )
    if "large_model" in report:
        lm = report["large_model"]
        print(
            f"large model: {lm['architecture']}, {lm['params']} parameters, "
            f"{lm['epochs']} epochs ({lm['train_s']} s)"
        )
    print()
    print("## 1. int8 size and accuracy: plain onnxruntime.quantization vs the optimizer")
    for q in report["quantization"]:
        print()
        print(
            f"{q['model']}: fp32 {q['fp32_bytes']} bytes, {q['params']} parameters, accuracy "
            f"{q['fp32_accuracy']:.2%}; optimizer {q['optimizer_s']} s, chose {q['chosen']}"
        )
        print()
        header: tuple[str, ...] = (
            "file",
            "made by",
            "bytes",
            "size / fp32",
            "accuracy",
            "drop (points)",
        )
        cells: list[tuple[object, ...]] = [
            (r["name"], r["source"], r["size_bytes"], f"{r['size_ratio']:.3f}",
             f"{r['accuracy']:.2%}", f"{r['drop_points']:+.2f}")
            for r in q["rows"]
        ]  # fmt: skip
        print(common.markdown_table(header, cells, "llrrrr"))
        print()
        print(
            f"our int8-static size / fp32 = {q['ours_int8_static_ratio']:.3f} (target ≤ "
            f"{TARGET_SIZE_RATIO} where accuracy holds; holds: {q['ours_int8_static_holds']}) "
            f"{_ok(q['target_ok'])}"
        )
    print()
    print("## 2. The chosen variant against the best, re-timed here (interleaved)")
    for c in report["choice"]:
        print()
        print(f"{c['model']} on {c['device']} ({c['threads']} threads): chosen {c['chosen']}")
        print()
        header = ("variant", "runtime", "precision", "µs here", "est. µs on device",
                  "optimizer p50 µs", "drop", "passes rules")  # fmt: skip
        cells = []
        for r in c["rows"]:
            mark = "**" if r["name"] == c["chosen"] else ""
            drop = "–" if r["drop_points"] is None else f"{r['drop_points']:+.2f}"
            cells.append(
                (f"{mark}{r['name']}{mark}", r["runtime"], r["precision"], _us(r["here_us"]),
                 _us(r["estimate_us"]), _us(r["optimizer_p50_us"]), drop,
                 "yes" if r["qualified"] else "no")
            )  # fmt: skip
        print(common.markdown_table(header, cells, "lllrrrrl"))
        print()
        scopes = {
            "here_all": "µs here, all variants",
            "here_within_budget": "µs here, variants within the accuracy budget",
            "estimate_all": "estimated µs on the device, all variants",
            "estimate_within_budget": "estimated µs on the device, within the accuracy budget",
        }
        for key, ratio in c["ratios"].items():
            print(
                f"chosen / best ({scopes[key]}; best {ratio['best']}) = {ratio['ratio']:.3f}  "
                f"(target ≤ {TARGET_CHOICE_RATIO}) {_ok(ratio['target_ok'])}"
            )
    print()
    print("## 3. Per-call overhead: ours against the bare runtime (same model, same settings)")
    print()
    header = ("call", "bare µs", "ours µs", "ours / bare", "overhead µs", "limit µs (1.3×+3)", "")
    cells = [
        (r["name"], _us(r["bare_us"]), _us(r["ours_us"]), f"{r['ratio']:.2f}",
         f"{r['overhead_us']:+.2f}", _us(r["limit_us"]), _ok(r["target_ok"]))
        for r in report["overhead"]
    ]  # fmt: skip
    print(common.markdown_table(header, cells, "lrrrrrl"))
    print()
    for r in report["overhead"]:
        print(f"{r['name']}: ours/bare per round {r['round_ratios']}")
    mq = report.get("mqtt")
    if mq:
        print()
        print(
            f"MQTT (information): Fleet.call read_digit p50 {mq['fleet_call_p50_us']:.0f} µs "
            f"(rounds {mq['rounds_p50_us']}) against the bare dispatch "
            f"{mq['bare_dispatch_us']:.2f} µs: ×{mq['ratio']:.0f}"
        )
    print()
    print(f"(whole run {report['elapsed_s']} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="digits", help="zoo model (default digits)")
    parser.add_argument("--device", default="pi4", help="device profile (default pi4)")
    parser.add_argument("--runs", type=int, default=2000, help="timed calls per callable per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported")
    parser.add_argument(
        "--opt-runs", type=int, default=1000, help="the optimizer's --runs per variant"
    )
    parser.add_argument(
        "--large-hidden", default="1024-1024", help="hidden widths of the large MLP (A-B-…)"
    )
    parser.add_argument("--large-epochs", type=int, default=12, help="epochs for the large MLP")
    parser.add_argument("--no-large", action="store_true", help="skip the large MLP")
    parser.add_argument("--no-mqtt", action="store_true", help="skip the MQTT end-to-end call")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: temp)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.runs < BLOCKS or args.rounds < 1 or args.opt_runs < 10:
        parser.error(f"--runs ≥ {BLOCKS}, --rounds ≥ 1 and --opt-runs ≥ 10 are required")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
