"""Text helpers, the grammar layer's rules and skill-input building for the router."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol import SkillSpec

if TYPE_CHECKING:
    pass
from ._constants import (
    Mode,
)
from .catalog import (
    KIND_CUES,
    KIND_WORDS,
    ROOM_WORDS,
    Catalog,
    Interpretation,
    kind_concept,
)

# --- text helpers -------------------------------------------------------------------------------

# edgeagent.models.zoo.intent.parse's number pattern (kept here: no numpy needed), except that
# digits inside a name ("lamp-1") are not a number.
_NUMBER = re.compile(
    r"(?<![\w.:-])(-?\d+(?:[.,]\d+)?)\s*(%|percent\b|per cent\b|degrees?\b|°\s*c?|c\b)?",
    re.IGNORECASE,
)
_TIME_UNIT = re.compile(
    r"^(?::\d\d|\s*(?:minutes?|mins?|seconds?|secs?|hours?|hrs?|days?|am|pm|a\.m|p\.m|o'?clock)\b)"
)
_POLITE = re.compile(
    r"^(?:(?:please|hey|hi|hello|ok|okay|so|um|uh|oh|well|yo|kindly|quickly|just|now|"
    r"(?:could|can|would|will) you(?: please| kindly)?|i'd like you to|i want you to)\b[\s,]*)+"
)
_QUESTION = re.compile(
    r"^(?:is|are|was|were|did|does|do|has|have|had|what|whats|what's|how|hows|how's|which|who|"
    r"when|where|why|tell me|check|show me|show|let me know|any|anyone|anybody|i wonder|"
    r"report|read|find out|see if)\b"
)
_NEGATION = re.compile(r"\b(?:don'?t|do not|dont|never|no need to)\b")
_ALL = re.compile(r"\b(?:all|every|everything|each|both|everywhere)\b(?! the way)")
_CLEAN = re.compile(r"[^a-z0-9%°'.:\-\s]+")


def _normalize(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = _CLEAN.sub(" ", t)
    t = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", t)  # keep "20.5" and "6:30" only
    return " " + " ".join(t.split()) + " "


def _words(words: Iterable[str]) -> str:
    """An alternation of phrases, longest first, spaces matching any whitespace."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


def _phrase_re(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-])(?:{_words(words)})(?![\w-])")


@dataclass(frozen=True)
class _Number:
    value: float
    unit: str | None  # "percent", "degrees" or None
    text: str


_COUNTED = re.compile(rf"^\s*(?:{_words(w for ws in KIND_WORDS.values() for w in ws)})\b")


def _find_number(norm: str) -> _Number | None:
    """The first level or temperature: not a time ("6:30", "10 minutes") nor a count of devices
    ("2 lamps")."""
    for match in _NUMBER.finditer(norm):
        rest = norm[match.end() :]
        if _TIME_UNIT.match(rest) or (not match.group(2) and _COUNTED.match(rest)):
            continue
        raw = (match.group(2) or "").lower().strip()
        unit = "percent" if raw.startswith(("%", "per")) else "degrees" if raw else None
        return _Number(float(match.group(1).replace(",", ".")), unit, match.group(0).strip())
    return None


def _has_time_number(norm: str) -> bool:
    return any(_TIME_UNIT.match(norm[m.end() :]) for m in _NUMBER.finditer(norm))


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
        rf"\b(?:light{_INFLECTED} up|illuminat(?:e|es|ed|ing)|activat(?:e|es|ed|ing)|"
        rf"enabl(?:e|es|ed|ing)|power{_INFLECTED} up|fir(?:e|es|ed|ing) up)\b",
        2,
    ),
    _rule("turn_off", rf"\b(?:{_LIGHT_WORDS})\s+out\b", 2, "light"),
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
    _rule("toggle", rf"\b(?:toggl(?:e|es|ed|ing)|flip{_INFLECTED})\b", 2),
    _rule("notify", rf"\b(?:ring|press|push|buzz|chime|ding){_INFLECTED}\b", 2),
    _rule("lock", r"\block\b", 2),
    _rule("unlock", r"\bunlock\b", 2),
    _rule("open", r"\bopen\b", 2),
    _rule("close", r"\b(?:close|shut)\b", 1),
    _rule("query_state", r"\b(?:status|state)\b", 3),
    _rule("query_state", r"\b(?:temperature|how (?:warm|cold|hot))\b", 1, "thermostat"),
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
    number: _Number | None
    mode: Mode
    said: dict[str, str]
    """What matched, for explanations: slot → words."""


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

    @property
    def runnable(self) -> bool:
        return self.problem is None


class _Lexicon:
    """The catalog's vocabulary as compiled patterns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        rooms = catalog.rooms
        self.room_res = {r: _phrase_re((*ROOM_WORDS.get(r, ()), *_spellings(r))) for r in rooms}
        self.foreign_room_res = {
            r: _phrase_re(words) for r, words in ROOM_WORDS.items() if r not in rooms
        }
        concepts: dict[str, set[str]] = {c: set(ws) for c, ws in KIND_WORDS.items()}
        for tag in catalog.kinds:
            concept = kind_concept(tag) or tag
            concepts.setdefault(concept, set()).update(_spellings(tag))
            if concept == tag and not tag.endswith("s"):
                concepts[concept].add(tag + "s")
        self.kind_res = {c: _phrase_re(ws) for c, ws in concepts.items()}
        self.cue_res = {c: _phrase_re(ws) for c, ws in KIND_CUES.items()}
        self.device_re = (
            _phrase_re(d.device.lower() for d in catalog.devices) if catalog.devices else None
        )
        self.skill_phrases = {
            name: re.compile(rf"\b{_words([name.lower().replace('_', ' ')])}\b")
            for name in sorted(catalog.skill_names, key=len, reverse=True)
        }

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
                for c, unit in (("light", "percent"), ("thermostat", "degrees"))
                if number.unit == unit and c not in cues
            )
        mode: Mode = "all" if _ALL.search(norm) else "one"
        return _Slots(
            tuple(rooms), tuple(foreign), tuple(kinds), tuple(cues), device, number, mode, said
        )


def _spellings(value: str) -> tuple[str, ...]:
    v = value.lower()
    return tuple(dict.fromkeys((v, v.replace("-", " ").replace("_", " "))))


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


def _build_input(spec: SkillSpec, number: _Number | None) -> tuple[dict[str, Any], str | None]:
    """Fill the skill's one required numeric property from the text's number; check it."""
    props = _properties(spec)
    required = _required(spec)
    numeric = [r for r in required if _schema_type(props.get(r, {})) & {"integer", "number"}]
    value: dict[str, Any] = {}
    if number is not None and len(numeric) == 1:
        name = numeric[0]
        prop = props.get(name, {})
        v = number.value
        value[name] = int(v) if "integer" in _schema_type(prop) and v.is_integer() else v
        about = f"{name} {prop.get('description', '')} {spec.description}".lower()
        if number.unit == "degrees" and "percent" in about and "celsius" not in about:
            return value, f"{spec.name} takes {name} in percent, not degrees"
        if number.unit == "percent" and ("celsius" in about or "degrees" in about):
            return value, f"{spec.name} takes {name} in degrees, not percent"
    return value, _check_input(spec, value)
