"""Routing one call: choose a device, fail over, hedge slow reads, or fan out to all.

This is the one routing loop of edgeagent (:class:`RoutingLoop`): the coordinator runs it
(:class:`CallRouter`) over its :class:`~edgeagent.coord_forward.Forwarder`, a client routing locally
(:class:`~edgeagent.local_routing.LocalRouter`) over its direct sender. Both hand it a
:class:`Launcher` (how one forward reaches one device), so failover, hedges, idempotency keys
(``KEY``, ``KEY-h``, ``KEY-DEVICE``), error codes and messages and the ``explain`` record cannot
drift apart. Every decision is asked of a pure module and acted on here: which device
(:func:`edgeagent.routing.decide` over the registry's candidates), whether to try another after
an error, how long to wait for one device, whether and when to hedge (:mod:`edgeagent.failover`).
What is left is waiting: on the launcher's futures, with timers of the injected clock only, so a
simulated fleet runs these paths on virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Generic, Protocol, TypeVar

from .clock import Clock
from .coord_forward import Trace
from .errors import CallError
from .failover import hedge_after_s, hedges, patience_s, should_retry
from .limits import CoordinatorLimits
from .protocol import ErrorCode
from .registry import Registry
from .routing import Decision, decide

__all__ = ["CallRouter", "Launcher", "RoutingLoop"]

log = logging.getLogger("edgeagent.coordinator")  # the coordinator's logger, as before the split

R = TypeVar("R")


class Launcher(Protocol[R]):
    """How one forward reaches one device: what a router needs of the coordinator's
    :class:`~edgeagent.coord_forward.Forwarder` or of a client's direct sender."""

    def launch(
        self,
        device: str,
        skill: str,
        payload: bytes,
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
        patience: float | None = None,
    ) -> asyncio.Future[R]:
        """Send one forward. The future resolves to the device's ok reply or fails with a
        CallError (CallTimeout after ``patience`` seconds, or when the device goes away); its
        outcome is recorded in the registry and ``trace`` when it settles. Cancelling it
        abandons the forward."""
        ...

    def maybe_ping(self, device: str) -> None:
        """Ping a device routing left out until it answers (bounded, in the background)."""
        ...

    def output_of(self, reply: R) -> Any:
        """The output of an ok reply (CallError if it is malformed)."""
        ...

    def refusal(self, code: ErrorCode, message: str) -> Exception:
        """The router's own refusal (no device, deadline passed) as this side raises it."""
        ...


class RoutingLoop(Generic[R]):
    """Routes calls by skill and tags over a :class:`Launcher`, counting failovers and hedges.

    ``hedge_alone``: whether a hedged read whose first decision left no second candidate still
    waits the hedge delay and decides again (a suspect vouched meanwhile can take the hedge:
    the coordinator) or simply waits for its one device (a local router).
    """

    def __init__(
        self,
        launcher: Launcher[R],
        registry: Registry,
        clock: Clock,
        rng: random.Random,
        limits: CoordinatorLimits,
        *,
        retry_budget: int,
        hedge: bool,
        hedge_alone: bool = True,
    ) -> None:
        self.launcher = launcher
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.limits = limits
        self.retry_budget = retry_budget
        self.hedge = hedge
        self.hedge_alone = hedge_alone
        self.failovers = 0
        self.hedges = 0

    def remaining_s(self, deadline: float, skill: str) -> float:
        """Seconds left before ``deadline``; the launcher's ``timeout`` refusal if none."""
        left = deadline - self.clock.monotonic()
        if left <= 0:
            raise self.launcher.refusal(
                "timeout", f"deadline passed before {skill!r} could be forwarded"
            )
        return left

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
                self.launcher.maybe_ping(c.device)
        trace.decisions.append(decision)
        return decision

    def no_device(self, skill: str, where: dict[str, str], rejected: dict[str, str]) -> Exception:
        refusal = self.launcher.refusal
        if not self.registry.has_skill(skill):
            return refusal("not_found", f"no device in the fleet has a skill {skill!r}")
        why = "; ".join(f"{d}: {r}" for d, r in rejected.items()) or "none matches"
        only_tags = all(r.startswith("tags ") for r in rejected.values())
        code: ErrorCode = "not_found" if only_tags else "unavailable"
        return refusal(code, f"no device can take {skill!r} where {where or '{}'}: {why}")

    async def route_one(
        self,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
    ) -> R:
        """Route to one device, failing over; returns its ok reply."""
        tried: set[str] = set()
        attempts = 0
        last: CallError | None = None
        while True:
            left = self.remaining_s(deadline, skill)
            decision = self.decide(skill, where, frozenset(tried), trace)
            if decision.chosen is None:
                if last is not None:  # every candidate was tried: the last answer stands
                    raise last
                raise self.no_device(skill, where, decision.rejected)
            device = decision.chosen
            spec = self.registry.devices[device].skill(skill)
            assert spec is not None
            tried.add(device)
            try:
                hedged = hedges(
                    enabled=self.hedge, side_effect=spec.side_effect, idempotent=spec.idempotent
                )
                if hedged and (self.hedge_alone or len(decision.scored) > 1):
                    return await self._hedged(device, skill, payload, where, deadline, idem, tr,
                                              trace, tried)  # fmt: skip
                # A hedged skill with no second candidate waits for its one device as the hedge
                # would (no timer: there is no one to hedge to).
                patience = None if hedged else patience_s(
                    idempotent=spec.idempotent,
                    budget=self.retry_budget,
                    p95_s=self.registry.p95_s(device, skill),
                    left_s=left,
                )  # fmt: skip
                fwd = self.launcher.launch(
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
    ) -> R:
        """Forward; if no answer after the device's p95, also ask a second device."""
        launch = self.launcher.launch
        first = launch(device, skill, payload, deadline, idem, tr, trace)
        delay = hedge_after_s(
            p95_s=self.registry.p95_s(device, skill), left_s=deadline - self.clock.monotonic()
        )
        if await self._settled_within(first, min(delay, self.remaining_s(deadline, skill))):
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
        pending: set[asyncio.Future[R]] = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for d in (f for f in (first, second) if f in done):  # in launch order
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
            raise self.no_device(skill, where, rejected)
        futures: list[asyncio.Future[R]] = []
        try:
            for d in devices:
                futures.append(
                    self.launcher.launch(d, skill, payload, deadline, f"{idem}-{d}", tr, trace)
                )
            await asyncio.wait(futures)
        finally:
            for f in futures:
                f.cancel()  # abandoned (a launch failed, or we were cancelled); no-op if done
        out: dict[str, Any] = {"results": {}, "errors": {}}
        for device, fut in zip(devices, futures, strict=True):
            exc = fut.exception()
            if exc is None:
                try:
                    out["results"][device] = self.launcher.output_of(fut.result())
                    continue
                except CallError as bad:
                    exc = bad
            if isinstance(exc, CallError):
                out["errors"][device] = {"code": exc.code, "message": exc.message}
            else:
                out["errors"][device] = {"code": "internal", "message": str(exc)}
        return out


class CallRouter(RoutingLoop[bytes]):
    """The coordinator's router: over its :class:`~edgeagent.coord_forward.Forwarder`, whose
    forwards resolve to the device's raw ok reply (relayed as it came when not explained)."""
