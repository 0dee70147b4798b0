"""Routing in the client: the coordinator's rules without the coordinator's extra hop.

``Fleet(route="local")`` (or ``call_skill(..., via="local")``) picks the device itself and calls
it directly: two broker crossings instead of four, so a routed call costs what a direct
:meth:`~edgeagent.client.Fleet.call` costs. Nothing here is a second implementation of routing:
the :class:`~edgeagent.registry.Registry` is fed the same retained state and manifests and live
health the coordinator reads (by the client's fleet view), :func:`~edgeagent.routing.decide`
chooses, and :mod:`edgeagent.failover` decides retries, patience and hedges. What this module adds
is the loop that acts on those answers, shaped like the coordinator's ``_route_one``, ``_hedged``
and ``_fan_out`` so both behave alike (failover, idempotency keys, hedges keyed ``KEY-h``, fan-out
keyed ``KEY-DEVICE``, errors with the same codes and messages, the same ``explain`` record).

The live load it sees is its own: the calls *this client* has in flight plus the queues devices
report in their health. Several local routers do not see each other's calls, which
power-of-two choices tolerates (that is why it draws two at random rather than taking the least
loaded). ACLs see a direct call from the client, so a client routing locally needs the grants
for the skills it calls (``docs/security.md``); the default stays ``route="coordinator"``.

The router does no I/O of its own: it is handed a :class:`Sender` (the client's request
function) and a :class:`~edgeagent.clock.Clock` for every timer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from .clock import Clock
from .device import PING_SKILL
from .errors import BadRequest, CallError, CallTimeout, InternalError, NotFound, Unavailable
from .failover import MIN_PATIENCE_S, hedge_after_s, hedges, patience_s, should_retry
from .limits import CoordinatorLimits
from .protocol import ErrorReply, Message, Ok, StateMessage
from .registry import Registry
from .results import CallMode, CallResult
from .routing import Decision, decide

__all__ = ["LocalRouter", "RouteTrace", "Sender"]

log = logging.getLogger(__name__)

Reply = Ok | ErrorReply


class Sender(Protocol):
    """Publish one request to ``device``/``skill``; the future resolves to its decoded reply.

    ``expires_in`` is the request's Message Expiry (the time the call has left); the future
    fails with :class:`~edgeagent.errors.CallTimeout` after ``wait`` seconds without a reply.
    Cancelling the future abandons the request.
    """

    def __call__(
        self,
        device: str,
        skill: str,
        payload: bytes,
        *,
        expires_in: float,
        wait: float,
        idem: str | None,
        trace: str | None,
    ) -> asyncio.Future[Any]: ...


@dataclass(slots=True)
class _Attempt:
    device: str
    outcome: str
    ms: float


@dataclass(slots=True)
class RouteTrace:
    """One call's routing record: what ``explain`` returns (the coordinator's shape)."""

    decisions: list[Decision | dict[str, Any]] = field(default_factory=list)
    attempts: list[_Attempt] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": [d.as_dict() if isinstance(d, Decision) else d for d in self.decisions],
            "attempts": [
                {"device": a.device, "outcome": a.outcome, "ms": a.ms} for a in self.attempts
            ],
        }


@dataclass(slots=True)
class _Call:
    """One call being routed: what every step needs."""

    skill: str
    payload: bytes
    where: dict[str, str]
    deadline: float
    idem: str
    trace: str | None
    record: RouteTrace


class LocalRouter:
    """Route calls by skill and tags from the client, with failover, hedging and fan-out."""

    def __init__(
        self,
        send: Sender,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        retry_budget: int = 2,
        hedge: bool = True,
        limits: CoordinatorLimits | None = None,
    ) -> None:
        self._send = send
        self.clock = clock
        self.rng = rng or random.Random()
        self.retry_budget = retry_budget
        self.hedge = hedge
        self.limits = limits or CoordinatorLimits()
        self.registry = Registry(
            self.limits.max_devices, self.limits.suspect_after, self.limits.max_manifests_bytes
        )
        # Forwards waiting on each device (failed at once when its last will arrives). Dicts,
        # not sets: waiters failed together resume in the order they started.
        self._waiting: dict[str, dict[asyncio.Future[Any], None]] = {}
        self._pings = 0
        self.routed = 0
        self.failovers = 0
        self.hedges = 0

    # Registry feed (from the client's fleet view, which checked the topic is the identity) ----

    def observe(self, message: Message, size: int = 0) -> None:
        """A state, manifest or health message of a device."""
        self.registry.apply(message, self.clock.monotonic(), size)
        if isinstance(message, StateMessage) and message.status == "offline":
            self.device_gone(message.device, "went offline during the call")

    def cleared(self, device: str, kind: str) -> None:
        """The device's retained ``state`` or ``manifest`` was cleared."""
        if kind == "state":
            self.registry.clear_state(device)
        elif kind == "manifest":
            self.registry.clear_manifest(device)
        if device not in self.registry.devices:
            self.device_gone(device, "left the fleet")

    def device_gone(self, device: str, why: str) -> None:
        """Fail every forward waiting on ``device``: no answer will come."""
        for waiter in list(self._waiting.get(device, ())):
            if not waiter.done():
                waiter.set_exception(CallTimeout(f"device {device!r} {why}"))

    def statistics(self) -> dict[str, int]:
        return {"routed": self.routed, "failovers": self.failovers, "hedges": self.hedges}

    # Calls --------------------------------------------------------------------------------------

    async def call(
        self,
        skill: str,
        payload: bytes,
        *,
        where: dict[str, str],
        mode: CallMode | str,
        deadline: float,
        idem: str,
        trace: str | None,
        explain: bool,
    ) -> CallResult:
        """Route one call; a failure raises its :class:`CallError` (with ``route`` if
        ``explain``)."""
        c = _Call(skill, payload, where, deadline, idem, trace, RouteTrace())
        try:
            if mode == "all":
                output = await self._fan_out(c)
            elif mode == "one":
                output = (await self._route_one(c)).output
            else:
                raise BadRequest(f"mode must be one or all, not {mode!r}")
        except CallError as exc:
            exc.route = c.record.as_dict() if explain else None
            raise
        self.routed += 1
        return CallResult(output, c.record.as_dict() if explain else {})

    def _remaining(self, c: _Call) -> float:
        left = c.deadline - self.clock.monotonic()
        if left <= 0:
            raise CallTimeout(f"deadline passed before {c.skill!r} could be forwarded")
        return left

    def _decide(self, c: _Call, tried: frozenset[str]) -> Decision:
        candidates, rejected = self.registry.candidates(c.skill, c.where, exclude=tried)
        decision = decide(
            c.skill, c.where, candidates, rejected, self.rng,
            suspect_after=self.limits.suspect_after,
        )  # fmt: skip
        for cand in candidates:
            if cand.device in decision.rejected:  # left out until it answers a ping
                self._maybe_ping(cand.device)
        c.record.decisions.append(decision)
        return decision

    def _no_device(self, c: _Call, rejected: dict[str, str]) -> CallError:
        if not self.registry.has_skill(c.skill):
            return NotFound(f"no device in the fleet has a skill {c.skill!r}")
        why = "; ".join(f"{d}: {r}" for d, r in rejected.items()) or "none matches"
        message = f"no device can take {c.skill!r} where {c.where or '{}'}: {why}"
        if all(r.startswith("tags ") for r in rejected.values()):
            return NotFound(message)
        return Unavailable(message)

    def _launch(
        self, c: _Call, device: str, idem: str, patience: float | None = None
    ) -> asyncio.Future[Any]:
        """Send one forward; the future resolves to the device's reply (an ``ErrorReply`` too)
        or fails with CallTimeout (no reply within ``patience``, or the device went offline).
        Its outcome is recorded (registry, route) when it settles, whoever awaits it."""
        left = self._remaining(c)
        wait = left if patience is None else min(left, patience)
        skill, record = c.skill, c.record
        future = self._send(
            device, skill, c.payload, expires_in=left, wait=wait, idem=idem, trace=c.trace
        )
        waiters = self._waiting.setdefault(device, {})
        waiters[future] = None
        self.registry.started(device, skill)
        started = self.clock.monotonic()

        def settled(fut: asyncio.Future[Any]) -> None:
            waiters.pop(fut, None)
            if not waiters:
                self._waiting.pop(device, None)
            took = self.clock.monotonic() - started
            if fut.cancelled():
                self.registry.finished(device, skill, took, False, False)
                return
            error = _error_of(fut)
            if error is None:
                self.registry.finished(device, skill, took, True)
                record.attempts.append(_Attempt(device, "ok", round(took * 1000, 3)))
                return
            self.registry.finished(device, skill, took, False, error.code == "timeout")
            record.attempts.append(_Attempt(device, error.code, round(took * 1000, 3)))

        future.add_done_callback(settled)
        return future

    def _maybe_ping(self, device: str) -> None:
        """Ping a device that has not answered this client yet (bounded, in the background):
        routing leaves such a device out while others can serve (``edgeagent.routing``)."""
        e = self.registry.devices.get(device)
        now = self.clock.monotonic()
        if (
            e is None
            or e.pinging
            or self._pings >= self.limits.max_pings
            or (e.pinged_at is not None and now - e.pinged_at < self.limits.ping_interval_s)
        ):
            return
        wait = max(MIN_PATIENCE_S, self.limits.ping_interval_s)
        try:
            future = self._send(
                device, PING_SKILL, b"{}", expires_in=wait, wait=wait, idem=None, trace=None
            )
        except Exception as exc:  # not connected: the next decision pings again
            log.debug("cannot ping %s: %s", device, exc)
            return
        e.pinging, e.pinged_at = True, now
        self._pings += 1

        def settled(fut: asyncio.Future[Any]) -> None:
            self._pings -= 1
            entry = self.registry.devices.get(device)
            if entry is None:
                return
            entry.pinging = False
            if not fut.cancelled() and fut.exception() is None and isinstance(fut.result(), Ok):
                entry.vouched = True

        future.add_done_callback(settled)

    async def _route_one(self, c: _Call) -> Ok:
        """Route to one device, failing over (the coordinator's ``_route_one``)."""
        tried: set[str] = set()
        attempts = 0
        last: CallError | None = None
        while True:
            self._remaining(c)
            decision = self._decide(c, frozenset(tried))
            if decision.chosen is None:
                if last is not None:  # every candidate was tried: the last answer stands
                    raise last
                raise self._no_device(c, decision.rejected)
            device = decision.chosen
            spec = self.registry.devices[device].skill(c.skill)
            assert spec is not None
            tried.add(device)
            try:
                hedged = hedges(
                    enabled=self.hedge, side_effect=spec.side_effect, idempotent=spec.idempotent
                )
                if hedged and len(decision.scored) > 1:
                    return await self._hedged(c, device, tried)
                # A hedged skill with no second candidate waits for its one device as the hedge
                # would (no timer: there is no one to hedge to).
                patience = None if hedged else patience_s(
                    idempotent=spec.idempotent, budget=self.retry_budget,
                    p95_s=self.registry.p95_s(device, c.skill),
                    left_s=c.deadline - self.clock.monotonic(),
                )  # fmt: skip
                return _ok(await self._launch(c, device, c.idem, patience))
            except CallError as exc:
                if not should_retry(
                    exc.code, idempotent=spec.idempotent, attempts=attempts,
                    budget=self.retry_budget,
                ):  # fmt: skip
                    raise
                last = exc
                attempts += 1
                self.failovers += 1
                log.info("failover: %s/%s answered %s; trying another device", device, c.skill,
                         exc.code)  # fmt: skip

    async def _hedged(self, c: _Call, device: str, tried: set[str]) -> Ok:
        """Forward; if no answer after the device's p95, also ask a second device."""
        first = self._launch(c, device, c.idem)
        delay = hedge_after_s(
            p95_s=self.registry.p95_s(device, c.skill), left_s=c.deadline - self.clock.monotonic()
        )
        if await self._settled_within(first, min(delay, self._remaining(c))):
            return _ok(first.result())
        decision = self._decide(c, frozenset(tried))
        if decision.chosen is None:
            return _ok(await first)
        tried.add(decision.chosen)
        self.hedges += 1
        try:
            # A hedge is a separate read: its own key, so the device does not merge it.
            second = self._launch(c, decision.chosen, c.idem + "-h")
        except BaseException:
            first.cancel()
            raise
        pending: set[asyncio.Future[Any]] = {first, second}
        error: CallError | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for d in (f for f in (first, second) if f in done):  # in launch order
                    error = _error_of(d)
                    if error is None:
                        return _ok(d.result())
            assert error is not None
            raise error
        finally:
            for p in pending:
                p.cancel()

    async def _settled_within(self, future: asyncio.Future[Any], timeout: float) -> bool:
        """Wait until ``future`` is done or ``timeout`` seconds of the clock passed."""
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

    async def _fan_out(self, c: _Call) -> dict[str, Any]:
        """Every matching device; results and errors gathered per device."""
        candidates, rejected = self.registry.candidates(c.skill, c.where)
        devices = [cand.device for cand in candidates]
        c.record.decisions.append(
            {"skill": c.skill, "where": c.where, "method": "all", "devices": devices,
             "rejected": rejected}
        )  # fmt: skip
        if not candidates:
            raise self._no_device(c, rejected)
        futures = [self._launch(c, d, f"{c.idem}-{d}") for d in devices]
        await asyncio.wait(futures)
        out: dict[str, Any] = {"results": {}, "errors": {}}
        for device, fut in zip(devices, futures, strict=True):
            error = _error_of(fut)
            if error is None:
                out["results"][device] = fut.result().output
            else:
                out["errors"][device] = {"code": error.code, "message": error.message}
        return out


def _error_of(fut: asyncio.Future[Any]) -> CallError | None:
    """The error a settled forward ended with (an error reply counts), None if it is ok."""
    exc = fut.exception()
    if exc is not None:
        if isinstance(exc, CallError):
            return exc
        return InternalError(f"{type(exc).__name__}: {exc}")
    reply = fut.result()
    if isinstance(reply, ErrorReply):
        return CallError.from_reply(reply)
    return None


def _ok(reply: Reply) -> Ok:
    if isinstance(reply, ErrorReply):
        raise CallError.from_reply(reply)
    return reply
