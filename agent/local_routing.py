"""Routing in the client: the coordinator's rules without the coordinator's extra hop.

``Fleet(route="local")`` (or ``call_skill(..., via="local")``) picks the device itself and calls
it directly: two broker crossings instead of four, so a routed call costs what a direct
:meth:`~edgeagent.client.Fleet.call` costs. Nothing here is a second implementation of routing:
the :class:`~edgeagent.registry.Registry` is fed the same retained state and manifests and live
health the coordinator reads (by the client's fleet view), :func:`~edgeagent.routing.decide`
chooses, and :mod:`edgeagent.failover` decides retries, patience and hedges. Nor of the loop that
acts on those answers: it is the coordinator's :class:`~edgeagent.coord_route.RoutingLoop`
(failover, idempotency keys, hedges keyed ``KEY-h``, fan-out keyed ``KEY-DEVICE``, errors with
the same codes and messages, the same ``explain`` record). What this module adds is how one
forward reaches a device (:class:`DirectLauncher`: a request of the client, straight to it) and
the router's face (:class:`LocalRouter`).

The live load it sees is its own: the calls *this client* has in flight plus the queues devices
report in their health. Several local routers do not see each other's calls, which
power-of-two choices tolerates (that is why it draws two at random rather than taking the least
loaded). ACLs see a direct call from the client, so a client routing locally needs the grants
for the skills it calls (``docs/security.md``); the default stays ``route="coordinator"``.

The router does no I/O of its own: it is handed a :class:`Sender` (the client's request
function) and a :class:`~edgeagent.clock.Clock` for every timer. The one difference from the
coordinator: a hedged read whose device has no rival waits for it without a hedge timer
(``hedge_alone=False``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from .clock import Clock
from .coord_forward import Trace, record_attempt
from .coord_route import RoutingLoop
from .device import PING_SKILL
from .errors import BadRequest, CallError, CallTimeout, InternalError, error_class
from .failover import MIN_PATIENCE_S
from .limits import CoordinatorLimits
from .protocol import ErrorCode, ErrorReply, Message, Ok, StateMessage
from .registry import Registry
from .results import CallMode, CallResult

__all__ = ["DirectLauncher", "LocalRouter", "RouteTrace", "Sender"]

log = logging.getLogger(__name__)


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


#: One call's routing record: what ``explain`` returns (the coordinator's own :class:`Trace`).
RouteTrace = Trace


class LocalRouter(RoutingLoop[Ok]):
    """Route calls by skill and tags from the client, with failover, hedging and fan-out.

    The routing loop is the coordinator's (:class:`~edgeagent.coord_route.RoutingLoop`), over a
    :class:`DirectLauncher` (this client's requests, straight to the devices)."""

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
        limits = limits or CoordinatorLimits()
        registry = Registry(limits.max_devices, limits.suspect_after, limits.max_manifests_bytes)
        self.direct = DirectLauncher(send, registry, clock, limits)
        # A hedged read with no second candidate waits for its one device, without a timer.
        super().__init__(
            self.direct, registry, clock, rng or random.Random(), limits,
            retry_budget=retry_budget, hedge=hedge, hedge_alone=False,
        )  # fmt: skip
        self.routed = 0

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
        self.direct.fail_waiters(device, why)

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
        record = Trace()
        try:
            if mode == "all":
                output = await self.fan_out(skill, payload, where, deadline, idem, trace, record)
            elif mode == "one":
                ok = await self.route_one(skill, payload, where, deadline, idem, trace, record)
                output = ok.output
            else:
                raise BadRequest(f"mode must be one or all, not {mode!r}")
        except CallError as exc:
            exc.route = record.as_dict() if explain else None
            raise
        self.routed += 1
        return CallResult(output, record.as_dict() if explain else {})


class DirectLauncher:
    """A :class:`~edgeagent.coord_route.Launcher` over the client's own requests: each forward
    goes straight to the device; its reply settles the router's future (an error reply as its
    :class:`CallError`)."""

    def __init__(
        self, send: Sender, registry: Registry, clock: Clock, limits: CoordinatorLimits
    ) -> None:
        self._send = send
        self.registry = registry
        self.clock = clock
        self.limits = limits
        # Forwards waiting on each device (failed at once when its last will arrives). Dicts,
        # not sets: waiters failed together resume in the order they started.
        self._waiting: dict[str, dict[asyncio.Future[Ok], None]] = {}
        self._pings = 0

    def refusal(self, code: ErrorCode, message: str) -> CallError:
        """The router's own refusals are the client's typed errors (NotFound, CallTimeout...)."""
        return error_class(code)(message)

    def output_of(self, reply: Ok) -> Any:
        return reply.output

    def fail_waiters(self, device: str, why: str) -> None:
        for waiter in list(self._waiting.get(device, ())):
            if not waiter.done():
                waiter.set_exception(CallTimeout(f"device {device!r} {why}"))

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
    ) -> asyncio.Future[Ok]:
        """Send one forward; the future resolves to the device's ok reply or fails with a
        CallError (its error reply; CallTimeout when there is no reply within ``patience``, or
        the device went offline). Its outcome is recorded (registry, route) when it settles,
        whoever awaits it; cancelling it abandons the request."""
        left = deadline - self.clock.monotonic()
        if left <= 0:
            raise CallTimeout(f"deadline passed before {skill!r} could be forwarded")
        wait = left if patience is None else min(left, patience)
        sent = self._send(device, skill, payload, expires_in=left, wait=wait, idem=idem, trace=tr)
        future: asyncio.Future[Ok] = asyncio.get_running_loop().create_future()

        def answered(s: asyncio.Future[Any]) -> None:
            if future.done():
                return
            if s.cancelled():
                future.cancel()
                return
            exc = s.exception()
            if exc is not None:
                if not isinstance(exc, CallError):
                    exc = InternalError(f"{type(exc).__name__}: {exc}")
                future.set_exception(exc)
                return
            reply = s.result()
            if isinstance(reply, ErrorReply):
                future.set_exception(CallError.from_reply(reply))
            else:
                future.set_result(reply)

        sent.add_done_callback(answered)
        waiters = self._waiting.setdefault(device, {})
        waiters[future] = None
        self.registry.started(device, skill)
        started = self.clock.monotonic()

        def settled(fut: asyncio.Future[Ok]) -> None:
            sent.cancel()  # no-op once answered; else the request is abandoned
            waiters.pop(fut, None)
            if not waiters:
                self._waiting.pop(device, None)
            record_attempt(self.registry, trace, device, skill, self.clock.monotonic() - started,
                           fut)  # fmt: skip

        future.add_done_callback(settled)
        return future

    def maybe_ping(self, device: str) -> None:
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
