"""Machine-vibration fault/anomaly detector on synthetic accelerometer windows.

Signals (:func:`simulate`): 128-sample windows at 1024 Hz (125 ms) of a rotating machine, shaft
speed 20-50 Hz. Healthy: the 1x, 2x and 3x shaft harmonics with random phases and a sensor gain,
plus broadband noise. Faults, each at a random severity from mild to severe:

- ``imbalance``: the 1x amplitude grows 1.4-4x;
- ``looseness``: a comb of harmonics up to 8x plus half-order (0.5x, 1.5x, …) sub-harmonics;
- ``bearing``: impulses at a defect frequency 3-5x shaft speed, each ringing a 250-400 Hz
  structural resonance (ms decay).

A fourth fault, ``misalignment`` (strong 2x and 3x), is never trained on: the card reports how the
anomaly score separates it from healthy windows, as a check on faults the model has not seen.

Features (:func:`featurize`, numpy only, what a device computes): ``features`` float32 [36] =
32 log band amplitudes of the Hann-windowed spectrum (bins 1-64 summed in pairs: 16 Hz bands up to
512 Hz) + log RMS, log peak, crest factor, log kurtosis. The training standardization is folded
into the first layer, so the model takes these raw features.

Model: MLP 36-32-16-4 classifier over (healthy, imbalance, looseness, bearing), output ``logits``.
Anomaly score (:func:`anomaly_score`) = 1 - softmax(logits)[healthy]; alarm when the score is
above the card's ``threshold`` (chosen on a separate validation set for balanced accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..backend import TensorSpec
from ._base import (
    F32,
    I64,
    Arrays,
    Recipe,
    Stopwatch,
    TrainResult,
    accuracy,
    deterministic_torch,
    export_onnx,
    fit,
    fold_standardization,
    predict,
    rng,
    roc_auc,
    write_card,
)

NAME = "vibration"
INPUT = "features"
SAMPLE_RATE = 1024
WINDOW = 128
BANDS = 32
N_FEATURES = BANDS + 4
CLASSES = ("healthy", "imbalance", "looseness", "bearing")
UNSEEN_FAULT = "misalignment"
HIDDEN = (32, 16)
EPOCHS = 40
TRAIN_PER_CLASS = 1500
EVAL_PER_CLASS = 500

_T = np.arange(WINDOW) / SAMPLE_RATE
_HANN = np.hanning(WINDOW)


def simulate(kind: str, n: int, gen: np.random.Generator) -> npt.NDArray[np.float64]:
    """``n`` windows [n, 128] of acceleration (g) of one condition: ``healthy``, a class of
    :data:`CLASSES` or ``misalignment``."""
    if kind not in (*CLASSES, UNSEEN_FAULT):
        raise ValueError(f"unknown condition {kind!r}")
    shaft = gen.uniform(20, 50, (n, 1))
    gain = gen.uniform(0.8, 1.25, (n, 1))
    a1 = gen.uniform(0.5, 1.0, (n, 1))
    amps = {1: a1, 2: a1 * gen.uniform(0.1, 0.3, (n, 1)), 3: a1 * gen.uniform(0.02, 0.1, (n, 1))}
    severity = gen.uniform(0.15, 1.0, (n, 1))
    x = np.zeros((n, WINDOW))
    if kind == "imbalance":
        amps[1] = a1 * (1.4 + 2.6 * severity)
    elif kind == "misalignment":
        amps[2] = a1 * (0.5 + 1.0 * severity)
        amps[3] = a1 * (0.2 + 0.4 * severity)
    elif kind == "looseness":
        for order in (0.5, 1.5, 2.5, 3.5, 4, 5, 6, 7, 8):
            amp = a1 * severity * gen.uniform(0.1, 0.45, (n, 1))
            x += amp * np.sin(2 * np.pi * order * shaft * _T + gen.uniform(0, 2 * np.pi, (n, 1)))
    for order, amp in amps.items():
        x += amp * np.sin(2 * np.pi * order * shaft * _T + gen.uniform(0, 2 * np.pi, (n, 1)))
    if kind == "bearing":
        x += _bearing_impulses(shaft, a1 * severity, gen)
    x += gen.normal(0, 1, (n, WINDOW)) * gen.uniform(0.05, 0.15, (n, 1))
    return np.asarray(x * gain, dtype=np.float64)


def _bearing_impulses(
    shaft: npt.NDArray[np.float64], level: npt.NDArray[np.float64], gen: np.random.Generator
) -> npt.NDArray[np.float64]:
    n = len(shaft)
    rate = shaft[:, 0] * gen.uniform(3.0, 5.0, n)
    resonance = gen.uniform(250, 400, n)
    decay = gen.uniform(0.002, 0.005, n)
    out = np.zeros((n, WINDOW))
    for i in range(n):
        period = 1.0 / rate[i]
        t0 = gen.uniform(0, period)
        while t0 < _T[-1]:
            dt = _T - t0
            ring = np.where(dt >= 0, np.exp(-np.maximum(dt, 0) / decay[i]), 0.0)
            out[i] += (
                gen.uniform(1.5, 3.5) * level[i, 0] * ring * np.sin(2 * np.pi * resonance[i] * dt)
            )
            t0 += period * gen.uniform(0.97, 1.03)
    return out


def featurize(window: npt.ArrayLike) -> F32:
    """Windows [..., 128] of acceleration (g) at 1024 Hz → features [..., 36] float32 (numpy)."""
    x = np.asarray(window, dtype=np.float64)
    if x.shape[-1] != WINDOW:
        raise ValueError(f"a window is {WINDOW} samples at {SAMPLE_RATE} Hz, got {x.shape[-1]}")
    x = x - x.mean(axis=-1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(x * _HANN, axis=-1)) * (2.0 / _HANN.sum())
    bands = spectrum[..., 1 : 1 + 2 * BANDS].reshape(*x.shape[:-1], BANDS, 2).sum(axis=-1)
    rms = np.sqrt(np.mean(x**2, axis=-1)) + 1e-9
    peak = np.max(np.abs(x), axis=-1) + 1e-9
    kurtosis = np.mean(x**4, axis=-1) / rms**4
    stats = np.stack([np.log(rms), np.log(peak), peak / rms, np.log(kurtosis)], axis=-1)
    return np.concatenate([np.log(bands + 1e-3), stats], axis=-1).astype(np.float32)


def anomaly_score(logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """1 - P(healthy) from the model's logits [N, 4]: 0 healthy … 1 faulty."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    score: npt.NDArray[np.float32] = (1.0 - p[..., 0]).astype(np.float32)
    return score


def dataset(gen: np.random.Generator, per_class: int) -> tuple[F32, I64]:
    """Features and class indices, ``per_class`` windows of each of :data:`CLASSES`, shuffled."""
    xs = [featurize(simulate(kind, per_class, gen)) for kind in CLASSES]
    ys = [np.full(per_class, i, dtype=np.int64) for i in range(len(CLASSES))]
    order = gen.permutation(per_class * len(CLASSES))
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


def make_eval(seed: int) -> Arrays:
    x, y = dataset(rng(seed, 1), EVAL_PER_CLASS)
    return {INPUT: x, "labels": y}


def make_calibration(seed: int, n: int) -> Arrays:
    per_class = -(-n // len(CLASSES))
    x, _ = dataset(rng(seed, 2), per_class)
    return {INPUT: x[:n]}


def _threshold(scores: npt.NDArray[np.float32], faulty: npt.NDArray[np.bool_]) -> float:
    """The grid threshold with the best balanced accuracy (ties: nearest 0.5)."""
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    balanced = [(np.mean(scores[faulty] > t) + np.mean(scores[~faulty] <= t)) / 2 for t in grid]
    best = max(balanced)
    return float(
        min(
            (t for t, b in zip(grid, balanced, strict=True) if b == best),
            key=lambda t: abs(t - 0.5),
        )
    )


def _binary_metrics(
    scores: npt.NDArray[np.float32], faulty: npt.NDArray[np.bool_], threshold: float
) -> dict[str, float]:
    alarm = scores > threshold
    return {
        "roc_auc": roc_auc(scores, faulty),
        "accuracy_at_threshold": float(np.mean(alarm == faulty)),
        "detection_rate": float(np.mean(alarm[faulty])),
        "false_alarm_rate": float(np.mean(alarm[~faulty])),
    }


def train(seed: int, out_dir: Path) -> TrainResult:
    clock = Stopwatch()
    x_train, y_train = dataset(rng(seed, 0), TRAIN_PER_CLASS)
    x_valid, y_valid = dataset(rng(seed, 3), EVAL_PER_CLASS // 2)
    evaluation = make_eval(seed)
    x_test, y_test = evaluation[INPUT], evaluation["labels"]
    unseen_gen = rng(seed, 4)
    x_unseen = np.concatenate(
        [
            featurize(simulate("healthy", EVAL_PER_CLASS, unseen_gen)),
            featurize(simulate(UNSEEN_FAULT, EVAL_PER_CLASS, unseen_gen)),
        ]
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-6
    with deterministic_torch(seed):
        import torch

        model = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, HIDDEN[0]),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN[0], HIDDEN[1]),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN[1], len(CLASSES)),
        )
        fit(model, (x_train - mean) / std, [y_train], seed=seed, epochs=EPOCHS, lr=3e-3)
        first = model[0]
        assert isinstance(first, torch.nn.Linear)
        fold_standardization(first, mean, std)
        (valid_logits,) = predict(model, x_valid)
        (test_logits,) = predict(model, x_test)
        (unseen_logits,) = predict(model, x_unseen)
        onnx_path = out_dir / f"{NAME}.onnx"
        export_onnx(model, onnx_path, RECIPE)
    threshold = _threshold(anomaly_score(valid_logits), y_valid != 0)
    metrics: dict[str, float] = {
        **_binary_metrics(anomaly_score(test_logits), y_test != 0, threshold),
        "class_accuracy": accuracy(test_logits, y_test),
    }
    unseen = _binary_metrics(
        anomaly_score(unseen_logits), np.arange(len(x_unseen)) >= EVAL_PER_CLASS, threshold
    )
    metrics[f"{UNSEEN_FAULT}_roc_auc"] = unseen["roc_auc"]
    metrics[f"{UNSEEN_FAULT}_detection_rate"] = unseen["detection_rate"]
    extra: dict[str, Any] = {
        "threshold": threshold,
        "anomaly_score": "1 - softmax(logits)[0]; alarm when score > threshold",
        "signal": {"sample_rate_hz": SAMPLE_RATE, "window_samples": WINDOW, "unit": "g"},
    }
    card_json, card_md = write_card(
        RECIPE,
        out_dir,
        seed=seed,
        metrics=metrics,
        training={
            "architecture": f"MLP {N_FEATURES}-{HIDDEN[0]}-{HIDDEN[1]}-{len(CLASSES)}, ReLU; "
            "input standardization folded into the first layer",
            "parameters": sum(p.numel() for p in model.parameters()),
            "optimizer": f"Adam lr 3e-3 (linear decay to 10%), weight decay 1e-4, batch 64, "
            f"{EPOCHS} epochs, cross-entropy",
            "train_windows": len(y_train),
            "threshold_selection": f"best balanced accuracy on {len(y_valid)} validation windows",
        },
        extra=extra,
        usage=f"""\
```python
from edgeagent.models.zoo.vibration import anomaly_score, featurize

logits = session.run({{"features": featurize(window_128_samples_1024hz)[None]}})["logits"]
alarm = anomaly_score(logits)[0] > {threshold}  # card.json "threshold"
```

Metrics `roc_auc`, `accuracy_at_threshold`, `detection_rate` and `false_alarm_rate` are healthy
vs any fault at the threshold; `class_accuracy` is the 4-way diagnosis; `{UNSEEN_FAULT}_*` are
for a fault type the model never saw in training.""",
    )
    return TrainResult(NAME, seed, onnx_path, card_json, card_md, metrics, clock.seconds)


RECIPE = Recipe(
    name=NAME,
    description="Vibration anomaly detector and fault classifier for rotating machines "
    "(fans, pumps, motors): a 125 ms accelerometer window → healthy / imbalance / looseness / "
    "bearing, and an anomaly score.",
    version="1",
    inputs=(TensorSpec(INPUT, (None, N_FEATURES), "float32"),),
    outputs=(TensorSpec("logits", (None, len(CLASSES)), "float32"),),
    labels={"logits": CLASSES},
    data=f"Synthetic, generated from the seed (`edgeagent.models.zoo.vibration.simulate`): "
    f"{WINDOW}-sample windows at {SAMPLE_RATE} Hz, shaft 20-50 Hz, 1x/2x/3x harmonics with random "
    "amplitudes and phases, sensor gain 0.8-1.25, noise. Faults at random severity: imbalance "
    "(1x grows 1.4-4x), looseness (harmonics to 8x and half orders), bearing (impulses at 3-5x "
    f"shaft speed ringing a 250-400 Hz resonance). {TRAIN_PER_CLASS} training and "
    f"{EVAL_PER_CLASS} test windows per class from independent streams; misalignment (strong "
    "2x/3x) held out of training entirely.",
    features="`features` [36]: 32 log band amplitudes (Hann window, rfft, bins 1-64 summed in "
    "pairs = 16 Hz bands to 512 Hz, log(a + 1e-3)) then log RMS, log peak, crest factor, "
    "log kurtosis of the mean-removed window: `edgeagent.models.zoo.vibration.featurize(window)` "
    "(numpy only).",
    train_fn=train,
    eval_fn=make_eval,
    calibration_fn=make_calibration,
)
