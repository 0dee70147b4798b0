"""The layered router: exact, grammar, the zoo's intent model, then an optional LLM (see the
package doc).

The router reads the text once (:func:`.slots.read_request`), asks each layer in turn
(:mod:`.layer_exact`, :mod:`.layer_grammar`, :mod:`.layer_model`) for candidates, and returns
the first confident, runnable reading, else :class:`Unsure` with the best candidates, the
reasons and a question back. With an LLM (``Router(llm=...)``, :mod:`.layer_llm`), it is asked
when those layers are unsure, or when the text asks for several things at once; its multi-step
reading is a :class:`Plan`, returned by :meth:`Router.route_plan` only. Targets
(:mod:`.targets`) and the rules a reading must pass (:mod:`.readings`) are shared by the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._constants import (
    DEFAULT_MODEL,
    DEFAULT_THRESHOLD,
    MAX_CANDIDATES,
    NO_VERB,
    ROUTER_LAYERS,
    Layer,
)
from .catalog import Catalog, Interpretation, Plan, SupportsRun, Unsure
from .grammar import NEGATION
from .layer_exact import exact
from .layer_grammar import GrammarLayer
from .layer_llm import Completer, LlmLayer, Refusal, SupportsGenerate
from .layer_model import ModelLayer
from .llm_grounding import asks_several
from .readings import (
    CONDITIONAL_QUESTION,
    Candidate,
    Readings,
    best_interpretations,
    fmt_confidence,
)
from .slots import Lexicon, Request, read_request
from .targets import Targets, skills_of

__all__ = ["Router", "skills_of"]

_LayerRun = Callable[[Request], tuple[list[Candidate], str | None]]


class Router:
    """Maps text to a skill, its input and a ``where`` over ``catalog`` (see the module doc).

    ``model``: a model spec for :func:`edgeagent.models.skillset.resolve_model` (``zoo:intent``,
    a file, an optimizer folder) or None for no model layer; ``session``: an already loaded model
    (anything with ``run``), used instead of loading ``model``; ``layers``: the layers to use
    (all by default; fewer to measure one alone). ``llm``: the 4th layer's language model, off
    when None: a spec for ``load_llm`` (``zoo:tinyllm``, ``zoo:smollm2``, a folder; loaded on
    first use), a loaded session (anything with ``generate``) or a :class:`.layer_llm.Completer`.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        model: str | None = DEFAULT_MODEL,
        threshold: float = DEFAULT_THRESHOLD,
        session: SupportsRun | None = None,
        layers: Sequence[Layer] = ROUTER_LAYERS,
        llm: str | SupportsGenerate | Completer | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        unknown = sorted(set(layers) - set(ROUTER_LAYERS))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; layers are {', '.join(ROUTER_LAYERS)}")
        self.layers: tuple[Layer, ...] = tuple(x for x in ROUTER_LAYERS if x in layers)
        self.catalog = catalog
        self.model = model
        self.threshold = threshold
        self._lexicon = Lexicon(catalog)
        self._targets = Targets(catalog)
        readings = Readings(self._targets)
        self._model = ModelLayer(model, session, self._targets, readings)
        self._llm = LlmLayer(llm if "llm" in self.layers else None, catalog)
        self._runs: dict[Layer, _LayerRun] = {
            "exact": lambda request: exact(request, self._targets),
            "grammar": GrammarLayer(self._lexicon, self._targets, readings).read,
            "model": self._model.read,
        }

    # Public ----------------------------------------------------------------------------------

    @property
    def model_status(self) -> str:
        """``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        return self._model.status

    @property
    def llm_status(self) -> str:
        """The LLM layer's: ``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        return self._llm.status

    def route(self, text: str) -> Interpretation | Unsure:
        """The first confident, runnable reading of ``text``, else :class:`Unsure`.

        A plan of several steps (the LLM layer's) is not run by callers of this method: it comes
        back as :class:`Unsure` with the plan attached; :meth:`route_plan` returns it."""
        reading = self.route_plan(text)
        if isinstance(reading, Plan):
            return Unsure(
                list(reading.steps[:MAX_CANDIDATES]),
                f"llm: a plan of {len(reading.steps)} steps (Router.route_plan carries it)",
                plan=reading,
            )
        return reading

    def route_plan(self, text: str) -> Interpretation | Plan | Unsure:
        """Like :meth:`route`, but a confident multi-step reading is returned as a :class:`Plan`."""
        text = text.strip()
        if not text:
            return Unsure([], "empty text")
        request = read_request(text, self._lexicon, self._targets.concept_of)
        candidates: list[Candidate] = []
        reasons: list[str] = []
        layers = [(x, self._runs[x]) for x in self.layers if x != "llm"]
        negation = NEGATION.search(request.norm)
        if negation:
            layers = layers[:1] if self.layers[:1] == ("exact",) else []
            reasons.append(f'"{negation.group(0)}": a negated command is never acted on')
        use_llm = self._llm.enabled and not negation
        several = use_llm and asks_several(request)
        for name, layer in layers:
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
                if not several:
                    return best.interpretation
                reasons.append(f"{name}: reads {best.interpretation.skill}, one of several asks")
                break
            if found and name == "exact":
                use_llm = False
                break  # a call in the exact form that cannot run: no other layer second-guesses it
            if best is not None:
                reasons.append(
                    f"{best.interpretation.layer}: best reading {best.interpretation.skill} "
                    f"has confidence {fmt_confidence(best.interpretation.confidence)} < threshold "
                    f"{fmt_confidence(self.threshold)}"
                )
        plan: Plan | None = None
        if use_llm:
            read = [c for c in candidates if c.problem != NO_VERB]
            reading = self._llm.read(request, read)
            if isinstance(reading, Refusal):
                reasons.append(reading.reason)
                plan = reading.plan
            elif reading.confidence >= self.threshold:
                return reading
            else:
                reasons.append(
                    f"llm: confidence {fmt_confidence(reading.confidence)} < threshold "
                    f"{fmt_confidence(self.threshold)}"
                )
                plan = reading if isinstance(reading, Plan) else _one_step(reading)
        question = self._question_back(request, candidates, bool(negation))
        # A candidate names a skill some selected device has, never one no device could run.
        possible = [
            c
            for c in candidates
            if self.catalog.devices_with(c.interpretation.skill, c.interpretation.where)
        ]
        return Unsure(
            best_interpretations(possible), "; ".join(reasons) or "no reading", question, plan
        )

    def _question_back(
        self, request: Request, candidates: Sequence[Candidate], negated: bool
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
            return CONDITIONAL_QUESTION.format(clue=request.mood.clue)
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


def _one_step(reading: Interpretation) -> Plan:
    return Plan((reading,), reading.confidence, reading.layer, reading.explanation)
