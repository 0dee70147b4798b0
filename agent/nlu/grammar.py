"""Text helpers, the grammar layer's rules, the request's slots and skill-input building."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol import SkillSpec
from ._constants import Mode, wordset
from .catalog import (
    KIND_CUES,
    KIND_WORDS,
    ROOM_WORDS,
    Catalog,
    Interpretation,
    kind_concept,
)
from .manifest import STOP, ManifestIndex, concepts
from .numbers import (
    Number,
    Unit,
    convert,
    duration_unit,
    find_number,
    schema_unit,
    words_to_digits,
)
from .places import Place, PlaceFinder

# --- text helpers -------------------------------------------------------------------------------

_POLITE = re.compile(
    r"^(?:(?:please|hey|hi|hello|ok|okay|so|um|uh|oh|well|yo|kindly|quickly|just|now|"
    r"(?:could|can|would|will) you(?: please| kindly)?|i'd like you to|i want you to)\b[\s,]*)+"
)
_QUESTION = re.compile(
    r"^(?:is|are|was|were|did|does|do|has|have|had|what|whats|what's|how|hows|how's|which|who|"
    r"when|where|why|tell me|check|show me|show|let me know|any|anyone|anybody|i wonder|"
    r"report|read|find out|see if)\b"
)
_NEGATION = re.compile(r"\b(?:don'?t|do not|dont|never|no need to|doesn'?t|shouldn'?t)\b")
_ALL = re.compile(
    r"\b(?:all|every|everything|each|both|everywhere)\b"
    r"(?! the way| day| night| morning| evening| afternoon| along| week| the time)"
)
_CLEAN = re.compile(r"[^a-z0-9%°'.:\-\s]+")


def _normalize(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = _CLEAN.sub(" ", t)
    t = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", t)  # keep "20.5" and "6:30" only
    return words_to_digits(" " + " ".join(t.split()) + " ")


def _words(words: Iterable[str]) -> str:
    """An alternation of phrases, longest first, spaces matching any whitespace."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


def _phrase_re(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-])(?:{_words(words)})(?![\w-])")


_COUNT_WORDS = tuple(w for ws in KIND_WORDS.values() for w in ws)


def _find_number(norm: str) -> Number | None:
    """The first level or temperature: not a time ("6:30", "10 minutes") nor a count of devices
    ("2 lamps")."""
    return find_number(norm, _COUNT_WORDS)


# --- the grammar ----------------------------------------------------------------------------------

_INFLECTED = r"(?:s|es|ed|d|ing|ting|ming|ping)?"
"""Verb endings: "turning", "switched", "putting", "dimming"."""
_ON_VERBS = rf"(?:turn|switch|power|flip|put|get|leave|keep|click){_INFLECTED}"
_OFF_VERBS = rf"(?:turn|switch|power|flip|put|get|shut|knock|click){_INFLECTED}"
_GAP = r"(?:\s+[\w'%.-]+){1,6}?"
_LIGHT_WORDS = _words(KIND_WORDS["light"])
_ANY_KIND_WORDS = _words(w for ws in KIND_WORDS.values() for w in ws)
_SET_VERBS = (
    r"\b(?:set|dim|brighten|adjust|change|bring|make|raise|lower|bump|crank|increase|decrease|"
    rf"reduce|drop|put|turn|warm|heat|cool|up|down|level|move){_INFLECTED}\b"
)


@dataclass(frozen=True)
class _ActionRule:
    action: str
    pattern: re.Pattern[str]
    strength: int
    """Higher wins; equal strengths of different actions make the reading ambiguous."""
    cue: str | None = None
    """The kind concept the phrasing implies ("it's dark" → light)."""
    implied: bool = False
    """An idiom rather than a command verb: lowers the confidence."""


def _rule(
    action: str, pattern: str, strength: int, cue: str | None = None, implied: bool = False
) -> _ActionRule:
    return _ActionRule(action, re.compile(pattern), strength, cue, implied)


_RULES: tuple[_ActionRule, ...] = (
    _rule("turn_on", rf"\b{_ON_VERBS}\s+on\b", 3),
    _rule("turn_off", rf"\b{_OFF_VERBS}\s+(?:off|out)\b", 3),
    _rule("turn_off", r"\bshut\s+down\b", 3),
    _rule("turn_on", rf"\b{_ON_VERBS}{_GAP}\s+on\b", 2),
    _rule("turn_off", rf"\b{_OFF_VERBS}{_GAP}\s+(?:off|out)\b", 2),
    _rule("turn_off", rf"\b(?:kill|cut|douse|extinguish|deactivate|disable){_INFLECTED}\b", 2),
    _rule(
        "turn_on",
        rf"\b(?:light{_INFLECTED}(?: it| them| the \w+)? up|illuminat(?:e|es|ed|ing)|"
        rf"activat(?:e|es|ed|ing)|enabl(?:e|es|ed|ing)|power{_INFLECTED} up|"
        r"fir(?:e|es|ed|ing) up)\b",
        2,
    ),
    _rule("turn_off", rf"\b(?:{_LIGHT_WORDS})\s+out\b", 2, "light"),
    _rule(
        "turn_on",
        r"\b(?:get|have|need|want|give (?:me|us))\s+(?:some|a (?:bit|little)(?: of)?|more)\s+"
        r"light\b",
        2,
        "light",
    ),
    _rule("turn_on", rf"\b(?:{_ANY_KIND_WORDS})\s+on\b", 1),
    _rule("turn_off", r"\boff\b", 1),
    _rule(
        "turn_on",
        r"\b(?:(?:it'?s|it is|too|so|getting|very|pretty|really|bit|pitch)\s+dark|can'?t see)\b",
        1,
        "light",
        True,
    ),
    _rule(
        "set_level",
        r"\b(?:(?:it'?s|it is|too|so|getting|very|pretty|really|bit|i'?m|i am)\s+"
        r"(?:cold|chilly|freezing|hot|warm)|warmer|cooler|colder|hotter|"
        r"warm up|heat up|cool down)\b",
        1,
        "thermostat",
        True,
    ),
    _rule("set_level", r"\b(?:dim|dimmer|brighten|brighter)\b", 1, "light"),
    # "turn the fan up": a relative change, which needs a value (never read as "turn on").
    _rule("set_level", r"\b(?:turn|crank|bump|push|put)\w*\s+(?:[\w'-]+\s+){0,4}?(?:up|down)\b", 3),
    _rule("toggle", rf"\b(?:toggl(?:e|es|ed|ing)|flip{_INFLECTED})\b", 2),
    _rule("notify", rf"\b(?:ring|press|push|buzz|chime|ding){_INFLECTED}\b", 2),
    _rule("lock", r"\block\b", 2),
    _rule("unlock", r"\bunlock\b", 2),
    _rule("open", r"\bopen\b", 2),
    _rule("close", r"\b(?:close|shut)\b", 1),
    _rule("query_state", r"\b(?:status|state)\b", 3),
    _rule("query_state", r"\b(?:temperature|how (?:warm|cold|hot))\b", 1, "thermostat"),
)

_ACTUATING = tuple(r for r in _RULES if r.action != "query_state" and r.strength >= 2)
_PARTICIPLE = re.compile(r"^(?:[a-z]+ed|shut|put|set|left|kept|lit|done|off|on|out)$")
_STATE_AUX = wordset("is are was were be been being get got still left stay stays")


def _active_command(norm: str) -> str | None:
    """An explicit actuating verb in active form ("turning off", "turn the heating up"), not a
    state ("is the light turned off"): in a question, a request put as one."""
    for rule in _ACTUATING:
        m = rule.pattern.search(norm)
        if m is None:
            continue
        first = m.group(0).split()[0]
        before = norm[: m.start()].split()[-1:]
        if _PARTICIPLE.match(first) or (before and before[0] in _STATE_AUX):
            continue
        return m.group(0).strip()
    return None


_INDEFINITE = re.compile(
    rf"\b(?:a|an|any|some|either|one of the|any of the)\s+(?:[\w'-]+\s+)?(?:{_ANY_KIND_WORDS})\b"
)
_COUNT = re.compile(rf"(?<![\w.:-])(\d+)\s+(?:[\w'-]+\s+)?(?:{_ANY_KIND_WORDS})\b")
_PLURAL_KINDS = frozenset(
    w for ws in KIND_WORDS.values() for w in ws if w.endswith("s") and not w.endswith("ss")
)


@dataclass(frozen=True)
class _Slots:
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


@dataclass(frozen=True)
class _Target:
    skill: str
    where: dict[str, str]
    devices: tuple[str, ...]
    spec: SkillSpec


@dataclass(frozen=True)
class _Candidate:
    interpretation: Interpretation
    problem: str | None = None
    """Why it cannot run as is (missing or invalid input, …); None if it can."""
    question: str | None = None
    """What to ask the person back, when the router knows."""

    @property
    def runnable(self) -> bool:
        return self.problem is None


class _Lexicon:
    """The catalog's vocabulary as compiled patterns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        rooms = catalog.rooms
        self.room_phrases = {
            r: (*ROOM_WORDS.get(r, ()), *_spellings(r), *(w + "s" for w in _spellings(r)))
            for r in rooms
        }
        self.room_res = {r: _phrase_re(words) for r, words in self.room_phrases.items()}
        self.foreign_room_res = {
            r: _phrase_re(words) for r, words in ROOM_WORDS.items() if r not in rooms
        }
        concepts_: dict[str, set[str]] = {c: set(ws) for c, ws in KIND_WORDS.items()}
        for tag in catalog.kinds:
            concept = kind_concept(tag) or tag
            concepts_.setdefault(concept, set()).update(_spellings(tag))
            if concept == tag and not tag.endswith("s"):
                concepts_[concept].add(tag + "s")
        self.kind_words = concepts_
        self.kind_res = {c: _phrase_re(ws) for c, ws in concepts_.items()}
        self.cue_res = {c: _phrase_re(ws) for c, ws in KIND_CUES.items()}
        self.device_re = (
            _phrase_re(d.device.lower() for d in catalog.devices) if catalog.devices else None
        )
        self.skill_phrases = {
            name: re.compile(rf"\b{_words([name.lower().replace('_', ' ')])}\b")
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

    def slots(self, norm: str) -> _Slots:
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
        number = _find_number(norm)
        if number is not None:
            cues.extend(
                c
                for c, wanted in (("light", "percent"), ("thermostat", "temperature"))
                if (number.unit == wanted or (wanted == "temperature" and number.temperature))
                and c not in cues
            )
        mode: Mode = "all" if _ALL.search(norm) else "one"
        places = tuple(p for p in self.places.find(norm) if device is None)
        return _Slots(
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


# --- inputs -------------------------------------------------------------------------------------


def _schema_type(prop: Mapping[str, Any]) -> set[str]:
    t = prop.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    found: set[str] = set()
    for option in prop.get("anyOf", ()):
        if isinstance(option, Mapping):
            found |= _schema_type(option)
    return found


def _check_value(name: str, prop: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit the property's (simple) schema, or None."""
    types = _schema_type(prop)
    if not types:
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    fits = {
        "integer": is_number and float(value).is_integer(),
        "number": is_number,
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    if not any(fits.get(t, True) for t in types):
        return f"{name}={value!r} is not {' or '.join(sorted(types))}"
    if is_number:
        low, high = prop.get("minimum"), prop.get("maximum")
        if isinstance(low, int | float) and value < low:
            return f"{name}={value:g} is below the minimum {low:g}"
        if isinstance(high, int | float) and value > high:
            return f"{name}={value:g} is above the maximum {high:g}"
    return None


def _properties(spec: SkillSpec) -> dict[str, Mapping[str, Any]]:
    props = spec.input_schema.get("properties", {})
    return {k: v for k, v in props.items() if isinstance(v, Mapping)}


def _required(spec: SkillSpec) -> list[str]:
    req = spec.input_schema.get("required", [])
    return [str(r) for r in req] if isinstance(req, list) else []


def _check_input(spec: SkillSpec, value: Mapping[str, Any]) -> str | None:
    props = _properties(spec)
    missing = [r for r in _required(spec) if r not in value]
    if missing:
        return f"{spec.name} needs {', '.join(missing)}"
    for key, v in value.items():
        if key not in props:
            if spec.input_schema.get("additionalProperties") is False:
                return f"{spec.name} takes no input {key!r}"
            continue
        problem = _check_value(key, props[key], v)
        if problem:
            return problem
    return None


_UNIT_WORDS: dict[Unit, str] = {
    "percent": "percent",
    "degrees": "degrees",
    "celsius": "degrees Celsius",
    "fahrenheit": "degrees Fahrenheit",
    "kelvin": "kelvin",
}


def _numeric_property(spec: SkillSpec) -> str | None:
    """The skill's one required numeric input property, if it has exactly one."""
    props = _properties(spec)
    numeric = [r for r in _required(spec) if _schema_type(props.get(r, {})) & {"integer", "number"}]
    return numeric[0] if len(numeric) == 1 else None


def _build_input(
    spec: SkillSpec, number: Number | None, duration: float | None = None
) -> tuple[dict[str, Any], str | None, str | None]:
    """Fill the skill's one required numeric property from the text's number (or its duration,
    for a property in minutes or seconds), converted to the unit the schema declares. Returns
    the input, why it cannot run (or None) and a note on a conversion (or None)."""
    name = _numeric_property(spec)
    value: dict[str, Any] = {}
    if name is None:
        return value, _check_input(spec, value), None
    prop = _properties(spec).get(name, {})
    per = duration_unit(name, prop, spec.description)
    if per is not None:
        if duration is not None:
            v = round(duration / per, 3)
            value[name] = int(v) if "integer" in _schema_type(prop) and v.is_integer() else v
        return value, _check_input(spec, value), None
    if number is None:
        return value, _check_input(spec, value), None
    target = schema_unit(name, prop, spec.description)
    full_scale = prop.get("minimum") == 0 and prop.get("maximum") == 100
    if target is None and number.unit == "percent" and full_scale:
        target = "percent"  # a 0-100 scale takes a percentage as it is
    if target is None and number.unit is not None and not number.unknown_unit:
        value[name] = number.value
        return value, f"{spec.name} does not say which unit {name} takes: {number.text}?", None
    converted, note = convert(number, target)
    if converted is None:
        value[name] = number.value
        said = number.unknown_unit or _UNIT_WORDS.get(number.unit or "percent", "")
        want = _UNIT_WORDS.get(target, "its own unit") if target else "its own unit"
        return value, f"{spec.name} takes {name} in {want}, not {said}", None
    v = converted
    value[name] = int(v) if "integer" in _schema_type(prop) and float(v).is_integer() else v
    return value, _check_input(spec, value), note
