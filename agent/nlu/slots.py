"""What a text names: rooms, kinds, cues, a device, a number, the mode (:class:`Slots`), read with
the catalog's vocabulary compiled once (:class:`Lexicon`), and the request every layer reads
(:class:`Request`, built once per text by :func:`read_request`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ._constants import Mode
from .catalog import KIND_CUES, KIND_WORDS, ROOM_WORDS, Catalog, kind_concept
from .grammar import (
    ALL_WORDS,
    ANY_KIND_WORDS,
    alternation,
    find_command_number,
    normalize,
    phrase_re,
)
from .manifest import STOP, ManifestIndex, concepts
from .mood import Mood, analyse
from .numbers import Number
from .places import Place, PlaceFinder

_INDEFINITE = re.compile(
    rf"\b(?:a|an|any|some|either|one of the|any of the)\s+(?:[\w'-]+\s+)?(?:{ANY_KIND_WORDS})\b"
)
_COUNT = re.compile(rf"(?<![\w.:-])(\d+)\s+(?:[\w'-]+\s+)?(?:{ANY_KIND_WORDS})\b")
_PLURAL_KINDS = frozenset(
    w for ws in KIND_WORDS.values() for w in ws if w.endswith("s") and not w.endswith("ss")
)


@dataclass(frozen=True)
class Slots:
    """What the text names: rooms, kinds, a device, a number, the mode."""

    rooms: tuple[str, ...]
    """Catalog room values named in the text."""
    foreign_rooms: tuple[str, ...]
    """Rooms named in the text that no catalog device is in."""
    kinds: tuple[str, ...]
    """Kind concepts named ("lights" → light)."""
    cues: tuple[str, ...]
    """Kind concepts hinted at ("warmer" → thermostat)."""
    device: str | None
    number: Number | None
    mode: Mode
    said: dict[str, str]
    """What matched, for explanations: slot → words."""
    places: tuple[Place, ...] = ()
    """Words in a place's position the router does not know ("kitchn", "the nursery")."""
    plural: bool = False
    """A kind named in the plural ("the kitchen lights")."""
    indefinite: bool = False
    """A kind named as "a"/"any" one ("put a light on"): any of them will do."""
    concepts: frozenset[str] = frozenset()
    """The text's words as stems and topics, for matching manifests."""
    count: int | None = None
    """A count of devices ("the 2 lamps")."""


class Lexicon:
    """The catalog's vocabulary as compiled patterns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        rooms = catalog.rooms
        self.room_phrases = {
            r: (*ROOM_WORDS.get(r, ()), *_spellings(r), *(w + "s" for w in _spellings(r)))
            for r in rooms
        }
        self.room_res = {r: phrase_re(words) for r, words in self.room_phrases.items()}
        self.foreign_room_res = {
            r: phrase_re(words) for r, words in ROOM_WORDS.items() if r not in rooms
        }
        concepts_: dict[str, set[str]] = {c: set(ws) for c, ws in KIND_WORDS.items()}
        for tag in catalog.kinds:
            concept = kind_concept(tag) or tag
            concepts_.setdefault(concept, set()).update(_spellings(tag))
            if concept == tag and not tag.endswith("s"):
                concepts_[concept].add(tag + "s")
        self.kind_words = concepts_
        self.kind_res = {c: phrase_re(ws) for c, ws in concepts_.items()}
        self.cue_res = {c: phrase_re(ws) for c, ws in KIND_CUES.items()}
        self.device_re = (
            phrase_re(d.device.lower() for d in catalog.devices) if catalog.devices else None
        )
        self.skill_phrases = {
            name: re.compile(rf"\b{alternation([name.lower().replace('_', ' ')])}\b")
            for name in sorted(catalog.skill_names, key=len, reverse=True)
        }
        self.index = ManifestIndex(catalog)
        known = {
            *(w for ws in concepts_.values() for p in ws for w in p.split()),
            *(w for ws in KIND_CUES.values() for p in ws for w in p.split()),
            *(w for d in catalog.devices for v in (d.device, *d.tags.values()) for w in _toks(v)),
            *self.index.vocabulary,
            *STOP,
        }
        self.places = PlaceFinder(
            self.room_phrases,
            (p for r, ps in ROOM_WORDS.items() if r not in rooms for p in ps),
            known,
        )

    def slots(self, norm: str) -> Slots:
        said: dict[str, str] = {}
        rooms = []
        spans: list[tuple[int, int]] = []
        for room, pattern in self.room_res.items():
            m = pattern.search(norm)
            if m:
                rooms.append(room)
                spans.append(m.span())
                said[f"room {room}"] = m.group(0)
        foreign = []
        for room, pattern in self.foreign_room_res.items():
            m = pattern.search(norm)
            if m and not any(a <= m.start() < b for a, b in spans):
                foreign.append(room)
                said[f"room {room}"] = m.group(0)
        device = None
        if self.device_re is not None:
            m = self.device_re.search(norm)
            if m:
                device = next(d.device for d in self.catalog.devices if d.device.lower() == m[0])
                said["device"] = m.group(0)
        kinds = []
        plural = False
        kind_spans: list[tuple[int, int, str]] = []
        for concept, pattern in self.kind_res.items():
            for m in pattern.finditer(norm):
                kind_spans.append((m.start(), m.end(), concept))
        # A kind word inside a longer one ("bell" in "door bell") does not count.
        for start, end, concept in kind_spans:
            inside = any(
                s <= start and end <= e and (e - s) > (end - start) for s, e, _ in kind_spans
            )
            if not inside and concept not in kinds:
                kinds.append(concept)
                said[f"kind {concept}"] = norm[start:end]
            if not inside and norm[start:end].split()[-1] in _PLURAL_KINDS:
                plural = True
        cues = []
        for concept, pattern in self.cue_res.items():
            m = pattern.search(norm)
            if m:
                cues.append(concept)
                said[f"cue {concept}"] = m.group(0)
        number = find_command_number(norm)
        if number is not None:
            cues.extend(
                c
                for c, wanted in (("light", "percent"), ("thermostat", "temperature"))
                if (number.unit == wanted or (wanted == "temperature" and number.temperature))
                and c not in cues
            )
        mode: Mode = "all" if ALL_WORDS.search(norm) else "one"
        places = tuple(p for p in self.places.find(norm) if device is None)
        return Slots(
            tuple(rooms),
            tuple(foreign),
            tuple(kinds),
            tuple(cues),
            device,
            number,
            mode,
            said,
            places,
            plural,
            bool(_INDEFINITE.search(norm)),
            concepts(norm.split()),
            int(m.group(1)) if (m := _COUNT.search(norm)) else None,
        )


def _spellings(value: str) -> tuple[str, ...]:
    v = value.lower()
    return tuple(dict.fromkeys((v, v.replace("-", " ").replace("_", " "))))


def _toks(value: str) -> list[str]:
    return re.split(r"[\s_\-.]+", value.lower())


@dataclass(frozen=True)
class Request:
    """One text, read once for every layer."""

    text: str
    norm: str
    slots: Slots
    mood: Mood
    evidence: frozenset[str]
    """Kind concepts the text selects: kinds and cues it names, the kind of a device it names,
    and the kinds of devices whose skill names it says ("the target" → thermostat)."""
    named_skills: frozenset[str]
    """Skills whose name's words (besides the verb) the text says."""


def read_request(text: str, lexicon: Lexicon, concept_of: Mapping[str, str | None]) -> Request:
    """Read ``text`` once: normalised, its slots, its mood and the kinds it selects.

    ``concept_of`` maps each catalog device to its kind concept (:func:`kind_concept`).
    """
    norm = normalize(text)
    slots = lexicon.slots(norm)
    index = lexicon.index
    named = index.named(slots.concepts)
    named_skills = frozenset(
        s.spec.name
        for s in index.skills
        if any(not c.startswith("#") for c in s.about & slots.concepts)
    )
    evidence = {*slots.kinds, *slots.cues}
    evidence.update(c for d in named if (c := concept_of.get(d)))
    if slots.device and (c := concept_of.get(slots.device)):
        evidence.add(c)
    mood = analyse(text, normalize)
    return Request(text, norm, slots, mood, frozenset(evidence), named_skills)
