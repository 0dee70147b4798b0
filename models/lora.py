"""LoRA adapters for the intent model: train one with PEFT on a household's phrasing, write it,
and score a session on labelled examples.

One base model, many small adapters: instead of shipping a retrained model per household, a
device keeps the zoo's LoRA base (:mod:`.lora_base`, committed as
``models/zoo/intent/intent-lora.onnx``) and gets a file of a few kilobytes
(:mod:`.lora_adapter`). Training (:func:`train_adapter`) rebuilds the base's dense layers as a
torch module with the base's own weights, wraps them with PEFT (``LoraConfig``: rank r on every
layer, alpha 2r, no dropout), and trains only the low-rank matrices on the household's examples
(:mod:`.lora_examples`) repeated so they make about a third of every epoch, mixed with a replay
sample of the base's own training utterances (new ones from the same templates, seeded) so the
adapter learns the household's idioms without forgetting everything else. :func:`adapt` does it
all, writes the file and scores base and base+adapter on the examples with ONNX Runtime.

Needs the ``train`` extra (torch, onnx, peft); the device needs only onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .lora_adapter import AdapterMeta, file_sha256, load_adapted, resolve_base, write_adapter
from .lora_base import SIDE_NODE, LoraBaseError, LoraTarget, load_base, lora_targets, source_name
from .lora_examples import HEADS, Example, label_arrays
from .zoo._base import Stopwatch, deterministic_torch, require, rng
from .zoo.intent_data import generate
from .zoo.intent_features import INPUT, featurize_batch
from .zoo.intent_vocab import INTENTS, KINDS, ROOMS

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx
    import torch

    from .backend import Array

    F32 = npt.NDArray[np.float32]

DEFAULT_RANK = 4
DEFAULT_EPOCHS = 40
REPLAY_PER_EXAMPLE = 8
MIN_REPLAY = 200
MAX_REPLAY = 4000
LR = 1e-2
BATCH = 32
_VOCAB = {"intent": INTENTS, "kind": KINDS, "room": ROOMS}


@dataclass(frozen=True, slots=True)
class Score:
    """How a session does on labelled examples."""

    n: int
    intent: float
    """Fraction with the intent right."""
    exact: float
    """Fraction with every labelled head (intent, and kind/room when given) right."""


@dataclass(frozen=True, slots=True)
class AdaptResult:
    """What :func:`adapt` wrote and measured."""

    path: Path
    bytes: int
    seconds: float
    """Wall-clock training time (featurizing, replay generation and PEFT training)."""
    meta: AdapterMeta
    base_path: Path
    base_bytes: int
    before: Score
    """The base alone on the training examples."""
    after: Score
    """Base + adapter on the training examples."""


def _torch_graph(base: onnx.ModelProto) -> torch.nn.Module:
    """The base's dense graph as a torch module with the base's weights (side path left out):
    its ``Linear`` layers are named after the ONNX layers, dots as underscores, for PEFT."""
    import torch
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
    steps: list[tuple[str, list[str], str]] = []  # (op or layer key, inputs, output)
    linears: dict[str, torch.nn.Linear] = {}
    for node in base.graph.node:
        if SIDE_NODE in node.name and node.op_type == "Add":
            steps.append(("=", [node.input[0]], node.output[0]))
        elif SIDE_NODE in node.name:
            continue
        elif node.op_type == "Gemm":
            w, b = inits[node.input[1]], inits[node.input[2]]
            key = node.input[1].removesuffix(".weight").replace(".", "_")
            layer = torch.nn.Linear(int(w.shape[1]), int(w.shape[0]))
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.copy()))
                layer.bias.copy_(torch.from_numpy(b.copy()))
            linears[key] = layer
            steps.append((key, [node.input[0]], node.output[0]))
        elif node.op_type == "Relu":
            steps.append(("relu", [node.input[0]], node.output[0]))
        else:
            raise LoraBaseError(f"node {node.name} ({node.op_type}): the trainer knows Gemm/Relu")
    graph_input = base.graph.input[0].name
    outputs = [o.name for o in base.graph.output]

    class GraphNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleDict(linears)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            values = {graph_input: x}
            for op, (arg,), out in steps:
                v = values[arg]
                values[out] = v if op == "=" else torch.relu(v) if op == "relu" else (
                    self.layers[op](v)
                )  # fmt: skip
            return tuple(values[o] for o in outputs)

    return GraphNet()


def _training_set(
    examples: Sequence[Example], replay: int, seed: int
) -> tuple[F32, dict[str, npt.NDArray[np.int64]]]:
    """Examples (repeated to about a third of the rows) plus ``replay`` generated utterances."""
    household = label_arrays(list(examples))
    repeat = max(1, round(replay / (2 * len(examples))))
    replayed = generate("train", replay, rng(seed, 7))
    texts = [e.text for e in examples] * repeat + [u.text for u in replayed]
    labels = {
        head: np.array(
            household[head] * repeat + [_VOCAB[head].index(getattr(u, head)) for u in replayed],
            dtype=np.int64,
        )
        for head in HEADS
    }
    return featurize_batch(texts), labels


def _fit(
    model: torch.nn.Module, x: F32, labels: Mapping[str, npt.NDArray[np.int64]], *, epochs: int,
    seed: int,
) -> None:  # fmt: skip
    """Adam on the trainable (LoRA) parameters; a head's -100 labels do not count."""
    import torch

    xt = torch.from_numpy(x)
    ys = [torch.from_numpy(labels[h]) for h in HEADS]
    gen = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), BATCH):
            idx = order[start : start + BATCH]
            heads = model(xt[idx])
            loss = sum(
                (loss_fn(h, y[idx]) for h, y in zip(heads, ys, strict=True)), start=torch.zeros(())
            ) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _export(model: Any, targets: Sequence[LoraTarget]) -> dict[str, F32]:
    """PEFT's lora_A [r, in] / lora_B [out, r] as the base's inputs: A.T, (scaling * B).T."""
    out: dict[str, F32] = {}
    for t in targets:
        module = model.base_model.model.layers[t.name.replace(".", "_")]
        a = module.lora_A["default"].weight.detach().numpy()
        b = module.lora_B["default"].weight.detach().numpy() * module.scaling["default"]
        out[t.a_name] = np.ascontiguousarray(a.T, dtype=np.float32)
        out[t.b_name] = np.ascontiguousarray(b.T, dtype=np.float32)
    return out


def train_adapter(
    base_path: Path,
    examples: Sequence[Example],
    *,
    rank: int = DEFAULT_RANK,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    replay: int | None = None,
) -> tuple[dict[str, F32], AdapterMeta]:
    """Train an adapter for the LoRA base at ``base_path``; returns its tensors and metadata."""
    if not examples:
        raise ValueError("an adapter needs at least one example")
    if not 1 <= rank <= 256:
        raise ValueError(f"rank must be 1…256, not {rank}")
    n_replay = replay if replay is not None else REPLAY_PER_EXAMPLE * len(examples)
    n_replay = min(max(n_replay, MIN_REPLAY if replay is None else 0), MAX_REPLAY)
    base = load_base(base_path)
    targets = lora_targets(base)
    x, labels = _training_set(examples, n_replay, seed)
    with deterministic_torch(seed):
        peft = require("peft")
        config = peft.LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.0,
            target_modules=[t.name.replace(".", "_") for t in targets],
        )
        model = peft.get_peft_model(_torch_graph(base), config)
        _fit(model, x, labels, epochs=epochs, seed=seed)
        params = _export(model, targets)
    meta = AdapterMeta(
        base=source_name(base),
        base_file=base_path.name,
        base_sha256=file_sha256(base_path),
        rank=rank,
        alpha=2.0 * rank,
        targets=tuple(t.name for t in targets),
        examples=len(examples),
        replay=n_replay,
        epochs=epochs,
        seed=seed,
    )
    return params, meta


def score(run: Any, examples: Sequence[Example]) -> Score:
    """Score ``run`` (a session's ``run``) on labelled examples, in one batch."""
    if not examples:
        return Score(0, 0.0, 0.0)
    out: Mapping[str, Array] = run({INPUT: featurize_batch([e.text for e in examples])})
    chosen = {h: np.argmax(np.asarray(out[h]), axis=1) for h in HEADS}
    intent_ok = exact_ok = 0
    for i, e in enumerate(examples):
        right = {h: _VOCAB[h][int(chosen[h][i])] == getattr(e, h) for h in HEADS}
        intent_ok += right["intent"]
        exact_ok += all(right[h] for h in HEADS if getattr(e, h) is not None)
    return Score(len(examples), intent_ok / len(examples), exact_ok / len(examples))


def adapt(
    base: str | Path,
    examples: Sequence[Example],
    out: Path,
    *,
    rank: int = DEFAULT_RANK,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
) -> AdaptResult:
    """Train an adapter for ``base`` (``zoo:intent`` or a LoRA base file), write it to ``out``
    and score the base with and without it on the examples."""
    base_path = resolve_base(base)
    require("peft")  # imported (with torch) before the clock starts: training time only
    clock = Stopwatch()
    params, meta = train_adapter(base_path, examples, rank=rank, epochs=epochs, seed=seed)
    seconds = clock.seconds
    size = write_adapter(out, params, meta)
    before = score(load_adapted(base_path, None).run, examples)
    after = score(load_adapted(base_path, out).run, examples)
    return AdaptResult(out, size, seconds, meta, base_path, base_path.stat().st_size, before, after)
