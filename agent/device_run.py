"""Running one call of a skill on a device: its slot, its time budget, its thread, its failures.

A :class:`SkillSlot` is one skill's share of the device: a semaphore of ``max_concurrency``, the
calls running and queued (what :func:`~edgeagent.admission.admit` reads), and the statistics the
health message reports. :func:`run_skill` runs one admitted call within its budget (the smaller
of the skill's ``timeout_s`` and the request's deadline, on the injected clock) and turns what
happened into the reply's payload or a :class:`Failed` (the error the caller gets). Async skills
run on the loop, plain functions on the agent's executor; a thread cannot be stopped, so one
that outlives its call (timeout, cancellation) keeps the slot until it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from .clock import Clock
from .errors import CallError
from .metrics_stats import Buckets
from .protocol import ErrorCode, SkillHealth
from .skills import Skill, SkillContext
from .stats import LatencyWindow

__all__ = ["Failed", "SkillSlot", "run_skill"]

log = logging.getLogger("edgeagent.device")  # the agent's logger, as before the split

_OK_PREFIX = b'{"type":"ok","output":'


class SkillSlot:
    """Load and statistics for one skill (admission reads it as a :class:`~.admission.Load`)."""

    __slots__ = (
        "calls", "errors", "in_flight", "latency", "queued", "rejected", "runtime", "sem", "skill",
    )  # fmt: skip

    def __init__(self, skill: Skill) -> None:
        self.skill = skill
        self.sem = asyncio.Semaphore(skill.options.max_concurrency)
        self.in_flight = 0
        self.queued = 0
        self.calls = 0
        self.errors = 0
        self.rejected = 0
        self.latency = LatencyWindow()
        self.runtime = Buckets()  # run times as a histogram, for metrics exporters

    @property
    def max_concurrency(self) -> int:
        return self.skill.options.max_concurrency

    @property
    def max_queue(self) -> int:
        return self.skill.options.max_queue

    def health(self) -> SkillHealth:
        p50, p95 = self.latency.percentiles_ms((50, 95))
        return SkillHealth(
            calls=self.calls,
            errors=self.errors,
            rejected=self.rejected,
            in_flight=self.in_flight,
            queued=self.queued,
            p50_ms=p50,
            p95_ms=p95,
            model=self.skill.options.model,
            model_version=self.skill.options.model_version,
        )


@dataclass(frozen=True, slots=True)
class Failed:
    """Why a call that ran did not succeed: the error reply's code, message and details."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None


async def run_skill(
    skill: Skill,
    value: BaseModel,
    ctx: SkillContext,
    *,
    budget: float,
    clock: Clock,
    executor: concurrent.futures.Executor | None,
    abandon: Callable[[asyncio.Future[Any]], None],
) -> bytes | Failed:
    """Run one call: the reply's payload (``{"type":"ok","output":…}``) or how it failed.

    When the call ends (timeout or cancellation) while a synchronous skill's thread still runs,
    ``abandon(future)`` is called at once: the caller keeps the skill's slot until that future
    is done. Cancellation propagates; everything else becomes a :class:`Failed`.
    """
    try:
        async with clock.timeout(budget):
            if skill.is_async:
                result = await skill.invoke(value, ctx)
            else:
                assert executor is not None
                fut = asyncio.wrap_future(executor.submit(skill.invoke, value, ctx))
                try:
                    result = await asyncio.shield(fut)
                except asyncio.CancelledError:
                    abandon(fut)  # the thread cannot be stopped
                    raise
        try:
            return _OK_PREFIX + skill.dump_output(result) + b"}"
        except (PydanticSerializationError, ValidationError) as exc:
            log.error("%s: %s returned invalid output: %s", ctx.device, skill.name, exc)
            return Failed(
                "internal", f"skill {skill.name!r} returned output not matching its schema"
            )
    except TimeoutError:
        return Failed("timeout", f"skill {skill.name!r} did not finish within {budget:.3g} s")
    except CallError as exc:
        return Failed(exc.code, exc.message, exc.details)
    except Exception as exc:
        log.exception("%s: skill %s raised", ctx.device, skill.name)
        return Failed("internal", f"skill {skill.name!r} failed: {type(exc).__name__}: {exc}")
