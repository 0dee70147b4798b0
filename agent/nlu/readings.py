"""Readings: each target as a candidate interpretation, with every reason it cannot be carried
out as is (place, mood, certainty, several devices) and the question to ask back.

The layers find targets; this module turns them into :class:`Candidate` s the same way for
every layer, so a model reading is held to the same rules as a grammar reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._constants import MAX_CANDIDATES, NOT_RUNNABLE_CAP, Layer, Mode
from .catalog import Interpretation
from .inputs import build_input, properties
from .mood import Mood
from .numbers import find_duration, has_time_number
from .slots import Request, Slots
from .targets import Target, Targets, not_singled_out, where_text


@dataclass(frozen=True)
class Candidate:
    interpretation: Interpretation
    problem: str | None = None
    """Why it cannot run as is (missing or invalid input, …); None if it can."""
    question: str | None = None
    """What to ask the person back, when the router knows."""

    @property
    def runnable(self) -> bool:
        return self.problem is None


def fmt_confidence(p: float) -> str:
    return f"{p:.2f}"


CONDITIONAL_QUESTION = (
    'That is a condition ("{clue}"): I only carry out direct requests, now. For an automation, '
    "add a rule (rules.yaml)."
)


class Readings:
    """Builds candidates from targets; needs the devices' tags and kinds (:class:`Targets`)."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.catalog = targets.catalog

    def candidates(
        self,
        targets: Sequence[Target],
        request: Request,
        confidence: float,
        layer: Layer,
        explanation: str,
        in_command: bool,
    ) -> list[Candidate]:
        """Each target as a reading, with every reason it cannot be carried out as is."""
        ambiguous = len({t.skill for t in targets}) > 1 or len({str(t.where) for t in targets}) > 1
        out = [
            self._candidate(t, len(targets) if ambiguous else 0, request, confidence, layer,
                            explanation, in_command)
            for t in targets
        ]  # fmt: skip
        out.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        return out

    def _candidate(
        self,
        t: Target,
        ambiguous: int,
        request: Request,
        confidence: float,
        layer: Layer,
        explanation: str,
        in_command: bool,
    ) -> Candidate:
        """One target as a reading; ``ambiguous`` is the number of readings when it is > 1."""
        slots = request.slots
        conf = confidence
        notes = [f"{t.skill} on {where_text(t.where)}: {', '.join(t.devices)}"]
        if ambiguous:
            conf = min(conf, 0.5)
            notes.append(f"ambiguous ({ambiguous} readings)")
        duration = find_duration(request.norm)
        value, problem, converted = build_input(t.spec, slots.number, duration)
        if converted:
            notes.append(converted)
        question = _input_question(t, slots, problem)
        if slots.device and t.devices != (slots.device,) and slots.mode == "one":
            problem = not_singled_out(slots.device, t.devices)
        for check in (self._place_check, self._mood_check, self._certainty_check):
            found = check(t, request, value, in_command)
            if found is not None and problem is None:
                problem, question = found
        mode = slots.mode
        if problem is None and mode == "one" and len(t.devices) > 1 and not slots.device:
            mode, problem, which = self._many_devices(t, slots, notes)
            question = which if which is not None else question
        if value:
            notes.append(f"input {json.dumps(value, sort_keys=True)}")
        if mode == "all":
            notes.append("mode all")
        if problem:
            conf = min(conf, NOT_RUNNABLE_CAP)
            notes.append(f"cannot run: {problem}")
        interp = Interpretation(
            t.skill,
            value,
            dict(t.where),
            mode,
            round(conf, 4),
            layer,
            f"{explanation} → {'; '.join(notes)}",
        )
        return Candidate(interp, problem, question)

    def _many_devices(
        self, t: Target, slots: Slots, notes: list[str]
    ) -> tuple[Mode, str | None, str | None]:
        """(mode, problem, question back) for a one-device reading that matches several.

        A count equal to the matches, or rooms named in the plural, mean all of them; an
        indefinite article means any one; otherwise ask which. Appends its reason to ``notes``.
        """
        if slots.count == len(t.devices):
            notes.append(f"the {slots.count} of them: all")
            return "all", None, None
        if slots.indefinite:
            notes.append("any one of them will do")
            return "one", None, None
        if slots.rooms and slots.plural:
            notes.append(f"the {' and '.join(slots.rooms)} ones: all of them")
            return "all", None, None
        problem = f"{len(t.devices)} devices match ({', '.join(t.devices)}): which device?"
        return "one", problem, self.which(t)

    # Checks: each returns (problem, question back) or None ------------------------------------

    def _place_check(
        self, t: Target, request: Request, value: Mapping[str, Any], in_command: bool
    ) -> tuple[str, str] | None:
        places = request.slots.places
        if not places:
            return None
        words = ", ".join(f'"{p.words}"' for p in places)
        return f"unrecognised room word {words}", places[0].question(self.catalog.rooms)

    def _mood_check(
        self, t: Target, request: Request, value: Mapping[str, Any], in_command: bool
    ) -> tuple[str, str] | None:
        mood = request.mood
        if t.spec.side_effect == "read":
            if mood.reads:
                return None
            return f"the request is {mood.describe()}: not a question to answer", _mood_question(
                mood, t, value
            )
        if in_command:
            return None
        if mood.acts:  # the command clause is not the one with the action's words
            return (
                "the action's words are in a statement, not in the command",
                _mood_question(mood, t, value),
            )
        return (
            f"the request is {mood.describe()}: only a command is carried out",
            _mood_question(mood, t, value),
        )

    def _certainty_check(
        self, t: Target, request: Request, value: Mapping[str, Any], in_command: bool
    ) -> tuple[str, str] | None:
        """An actuation needs the device's kind selected by the text and every number explained."""
        if t.spec.side_effect == "read":
            return None
        slots = request.slots
        kinds = {self.targets.concept_of.get(d) for d in t.devices}
        selected = bool(kinds & request.evidence) or t.skill in request.named_skills
        if not selected and not slots.device:
            valueless = not properties(t.spec) or not value
            by_room = bool(slots.rooms) and len(t.devices) == 1 and valueless
            everything = slots.mode == "all" and valueless and not slots.number
            if not (by_room or everything):
                named = " or ".join(sorted(k or "device" for k in kinds))
                problem = f"the text names no {named}: not guessing that {t.skill} is meant"
                if len(t.devices) > 1:
                    return f"{problem}: which device?", self.which(t)
                return problem, f"Which device do you mean? ({t.skill} is a {named}'s skill)"
        number = slots.number
        if number is not None and not value:
            return (
                f'"{number.text}" is not an input of {t.skill}',
                f'What is "{number.text}" for? {t.skill} takes no number.',
            )
        if has_time_number(request.norm) and not value:
            return (
                f"{t.skill} is carried out now, not at or for a time",
                "Do you mean now? Times and durations belong in rules (rules.yaml).",
            )
        return None

    def which(self, t: Target) -> str:
        def label(device: str) -> str:
            tags = self.targets.tags_of.get(device, {})
            room = tags.get("room")
            return f"{device} (room {room})" if room else device

        names = [label(d) for d in t.devices[:6]]
        more = f" and {len(t.devices) - 6} more" if len(t.devices) > 6 else ""
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return f"Which one: {listed}{more}? Name the room, or say all."


def _mood_question(mood: Mood, t: Target, value: Mapping[str, Any]) -> str:
    if mood.kind == "conditional":
        return CONDITIONAL_QUESTION.format(clue=mood.clue)
    action = f"{t.skill} {json.dumps(dict(value))} on {where_text(t.where)}"
    if t.spec.side_effect == "read":
        return f"Do you want me to read {t.skill} on {where_text(t.where)}? Ask it as a question."
    return f"Do you want me to run {action} now? Then say it as a request."


def best_interpretations(candidates: Iterable[Candidate]) -> list[Interpretation]:
    """Up to :data:`MAX_CANDIDATES` distinct readings, runnable and confident first."""
    ranked = sorted(
        candidates, key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True
    )
    out: list[Interpretation] = []
    seen: set[str] = set()
    for c in ranked:
        i = c.interpretation
        key = json.dumps([i.skill, i.where, i.input, i.mode], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(i)
        if len(out) == MAX_CANDIDATES:
            break
    return out


def _input_question(t: Target, slots: Slots, problem: str | None) -> str | None:
    """The question back for an input that cannot be built: the unit, or the value itself."""
    if not problem:
        return None
    if slots.number is not None and (
        slots.number.unknown_unit or "unit" in problem or ", not " in problem
    ):
        return f"{problem}: what is {slots.number.text} in the unit it takes?"
    return f"{t.skill} cannot run: {problem}. What value do you want?"
