"""Digit reader for meters and keypads: 8x8 grey images → 10 classes.

Data: scikit-learn's bundled ``load_digits`` (1797 images, pixel values 0..16, no download),
split per class 80/20 into train/test by the seed. Input ``pixels``: float32 [N, 64], the image
row by row, scaled to 0..1 (``pixels / 16``); :func:`featurize` does it for any 8x8 grey image.
Model: MLP 64-64-32-10 (Gemm/Relu), output ``logits``.
"""

from __future__ import annotations

from pathlib import Path

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
    predict,
    require,
    rng,
    write_card,
)

NAME = "digits"
INPUT = "pixels"
LABELS = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
HIDDEN = (64, 32)
EPOCHS = 60


def featurize(image: npt.ArrayLike, max_value: float = 16.0) -> F32:
    """An 8x8 grey image (0..``max_value``, dark ink high) → the model's [64] float32 input."""
    arr = np.asarray(image, dtype=np.float32).reshape(64)
    scaled: F32 = np.clip(arr / np.float32(max_value), 0.0, 1.0).astype(np.float32)
    return scaled


def load(seed: int) -> tuple[F32, I64, F32, I64]:
    """(x_train, y_train, x_test, y_test): a stratified split of the bundled digits by ``seed``."""
    datasets = require("sklearn.datasets")
    bunch = datasets.load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    gen = rng(seed, 0)
    test: list[npt.NDArray[np.intp]] = []
    for digit in range(10):
        idx = gen.permutation(np.flatnonzero(y == digit))
        test.append(idx[: round(len(idx) * TEST_FRACTION)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def make_eval(seed: int) -> Arrays:
    _, _, x_test, y_test = load(seed)
    return {INPUT: x_test, "labels": y_test}


def make_calibration(seed: int, n: int) -> Arrays:
    x_train, _, _, _ = load(seed)
    pick = rng(seed, 2).choice(len(x_train), size=min(n, len(x_train)), replace=False)
    return {INPUT: x_train[np.sort(pick)]}


def train(seed: int, out_dir: Path) -> TrainResult:
    clock = Stopwatch()
    x_train, y_train, x_test, y_test = load(seed)
    with deterministic_torch(seed):
        import torch

        model = torch.nn.Sequential(
            torch.nn.Linear(64, HIDDEN[0]),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN[0], HIDDEN[1]),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN[1], 10),
        )
        fit(model, x_train, [y_train], seed=seed, epochs=EPOCHS, lr=3e-3)
        (train_logits,) = predict(model, x_train)
        (test_logits,) = predict(model, x_test)
        onnx_path = out_dir / f"{NAME}.onnx"
        export_onnx(model, onnx_path, RECIPE)
    metrics = {
        "test_accuracy": accuracy(test_logits, y_test),
        "train_accuracy": accuracy(train_logits, y_train),
    }
    card_json, card_md = write_card(
        RECIPE,
        out_dir,
        seed=seed,
        metrics=metrics,
        training={
            "architecture": f"MLP 64-{HIDDEN[0]}-{HIDDEN[1]}-10, ReLU",
            "parameters": sum(p.numel() for p in model.parameters()),
            "optimizer": f"Adam lr 3e-3 (linear decay to 10%), weight decay 1e-4, batch 64, "
            f"{EPOCHS} epochs, cross-entropy",
            "train_samples": len(y_train),
            "test_samples": len(y_test),
        },
        usage="""\
```python
from edgeagent.models.zoo.digits import featurize

logits = session.run({"pixels": featurize(image_8x8)[None]})["logits"]
digit = int(logits.argmax())
```""",
    )
    return TrainResult(NAME, seed, onnx_path, card_json, card_md, metrics, clock.seconds)


RECIPE = Recipe(
    name=NAME,
    description="Digit reader for meter dials and keypads: an 8x8 grey image of one digit → 0-9.",
    version="1",
    inputs=(TensorSpec(INPUT, (None, 64), "float32"),),
    outputs=(TensorSpec("logits", (None, 10), "float32"),),
    labels={"logits": LABELS},
    data="scikit-learn's bundled `load_digits` (1797 8x8 images of handwritten digits from 43 "
    "writers, 16 grey levels), split per class 80% train / 20% test by the seed.",
    features="`pixels`: the 8x8 image row by row, scaled to 0..1 (grey level / 16): "
    "`edgeagent.models.zoo.digits.featurize(image)`.",
    train_fn=train,
    eval_fn=make_eval,
    calibration_fn=make_calibration,
)
