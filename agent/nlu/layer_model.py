"""Layer 3, the model: the zoo's tiny intent model (``edgeagent.models.zoo.intent``).

Its (intent, kind) pair maps to a skill with the same tables as the grammar; the confidence is
the product of the probabilities of the heads used. numpy and the runtime are imported, and the
model loaded, on first use only (under a lock: routers are shared between threads); when they
are missing the layer says so and the router still works with the other two.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import EdgeAgentError
from .catalog import SupportsRun
from .readings import Candidate, Readings, fmt_confidence
from .slots import Request, Slots
from .targets import Targets


class ModelLayer:
    """The model layer: ``model`` is a spec for :func:`edgeagent.models.skillset.resolve_model`
    (or None: disabled); ``session`` an already loaded model, used instead."""

    def __init__(
        self,
        model: str | None,
        session: SupportsRun | None,
        targets: Targets,
        readings: Readings,
    ) -> None:
        self.model = model
        self.session = session
        self.error: str | None = None
        self.targets = targets
        self.readings = readings
        self.catalog = targets.catalog
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        """``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        if self.session is not None:
            return "loaded"
        if self.model is None:
            return "disabled"
        return f"unavailable: {self.error}" if self.error else "not loaded"

    def load(self) -> SupportsRun | None:
        with self._lock:
            if self.session is not None or self.error is not None or self.model is None:
                return self.session
            try:
                from ..models import load_model
                from ..models.skillset import resolve_model

                self.session = load_model(resolve_model(self.model).path)
            except EdgeAgentError as exc:  # ModelError, RuntimeMissing, ConfigError
                self.error = str(exc)
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            return self.session

    def read(self, request: Request) -> tuple[list[Candidate], str | None]:
        if self.model is None and self.session is None:
            return [], "model: layer disabled (model=None)"
        session = self.load()
        if session is None:
            return [], f"model: layer unavailable ({self.error})"
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
        guess_p, guessed, room_text = self._room_guess(slots, zoo.ROOMS, room_probs)
        candidates: list[Candidate] = []
        reasons: list[str] = []
        top_name = f"{command.intent}/{command.kind}"  # the argmax pair, pairs[0]
        for p, intent_name, pi, kind_name, pk in pairs:
            if intent_name == "unknown":
                if pi >= 0.5:
                    reasons.append(f"intent unknown ({fmt_confidence(pi)}): not a device command")
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
            targets, why, _ = self.targets.targets(intent_name, model_slots, [])
            explanation = (
                f"model: intent {intent_name} ({fmt_confidence(pi)}), "
                f"kind {kind_name} ({fmt_confidence(pk)})"
                f"{room_text}"
                + (" (the text names another kind)" if conflict else "")
                + f" → confidence {fmt_confidence(confidence)}"
            )
            if not targets:
                reasons.append(f"{intent_name}/{kind_name}: {why}")
                continue
            candidates.extend(
                self.readings.candidates(
                    targets, request, confidence, "model", explanation, request.mood.acts
                )
            )
        candidates.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        if any(c.runnable for c in candidates):
            return candidates, None
        return candidates, _why(candidates, reasons, top_name)

    def _room_guess(
        self, slots: Slots, rooms: Sequence[str], room_probs: Sequence[float]
    ) -> tuple[float, Slots, str]:
        """(its probability, the slots for reads, a note): the room the text names, else the
        model's room head's best guess (a room the catalog lacks is a foreign room)."""
        if slots.rooms or slots.foreign_rooms:
            return 1.0, slots, ", room from the text"
        guess_p = max(room_probs)
        room = rooms[room_probs.index(guess_p)]
        room_text = f", room {room} ({fmt_confidence(guess_p)}, for reads)"
        if room == "none":
            return guess_p, slots, room_text
        if room in self.catalog.rooms:
            return guess_p, _with_rooms(slots, (room,), ()), room_text
        return guess_p, _with_rooms(slots, (), (room,)), room_text


def _why(candidates: Sequence[Candidate], reasons: list[str], top_name: str) -> str:
    """Why nothing runs: the best candidate's problem, then at most two distinct reasons."""
    reasons = list(dict.fromkeys(reasons))[:2]
    if candidates and candidates[0].problem:
        reasons.insert(0, f"{candidates[0].interpretation.skill}: {candidates[0].problem}")
    return "model: " + ("; ".join(reasons) or f"{top_name}: nothing runs")


def _softmax(z: Sequence[float]) -> list[float]:
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def _top(labels: Sequence[str], probs: Sequence[float], k: int = 2) -> list[tuple[str, float]]:
    ranked = sorted(zip(labels, probs, strict=True), key=lambda lp: lp[1], reverse=True)
    return [(label, p) for i, (label, p) in enumerate(ranked[:k]) if i == 0 or p >= 0.05]


def _with_rooms(slots: Slots, rooms: tuple[str, ...], foreign: tuple[str, ...]) -> Slots:
    return _replace(slots, rooms=rooms, foreign_rooms=foreign)


def _with_kinds(slots: Slots, kinds: tuple[str, ...]) -> Slots:
    return _replace(slots, kinds=kinds, cues=())


def _replace(slots: Slots, **changes: Any) -> Slots:
    return replace(slots, **changes)
