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
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..backend import TensorSpec
from ._base import (
    F32,
    Arrays,
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

if TYPE_CHECKING:
    import torch

NAME = "intent"
INPUT = "features"
NGRAM = 3
BUCKETS = 512
HIDDEN = 48
EPOCHS = 30
TRAIN_UTTERANCES = 6000
TEST_UTTERANCES = 2000

# --- vocabulary ---------------------------------------------------------------------------------

INTENTS = (
    "turn_on",
    "turn_off",
    "set_level",
    "query_state",
    "lock",
    "unlock",
    "open",
    "close",
    "notify",
    "unknown",
)
KINDS = ("light", "thermostat", "door", "doorbell", "speaker", "fan", "blinds", "none")
ROOMS = ("kitchen", "living", "hall", "bedroom", "bathroom", "garage", "none")

KIND_WORDS: dict[str, tuple[str, ...]] = {
    "light": ("light", "lights", "lamp", "lamps", "ceiling light", "bulb", "spotlights"),
    "thermostat": ("thermostat", "heating", "heater", "radiator"),
    "door": ("door", "front door", "back door", "door lock", "lock", "side door"),
    "doorbell": ("doorbell", "door bell", "bell", "chime"),
    "speaker": ("speaker", "speakers", "music", "radio", "sound system"),
    "fan": ("fan", "ceiling fan", "extractor fan", "fans"),
    "blinds": ("blinds", "curtains", "shades", "shutters", "blind"),
}
ROOM_WORDS: dict[str, tuple[str, ...]] = {
    "kitchen": ("kitchen",),
    "living": ("living room", "lounge", "sitting room"),
    "hall": ("hall", "hallway", "entrance hall", "corridor"),
    "bedroom": ("bedroom", "master bedroom", "guest bedroom"),
    "bathroom": ("bathroom", "shower room"),
    "garage": ("garage",),
}

# Which kinds each intent applies to.
INTENT_KINDS: dict[str, tuple[str, ...]] = {
    "turn_on": ("light", "fan", "speaker", "thermostat"),
    "turn_off": ("light", "fan", "speaker", "thermostat"),
    "set_level": ("light", "thermostat", "speaker", "fan", "blinds"),
    "query_state": ("light", "thermostat", "door", "doorbell", "speaker", "fan", "blinds"),
    "lock": ("door",),
    "unlock": ("door",),
    "open": ("blinds", "door"),
    "close": ("blinds", "door"),
    "notify": ("doorbell", "speaker"),
    "unknown": ("none",),
}

# Templates: {D} is a device phrase (with or without a room), {N} a level/temperature. A template
# may be limited to some kinds with "kind1,kind2|template". TRAIN and TEST share no template.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "turn_on": (
        "turn on {D}",
        "switch on {D}",
        "turn {D} on",
        "switch {D} on",
        "{D} on",
        "power on {D}",
        "power up {D}",
        "i want {D} on",
        "leave {D} on",
        "light|light up {D}",
        "speaker|play {D}",
        "speaker,fan|start {D}",
        "thermostat|warm up {D}",
        "fan,speaker|start up {D}",
    ),
    "turn_off": (
        "turn off {D}",
        "switch off {D}",
        "turn {D} off",
        "switch {D} off",
        "{D} off",
        "power off {D}",
        "power down {D}",
        "shut off {D}",
        "kill {D}",
        "i want {D} off",
        "{D} should be off",
        "speaker|stop {D}",
        "speaker|mute {D}",
        "fan|stop {D}",
    ),
    "set_level": (
        "set {D} to {N}",
        "light|dim {D} to {N}",
        "light|brighten {D} to {N}",
        "change {D} to {N}",
        "{D} to {N}",
        "put {D} at {N}",
        "adjust {D} to {N}",
        "set {D} at {N}",
        "turn {D} to {N}",
        "make {D} {N}",
        "i want {D} at {N}",
        "speaker|set the volume of {D} to {N}",
        "thermostat|set {D} temperature to {N}",
        "light|set the brightness of {D} to {N}",
        "blinds|move {D} to {N}",
    ),
    "query_state": (
        "is {D} on",
        "is {D} off",
        "door|is {D} locked",
        "door,blinds|is {D} open",
        "door,blinds|is {D} closed",
        "thermostat|what is {D} set to",
        "status of {D}",
        "what's the state of {D}",
        "are {D} on",
        "check {D}",
        "what is {D} doing",
        "doorbell|did {D} ring",
        "is {D} working",
        "have i left {D} on",
        "is {D} running",
        "tell me the state of {D}",
    ),
    "lock": (
        "lock {D}",
        "lock up {D}",
        "secure {D}",
        "bolt {D}",
        "keep {D} locked",
        "lock {D} before bed",
        "{D} should be locked",
        "lock {D} when i leave",
    ),
    "unlock": (
        "unlock {D}",
        "unlatch {D}",
        "unbolt {D}",
        "release {D}",
        "keep {D} unlocked",
        "leave {D} unlocked",
        "unlock {D} when i arrive",
        "{D} should be unlocked",
    ),
    "open": (
        "open {D}",
        "open up {D}",
        "{D} open",
        "open {D} all the way",
        "blinds|raise {D}",
        "blinds|pull up {D}",
        "blinds|roll up {D}",
        "door|swing open {D}",
    ),
    "close": (
        "close {D}",
        "shut {D}",
        "{D} closed",
        "close {D} all the way",
        "blinds|lower {D}",
        "blinds|draw {D}",
        "blinds|pull down {D}",
        "blinds|roll down {D}",
    ),
    "notify": (
        "ring {D}",
        "sound {D}",
        "play a chime on {D}",
        "announce dinner is ready on {D}",
        "announce that the taxi is here on {D}",
        "make {D} ring",
        "buzz {D}",
        "chime {D}",
        "play an alert on {D}",
        "page everyone on {D}",
        "speaker|say hello on {D}",
    ),
    "unknown": (
        "what's the weather like",
        "tell me a joke",
        "what time is it",
        "how are you",
        "set a timer for {N} minutes",
        "remind me to buy milk",
        "what's on my calendar today",
        "order more coffee",
        "who are you",
        "add eggs to the shopping list",
        "how far is the moon",
        "wake me up at {N}",
        "what's the capital of france",
        "how do you make pancakes",
        "call mum",
        "send a message to john",
        "what's the news",
        "thank you",
        "good morning",
        "never mind",
        "translate hello into spanish",
        "when is the next bus",
        "what day is it",
        "convert {N} miles to kilometres",
        "who wrote hamlet",
    ),
}
TEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "turn_on": (
        "could you switch on {D} please",
        "put {D} on",
        "switch {D} back on",
        "get {D} on",
        "i need {D} on now",
    ),
    "turn_off": (
        "shut {D} off",
        "switch {D} back off",
        "get {D} off",
        "no more {D} turn it off",
        "i need {D} off now",
    ),
    "set_level": (
        "can you set {D} to {N}",
        "i'd like {D} at {N}",
        "bring {D} to {N}",
        "{D} at {N} please",
        "change {D} over to {N}",
    ),
    "query_state": (
        "did i leave {D} on",
        "tell me if {D} is on",
        "is {D} still on",
        "door|is {D} unlocked",
        "what's the status of {D}",
    ),
    "lock": ("make sure {D} is locked", "lock {D} for the night", "can you lock {D}"),
    "unlock": ("can you unlock {D}", "unlock {D} for the guests", "get {D} unlocked"),
    "open": ("can you open {D}", "blinds|lift {D}", "get {D} open"),
    "close": ("can you close {D}", "blinds|let {D} down", "get {D} closed"),
    "notify": ("ring {D} twice", "play a sound on {D}", "announce the guests are here on {D}"),
    "unknown": (
        "what's the weather tomorrow",
        "tell me a story",
        "who won the game last night",
        "set an alarm for {N}",
        "how tall is mount everest",
        "good night",
    ),
}
PREFIXES = ("", "", "", "", "please ", "hey ", "could you ", "can you ", "ok ", "just ")
SUFFIXES = ("", "", "", "", " please", " now", " thanks", " for me")
QUESTION_SUFFIXES = ("", "", "", " please", " thanks")
# Templates that are questions or already polite take no prefix.
_NO_PREFIX = (
    "is ",
    "are ",
    "did ",
    "have ",
    "what",
    "how ",
    "who ",
    "when ",
    "can ",
    "could ",
    "i ",
    "i'd ",
    "tell ",
    "status ",
    "no ",
    "thank",
    "good ",
    "never ",
)

# --- featurization and parsing (numpy only) ---------------------------------------------------

_DIGITS = re.compile(r"\d+")
_OTHER = re.compile(r"[^a-z#%]+")
_NUMBER = re.compile(
    r"(?<![\w.])(-?\d+(?:[.,]\d+)?)\s*(%|percent\b|per cent\b|degrees?\b|°\s*c?|c\b)?",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lowercase; digit runs → ``#``; other characters but ``%`` → single spaces; padded."""
    return " " + _OTHER.sub(" ", _DIGITS.sub("#", text.lower())).strip() + " "


def featurize(text: str) -> F32:
    """An utterance → the model input [512] float32: hashed character 3-grams and words (see
    the module doc)."""
    s = normalize(text)
    counts = np.zeros(BUCKETS, dtype=np.float32)
    for i in range(len(s) - NGRAM + 1):
        counts[zlib.crc32(s[i : i + NGRAM].encode()) % BUCKETS] += 1.0
    for word in s.split():
        counts[zlib.crc32(f"w {word}".encode()) % BUCKETS] += 1.0
    counts = np.sqrt(counts)
    norm = float(np.linalg.norm(counts))
    return counts / np.float32(norm) if norm > 0 else counts


def featurize_batch(texts: list[str]) -> F32:
    return np.stack([featurize(t) for t in texts]) if texts else np.zeros((0, BUCKETS), np.float32)


@dataclass(frozen=True, slots=True)
class Slots:
    """What the regex finds: the first number and its unit ("percent", "degrees" or None)."""

    number: float | None = None
    unit: str | None = None


def parse(text: str) -> Slots:
    """Extract the level or temperature: "dim the lamp to 30%" → Slots(30.0, "percent")."""
    match = _NUMBER.search(text)
    if match is None:
        return Slots()
    number = float(match.group(1).replace(",", "."))
    raw = (match.group(2) or "").lower().strip()
    unit = "percent" if raw.startswith(("%", "per")) else "degrees" if raw else None
    return Slots(number, unit)


@dataclass(frozen=True, slots=True)
class Command:
    """One interpreted utterance."""

    intent: str
    kind: str
    room: str
    number: float | None
    unit: str | None
    confidence: dict[str, float]
    """Softmax probability of the chosen label per head."""


def decode(outputs: Mapping[str, npt.ArrayLike]) -> list[tuple[dict[str, str], dict[str, float]]]:
    """The model's outputs (``intent``, ``kind``, ``room`` logits [N, …]) → per utterance the
    chosen labels and their probabilities."""
    heads = {"intent": INTENTS, "kind": KINDS, "room": ROOMS}
    chosen: list[tuple[dict[str, str], dict[str, float]]] = []
    probs = {}
    for head in heads:
        z = np.asarray(outputs[head], dtype=np.float64)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        probs[head] = e / e.sum(axis=-1, keepdims=True)
    for i in range(len(probs["intent"])):
        labels = {h: names[int(np.argmax(probs[h][i]))] for h, names in heads.items()}
        conf = {h: float(np.max(probs[h][i])) for h in heads}
        chosen.append((labels, conf))
    return chosen


def interpret(text: str, run: Callable[[dict[str, F32]], Mapping[str, Any]]) -> Command:
    """Featurize, run the model (e.g. ``session.run``) and parse numbers into a :class:`Command`."""
    ((labels, conf),) = decode(run({INPUT: featurize(text)[None]}))
    slots = parse(text)
    return Command(labels["intent"], labels["kind"], labels["room"], slots.number, slots.unit, conf)


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    intent: str
    kind: str
    room: str


def _number(kind: str, gen: np.random.Generator) -> str:
    if kind == "thermostat":
        value = f"{gen.integers(15, 29)}" + (".5" if gen.random() < 0.2 else "")
        return value + str(gen.choice(["", "", " degrees", "°"]))
    if kind == "fan":
        return str(gen.choice([f"{gen.integers(1, 6)}", f"speed {gen.integers(1, 6)}"]))
    return f"{gen.integers(0, 21) * 5}" + str(gen.choice(["", " percent", "%"]))


def _device(kind: str, room: str, gen: np.random.Generator) -> str:
    noun = str(gen.choice(KIND_WORDS[kind]))
    if room == "none":
        return str(gen.choice(["the ", "the ", "my ", ""])) + noun
    place = str(gen.choice(ROOM_WORDS[room]))
    form = int(gen.integers(4))
    if form == 0:
        return f"the {place} {noun}"
    if form == 1:
        return f"the {noun} in the {place}"
    if form == 2:
        return f"{place} {noun}"
    return f"my {place} {noun}"


def generate(split: str, n: int, gen: np.random.Generator) -> list[Utterance]:
    """``n`` utterances from the ``"train"`` or ``"test"`` templates, intents uniform."""
    templates = TRAIN_TEMPLATES if split == "train" else TEST_TEMPLATES
    out: list[Utterance] = []
    while len(out) < n:
        intent = str(gen.choice(INTENTS))
        spec = str(gen.choice(templates[intent]))
        kinds, _, template = spec.rpartition("|")
        allowed = kinds.split(",") if kinds else list(INTENT_KINDS[intent])
        kind = str(gen.choice(allowed))
        room = "none" if kind == "none" else str(gen.choice(ROOMS))
        text = template.replace("{D}", _device(kind, room, gen) if kind != "none" else "")
        text = text.replace(
            "{N}", _number(kind, gen) if kind != "none" else str(gen.integers(1, 13))
        )
        if template.startswith(_NO_PREFIX):
            text += str(gen.choice(QUESTION_SUFFIXES))
        else:
            text = str(gen.choice(PREFIXES)) + text
            if not text.endswith(("please", "now")):
                text += str(gen.choice(SUFFIXES))
        out.append(Utterance(text, intent, kind, room))
    return out


def _arrays(utterances: list[Utterance]) -> Arrays:
    return {
        INPUT: featurize_batch([u.text for u in utterances]),
        "labels": np.array([INTENTS.index(u.intent) for u in utterances], dtype=np.int64),
        "labels_intent": np.array([INTENTS.index(u.intent) for u in utterances], dtype=np.int64),
        "labels_kind": np.array([KINDS.index(u.kind) for u in utterances], dtype=np.int64),
        "labels_room": np.array([ROOMS.index(u.room) for u in utterances], dtype=np.int64),
    }


def make_eval(seed: int) -> Arrays:
    """The held-out phrasings: :data:`TEST_TEMPLATES` utterances. ``labels`` = intent."""
    return _arrays(generate("test", TEST_UTTERANCES, rng(seed, 1)))


def make_calibration(seed: int, n: int) -> Arrays:
    return {INPUT: featurize_batch([u.text for u in generate("train", n, rng(seed, 2))])}


def eval_texts(seed: int) -> list[str]:
    """The eval set's utterances, in :func:`make_eval`'s order."""
    return [u.text for u in generate("test", TEST_UTTERANCES, rng(seed, 1))]


# --- training ---------------------------------------------------------------------------------


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
    train_set = _arrays(generate("train", TRAIN_UTTERANCES, rng(seed, 0)))
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
