"""Carrying out a plain-language plan step by step, and the plan as data to show.

:meth:`edgeagent.client.Fleet.ask` routes a request; when the reading is a multi-step
:class:`edgeagent.nlu.Plan` (the LLM layer's), :func:`run_steps` calls each step in order
through ``call_skill`` and stops at the first failure: a plan such as "turn off the lights and
lock the door" must not go on locking after the lights failed, and the caller learns which steps
ran. :func:`describe` is the plan as JSON, what ``edgeagent ask --explain`` prints before
anything actuates and ``--json`` includes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CallError

__all__ = ["StepResult", "describe", "run_steps"]

#: ``call_skill(skill, input, where=..., mode=..., timeout=...)`` (:meth:`Fleet.call_skill`).
CallSkill = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome: its output, or the typed error that stopped the plan."""

    index: int
    skill: str
    ok: bool
    output: Any = None
    error: str | None = None
    """``code: message`` of the :class:`~edgeagent.errors.CallError`."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.index + 1, "skill": self.skill, "ok": self.ok}
        if self.ok:
            out["output"] = self.output
        else:
            out["error"] = self.error
        return out


async def run_steps(
    call_skill: CallSkill, steps: Sequence[Any], *, timeout: float | None = None
) -> tuple[StepResult, ...]:
    """Call each step (an :class:`edgeagent.nlu.Interpretation`) in order; stop at the first
    :class:`CallError` (the failed step is the last result: later steps did not run)."""
    done: list[StepResult] = []
    for i, step in enumerate(steps):
        try:
            output = await call_skill(
                step.skill, step.input, where=step.where, mode=step.mode, timeout=timeout
            )
        except CallError as exc:
            done.append(StepResult(i, step.skill, False, error=f"{exc.code}: {exc.message}"))
            break
        done.append(StepResult(i, step.skill, True, output))
    return tuple(done)


def describe(reading: Any) -> dict[str, Any]:
    """A reading (:class:`Interpretation` or :class:`Plan`) as JSON: its steps, each with the
    skill, ``where``, input, mode, confidence and the layer that read it."""
    steps = getattr(reading, "steps", None) or (reading,)
    return {
        "layer": reading.layer,
        "confidence": reading.confidence,
        "steps": [
            {
                "skill": s.skill,
                "where": s.where,
                "input": s.input,
                "mode": s.mode,
                "confidence": s.confidence,
                "layer": s.layer,
            }
            for s in steps
        ],
        "explanation": reading.explanation,
    }


def plan_lines(reading: Any) -> list[str]:
    """The plan for a person, one line per step (``--explain`` prints these to stderr)."""
    plan = describe(reading)
    lines = [f"plan ({plan['layer']}, confidence {plan['confidence']:.2f}):"]
    for i, s in enumerate(plan["steps"], 1):
        where = ",".join(f"{k}={v}" for k, v in sorted(s["where"].items())) or "any device"
        lines.append(f"  {i}. {s['skill']} {_compact(s['input'])} on {where} ({s['mode']})")
    return lines


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True)
