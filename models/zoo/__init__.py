"""The model zoo: tiny models trained from bundled or generated data, reproducible from a seed.

::

    from edgeagent.models.zoo import RECIPES
    recipe = RECIPES["digits"]
    result = recipe.train(seed=0, out_dir=Path("out"))    # needs the `train` extra
    result.metrics                                        # {"test_accuracy": 0.97…, …}
    np.savez("eval.npz", **recipe.make_eval(0))           # {"pixels": …, "labels": …}
    np.savez("calib.npz", **recipe.make_calibration(0, 256))

or ``python -m edgeagent.models.zoo list | train NAME [--seed N] [--out DIR] | data NAME``.

Each recipe's committed artifacts live in ``models/zoo/<name>/`` (:attr:`Recipe.artifact_dir`):
``<name>.onnx`` (fp32, opset 17, one float32 input with a dynamic batch dimension, plain
Gemm/Relu layers), ``card.json`` and ``card.md``. Recipes:

- ``digits``: meter/keypad digit reader on scikit-learn's bundled 8x8 digits.
- ``vibration``: machine-vibration fault/anomaly detector on synthetic accelerometer windows.
- ``intent``: home-command intent classifier with device-kind and room slots.

Importing the zoo needs numpy only; training and the digits data need the ``train`` extra
(torch, scikit-learn, onnx), and raise :class:`TrainingUnavailable` naming it when missing.
"""

from __future__ import annotations

try:
    import numpy  # noqa: F401 - the recipes' featurizers need it
except ImportError as exc:  # pragma: no cover - exercised in a fresh venv only
    from ..backend import RuntimeMissing

    raise RuntimeMissing(
        "the model zoo needs numpy: pip install 'edgeagent[onnx]' (or [tflite])"
    ) from exc

from . import digits, intent, vibration
from ._base import DEFAULT_SEED, ZOO_DIR, Recipe, TrainingUnavailable, TrainResult

RECIPES: dict[str, Recipe] = {r.name: r for r in (digits.RECIPE, vibration.RECIPE, intent.RECIPE)}

__all__ = [
    "DEFAULT_SEED",
    "RECIPES",
    "ZOO_DIR",
    "Recipe",
    "TrainResult",
    "TrainingUnavailable",
]
