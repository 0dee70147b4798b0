"""What calls return beyond a skill's output: a routed call's route, a plain-language request's
reading.

:class:`CallResult` is a ``NamedTuple`` so the older spelling ``out, route = await
fleet.call_skill(..., explain=True)`` keeps working, while new code reads ``result.output`` and
``result.route`` with their types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = ["AskResult", "CallMode", "CallResult", "RouteVia"]

#: Where :meth:`~edgeagent.client.Fleet.call_skill` routes: through the coordinator service, or
#: in the client itself (the same rules, one broker crossing less each way).
RouteVia = Literal["coordinator", "local"]
#: ``one``: one device answers; ``all``: every matching device, results and errors gathered.
CallMode = Literal["one", "all"]


class CallResult(NamedTuple):
    """A routed call's output and its routing record (``call_skill(..., explain=True)``)."""

    output: Any
    """The skill's output (``mode="all"``: ``{"results": {...}, "errors": {...}}``)."""
    route: dict[str, Any]
    """``{"decisions": [...], "attempts": [{"device", "outcome", "ms"}, ...]}``: every routing
    decision (candidates, scores, rejections, method) and every forward with its outcome."""


@dataclass(frozen=True, slots=True)
class AskResult:
    """What :meth:`Fleet.ask` understood and what came back (``unsure`` when it would not guess)."""

    text: str
    interpretation: Any
    """The :class:`edgeagent.nlu.Interpretation` that was carried out, or None."""
    unsure: Any
    """The :class:`edgeagent.nlu.Unsure` (best candidates, reason) when nothing was called."""
    output: Any
    """The skill's output (one call); for a plan, None: see ``steps``."""
    plan: Any = None
    """The :class:`edgeagent.nlu.Plan` (several steps) that was carried out, or with
    ``dry_run``, the reading that was not; None for one call."""
    steps: tuple[Any, ...] = ()
    """A plan's :class:`edgeagent.plan_run.StepResult` s in order, up to the first failure."""
