"""The grammar layer's text rules: normalising text, polite and question openers, negation, the
command verbs (:data:`RULES`), and the phrase patterns the lexicon is built from.

Only patterns over text live here. What the text names (rooms, kinds, a device, a number) is
read by :mod:`.slots`; the skill's input is built by :mod:`.inputs`; the layer that combines them
is :mod:`.layer_grammar`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._constants import wordset
from .catalog import KIND_WORDS
from .numbers import Number, find_number, words_to_digits

# --- text helpers -------------------------------------------------------------------------------

POLITE = re.compile(
    r"^(?:(?:please|hey|hi|hello|ok|okay|so|um|uh|oh|well|yo|kindly|quickly|just|now|"
    r"(?:could|can|would|will) you(?: please| kindly)?|i'd like you to|i want you to)\b[\s,]*)+"
)
QUESTION = re.compile(
    r"^(?:is|are|was|were|did|does|do|has|have|had|what|whats|what's|how|hows|how's|which|who|"
    r"when|where|why|tell me|check|show me|show|let me know|any|anyone|anybody|i wonder|"
    r"report|read|find out|see if)\b"
)
NEGATION = re.compile(r"\b(?:don'?t|do not|dont|never|no need to|doesn'?t|shouldn'?t)\b")
ALL_WORDS = re.compile(
    r"\b(?:all|every|everything|each|both|everywhere)\b"
    r"(?! the way| day| night| morning| evening| afternoon| along| week| the time)"
)
_CLEAN = re.compile(r"[^a-z0-9%°'.:\-\s]+")


def normalize(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = _CLEAN.sub(" ", t)
    t = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", t)  # keep "20.5" and "6:30" only
    return words_to_digits(" " + " ".join(t.split()) + " ")


def alternation(words: Iterable[str]) -> str:
    """An alternation of phrases, longest first, spaces matching any whitespace."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


def phrase_re(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-])(?:{alternation(words)})(?![\w-])")


_COUNT_WORDS = tuple(w for ws in KIND_WORDS.values() for w in ws)


def find_command_number(norm: str) -> Number | None:
    """The first level or temperature: not a time ("6:30", "10 minutes") nor a count of devices
    ("2 lamps")."""
    return find_number(norm, _COUNT_WORDS)


# --- the grammar ----------------------------------------------------------------------------------

_INFLECTED = r"(?:s|es|ed|d|ing|ting|ming|ping)?"
"""Verb endings: "turning", "switched", "putting", "dimming"."""
_ON_VERBS = rf"(?:turn|switch|power|flip|put|get|leave|keep|click){_INFLECTED}"
_OFF_VERBS = rf"(?:turn|switch|power|flip|put|get|shut|knock|click){_INFLECTED}"
_GAP = r"(?:\s+[\w'%.-]+){1,6}?"
_LIGHT_WORDS = alternation(KIND_WORDS["light"])
ANY_KIND_WORDS = alternation(w for ws in KIND_WORDS.values() for w in ws)
SET_VERBS = (
    r"\b(?:set|dim|brighten|adjust|change|bring|make|raise|lower|bump|crank|increase|decrease|"
    rf"reduce|drop|put|turn|warm|heat|cool|up|down|level|move){_INFLECTED}\b"
)


@dataclass(frozen=True)
class ActionRule:
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
) -> ActionRule:
    return ActionRule(action, re.compile(pattern), strength, cue, implied)


RULES: tuple[ActionRule, ...] = (
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
    _rule("turn_on", rf"\b(?:{ANY_KIND_WORDS})\s+on\b", 1),
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

_ACTUATING = tuple(r for r in RULES if r.action != "query_state" and r.strength >= 2)
_PARTICIPLE = re.compile(r"^(?:[a-z]+ed|shut|put|set|left|kept|lit|done|off|on|out)$")
_STATE_AUX = wordset("is are was were be been being get got still left stay stays")


def active_command(norm: str) -> str | None:
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
