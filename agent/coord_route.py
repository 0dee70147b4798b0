"""Routing one call: choose a device, fail over, hedge slow reads, or fan out to all.

Every decision is asked of a pure module and acted on here: which device
(:func:`edgeagent.routing.decide` over the registry's candidates), whether to try another after
an error, how long to wait for one device, whether and when to hedge (:mod:`edgeagent.failover`).
What is left is waiting: on :class:`~edgeagent.coord_forward.Forwarder` futures, with timers of
the injected clock only, so a simulated fleet runs these paths on virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from .clock import Clock
from .coord_forward import Forwarder, RouteFailure, Trace, output_of, remaining_s
from .errors import CallError
from .failover import hedge_after_s, hedges, patience_s, should_retry
from .limits import CoordinatorLimits
from .protocol import ErrorCode
from .registry import Registry
from .routing import Decision, decide

__all__ = ["CallRouter"]

log = logging.getLogger("edgeagent.coordinator")  # the coordinator's logger, as before the split


class CallRouter:
    """Routes calls by skill and tags over a :class:`Forwarder`, counting failovers and hedges."""

    def __init__(
        self,
        forwarder: Forwarder,
        registry: Registry,
        clock: Clock,
        rng: random.Random,
        limits: CoordinatorLimits,
        *,
        retry_budget: int,
        hedge: bool,
    ) -> None:
        self.forwarder = forwarder
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.limits = limits
        self.retry_budget = retry_budget
        self.hedge = hedge
        self.failovers = 0
        self.hedges = 0

    def decide(
        self, skill: str, where: dict[str, str], tried: frozenset[str], trace: Trace
    ) -> Decision:
        """Choose a device not yet tried (recorded in ``trace``); ping those left out."""
        candidates, rejected = self.registry.candidates(skill, where, exclude=tried)
        decision = decide(
            skill, where, candidates, rejected, self.rng, suspect_after=self.limits.suspect_after
        )
        for c in candidates:
            if c.device in decision.rejected:  # left out until it answers a ping
                self.forwarder.maybe_ping(c.device)
        trace.decisions.append(decision)
        return decision

    def no_device(self, skill: str, where: dict[str, str], decision: Decision) -> RouteFailure:
        if not self.registry.has_skill(skill):
            return RouteFailure("not_found", f"no device in the fleet has a skill {skill!r}")
        why = "; ".join(f"{d}: {r}" for d, r in decision.rejected.items()) or "none matches"
        only_tags = all(r.startswith("tags ") for r in decision.rejected.values())
        code: ErrorCode = "not_found" if only_tags else "unavailable"
        return RouteFailure(code, f"no device can take {skill!r} where {where or '{}'}: {why}")

    async def route_one(
        self,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
    ) -> bytes:
        """Route to one device, failing over; returns its raw ok reply."""
        tried: set[str] = set()
        attempts = 0
        last: CallError | None = None
        while True:
            left = remaining_s(self.clock, deadline, skill)
            decision = self.decide(skill, where, frozenset(tried), trace)
            if decision.chosen is None:
                if last is not None:  # every candidate was tried: the last answer stands
                    raise last
                raise self.no_device(skill, where, decision)
            device = decision.chosen
            spec = self.registry.devices[device].skill(skill)
            assert spec is not None
            tried.add(device)
            try:
                if hedges(enabled=self.hedge, side_effect=spec.side_effect,
                          idempotent=spec.idempotent):  # fmt: skip
                    return await self._hedged(device, skill, payload, where, deadline, idem, tr,
                                              trace, tried)  # fmt: skip
                patience = patience_s(
                    idempotent=spec.idempotent,
                    budget=self.retry_budget,
                    p95_s=self.registry.p95_s(device, skill),
                    left_s=left,
                )
                fwd = self.forwarder.launch(
                    device, skill, payload, deadline, idem, tr, trace, patience
                )
                return await fwd
            except CallError as exc:
                if not should_retry(exc.code, idempotent=spec.idempotent, attempts=attempts,
                                    budget=self.retry_budget):  # fmt: skip
                    raise
                last = exc
                attempts += 1
                self.failovers += 1
                log.info("failover: %s/%s answered %s; trying another device", device, skill,
                         exc.code)  # fmt: skip

    async def _hedged(
        self,
        device: str,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
        tried: set[str],
    ) -> bytes:
        """Forward; if no answer after the device's p95, also ask a second device."""
        launch = self.forwarder.launch
        first = launch(device, skill, payload, deadline, idem, tr, trace)
        delay = hedge_after_s(
            p95_s=self.registry.p95_s(device, skill), left_s=deadline - self.clock.monotonic()
        )
        if await self._settled_within(first, min(delay, remaining_s(self.clock, deadline, skill))):
            return first.result()
        decision = self.decide(skill, where, frozenset(tried), trace)
        if decision.chosen is None:
            return await first
        tried.add(decision.chosen)
        self.hedges += 1
        try:
            # A hedge is a separate read: its own key, so the device does not merge it.
            second = launch(decision.chosen, skill, payload, deadline, idem + "-h", tr, trace)
        except BaseException:
            first.cancel()
            raise
        pending: set[asyncio.Future[bytes]] = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for d in done:
                    if d.exception() is None:
                        return d.result()
                    error = d.exception()
            assert error is not None
            raise error
        finally:
            for p in pending:
                p.cancel()

    async def _settled_within(self, future: asyncio.Future[Any], timeout: float) -> bool:
        """Wait until ``future`` is done or ``timeout`` seconds of the clock passed; True if it
        is done. (``asyncio.wait`` with a timeout, without its sets or the loop's own timer.)"""
        if not future.done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(*_: object) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            handle = self.clock.call_later(timeout, wake)
            future.add_done_callback(wake)
            try:
                await waiter
            finally:
                handle.cancel()
                future.remove_done_callback(wake)
        return future.done()

    async def fan_out(
        self,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
    ) -> dict[str, Any]:
        """Forward to every matching device; gather their outputs and errors by device."""
        candidates, rejected = self.registry.candidates(skill, where)
        devices = [c.device for c in candidates]
        trace.decisions.append(
            {
                "skill": skill,
                "where": where,
                "method": "all",
                "devices": devices,
                "rejected": rejected,
            }
        )
        if not candidates:
            raise self.no_device(skill, where, Decision(skill, where, None, "all", [], rejected))
        forward = self.forwarder.forward
        results = await asyncio.gather(
            *(
                forward(c.device, skill, payload, deadline, f"{idem}-{c.device}", tr, trace)
                for c in candidates
            ),
            return_exceptions=True,
        )
        out: dict[str, Any] = {"results": {}, "errors": {}}
        for c, r in zip(candidates, results, strict=True):
            if isinstance(r, bytes):
                try:
                    out["results"][c.device] = output_of(r)
                    continue
                except CallError as exc:
                    r = exc
            if isinstance(r, CallError):
                out["errors"][c.device] = {"code": r.code, "message": r.message}
            else:
                out["errors"][c.device] = {"code": "internal", "message": str(r)}
        return out
