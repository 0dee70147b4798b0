"""Matching requests to skills by what their manifests say: for devices no table describes.

Each skill's name is split into words ("get_temperature" → get, temperature), its description and
its device's tags (``kind``, ``room``, …) add more; words are reduced to a stem and to topics
("warm", "hot", "degrees" → temperature). A request matches a skill on those words:

- a **read** matches when a topic or word of the request is in the skill's name (strong) or
  description (weak) and the devices are the ones the request selects;
- an **actuation** matches only when the request's verb is the verb of the skill's name (or a
  synonym: "start"/"begin"/"run"), the device is selected by the text (kind, room, id, or the
  name's other words), and every required input can be filled.

Pure: built once per catalog, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol import SkillSpec
from ._constants import wordset

if TYPE_CHECKING:
    from .catalog import Catalog

#: Words that carry no meaning for matching.
STOP = wordset(
    "a an the of to and or in on at for with by from its it this that these those is are be "
    "was were whether how what when which who whom there here as into onto over under up down "
    "out off per than then so if not no yes do does did has have had can could would should "
    "will my our your their me us you i we they he she them his her all any some each every "
    "last first new old current currently now right please tell show give let make get "
    "returns return one two value values number numbers state status reading read sets set "
    "turn turns switch switches skill device devices both either neither with without also "
    "just very too much more less about again still yet only even back"
)
#: Verbs of a skill's name that say nothing about what it is about.
GENERIC_VERBS = wordset("get set read fetch query check measure report is do run")
#: Words meaning the same topic: a request's word and a skill's word match if they share one.
TOPICS: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "temperature": "temperature temp warm warmer warmth cold colder hot hotter cool cooler "
        "chilly freezing heat degree degrees celsius fahrenheit thermometer",
        "humidity": "humidity humid damp moisture moist dry muggy",
        "brightness": "brightness bright brighter dim dimmer dark illuminance lux luminosity",
        "volume": "volume loud louder quiet quieter sound",
        "speed": "speed fast faster slow slower",
        "battery": "battery charge charged",
        "power": "power energy consumption usage watts electricity",
        "air": "air co2 quality pollution smoke",
        "motion": "motion movement occupied occupancy presence",
        "water": "water watering sprinkle sprinkler irrigate irrigation",
        "rain": "rain raining rainfall",
        "wind": "wind windy",
        "pressure": "pressure barometer",
        "ring": "ring rang rung ringing rings doorbell bell visitor visitors",
    }.items()
}
#: Verb synonyms for actuations: a request's verb matches a skill name's verb in the same set.
VERB_SETS: tuple[frozenset[str], ...] = tuple(
    frozenset(s.split())
    for s in (
        "start begin run launch activate",
        "stop halt end cancel deactivate",
        "open raise",
        "close shut lower",
        "play resume",
        "pause",
        "set change adjust put make",
        "lock",
        "unlock",
        "arm",
        "disarm",
        "water irrigate sprinkle",
        "reset restart reboot",
        "brew make",
        "clean vacuum hoover",
    )
)

_TOKEN = re.compile(r"[a-z][a-z0-9]*")


def stem(word: str) -> str:
    """A crude stem: "rings" → ring, "watering" → water, "batteries" → battery."""
    w = word.lower()
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", "e"), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            return w[: len(w) - len(suffix)] + repl
    return w


def concepts(words: Iterable[str]) -> frozenset[str]:
    """Stems and topics of ``words`` (stop words left out)."""
    out: set[str] = set()
    for word in words:
        if word in STOP:
            continue
        out.add(stem(word))
        out.update(f"#{topic}" for topic, members in TOPICS.items() if word in members)
    return frozenset(out)


def split_name(name: str) -> list[str]:
    """A skill name's words: ``get_temperature``, ``getTemperature``, ``get-temperature``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w.lower() for w in re.split(r"[\s_\-.]+", spaced) if w]


def verb_set(word: str) -> frozenset[str]:
    w = stem(word)
    for words in VERB_SETS:
        if w in words or word in words:
            return words
    return frozenset({w})


@dataclass(frozen=True)
class SkillWords:
    """What one device's skill is about, as words."""

    device: str
    spec: SkillSpec
    verb: str
    """The first word of the name ("start" in start_watering)."""
    about: frozenset[str]
    """Concepts of the name's other words (or of the whole name for a read without a verb)."""
    described: frozenset[str]
    """Concepts of the description."""

    @property
    def reads(self) -> bool:
        return self.spec.side_effect == "read"


@dataclass(frozen=True)
class Match:
    words: SkillWords
    matched: tuple[str, ...]
    """The request's concepts the skill shares (topics as ``#topic``)."""
    strong: bool
    """Matched on the skill's name, not only its description."""


class ManifestIndex:
    """Every skill of a catalog, as words."""

    def __init__(self, catalog: Catalog) -> None:
        skills: list[SkillWords] = []
        for device in catalog.devices:
            for spec in device.skills:
                if spec.name.startswith("_"):
                    continue
                words = split_name(spec.name)
                verb, rest = (words[0], words[1:]) if len(words) > 1 else ("", words)
                if verb in GENERIC_VERBS or not rest:
                    rest = [w for w in words if w not in GENERIC_VERBS] or words
                about = concepts(rest)
                described = concepts(_TOKEN.findall(spec.description.lower()))
                skills.append(SkillWords(device.device, spec, verb, about, described))
        self.skills = tuple(skills)
        self.vocabulary = frozenset(
            w
            for s in self.skills
            for w in (*split_name(s.spec.name), *_TOKEN.findall(s.spec.description.lower()))
        )

    def named(self, request: frozenset[str]) -> dict[str, set[str]]:
        """Device → the words of its skills' names (besides the verb) the request says: the text
        selecting a device by what it does ("the target" → the thermostat's set_target)."""
        out: dict[str, set[str]] = {}
        for s in self.skills:
            said = {c for c in s.about & request if not c.startswith("#")}
            if said:
                out.setdefault(s.device, set()).update(said)
        return out

    def reads(self, request: frozenset[str], devices: Iterable[str]) -> list[Match]:
        """Read skills of ``devices`` the request's words point at, name matches first."""
        allowed = set(devices)
        found = []
        for s in self.skills:
            if not s.reads or s.device not in allowed:
                continue
            strong = s.about & request
            weak = s.described & request
            if strong or weak:
                found.append(Match(s, tuple(sorted(strong or weak)), bool(strong)))
        strongest = [m for m in found if m.strong] or found
        return sorted(strongest, key=lambda m: (-len(m.matched), m.words.spec.name))

    def actions(
        self, verb: str, request: frozenset[str], devices: Iterable[str], selected: bool
    ) -> list[Match]:
        """Actuate skills of ``devices`` whose name's verb is ``verb`` (or a synonym), and whose
        other words the request says unless the devices were ``selected`` by the text."""
        verbs = verb_set(verb)
        allowed = set(devices)
        found = []
        for s in self.skills:
            if s.reads or s.device not in allowed or not s.verb:
                continue
            starts = s.verb in VERB_SETS[0] and stem(verb) in s.about  # "water" ~ start_watering
            if stem(s.verb) not in verbs and s.verb not in verbs and not starts:
                continue
            said = s.about & request
            if said or selected:
                found.append(Match(s, tuple(sorted(said)), bool(said)))
        return found
