"""Layer 2, grammar: command verbs, questions, numbers and a skill's own name over the text's
slots; where the tables know no skill for the devices, their manifests (:mod:`.manifest`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from ._constants import NO_VERB
from .catalog import Interpretation, skill_choices
from .grammar import POLITE, QUESTION, RULES, SET_VERBS, active_command
from .inputs import build_input
from .manifest import Match
from .mood import strip_polite
from .numbers import has_time_number
from .readings import Candidate, Readings
from .slots import Lexicon, Request, Slots
from .targets import Target, Targets, skills_of, where_text


class _Action(NamedTuple):
    """What the text asks to do, before any skill: the action and how sure the grammar is."""

    action: str | None
    strength: int
    ambiguous: bool
    implied: bool
    cue: str | None


def _action(norm: str, stripped: str, slots: Slots, said: dict[str, str]) -> _Action:
    """The action: a question, a number to set, or the strongest verb. Records it in ``said``."""
    asked = QUESTION.match(stripped)
    # A question with an actuating verb ("how about turning the heating up?") asks for an
    # action: it is read as one (and not carried out), never answered with a read.
    indirect = active_command(norm) if asked and _SUGGESTION.match(stripped) else None
    if asked and indirect is None:
        said["question"] = stripped.split()[0]
        return _Action("query_state", 5, False, False, None)
    if slots.number is not None and re.search(
        rf"(?:\b(?:to|at)\s+-?\d|%|\bpercent\b|\bdegrees?\b|°|{SET_VERBS})", norm
    ):
        said["number"] = slots.number.text
        return _Action("set_level", 4, False, False, None)
    return _verb_action(norm, said)


def _verb_action(norm: str, said: dict[str, str]) -> _Action:
    """The strongest verb rule that matches; two different actions as strong are ambiguous."""
    action: str | None = None
    strength = 0
    ambiguous = False
    implied = False
    cue: str | None = None
    for rule in RULES:
        m = rule.pattern.search(norm)
        if m is None or rule.strength < strength:
            continue
        if rule.strength == strength and action is not None and rule.action != action:
            ambiguous = True
            continue
        if rule.strength > strength:
            ambiguous = False
        action, strength = rule.action, rule.strength
        cue, implied = rule.cue or cue, rule.implied
        said["verb"] = m.group(0).strip()
    return _Action(action, strength, ambiguous, implied, cue)


def _confidence(act: _Action) -> float:
    """How sure a verb reading is: an implied verb or a weak one less, an ambiguous one 0.5."""
    confidence = 0.95
    if act.implied:
        confidence = 0.8
    elif act.strength <= 1:
        confidence = 0.85
    if act.ambiguous:
        confidence = 0.5
    return confidence


class GrammarLayer:
    """The grammar layer over one catalog (its lexicon, targets and readings)."""

    def __init__(self, lexicon: Lexicon, targets: Targets, readings: Readings) -> None:
        self.lexicon = lexicon
        self.targets = targets
        self.readings = readings
        self.catalog = targets.catalog

    def read(self, request: Request) -> tuple[list[Candidate], str | None]:
        norm, slots = request.norm, request.slots
        stripped = POLITE.sub("", norm.strip())
        said = dict(slots.said)
        # The action: a question, a number to set, a verb, or a skill's own name.
        act = _action(norm, stripped, slots, said)
        action, implied, cue = act.action, act.implied, act.cue
        direct = self._direct(norm, act, said)
        explanation = "grammar: " + ", ".join(f'{k} "{v}"' for k, v in said.items())
        evidence = said.get("verb") or said.get("number") or said.get("skill name")
        in_command = request.mood.acts and (evidence is None or request.mood.in_command(evidence))
        if action is None and direct is None:
            found = self._manifest(request, None, explanation, in_command)
            if found:
                return found, None if any(c.runnable for c in found) else _why(found)
            if slots.number is not None and has_time_number(norm):
                return [], "grammar: a time or duration is not a device command"
            return self._no_verb(slots), "grammar: no command verb recognized"
        cues = [*([cue] if cue else []), *(c for c in slots.cues if c != cue)]
        confidence = _confidence(act)
        if direct is not None and (action is None or direct not in skill_choices(action, None)):
            targets, why = self.targets.for_skill(direct, slots)
            action_text = f"skill {direct}"
        else:
            assert action is not None
            targets, why, from_cue = self.targets.targets(action, slots, cues)
            if from_cue and not implied:
                confidence = min(confidence, 0.85)
            action_text = action
            if action == "query_state" or not targets:
                found = self._manifest(
                    request, action, explanation, in_command, confidence, skills_of(targets)
                )
                if found:
                    return found, None if any(c.runnable for c in found) else _why(found)
        if not targets:
            return [], f"grammar: {action_text}: {why}"
        named = [t for t in targets if t.skill in request.named_skills]
        if named and len(named) < len(targets):
            targets = named  # "set the target to 18": the skill the text names, not the others
            explanation += f" (the text names {', '.join(skills_of(named))})"
        found = self.readings.candidates(
            targets, request, confidence, "grammar", explanation, in_command
        )
        if any(c.runnable for c in found):
            return found, None
        return found, _why(found)

    def _direct(self, norm: str, act: _Action, said: dict[str, str]) -> str | None:
        """A skill the text names itself, when no strong verb already says what to do."""
        for name, pattern in self.lexicon.skill_phrases.items():  # longest name first
            m = pattern.search(norm)
            if m and (act.action is None or act.strength <= 3):
                said["skill name"] = m.group(0)
                return name
        return None

    def _manifest(
        self,
        request: Request,
        action: str | None,
        explanation: str,
        in_command: bool,
        confidence: float = 0.9,
        table: frozenset[str] = frozenset(),
    ) -> list[Candidate]:
        """Readings from the devices' manifests (skill names, descriptions, tags): reads for a
        question the tables did not answer by name, actuations whose verb the text says."""
        slots = request.slots
        base, selected = self.targets.selection(slots)
        if selected and not self.catalog.matching(base) and "kind" in base and not slots.device:
            base.pop("kind")  # "temperature" named a thermostat; the garden has a probe
            selected = bool(base)
        devices = [d.device for d in self.catalog.matching(base)] if selected else None
        if devices is None:
            devices = list(self.targets.tags_of)
        words = slots.concepts - {w for r in slots.rooms for w in r.split()}
        matches: list[Match] = []
        if action in (None, "query_state"):
            matches = self.lexicon.index.reads(words, devices)
            if action is None and request.mood.kind != "question":
                matches = []  # no verb and no question: not asking for a read
            if table and not {m.words.spec.name for m in matches} - table:
                return []  # the tables found the same skills: nothing to add
            if action is None and not selected:
                matches = [m for m in matches if m.strong]
        if action != "query_state" and not matches:
            verb = _verb(request.norm)
            if verb:
                matches = self.lexicon.index.actions(verb, words, devices, selected)
        if not matches:
            return []
        by_skill: dict[str, list[Match]] = {}
        for m in matches:
            by_skill.setdefault(m.words.spec.name, []).append(m)
        targets = []
        for name, ms in by_skill.items():
            on = tuple(sorted({m.words.device for m in ms}))
            where = dict(base) if selected else {}
            if not selected and len(on) == 1:
                where = self.targets.narrow(on[0], name)
            in_where = tuple(d for d in self.catalog.devices_with(name, where) if d in on)
            if in_where:
                targets.append(Target(name, where, in_where, ms[0].words.spec))
        if not targets:
            return []
        note = "manifest: " + "; ".join(
            f"{name} ({'name' if ms[0].strong else 'description'} says "
            f"{', '.join(ms[0].matched) or 'its verb'})"
            for name, ms in by_skill.items()
        )
        conf = min(confidence, 0.9 if all(ms[0].strong for ms in by_skill.values()) else 0.7)
        return self.readings.candidates(
            targets, request, conf, "grammar", f"{explanation}; {note}", in_command
        )

    def _no_verb(self, slots: Slots) -> list[Candidate]:
        """No verb but a named device, room or kind: its skills as weak candidates."""
        where: dict[str, str] = {}
        if len(slots.rooms) == 1:
            where["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self.targets.kind_tags(c)]
        if len(tags) == 1:
            where["kind"] = tags[0]
        if slots.device:
            where = dict(self.targets.tags_of[slots.device])
        if not where:
            return []
        out = []
        for name in self.catalog.skill_names:
            spec = self.catalog.spec(name, where)
            if spec is None:
                continue
            value, _, _ = build_input(spec, slots.number)
            text = f"grammar: no verb; {where_text(where)} has skill {name} ({spec.description})"
            interp = Interpretation(name, value, where, slots.mode, 0.3, "grammar", text)
            out.append(Candidate(interp, NO_VERB))
        return out


_SUGGESTION = re.compile(
    r"^(?:how about|what about|why not|why don'?t (?:you|we)|is it possible|is there (?:any )?way|"
    r"any chance|how do i|what if)\b"
)


def _why(found: Sequence[Candidate]) -> str:
    return f"grammar: {found[0].interpretation.skill}: {found[0].problem}"


def _verb(norm: str) -> str | None:
    """The first word of the request's first command clause ("start" in "please start …")."""
    for clause in re.split(r"[,;]", norm):
        words = strip_polite(clause).split()
        if words:
            return words[0]
    return None
