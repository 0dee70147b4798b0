"""Home-command intent classifier with device-kind and room slots ("turn off the kitchen lights").

Data: utterances generated from templates (:func:`generate`). Each intent has its own phrasings;
a device phrase combines a kind's nouns ("lights", "lamp", "ceiling fan", …) with an optional room
("the kitchen lights", "the lamp in the lounge", "my lights"), levels and temperatures are random
numbers, and polite prefixes/suffixes are added at random. The *phrasings* are split: the held-out
test set uses templates (sentence structures, and a few verbs) never seen in training, so its
accuracy measures generalization to new wordings, not memorization.

Features (:func:`featurize`, numpy + stdlib only, deterministic across processes and machines):
lowercase; every run of digits → ``#``; anything but ``a-z``, ``#``, ``%`` → one space; pad with a
space each side; every character 3-gram, and every word prefixed with ``"w "``, hashed with CRC-32
into the same 512 buckets; counts → square root → L2 normalized. ``features``: float32 [512].

Model: a shared MLP trunk 512-48-48 (ReLU) and three linear heads, exported to ONNX with three
outputs: ``intent``, ``kind`` and ``room`` logits. Numbers (levels, temperatures) are not the
model's job: :func:`parse` extracts them with a regex. :func:`interpret` runs the whole thing.

The parts: :mod:`.intent_vocab` (labels, words, templates), :mod:`.intent_features`
(featurize, decode, parse, interpret: what a device runs), :mod:`.intent_data` (generated
utterances as arrays); this module trains the model and holds the recipe, and re-exports the
parts' names, which documentation and cards cite as ``edgeagent.models.zoo.intent.NAME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import TensorSpec
from ..lora_base import write_lora_base
from ._base import (
    Recipe,
    Stopwatch,
    TrainResult,
    accuracy,
    deterministic_torch,
    export_onnx,
    fit,
    predict,
    rng,
    write_card,
)
from .intent_data import (
    TEST_UTTERANCES,
    TRAIN_UTTERANCES,
    Utterance,
    eval_texts,
    generate,
    make_calibration,
    make_eval,
    utterance_arrays,
)
from .intent_features import (
    BUCKETS,
    INPUT,
    NGRAM,
    Command,
    Slots,
    decode,
    featurize,
    featurize_batch,
    interpret,
    normalize,
    parse,
)
from .intent_vocab import (
    INTENT_KINDS,
    INTENTS,
    KIND_WORDS,
    KINDS,
    PREFIXES,
    QUESTION_SUFFIXES,
    ROOM_WORDS,
    ROOMS,
    SUFFIXES,
    TEST_TEMPLATES,
    TRAIN_TEMPLATES,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUCKETS",
    "EPOCHS",
    "HIDDEN",
    "INPUT",
    "INTENTS",
    "INTENT_KINDS",
    "KINDS",
    "KIND_WORDS",
    "NAME",
    "NGRAM",
    "PREFIXES",
    "QUESTION_SUFFIXES",
    "RECIPE",
    "ROOMS",
    "ROOM_WORDS",
    "SUFFIXES",
    "TEST_TEMPLATES",
    "TEST_UTTERANCES",
    "TRAIN_TEMPLATES",
    "TRAIN_UTTERANCES",
    "Command",
    "Slots",
    "Utterance",
    "decode",
    "eval_texts",
    "featurize",
    "featurize_batch",
    "generate",
    "interpret",
    "make_calibration",
    "make_eval",
    "normalize",
    "parse",
    "train",
]

NAME = "intent"
HIDDEN = 48
EPOCHS = 30


def _network() -> torch.nn.Module:
    import torch

    class IntentNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = torch.nn.Sequential(
                torch.nn.Linear(BUCKETS, HIDDEN),
                torch.nn.ReLU(),
                torch.nn.Linear(HIDDEN, HIDDEN),
                torch.nn.ReLU(),
            )
            self.intent = torch.nn.Linear(HIDDEN, len(INTENTS))
            self.kind = torch.nn.Linear(HIDDEN, len(KINDS))
            self.room = torch.nn.Linear(HIDDEN, len(ROOMS))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = self.trunk(x)
            return self.intent(h), self.kind(h), self.room(h)

    return IntentNet()


def train(seed: int, out_dir: Path) -> TrainResult:
    clock = Stopwatch()
    train_set = utterance_arrays(generate("train", TRAIN_UTTERANCES, rng(seed, 0)))
    test_set = make_eval(seed)
    heads = ("intent", "kind", "room")
    with deterministic_torch(seed):
        model = _network()
        fit(
            model,
            train_set[INPUT],
            [train_set[f"labels_{h}"] for h in heads],
            seed=seed,
            epochs=EPOCHS,
            lr=3e-3,
            weight_decay=1e-4,
        )
        test_out = predict(model, test_set[INPUT])
        train_out = predict(model, train_set[INPUT])
        onnx_path = out_dir / f"{NAME}.onnx"
        export_onnx(model, onnx_path, RECIPE)
        # The LoRA base for per-household adapters (edgeagent.models.lora): same outputs.
        write_lora_base(onnx_path, out_dir / f"{NAME}-lora.onnx", NAME)
        parameters = sum(p.numel() for p in model.parameters())
    metrics: dict[str, float] = {}
    for h, logits in zip(heads, test_out, strict=True):
        metrics[f"test_{h}_accuracy"] = accuracy(logits, test_set[f"labels_{h}"])
    correct = [
        np.argmax(o, 1) == test_set[f"labels_{h}"] for h, o in zip(heads, test_out, strict=True)
    ]
    metrics["test_exact_match"] = float(np.mean(np.logical_and.reduce(correct)))
    for h, logits in zip(heads, train_out, strict=True):
        metrics[f"train_{h}_accuracy"] = accuracy(logits, train_set[f"labels_{h}"])
    predicted_intent = np.argmax(test_out[0], axis=1)
    per_intent = {
        name: round(float(np.mean(predicted_intent[test_set["labels"] == i] == i)), 4)
        for i, name in enumerate(INTENTS)
    }
    per_intent_text = ", ".join(f"{name} {acc:.2f}" for name, acc in per_intent.items())
    extra: dict[str, Any] = {
        "test_accuracy_per_intent": per_intent,
        "featurizer": {
            "function": "edgeagent.models.zoo.intent.featurize",
            "normalize": "lowercase; re.sub(r'\\d+', '#'); re.sub(r'[^a-z#%]+', ' '); strip; "
            "pad one space each side",
            "ngram": NGRAM,
            "buckets": BUCKETS,
            "words": "each whitespace-separated word w of the normalized text also counts, as "
            "the n-gram 'w ' + w (hashed the same way)",
            "hash": "zlib.crc32(utf-8 bytes of the n-gram) % buckets",
            "values": "sqrt(count), then L2 normalized",
        },
        "numbers": "not predicted: edgeagent.models.zoo.intent.parse(text) (regex) extracts the "
        "first number and its unit (percent/degrees)",
        "templates": {
            "train": sum(len(t) for t in TRAIN_TEMPLATES.values()),
            "test_held_out": sum(len(t) for t in TEST_TEMPLATES.values()),
        },
    }
    card_json, card_md = write_card(
        RECIPE,
        out_dir,
        seed=seed,
        metrics=metrics,
        training={
            "architecture": f"MLP trunk {BUCKETS}-{HIDDEN}-{HIDDEN} (ReLU) + linear heads "
            f"intent {len(INTENTS)}, kind {len(KINDS)}, room {len(ROOMS)}",
            "parameters": parameters,
            "optimizer": f"Adam lr 3e-3 (linear decay to 10%), weight decay 1e-4, batch 64, "
            f"{EPOCHS} epochs, sum of the three heads' cross-entropies",
            "train_utterances": TRAIN_UTTERANCES,
            "test_utterances": TEST_UTTERANCES,
        },
        extra=extra,
        usage=f"""\
```python
from edgeagent.models.zoo.intent import interpret

cmd = interpret("dim the hall lamp to 30 percent", session.run)
# Command(intent='set_level', kind='light', room='hall', number=30.0, unit='percent', …)
```

Test metrics are on utterances from held-out templates (phrasings never seen in training);
`exact_match` needs all three heads right. Held-out accuracy per intent:
{per_intent_text}.

Limitations: a bag of character n-grams has no word order, so phrasings that mean the opposite
of their words ("make sure the door is locked" reads like a question) and out-of-domain
sentences sharing n-grams with device words ("good night" ~ "light") are misread, with high
confidence: the softmax confidence is not a reliable out-of-domain detector. English only.""",
    )
    return TrainResult(NAME, seed, onnx_path, card_json, card_md, metrics, clock.seconds)


RECIPE = Recipe(
    name=NAME,
    description='Home-command intent classifier: an utterance such as "turn off the kitchen '
    'lights" → intent, device kind and room (numbers come from a regex).',
    version="1",
    inputs=(TensorSpec(INPUT, (None, BUCKETS), "float32"),),
    outputs=(
        TensorSpec("intent", (None, len(INTENTS)), "float32"),
        TensorSpec("kind", (None, len(KINDS)), "float32"),
        TensorSpec("room", (None, len(ROOMS)), "float32"),
    ),
    labels={"intent": INTENTS, "kind": KINDS, "room": ROOMS},
    data=f"Template-generated English home commands (`edgeagent.models.zoo.intent.generate`): "
    f"{len(INTENTS)} intents, device phrases from kind nouns with an optional room in several "
    f"word orders, random levels/temperatures, polite prefixes/suffixes. "
    f"{TRAIN_UTTERANCES} training utterances from "
    f"{sum(len(t) for t in TRAIN_TEMPLATES.values())} templates; {TEST_UTTERANCES} test "
    f"utterances from {sum(len(t) for t in TEST_TEMPLATES.values())} *different* templates "
    "(held-out phrasings); the device and room vocabulary is shared.",
    features=f"`features` [{BUCKETS}]: hashed character {NGRAM}-grams and words of the "
    f"normalized utterance (CRC-32 mod {BUCKETS}, sqrt counts, L2 normalized): "
    "`edgeagent.models.zoo.intent.featurize(text)` (numpy + stdlib only).",
    train_fn=train,
    eval_fn=make_eval,
    calibration_fn=make_calibration,
)
