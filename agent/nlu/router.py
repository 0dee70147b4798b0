"""The layered router: exact, grammar, then the zoo's intent model."""

from __future__ import annotations

import json
import math
import re
import shlex
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import EdgeAgentError
from ..protocol import SkillSpec
from ._constants import (
    DEFAULT_MODEL,
    DEFAULT_THRESHOLD,
    LAYERS,
    MAX_CANDIDATES,
    NO_VERB,
    NOT_RUNNABLE_CAP,
    Layer,
    Mode,
)
from .catalog import (
    KIND_TAGS,
    Catalog,
    Interpretation,
    SupportsRun,
    Unsure,
    kind_concept,
    skill_choices,
)
from .grammar import (
    _NEGATION,
    _POLITE,
    _QUESTION,
    _RULES,
    _SET_VERBS,
    _active_command,
    _build_input,
    _Candidate,
    _check_input,
    _Lexicon,
    _normalize,
    _properties,
    _Slots,
    _Target,
)
from .manifest import Match
from .mood import Mood, analyse, strip_polite
from .numbers import find_duration, has_time_number

# --- the router ---------------------------------------------------------------------------------


def _where_text(where: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in where.items()) or "any device"


def _fmt(p: float) -> str:
    return f"{p:.2f}"


@dataclass(frozen=True)
class _Request:
    """One text, read once for every layer."""

    text: str
    norm: str
    slots: _Slots
    mood: Mood
    evidence: frozenset[str]
    """Kind concepts the text selects: kinds and cues it names, the kind of a device it names,
    and the kinds of devices whose skill names it says ("the target" → thermostat)."""
    named_skills: frozenset[str]
    """Skills whose name's words (besides the verb) the text says."""


class Router:
    """Maps text to a skill, its input and a ``where`` over ``catalog`` (see the module doc).

    ``model``: a model spec for :func:`edgeagent.models.skillset.resolve_model` (``zoo:intent``,
    a file, an optimizer folder) or None for no model layer; ``session``: an already loaded model
    (anything with ``run``), used instead of loading ``model``; ``layers``: the layers to use
    (all three by default; fewer to measure one alone).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        model: str | None = DEFAULT_MODEL,
        threshold: float = DEFAULT_THRESHOLD,
        session: SupportsRun | None = None,
        layers: Sequence[Layer] = LAYERS,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        unknown = sorted(set(layers) - set(LAYERS))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; layers are {', '.join(LAYERS)}")
        self.layers: tuple[Layer, ...] = tuple(x for x in LAYERS if x in layers)
        self.catalog = catalog
        self.model = model
        self.threshold = threshold
        self._session = session
        self._model_error: str | None = None
        self._lock = threading.Lock()
        self._lexicon = _Lexicon(catalog)
        self._index = self._lexicon.index
        self._tags_of = {d.device: dict(d.tags) for d in catalog.devices}
        self._concept_of = {d.device: kind_concept(d.tags.get("kind")) for d in catalog.devices}

    # Public ----------------------------------------------------------------------------------

    @property
    def model_status(self) -> str:
        """``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        if self._session is not None:
            return "loaded"
        if self.model is None:
            return "disabled"
        return f"unavailable: {self._model_error}" if self._model_error else "not loaded"

    def route(self, text: str) -> Interpretation | Unsure:
        """The first confident, runnable reading of ``text``, else :class:`Unsure`."""
        text = text.strip()
        if not text:
            return Unsure([], "empty text")
        request = self._read(text)
        candidates: list[_Candidate] = []
        reasons: list[str] = []
        run = {"exact": self._exact, "grammar": self._grammar, "model": self._model_layer}
        layers = [run[x] for x in self.layers]
        negation = _NEGATION.search(request.norm)
        if negation:
            layers = layers[:1] if self.layers[:1] == ("exact",) else []
            reasons.append(f'"{negation.group(0)}": a negated command is never acted on')
        for layer in layers:
            found, why = layer(request)
            candidates.extend(found)
            if why:
                reasons.append(why)
            best = next((c for c in found if c.runnable), None)
            earlier = {
                c.interpretation.skill
                for c in candidates[: len(candidates) - len(found)]
                if c.problem != NO_VERB
            }
            if best is not None and earlier and best.interpretation.skill not in earlier:
                reasons.append(
                    f"{best.interpretation.layer}: reads {best.interpretation.skill}, but the "
                    f"layer before read {' or '.join(sorted(earlier))}: not guessing between them"
                )
                continue
            if best is not None and best.interpretation.confidence >= self.threshold:
                return best.interpretation
            if found and layer == self._exact:
                break  # a call in the exact form that cannot run: no other layer second-guesses it
            if best is not None:
                reasons.append(
                    f"{best.interpretation.layer}: best reading {best.interpretation.skill} "
                    f"has confidence {_fmt(best.interpretation.confidence)} < threshold "
                    f"{_fmt(self.threshold)}"
                )
        question = self._question_back(request, candidates, bool(negation))
        # A candidate names a skill some selected device has, never one no device could run.
        possible = [
            c
            for c in candidates
            if self.catalog.devices_with(c.interpretation.skill, c.interpretation.where)
        ]
        return Unsure(_best(possible), "; ".join(reasons) or "no reading", question)

    # The request -----------------------------------------------------------------------------

    def _read(self, text: str) -> _Request:
        norm = _normalize(text)
        slots = self._lexicon.slots(norm)
        named = self._index.named(slots.concepts)
        named_skills = frozenset(
            s.spec.name
            for s in self._index.skills
            if any(not c.startswith("#") for c in s.about & slots.concepts)
        )
        evidence = {*slots.kinds, *slots.cues}
        evidence.update(c for d in named if (c := self._concept_of.get(d)))
        if slots.device and (c := self._concept_of.get(slots.device)):
            evidence.add(c)
        mood = analyse(text, _normalize)
        return _Request(text, norm, slots, mood, frozenset(evidence), named_skills)

    def _question_back(
        self, request: _Request, candidates: Sequence[_Candidate], negated: bool
    ) -> str | None:
        if negated:
            return None
        slots = request.slots
        if slots.places:
            return slots.places[0].question(self.catalog.rooms)
        ranked = sorted(
            candidates,
            key=lambda c: (c.question is not None, c.interpretation.confidence),
            reverse=True,
        )
        if ranked and ranked[0].question:
            return ranked[0].question
        if request.mood.kind == "conditional":
            return _CONDITIONAL_QUESTION.format(clue=request.mood.clue)
        if not request.mood.reads:
            return (
                f"That sounds like {request.mood.describe()}: I only carry out direct requests. "
                "What do you want me to do?"
            )
        if slots.foreign_rooms and not slots.rooms:
            rooms = ", ".join(sorted(self.catalog.rooms)) or "none"
            said = slots.said.get(f"room {slots.foreign_rooms[0]}", slots.foreign_rooms[0])
            return f'No device is in "{said}". Which room? Rooms: {rooms}.'
        return None

    # Layer 1: exact ------------------------------------------------------------------------------

    def _exact(self, request: _Request) -> tuple[list[_Candidate], str | None]:
        text = request.text
        try:
            tokens = shlex.split(text)
        except ValueError:
            return [], None
        if not tokens or tokens[0] not in self.catalog.skill_names:
            return [], None
        name, args = tokens[0], tokens[1:]
        if not all("=" in a and not a.startswith("=") for a in args):
            return [], None  # words after the name: a sentence, not a call
        input_keys = {
            k for d in self.catalog.devices if (s := d.skill(name)) for k in _properties(s)
        }
        tag_keys = set(self.catalog.tags)
        value: dict[str, Any] = {}
        where: dict[str, str] = {}
        mode: Mode = "one"
        named: str | None = None
        problems: list[str] = []
        for arg in args:
            key, _, raw = arg.partition("=")
            if key in input_keys:
                value[key] = _json_or_str(raw)
            elif key in tag_keys:
                where[key] = raw
            elif key == "device" and raw not in self._tags_of:
                problems.append(f"no device {raw!r}")
            elif key == "device":
                named = raw
                where.update(self._tags_of[raw])
            elif key == "mode" and raw in ("one", "all"):
                mode = "all" if raw == "all" else "one"
            else:
                problems.append(f"{key!r} is neither an input of {name} nor a device tag")
        devices = self.catalog.devices_with(name, where)
        spec = self.catalog.spec(name, where)
        if spec is None:
            problems.append(f"no device with {_where_text(where)} has {name}")
        elif named is not None and devices != (named,) and mode == "one":
            problems.append(_not_singled_out(named, devices))
        else:
            problem = _check_input(spec, value)
            if problem:
                problems.append(problem)
        explanation = (
            f"exact: skill name {name!r}"
            + (f", input {json.dumps(value, sort_keys=True)}" if value else "")
            + f", where {_where_text(where)}: {len(devices)} device(s)"
        )
        if problems:
            explanation += "; cannot run: " + "; ".join(problems)
        interp = Interpretation(
            name,
            value,
            where,
            mode,
            1.0 if not problems else NOT_RUNNABLE_CAP,
            "exact",
            explanation,
        )
        why = f"exact: {'; '.join(problems)}" if problems else None
        return [_Candidate(interp, "; ".join(problems) or None)], why

    # Layer 2: grammar ----------------------------------------------------------------------------

    def _grammar(self, request: _Request) -> tuple[list[_Candidate], str | None]:
        norm, slots = request.norm, request.slots
        stripped = _POLITE.sub("", norm.strip())
        said = dict(slots.said)
        # The action: a question, a number to set, a verb, or a skill's own name.
        action: str | None = None
        strength = 0
        ambiguous = False
        implied = False
        cue: str | None = None
        asked = _QUESTION.match(stripped)
        # A question with an actuating verb ("how about turning the heating up?") asks for an
        # action: it is read as one (and not carried out), never answered with a read.
        indirect = _active_command(norm) if asked and _SUGGESTION.match(stripped) else None
        if asked and indirect is None:
            action, strength = "query_state", 5
            said["question"] = stripped.split()[0]
        elif slots.number is not None and re.search(
            rf"(?:\b(?:to|at)\s+-?\d|%|\bpercent\b|\bdegrees?\b|°|{_SET_VERBS})", norm
        ):
            action, strength = "set_level", 4
            said["number"] = slots.number.text
        else:
            for rule in _RULES:
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
        direct: str | None = None
        for name, pattern in self._lexicon.skill_phrases.items():  # longest name first
            m = pattern.search(norm)
            if m and (action is None or strength <= 3):
                direct = name
                said["skill name"] = m.group(0)
                break
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
        confidence = 0.95
        if implied:
            confidence = 0.8
        elif strength <= 1:
            confidence = 0.85
        if ambiguous:
            confidence = 0.5
        if direct is not None and (action is None or direct not in skill_choices(action, None)):
            targets, why = self._targets_for_skill(direct, slots)
            action_text = f"skill {direct}"
        else:
            assert action is not None
            targets, why, from_cue = self._targets(action, slots, cues)
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
        found = self._candidates(targets, request, confidence, "grammar", explanation, in_command)
        if any(c.runnable for c in found):
            return found, None
        return found, _why(found)

    def _manifest(
        self,
        request: _Request,
        action: str | None,
        explanation: str,
        in_command: bool,
        confidence: float = 0.9,
        table: frozenset[str] = frozenset(),
    ) -> list[_Candidate]:
        """Readings from the devices' manifests (skill names, descriptions, tags): reads for a
        question the tables did not answer by name, actuations whose verb the text says."""
        slots = request.slots
        base, selected = self._selection(slots)
        if selected and not self.catalog.matching(base) and "kind" in base and not slots.device:
            base.pop("kind")  # "temperature" named a thermostat; the garden has a probe
            selected = bool(base)
        devices = [d.device for d in self.catalog.matching(base)] if selected else None
        if devices is None:
            devices = list(self._tags_of)
        words = slots.concepts - {w for r in slots.rooms for w in r.split()}
        matches: list[Match] = []
        if action in (None, "query_state"):
            matches = self._index.reads(words, devices)
            if action is None and request.mood.kind != "question":
                matches = []  # no verb and no question: not asking for a read
            if table and not {m.words.spec.name for m in matches} - table:
                return []  # the tables found the same skills: nothing to add
            if action is None and not selected:
                matches = [m for m in matches if m.strong]
        if action != "query_state" and not matches:
            verb = _verb(request.norm)
            if verb:
                matches = self._index.actions(verb, words, devices, selected)
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
                where = self._narrow(on[0], name)
            in_where = tuple(d for d in self.catalog.devices_with(name, where) if d in on)
            if in_where:
                targets.append(_Target(name, where, in_where, ms[0].words.spec))
        if not targets:
            return []
        note = "manifest: " + "; ".join(
            f"{name} ({'name' if ms[0].strong else 'description'} says "
            f"{', '.join(ms[0].matched) or 'its verb'})"
            for name, ms in by_skill.items()
        )
        conf = min(confidence, 0.9 if all(ms[0].strong for ms in by_skill.values()) else 0.7)
        return self._candidates(
            targets, request, conf, "grammar", f"{explanation}; {note}", in_command
        )

    def _selection(self, slots: _Slots) -> tuple[dict[str, str], bool]:
        """The ``where`` the text's rooms, kinds or device id make, and whether it made one."""
        if slots.device:
            return dict(self._tags_of[slots.device]), True
        base: dict[str, str] = {}
        if len(slots.rooms) == 1:
            base["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self._kind_tags(c)]
        if len(tags) == 1:
            base["kind"] = tags[0]
        return base, bool(base)

    def _narrow(self, device: str, skill: str) -> dict[str, str]:
        """The fewest of ``device``'s tags that single it out among the devices with ``skill``."""
        tags = self._tags_of[device]
        for keys in (("kind",), ("room",), ("kind", "room")):
            where = {k: tags[k] for k in keys if k in tags}
            if where and self.catalog.devices_with(skill, where) == (device,):
                return where
        return {}

    def _no_verb(self, slots: _Slots) -> list[_Candidate]:
        """No verb but a named device, room or kind: its skills as weak candidates."""
        where: dict[str, str] = {}
        if len(slots.rooms) == 1:
            where["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self._kind_tags(c)]
        if len(tags) == 1:
            where["kind"] = tags[0]
        if slots.device:
            where = dict(self._tags_of[slots.device])
        if not where:
            return []
        out = []
        for name in self.catalog.skill_names:
            spec = self.catalog.spec(name, where)
            if spec is None:
                continue
            value, _, _ = _build_input(spec, slots.number)
            text = f"grammar: no verb; {_where_text(where)} has skill {name} ({spec.description})"
            interp = Interpretation(name, value, where, slots.mode, 0.3, "grammar", text)
            out.append(_Candidate(interp, NO_VERB))
        return out

    # Layer 3: the model --------------------------------------------------------------------------

    def _load(self) -> SupportsRun | None:
        with self._lock:
            if self._session is not None or self._model_error is not None or self.model is None:
                return self._session
            try:
                from ..models import load_model
                from ..models.skillset import resolve_model

                self._session = load_model(resolve_model(self.model).path)
            except EdgeAgentError as exc:  # ModelError, RuntimeMissing, ConfigError
                self._model_error = str(exc)
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                self._model_error = f"{type(exc).__name__}: {exc}"
            return self._session

    def _model_layer(self, request: _Request) -> tuple[list[_Candidate], str | None]:
        if self.model is None and self._session is None:
            return [], "model: layer disabled (model=None)"
        session = self._load()
        if session is None:
            return [], f"model: layer unavailable ({self._model_error})"
        try:
            from ..models.zoo import intent as zoo
        except ImportError as exc:  # RuntimeMissing is an ImportError too
            return [], f"model: layer unavailable ({exc})"
        outputs: dict[str, Any] = {}

        def run(feeds: dict[str, Any]) -> Mapping[str, Any]:
            out = session.run(feeds)
            outputs.update(out)
            return out

        command = zoo.interpret(request.text, run)
        probs = {
            head: _softmax([float(x) for x in outputs[head][0]]) for head in ("intent", "kind")
        }
        room_probs = _softmax([float(x) for x in outputs["room"][0]])
        slots = request.slots
        pairs = sorted(
            (
                (pi * pk, intent_name, pi, kind_name, pk)
                for intent_name, pi in _top(zoo.INTENTS, probs["intent"])
                for kind_name, pk in _top(zoo.KINDS, probs["kind"])
            ),
            reverse=True,
        )
        # The room: named in the text (the model knows six rooms; the catalog may have others),
        # else the model's room head: a guess, used for reads only (an actuation needs the room
        # from the text, or a kind with one device).
        guess_p = 1.0
        guessed = slots
        room_text = ", room from the text"
        if not slots.rooms and not slots.foreign_rooms:
            guess_p = max(room_probs)
            room = zoo.ROOMS[room_probs.index(guess_p)]
            room_text = f", room {room} ({_fmt(guess_p)}, for reads)"
            if room != "none":
                if room in self.catalog.rooms:
                    guessed = _with_rooms(slots, (room,), ())
                else:
                    guessed = _with_rooms(slots, (), (room,))
        candidates: list[_Candidate] = []
        reasons: list[str] = []
        top_name = f"{command.intent}/{command.kind}"  # the argmax pair, pairs[0]
        for p, intent_name, pi, kind_name, pk in pairs:
            if intent_name == "unknown":
                if pi >= 0.5:
                    reasons.append(f"intent unknown ({_fmt(pi)}): not a device command")
                continue
            reads = intent_name == "query_state"
            room_p = guess_p if reads else 1.0
            base = guessed if reads else slots
            if p * room_p < 0.02:
                continue  # a reading too unlikely to offer
            kinds = () if kind_name == "none" else (kind_name,)
            if not (kinds or base.rooms or base.foreign_rooms or base.device) and (
                base.mode == "one"
            ):
                reasons.append(f"{intent_name}/none: names no device, room or kind")
                continue
            conflict = bool(slots.kinds) and kind_name not in slots.kinds
            confidence = p * room_p * (0.5 if conflict else 1.0)
            model_slots = _with_kinds(base, kinds)
            targets, why, _ = self._targets(intent_name, model_slots, [])
            explanation = (
                f"model: intent {intent_name} ({_fmt(pi)}), kind {kind_name} ({_fmt(pk)})"
                f"{room_text}"
                + (" (the text names another kind)" if conflict else "")
                + f" → confidence {_fmt(confidence)}"
            )
            if not targets:
                reasons.append(f"{intent_name}/{kind_name}: {why}")
                continue
            candidates.extend(
                self._candidates(
                    targets, request, confidence, "model", explanation, request.mood.acts
                )
            )
        candidates.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        if any(c.runnable for c in candidates):
            return candidates, None
        reasons = list(dict.fromkeys(reasons))[:2]
        if candidates and candidates[0].problem:
            reasons.insert(0, f"{candidates[0].interpretation.skill}: {candidates[0].problem}")
        return candidates, "model: " + ("; ".join(reasons) or f"{top_name}: nothing runs")

    # Shared: targets and candidates ----------------------------------------------------------

    def _kind_tags(self, concept: str) -> list[str]:
        kinds = self.catalog.kinds
        tags = [t for t in KIND_TAGS.get(concept, (concept,)) if t in kinds]
        return tags or ([concept] if concept in kinds else [])

    def _targets(
        self, action: str, slots: _Slots, cues: Sequence[str]
    ) -> tuple[list[_Target], str, bool]:
        """Skills performing ``action`` on the devices the slots select. Returns the targets,
        why there are none, and whether a kind cue (not a named kind) selected them."""
        if slots.foreign_rooms and not slots.rooms:
            rooms = ", ".join(slots.foreign_rooms)
            return [], f"no device is in the {rooms} (rooms: {_list(self.catalog.rooms)})", False
        base: dict[str, str] = {}
        if slots.device:  # a device named by its id: its tags, whatever else the text says
            base = dict(self._tags_of[slots.device])
            found = self._targets_over(action, base, [None], [(None, None)])
            return found, self._none_why(action, base, [None], [(None, None)]), False
        room_options: list[str | None] = list(slots.rooms) or [None]
        kind_options: list[tuple[str | None, str | None]]
        if slots.kinds:
            kind_options = [(c, t) for c in slots.kinds for t in self._kind_tags(c)]
            if not kind_options:
                # "any rings at the front door": no door, but the doorbell the words point at.
                for concept in (c for c in cues if c not in slots.kinds):
                    options = [(concept, t) for t in self._kind_tags(concept)]
                    found = self._targets_over(action, base, room_options, options)
                    if found:
                        return found, "", True
                named = ", ".join(slots.kinds)
                return [], f"no {named} device (kinds: {_list(self.catalog.kinds)})", False
            found = self._targets_over(action, base, room_options, kind_options)
            if found:
                return found, "", False
            return [], self._none_why(action, base, room_options, kind_options), False
        for concept in cues:
            kind_options = [(concept, t) for t in self._kind_tags(concept)]
            found = self._targets_over(action, base, room_options, kind_options)
            if found:
                return found, "", True
        kind_options = [(None, None)]
        if action == "query_state" and not base and not slots.rooms and slots.mode == "one":
            return [], "the question names no device, room or kind", False
        found = self._targets_over(action, base, room_options, kind_options)
        if found:
            return found, "", False
        return [], self._none_why(action, base, room_options, kind_options), False

    def _targets_over(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> list[_Target]:
        out: list[_Target] = []
        for room in rooms:
            for concept, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                by_skill: dict[str, list[str]] = {}
                specs: dict[str, SkillSpec] = {}
                for device in self.catalog.matching(where):
                    own = concept or kind_concept(device.tags.get("kind"))
                    for name in skill_choices(action, own):
                        spec = device.skill(name)
                        if spec is not None:
                            by_skill.setdefault(name, []).append(device.device)
                            specs.setdefault(name, spec)
                            break
                out.extend(
                    _Target(name, where, tuple(devices), specs[name])
                    for name, devices in by_skill.items()
                )
        return out

    def _none_why(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> str:
        wheres = []
        for room in rooms:
            for _, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                wheres.append(where)
        concepts = {c for c, _ in kinds}
        names = sorted({n for c in concepts for n in skill_choices(action, c)})
        selected = {d.device for w in wheres for d in self.catalog.matching(w)}
        if not selected:
            return f"no device with {' or '.join(_where_text(w) for w in wheres)}"
        return (
            f"no device with {' or '.join(_where_text(w) for w in wheres)} has "
            f"{' or '.join(names) or 'a skill for it'}"
        )

    def _targets_for_skill(self, name: str, slots: _Slots) -> tuple[list[_Target], str]:
        """The text says a skill's own name ("read temperature", "recent rings")."""
        base: dict[str, str] = {}
        if len(slots.rooms) == 1:
            base["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self._kind_tags(c)]
        options = [{**base, "kind": t} for t in tags] or [base]
        if slots.device:
            base = dict(self._tags_of[slots.device])
            options = [base]
        out = [
            _Target(name, w, self.catalog.devices_with(name, w), spec)
            for w in options
            if (spec := self.catalog.spec(name, w)) is not None
        ]
        return out, f"no device with {_where_text(base)} has {name}"

    def _candidates(
        self,
        targets: Sequence[_Target],
        request: _Request,
        confidence: float,
        layer: Layer,
        explanation: str,
        in_command: bool,
    ) -> list[_Candidate]:
        """Each target as a reading, with every reason it cannot be carried out as is."""
        slots = request.slots
        out: list[_Candidate] = []
        ambiguous = len({t.skill for t in targets}) > 1 or len({str(t.where) for t in targets}) > 1
        for t in targets:
            conf = confidence
            mode = slots.mode
            notes = [f"{t.skill} on {_where_text(t.where)}: {', '.join(t.devices)}"]
            if ambiguous:
                conf = min(conf, 0.5)
                notes.append(f"ambiguous ({len(targets)} readings)")
            duration = find_duration(request.norm)
            value, problem, converted = _build_input(t.spec, slots.number, duration)
            if converted:
                notes.append(converted)
            question: str | None = None
            if (
                problem
                and slots.number is not None
                and (slots.number.unknown_unit or "unit" in problem or ", not " in problem)
            ):
                question = f"{problem}: what is {slots.number.text} in the unit it takes?"
            elif problem:
                question = f"{t.skill} cannot run: {problem}. What value do you want?"
            if slots.device and t.devices != (slots.device,) and mode == "one":
                problem = _not_singled_out(slots.device, t.devices)
            for check in (self._place_check, self._mood_check, self._certainty_check):
                found = check(t, request, value, in_command)
                if found is not None and problem is None:
                    problem, question = found
            if problem is None and mode == "one" and len(t.devices) > 1 and not slots.device:
                if slots.count == len(t.devices):
                    mode = "all"
                    notes.append(f"the {slots.count} of them: all")
                elif slots.indefinite:
                    notes.append("any one of them will do")
                elif slots.rooms and slots.plural:
                    mode = "all"
                    notes.append(f"the {' and '.join(slots.rooms)} ones: all of them")
                else:
                    problem = (
                        f"{len(t.devices)} devices match ({', '.join(t.devices)}): which device?"
                    )
                    question = self._which(t)
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
            out.append(_Candidate(interp, problem, question))
        out.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        return out

    # Checks: each returns (problem, question back) or None ------------------------------------

    def _place_check(
        self, t: _Target, request: _Request, value: Mapping[str, Any], in_command: bool
    ) -> tuple[str, str] | None:
        places = request.slots.places
        if not places:
            return None
        words = ", ".join(f'"{p.words}"' for p in places)
        return f"unrecognised room word {words}", places[0].question(self.catalog.rooms)

    def _mood_check(
        self, t: _Target, request: _Request, value: Mapping[str, Any], in_command: bool
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
        self, t: _Target, request: _Request, value: Mapping[str, Any], in_command: bool
    ) -> tuple[str, str] | None:
        """An actuation needs the device's kind selected by the text and every number explained."""
        if t.spec.side_effect == "read":
            return None
        slots = request.slots
        kinds = {self._concept_of.get(d) for d in t.devices}
        selected = bool(kinds & request.evidence) or t.skill in request.named_skills
        if not selected and not slots.device:
            valueless = not _properties(t.spec) or not value
            by_room = bool(slots.rooms) and len(t.devices) == 1 and valueless
            everything = slots.mode == "all" and valueless and not slots.number
            if not (by_room or everything):
                named = " or ".join(sorted(k or "device" for k in kinds))
                problem = f"the text names no {named}: not guessing that {t.skill} is meant"
                if len(t.devices) > 1:
                    return f"{problem}: which device?", self._which(t)
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

    def _which(self, t: _Target) -> str:
        def label(device: str) -> str:
            tags = self._tags_of.get(device, {})
            room = tags.get("room")
            return f"{device} (room {room})" if room else device

        names = [label(d) for d in t.devices[:6]]
        more = f" and {len(t.devices) - 6} more" if len(t.devices) > 6 else ""
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return f"Which one: {listed}{more}? Name the room, or say all."


# --- small helpers ------------------------------------------------------------------------------


_SUGGESTION = re.compile(
    r"^(?:how about|what about|why not|why don'?t (?:you|we)|is it possible|is there (?:any )?way|"
    r"any chance|how do i|what if)\b"
)
_CONDITIONAL_QUESTION = (
    'That is a condition ("{clue}"): I only carry out direct requests, now. For an automation, '
    "add a rule (rules.yaml)."
)


def _mood_question(mood: Mood, t: _Target, value: Mapping[str, Any]) -> str:
    if mood.kind == "conditional":
        return _CONDITIONAL_QUESTION.format(clue=mood.clue)
    action = f"{t.skill} {json.dumps(dict(value))} on {_where_text(t.where)}"
    if t.spec.side_effect == "read":
        return f"Do you want me to read {t.skill} on {_where_text(t.where)}? Ask it as a question."
    return f"Do you want me to run {action} now? Then say it as a request."


def _why(found: Sequence[_Candidate]) -> str:
    return f"grammar: {found[0].interpretation.skill}: {found[0].problem}"


def skills_of(targets: Iterable[_Target]) -> frozenset[str]:
    return frozenset(t.skill for t in targets)


def _verb(norm: str) -> str | None:
    """The first word of the request's first command clause ("start" in "please start …")."""
    for clause in re.split(r"[,;]", norm):
        words = strip_polite(clause).split()
        if words:
            return words[0]
    return None


def _not_singled_out(device: str, selected: Sequence[str]) -> str:
    if device not in selected:
        return f"{device} does not have it"
    others = ", ".join(d for d in selected if d != device)
    return f"{device}'s tags also select {others}: the where cannot name {device} alone"


def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _softmax(z: Sequence[float]) -> list[float]:
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def _top(labels: Sequence[str], probs: Sequence[float], k: int = 2) -> list[tuple[str, float]]:
    ranked = sorted(zip(labels, probs, strict=True), key=lambda lp: lp[1], reverse=True)
    return [(label, p) for i, (label, p) in enumerate(ranked[:k]) if i == 0 or p >= 0.05]


def _list(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def _with_rooms(slots: _Slots, rooms: tuple[str, ...], foreign: tuple[str, ...]) -> _Slots:
    return _replace(slots, rooms=rooms, foreign_rooms=foreign)


def _with_kinds(slots: _Slots, kinds: tuple[str, ...]) -> _Slots:
    return _replace(slots, kinds=kinds, cues=())


def _replace(slots: _Slots, **changes: Any) -> _Slots:
    return replace(slots, **changes)


def _best(candidates: Iterable[_Candidate]) -> list[Interpretation]:
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
