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
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent.devices import load_profile  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.card import ModelCard  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.zoo import RECIPES  # type: ignore[import-not-found, unused-ignore]

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from benchmarks.models_compare import (
    bare_litert,
    bare_ort,
    choice,
    overhead,
    quantization,
    skill_path,
)
from benchmarks.models_mqtt import (
    meter_agent,
    mqtt_end_to_end,
)
from benchmarks.models_parts import (
    BLOCKS,
    CALIBRATION_SAMPLES,
    CALL_TIMEOUT_S,
    DATA_SEED,
    EXAMPLES,
    MQTT_DEVICE,
    REPO,
    SLOW_CALL_S,
    SLOW_ROUND_S,
    TARGET_CHOICE_RATIO,
    TARGET_OVERHEAD_PLUS_US,
    TARGET_OVERHEAD_RATIO,
    TARGET_SIZE_RATIO,
    Feeds,
    interleaved,
    mkdir,
    onnx_accuracy,
    plain_dynamic,
    plain_static,
    run_optimizer,
    say,
    train_large,
    write_data,
)
from benchmarks.models_report import (
    print_tables,
)

__all__ = [
    "BLOCKS",
    "CALIBRATION_SAMPLES",
    "CALL_TIMEOUT_S",
    "DATA_SEED",
    "EXAMPLES",
    "MQTT_DEVICE",
    "REPO",
    "SLOW_CALL_S",
    "SLOW_ROUND_S",
    "TARGET_CHOICE_RATIO",
    "TARGET_OVERHEAD_PLUS_US",
    "TARGET_OVERHEAD_RATIO",
    "TARGET_SIZE_RATIO",
    "Feeds",
    "bare_litert",
    "bare_ort",
    "choice",
    "interleaved",
    "machine_info",
    "main",
    "meter_agent",
    "mqtt_end_to_end",
    "onnx_accuracy",
    "overhead",
    "parse_args",
    "plain_dynamic",
    "plain_static",
    "print_tables",
    "quantization",
    "run",
    "run_optimizer",
    "skill_path",
    "train_large",
    "write_data",
]


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
        data = {args.model: write_data(recipe, mkdir(work / f"data-{args.model}"))}
        models: list[tuple[str, Path, str]] = [(args.model, src, args.model)]
        if not args.no_large:
            large = work / "digits_large.onnx"
            say(args, f"training the large MLP (64-{args.large_hidden}-10) on the digits data")
            hidden = [int(h) for h in args.large_hidden.split("-")]
            report["large_model"] = train_large(large, hidden, args.large_epochs)
            models.append(("digits-large", large, "digits"))
            if "digits" not in data:
                data["digits"] = write_data(RECIPES["digits"], mkdir(work / "data-digits"))
        quant, choices = [], []
        cards: dict[str, ModelCard] = {}
        for label, path, data_name in models:
            cal_path, ev_path, cal, ev = data[data_name]
            out = work / f"opt-{label}"
            say(args, f"{label}: edgeagent optimizer ({args.device}, --runs {args.opt_runs})")
            t0 = common.CLOCK.monotonic()
            card = run_optimizer(path, profile, out, cal_path, ev_path, args)
            opt_s = round(common.CLOCK.monotonic() - t0, 1)
            cards[label] = card
            say(args, f"{label}: plain onnxruntime.quantization")
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
