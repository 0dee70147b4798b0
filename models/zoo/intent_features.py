"""The intent model's runtime side (numpy + stdlib only, deterministic across processes):
featurizing an utterance, decoding the three heads, and parsing numbers with a regex.

This is what a device needs to use the model (:func:`interpret`); training is elsewhere.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import F32
from .intent_vocab import INTENTS, KINDS, ROOMS

INPUT = "features"
NGRAM = 3
BUCKETS = 512

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
