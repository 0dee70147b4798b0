"""Parts of ``bench_models`` (edgeagent's optimizer and inference path against plain onnxruntime
and LiteRT): its constants and targets, the interleaved timing of callables in rounds, the data
(the zoo recipe's calibration and evaluation sets), the larger MLP it trains, plain
``onnxruntime.quantization`` and the optimizer's run. Apart from the script so that each module
stays one concept: these are the inputs of the comparisons, ``bench_models`` the order of a run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks import _common as common

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent.devices.profile import (  # type: ignore[import-not-found, unused-ignore]
    DeviceProfile,
)
from edgeagent.models.card import ModelCard  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.optimize import optimize  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.zoo import Recipe  # type: ignore[import-not-found, unused-ignore]

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


def say(args: argparse.Namespace, line: str) -> None:
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


def mkdir(path: Path) -> Path:
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


def load_ort() -> Any:
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
    sess = load_ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
