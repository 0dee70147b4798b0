"""What every zoo recipe shares: the Recipe/TrainResult types, the lazy import of the training
stack, deterministic torch training, ONNX export and the model card.

Only numpy is imported at module level: a device imports the recipe modules for their numpy-only
featurizers; torch and scikit-learn are imported inside the functions that train or load data.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...errors import EdgeAgentError
from ..backend import TensorSpec

if TYPE_CHECKING:
    import torch

ZOO_DIR = Path(__file__).resolve().parent
DEFAULT_SEED = 0
OPSET = 17
TRAIN_EXTRA_HINT = "pip install 'edgeagent[train]'"

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Arrays = dict[str, npt.NDArray[Any]]


class TrainingUnavailable(EdgeAgentError, ImportError):
    """torch, scikit-learn or onnx is missing: they come with the ``train`` extra."""


def require(module: str) -> ModuleType:
    """Import a training dependency, or raise :class:`TrainingUnavailable` naming the extra."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise TrainingUnavailable(
            f"the model zoo needs {module.split('.')[0]!r} to train or load its data; "
            f"it comes with the `train` extra: {TRAIN_EXTRA_HINT}"
        ) from exc


def require_torch() -> ModuleType:
    require("onnx")  # torch.onnx.export writes the file with it
    return require("torch")


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What :meth:`Recipe.train` wrote and measured."""

    name: str
    seed: int
    onnx: Path
    card_json: Path
    card_md: Path
    metrics: dict[str, float]
    seconds: float
    """Wall-clock training time (not written to the card, so a retrain reproduces it exactly)."""

    @property
    def artifacts(self) -> dict[str, Path]:
        return {"onnx": self.onnx, "card.json": self.card_json, "card.md": self.card_md}


@dataclass(frozen=True, slots=True)
class Recipe:
    """One zoo model: how to train it and the data to evaluate or calibrate it with.

    ``make_eval(seed)`` returns the recipe's held-out test set as arrays named after the model's
    input plus ``labels`` (the classes of the first output; multi-head models add
    ``labels_<output>`` for every output). ``make_calibration(seed, n)`` returns ``n`` training-
    distribution inputs under the input's name. Both are what ``np.savez`` takes for the optimizer.
    """

    name: str
    description: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: Mapping[str, tuple[str, ...]]
    """Class names per output (the intent model: intent, kind and room vocabularies)."""
    data: str
    """How the training data is made: the card's "training data"."""
    features: str
    """How a device computes the model input from raw data (numpy only)."""
    train_fn: Callable[[int, Path], TrainResult] = field(repr=False)
    eval_fn: Callable[[int], Arrays] = field(repr=False)
    calibration_fn: Callable[[int, int], Arrays] = field(repr=False)

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def artifact_dir(self) -> Path:
        """``models/zoo/<name>/``: the committed artifacts."""
        return ZOO_DIR / self.name

    @property
    def onnx_path(self) -> Path:
        return self.artifact_dir / f"{self.name}.onnx"

    def card(self) -> dict[str, Any]:
        """The committed ``card.json``."""
        card: dict[str, Any] = json.loads((self.artifact_dir / "card.json").read_text())
        return card

    def train(self, seed: int = DEFAULT_SEED, out_dir: Path | None = None) -> TrainResult:
        """Train from ``seed`` and write ``<name>.onnx``, ``card.json`` and ``card.md`` into
        ``out_dir`` (default: :attr:`artifact_dir`)."""
        out = Path(out_dir) if out_dir is not None else self.artifact_dir
        out.mkdir(parents=True, exist_ok=True)
        return self.train_fn(seed, out)

    def make_eval(self, seed: int = DEFAULT_SEED) -> Arrays:
        return self.eval_fn(seed)

    def make_calibration(self, seed: int = DEFAULT_SEED, n: int = 256) -> Arrays:
        return self.calibration_fn(seed, n)


def save_npz(path: Path, arrays: Arrays) -> None:
    """Write arrays as an uncompressed .npz (what the optimizer reads)."""
    savez: Callable[..., None] = np.savez
    savez(path, **arrays)


def reproduce_command(name: str, seed: int) -> str:
    return f"python -m edgeagent.models.zoo train {name} --seed {seed}"


def rng(seed: int, purpose: int) -> np.random.Generator:
    """An independent numpy stream per (seed, purpose): 0 train, 1 eval, 2 calibration, 3 valid."""
    return np.random.default_rng([seed, purpose])


# --- torch ------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, single-threaded, deterministic torch; torch's own warnings silenced; global torch
    settings restored afterwards. Raises :class:`TrainingUnavailable` without the train extra."""
    require_torch()
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


def fit(
    model: torch.nn.Module,
    x: F32,
    targets: Sequence[I64],
    *,
    seed: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
) -> None:
    """Minibatch Adam on the sum of cross-entropies of the model's outputs (one per target),
    shuffled by a generator seeded from ``seed``; the learning rate decays linearly to 10%."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yts = [torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64)) for t in targets]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(xt) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - 0.9 * step / steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            out = model(xt[idx])
            heads = out if isinstance(out, tuple) else (out,)
            loss = sum(
                (loss_fn(h, y[idx]) for h, y in zip(heads, yts, strict=True)),
                start=torch.zeros(()),
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def predict(model: torch.nn.Module, x: F32) -> list[F32]:
    """The model's outputs on ``x`` as float32 arrays (one per output)."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    heads = out if isinstance(out, tuple) else (out,)
    return [h.numpy().astype(np.float32) for h in heads]


def fold_standardization(first: torch.nn.Linear, mean: F32, std: F32) -> None:
    """Make ``first`` take raw features: W' = W/std, b' = b - W' @ mean (so no Sub/Div nodes)."""
    import torch

    with torch.no_grad():
        w = first.weight / torch.from_numpy(std.astype(np.float32))
        first.bias.sub_(w @ torch.from_numpy(mean.astype(np.float32)))
        first.weight.copy_(w)


def export_onnx(model: torch.nn.Module, path: Path, recipe: Recipe) -> None:
    """ONNX (opset 17, TorchScript exporter) with the recipe's input/output names and a dynamic
    batch dimension; the graph is plain Gemm/Relu nodes."""
    import torch

    spec = recipe.inputs[0]
    dummy = torch.zeros((1, *(d or 1 for d in spec.shape[1:])), dtype=torch.float32)
    names = [o.name for o in recipe.outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[spec.name],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in [spec.name, *names]},
            opset_version=OPSET,
            do_constant_folding=True,
        )


# --- metrics and card -------------------------------------------------------------------------


def accuracy(logits: F32, labels: I64) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def roc_auc(scores: npt.NDArray[np.floating[Any]], positive: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(
    recipe: Recipe,
    out_dir: Path,
    *,
    seed: int,
    metrics: Mapping[str, float],
    training: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    usage: str = "",
) -> tuple[Path, Path]:
    """Write ``card.json`` (machine) and ``card.md`` (human) next to the ONNX file."""
    torch = require_torch()
    onnx_path = out_dir / f"{recipe.name}.onnx"
    card: dict[str, Any] = {
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description,
        "inputs": [_spec_json(s) for s in recipe.inputs],
        "outputs": [_spec_json(s) for s in recipe.outputs],
        "labels": {k: list(v) for k, v in recipe.labels.items()},
        "features": recipe.features,
        "training_data": recipe.data,
        "training": dict(training),
        "seed": seed,
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        **(extra or {}),
        "artifacts": [
            {
                "file": onnx_path.name,
                "format": "onnx",
                "precision": "fp32",
                "opset": OPSET,
                "bytes": onnx_path.stat().st_size,
                "sha256": _sha256(onnx_path),
            }
        ],
        "reproduce": reproduce_command(recipe.name, seed),
        "trained_with": {
            "torch": str(torch.__version__).split("+")[0],
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    json_path = out_dir / "card.json"
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = out_dir / "card.md"
    md_path.write_text(_card_markdown(recipe, card, usage))
    return json_path, md_path


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def _card_markdown(recipe: Recipe, card: Mapping[str, Any], usage: str) -> str:
    lines = [
        f"# {recipe.name} (v{recipe.version})",
        "",
        recipe.description,
        "",
        "## Signature",
        "",
        "| | name | dtype | shape |",
        "|---|---|---|---|",
    ]
    for kind, specs in (("input", recipe.inputs), ("output", recipe.outputs)):
        for s in specs:
            dims = ", ".join("batch" if d is None else str(d) for d in s.shape)
            lines.append(f"| {kind} | `{s.name}` | {s.dtype} | [{dims}] |")
    lines += ["", "## Input features", "", recipe.features, "", "## Training data", ""]
    lines += [recipe.data, ""]
    lines += ["## Training", ""]
    lines += [f"- {k}: {v}" for k, v in card["training"].items()]
    lines += [f"- seed: {card['seed']}", "", "## Metrics (held-out test set)", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["metrics"].items()]
    lines += ["", "## Labels", ""]
    for head, names in card["labels"].items():
        lines.append(f"- `{head}`: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    if usage:
        lines += ["", "## Use on a device", "", usage.strip()]
    lines += ["", "## Artifacts", "", "| file | precision | bytes | sha256 |", "|---|---|---|---|"]
    for a in card["artifacts"]:
        lines.append(f"| {a['file']} | {a['precision']} | {a['bytes']} | `{a['sha256'][:16]}…` |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "pip install -e '.[train]'",
        card["reproduce"],
        "```",
        "",
        "Training is seeded, single-threaded and uses torch's deterministic algorithms, so the "
        "same seed, torch version and CPU give the same weights; other CPUs agree within the "
        "test tolerance (`tests/test_zoo.py`).",
        "",
    ]
    return "\n".join(lines)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
