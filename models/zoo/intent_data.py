"""The intent model's data: utterances generated from the templates, as arrays (features and
one label array per head), for training, evaluation and calibration. Seeded, reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._base import Arrays, rng
from .intent_features import INPUT, featurize_batch
from .intent_vocab import (
    INTENT_KINDS,
    INTENTS,
    KIND_WORDS,
    KINDS,
    NO_PREFIX,
    PREFIXES,
    QUESTION_SUFFIXES,
    ROOM_WORDS,
    ROOMS,
    SUFFIXES,
    TEST_TEMPLATES,
    TRAIN_TEMPLATES,
)

TRAIN_UTTERANCES = 6000
TEST_UTTERANCES = 2000


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
        if template.startswith(NO_PREFIX):
            text += str(gen.choice(QUESTION_SUFFIXES))
        else:
            text = str(gen.choice(PREFIXES)) + text
            if not text.endswith(("please", "now")):
                text += str(gen.choice(SUFFIXES))
        out.append(Utterance(text, intent, kind, room))
    return out


def utterance_arrays(utterances: list[Utterance]) -> Arrays:
    return {
        INPUT: featurize_batch([u.text for u in utterances]),
        "labels": np.array([INTENTS.index(u.intent) for u in utterances], dtype=np.int64),
        "labels_intent": np.array([INTENTS.index(u.intent) for u in utterances], dtype=np.int64),
        "labels_kind": np.array([KINDS.index(u.kind) for u in utterances], dtype=np.int64),
        "labels_room": np.array([ROOMS.index(u.room) for u in utterances], dtype=np.int64),
    }


def make_eval(seed: int) -> Arrays:
    """The held-out phrasings: :data:`TEST_TEMPLATES` utterances. ``labels`` = intent."""
    return utterance_arrays(generate("test", TEST_UTTERANCES, rng(seed, 1)))


def make_calibration(seed: int, n: int) -> Arrays:
    return {INPUT: featurize_batch([u.text for u in generate("train", n, rng(seed, 2))])}


def eval_texts(seed: int) -> list[str]:
    """The eval set's utterances, in :func:`make_eval`'s order."""
    return [u.text for u in generate("test", TEST_UTTERANCES, rng(seed, 1))]
