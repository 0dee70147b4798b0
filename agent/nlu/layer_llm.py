"""Layer 4, the LLM: an on-device language model writes a plan, constrained to the fleet's tools.

Asked only when the other layers are unsure (or the text asks for several things at once). The
model sees :func:`.llm_prompt.messages` (the tools, one line each, and the request) and writes
JSON under constrained decoding with :func:`.llm_schema.plan_schema` (known skills, tag values,
inputs of the right shape). Then nothing is trusted yet:

1. **Valid**: :func:`.llm_prompt.parse_plan` and :func:`.llm_check.check_step` on every step
   (skill on a device the ``where`` selects, input valid against the skill's schema). An answer
   that fails is asked again once, sampled with another seed (:data:`ATTEMPTS`), then refused
   with the reason. A plan with no steps is the model saying nothing fits: refused.
2. **Safe** (the router's rules, not retried: these are decisions, not bad output): a request
   that is not a command (a condition, a statement) is never carried out; a question runs reads
   only; a step needs the devices' kind named by the text (or "all"/"everything"); an actuation
   needs a verb of the text that means its skill ("turn off" → ``turn_off``, a set verb and a
   number → ``set_target``), takes a room only when the text names it and numbers only the text
   says (no value made up);
   a step repeating an earlier one is refused (a model looping); several matching devices need
   "all", a plural or "a/any"; and when an earlier layer read a skill, the plan must include it:
   no guessing between them.
   A plan refused here is kept on the :class:`Unsure` (``plan``) to show, never run.
3. **Confidence**: the runtime does not expose token log-probabilities, so the confidence is a
   stated prior, raised by agreement: :data:`AGREED` when an earlier layer read the same skill
   on the same devices, :data:`GREEDY` for the model's own greedy choice under constraint,
   :data:`RETRIED` when only the sampled second attempt passed.

The runtime is behind :class:`Completer` (messages + schema → text), so this logic is tested
with a scripted completer; :class:`SessionCompleter` adapts a loaded
:func:`edgeagent.models.llm_backend.load_llm` session, imported and loaded on first use only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import EdgeAgentError
from ._constants import Mode
from .catalog import Catalog, Interpretation, Plan, kind_concept
from .llm_check import CheckedStep, check_step
from .llm_grounding import said_numbers, verb_skills
from .llm_prompt import PlanError, Step, messages, parse_plan, tools_from_catalog
from .llm_schema import MAX_STEPS, plan_schema
from .readings import Candidate
from .slots import Request

ATTEMPTS = 2
"""Answers asked for one request: greedy, then once sampled with another seed."""
RETRY_TEMPERATURE = 0.7
MAX_TOKENS = 160
"""A 4-step plan in the canonical format is about 120 tokens of SmolLM2's tokenizer."""
AGREED = 0.9
GREEDY = 0.75
RETRIED = 0.65


class Completer(Protocol):
    """What the layer needs from a language model: chat messages and a JSON schema (the
    runtime's constrained decoding; None: unconstrained) → the answer text."""

    def complete(
        self,
        messages: list[dict[str, str]],
        schema: str | None,
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> str: ...


@runtime_checkable
class SupportsGenerate(Protocol):
    """A loaded LLM session (:mod:`edgeagent.models.llm_backend`)."""

    def generate(
        self,
        prompt: Any,
        /,
        *,
        max_tokens: int = ...,
        temperature: float = ...,
        seed: int | None = ...,
        json_schema: str | None = ...,
    ) -> Any: ...


class SessionCompleter:
    """A :class:`Completer` over a loaded session's ``generate``."""

    def __init__(self, session: SupportsGenerate) -> None:
        self.session = session

    def complete(
        self,
        messages: list[dict[str, str]],
        schema: str | None,
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> str:
        g = self.session.generate(
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            json_schema=schema,
        )
        return str(g.text)


@dataclass(frozen=True)
class Refusal:
    """The layer did not produce a runnable reading: why, and the plan it would not run."""

    reason: str
    plan: Plan | None = None


LlmReading = Interpretation | Plan | Refusal


class LlmLayer:
    """The LLM layer over ``catalog``: ``llm`` is a model spec for ``load_llm`` (``zoo:tinyllm``,
    ``zoo:smollm2``, a folder), a loaded session (anything with ``generate``), a
    :class:`Completer`, or None (disabled)."""

    def __init__(
        self,
        llm: str | SupportsGenerate | Completer | None,
        catalog: Catalog,
        *,
        max_steps: int = MAX_STEPS,
        threads: int | None = None,
    ) -> None:
        self.spec = llm if isinstance(llm, str) else None
        self.completer: Completer | None = None
        if isinstance(llm, SupportsGenerate):
            self.completer = SessionCompleter(llm)
        elif llm is not None and not isinstance(llm, str):
            self.completer = llm
        self.enabled = llm is not None
        self.error: str | None = None
        self.catalog = catalog
        self.threads = threads
        # Only when enabled: the tools of a 10,000-device simulated fleet cost a pass over it.
        self.tools = tools_from_catalog(catalog) if self.enabled else ()
        self.schema = plan_schema(self.tools, max_steps)
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        """``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        if self.completer is not None:
            return "loaded"
        if not self.enabled:
            return "disabled"
        return f"unavailable: {self.error}" if self.error else "not loaded"

    def load(self) -> Completer | None:
        """The completer, loading the model on first use (under a lock: routers are shared)."""
        with self._lock:
            if self.completer is not None or self.error is not None or self.spec is None:
                return self.completer
            try:
                from ..models.llm_backend import LlmSettings, load_llm

                settings = (
                    LlmSettings() if self.threads is None else LlmSettings(threads=self.threads)
                )
                self.completer = SessionCompleter(load_llm(self.spec, settings))
            except EdgeAgentError as exc:  # ModelError, RuntimeMissing, ConfigError
                self.error = str(exc)
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            return self.completer

    # Reading -----------------------------------------------------------------------------------

    def read(self, request: Request, earlier: Sequence[Candidate] = ()) -> LlmReading:
        """The model's plan for ``request``, checked (see the module doc)."""
        completer = self.load()
        if completer is None:
            return Refusal(f"llm: layer unavailable ({self.error})")
        prompt = messages(self.tools, request.text)
        problems: list[str] = []
        checked: list[CheckedStep] | None = None
        attempt = 0
        for attempt in range(ATTEMPTS):
            try:
                text = completer.complete(
                    prompt,
                    self.schema.text,
                    seed=attempt,
                    temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE,
                    max_tokens=MAX_TOKENS,
                )
            except (EdgeAgentError, RuntimeError, ValueError) as exc:
                return Refusal(f"llm: generation failed ({type(exc).__name__}: {exc})")
            found = self._valid(text)
            if isinstance(found, str):
                problems.append(f"answer {attempt + 1}: {found}")
                continue
            checked = found
            break
        if checked is None:
            return Refusal(f"llm: no valid plan in {ATTEMPTS} answers ({'; '.join(problems)})")
        if not checked:
            return Refusal("llm: the model found no tool for this (an empty plan)")
        prior = GREEDY if attempt == 0 else RETRIED
        return self._decide(request, checked, earlier, prior, problems)

    def _valid(self, text: str) -> list[CheckedStep] | str:
        """The checked steps of an answer, or what is wrong with it."""
        try:
            steps = parse_plan(text)
        except PlanError as exc:
            return f"{exc} in {text[:80]!r}"
        if len(steps) > self.schema.max_steps:
            return f"{len(steps)} steps, more than {self.schema.max_steps}"
        out: list[CheckedStep] = []
        for i, step in enumerate(steps):
            found = check_step(step, i, self.catalog, self.schema)
            if isinstance(found, str):
                return found
            out.append(found)
        return out

    def _decide(
        self,
        request: Request,
        checked: Sequence[CheckedStep],
        earlier: Sequence[Candidate],
        prior: float,
        notes: list[str],
    ) -> LlmReading:
        """The safety rules and the confidence (see the module doc)."""
        agreed = {
            (c.interpretation.skill, str(sorted(c.interpretation.where.items()))) for c in earlier
        }
        earlier_skills = {c.interpretation.skill for c in earlier}
        said = said_numbers(request, earlier)
        verbs = verb_skills(request, self.catalog.skill_names) | earlier_skills
        steps: list[Interpretation] = []
        problems: list[str] = []
        for i, c in enumerate(checked):
            mode, problem = self._step_rules(request, c, i, said, verbs)
            if c.step in (x.step for x in checked[:i]):
                problem = f"llm: step {i + 1} ({c.step.skill}) repeats an earlier step"
            key = (c.step.skill, str(sorted(c.step.where.items())))
            confidence = AGREED if key in agreed else prior
            if problem:
                problems.append(problem)
            steps.append(_interpretation(c, mode, confidence, notes))
        plan = Plan(
            tuple(steps),
            min(s.confidence for s in steps),
            "llm",
            "llm: " + "; then ".join(s.explanation for s in steps),
        )
        if earlier_skills and not earlier_skills & {s.skill for s in steps}:
            problems.append(
                f"llm: plans {', '.join(s.skill for s in steps)}, but an earlier layer read "
                f"{' or '.join(sorted(earlier_skills))}: not guessing between them"
            )
        if problems:
            return Refusal("; ".join(problems), plan)
        return steps[0] if len(steps) == 1 else plan

    def _step_rules(
        self,
        request: Request,
        c: CheckedStep,
        i: int,
        said: frozenset[float],
        verbs: frozenset[str],
    ) -> tuple[Mode, str | None]:
        """(mode, why the step may not run) for one checked step."""
        at = f"llm: step {i + 1} ({c.step.skill})"
        slots = request.slots
        acts = c.side_effect != "read"
        mood = request.mood
        if not mood.reads or (acts and not mood.acts):
            return "one", f"{at}: the request is {mood.describe()}: not carried out"
        many = len(c.devices) > 1
        mode: Mode = "all" if many and (slots.mode == "all" or slots.plural) else "one"
        concepts = {
            kind_concept(d.tags.get("kind"))
            for d in self.catalog.matching(dict(c.step.where))
            if d.device in c.devices
        }
        unnamed = sorted(str(k) for k in concepts - request.evidence)
        if unnamed and not ("kind" not in c.step.where and slots.mode == "all"):
            return mode, f"{at}: the text names no {' or '.join(unnamed)}"
        if acts and c.step.skill not in verbs:
            return mode, f"{at}: the text says no verb for {c.step.skill}"
        if acts:
            unsaid = [
                f"{v:g}"
                for v in c.step.input.values()
                if isinstance(v, int | float)
                and not isinstance(v, bool)
                and not any(abs(v - n) < 0.051 for n in said)
            ]
            if unsaid:
                return mode, f"{at}: {', '.join(unsaid)} is not a number the text says"
            room = c.step.where.get("room")
            if room is not None and room not in slots.rooms:
                return mode, f"{at}: the text names no room {room}"
        if many and mode == "one" and not slots.indefinite:
            return mode, f"{at}: {', '.join(c.devices)} match: which one? (or say all)"
        return mode, None


def _interpretation(
    c: CheckedStep, mode: Mode, confidence: float, notes: Sequence[str]
) -> Interpretation:
    where = ", ".join(f"{k}={v}" for k, v in sorted(c.step.where.items())) or "any device"
    retried = f" (after {'; '.join(notes)})" if notes else ""
    return Interpretation(
        c.step.skill,
        dict(c.step.input),
        dict(c.step.where),
        mode,
        confidence,
        "llm",
        f"{c.step.skill} on {where}: {', '.join(c.devices)}{retried}",
    )


def as_steps(reading: Interpretation | Plan) -> tuple[Interpretation, ...]:
    """A reading's calls in order (one for an :class:`Interpretation`)."""
    return reading.steps if isinstance(reading, Plan) else (reading,)


def plan_text(steps: Sequence[Interpretation]) -> str:
    """The steps in the prompt's canonical answer format (for logs and the data loop)."""
    from .llm_prompt import render_plan

    return render_plan([Step(s.skill, s.where, s.input) for s in steps])
