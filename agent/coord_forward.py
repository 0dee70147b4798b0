"""The coordinator's forwards: one request to one device, its reply, its timer, its record.

A forward is a future in a :class:`~edgeagent.rpc.PendingCalls` table, keyed by unguessable
Correlation Data (a device may publish replies, so it must not be able to answer for another
device's forward) and failed by the injected clock when the device is given up on. It resolves,
from the reply handler, to the device's raw ``ok`` reply: the hot path neither parses it nor
wakes a task to relay it (``docs/benchmarks.md``): a routed call that is not explained is
answered from :meth:`Forwarder.on_reply` itself. It fails with a
:class:`~edgeagent.errors.CallError`: the device's error, ``timeout`` when unanswered or when the
device goes offline or leaves meanwhile (:meth:`Forwarder.fail_waiters`).

Devices the routing left out until they prove alive (newcomers, suspects) get a ``ping``, a few
at a time (:meth:`Forwarder.maybe_ping`).

Also here: the record of one routed call (:class:`Trace`, what ``explain`` returns) and
:class:`RouteFailure`, the coordinator's own refusals.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from .clock import Clock
from .device import PING_SKILL
from .errors import CallError, CallTimeout, InternalError, TransportError
from .failover import MIN_PATIENCE_S
from .limits import CoordinatorLimits
from .metrics_stats import CallStats
from .protocol import (
    CALLER_PROPERTY,
    HOP_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    TRACE_PROPERTY,
    ErrorCode,
    ErrorReply,
    Topics,
    decode_reply,
)
from .registry import Registry
from .routing import Decision
from .rpc import PendingCalls, request_props
from .transport.base import Inbound, Props, Transport

__all__ = [
    "OK_PREFIX",
    "Attempt",
    "Forwarder",
    "RouteFailure",
    "Trace",
    "output_of",
    "record_attempt",
]

log = logging.getLogger("edgeagent.coordinator")  # the coordinator's logger, as before the split

#: How every edgeagent agent starts an ok reply; such a reply is relayed without parsing.
OK_PREFIX: Final = b'{"type":"ok",'


@dataclass(slots=True)
class Attempt:
    device: str
    outcome: str
    ms: float


@dataclass(slots=True)
class Trace:
    """One call's record (what ``explain`` returns) and where its answer goes."""

    decisions: list[Decision | dict[str, Any]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    #: (response topic, properties): a device's ok reply is published there as soon as it
    #: arrives, from the reply handler (a routed call, not explained); ``answered`` once it is.
    relay: tuple[str, Props] | None = None
    answered: bool = False
    #: Who the call is for (the caller's response topic, or rule/NAME): scopes its key on the
    #: devices. And how many rule-made calls led to it.
    caller: str = ""
    hop: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": [d.as_dict() if isinstance(d, Decision) else d for d in self.decisions],
            "attempts": [
                {"device": a.device, "outcome": a.outcome, "ms": a.ms} for a in self.attempts
            ],
        }


class RouteFailure(Exception):
    """The coordinator's own answer to a call it could not route (no device, deadline passed,
    a bad request): sent back as an error reply with this code."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def output_of(raw: bytes) -> Any:
    """The output of a device's raw ok reply."""
    try:
        reply = decode_reply(raw)
    except ValidationError as exc:
        raise InternalError(f"malformed reply: {exc.errors()[0]['msg']}") from exc
    if isinstance(reply, ErrorReply):  # pragma: no cover - only ok replies are kept raw
        raise CallError.from_reply(reply)
    return reply.output


def record_attempt(
    registry: Registry,
    trace: Trace,
    device: str,
    skill: str,
    took: float,
    fut: asyncio.Future[Any],
) -> str:
    """Record a settled forward: in the registry (latency, errors) and in the call's trace;
    returns its outcome (``ok``, the error code, or ``cancelled``).

    Shared by the coordinator's forwards and a local router's direct calls, so both keep the
    same statistics and ``explain`` attempts."""
    if fut.cancelled():
        registry.finished(device, skill, took, False, False)
        return "cancelled"
    exc = fut.exception()
    if exc is None:
        registry.finished(device, skill, took, True)
        trace.attempts.append(Attempt(device, "ok", round(took * 1000, 3)))
        return "ok"
    code = exc.code if isinstance(exc, CallError) else "internal"
    registry.finished(device, skill, took, False, code == "timeout")
    trace.attempts.append(Attempt(device, code, round(took * 1000, 3)))
    return code


def remaining_s(clock: Clock, deadline: float, skill: str) -> float:
    """Seconds left before ``deadline``; RouteFailure(timeout) if none."""
    left = deadline - clock.monotonic()
    if left <= 0:
        raise RouteFailure("timeout", f"deadline passed before {skill!r} could be forwarded")
    return left


class Forwarder:
    """Forwards and pings in flight, by correlation data and by device."""

    def __init__(
        self,
        transport: Transport,
        topics: Topics,
        registry: Registry,
        clock: Clock,
        limits: CoordinatorLimits,
        stats: CallStats | None = None,
    ) -> None:
        """``stats``: where settled forwards are counted and timed by device."""
        self.transport = transport
        self.stats = stats
        self.topics = topics
        self.registry = registry
        self.clock = clock
        self.limits = limits
        #: Where devices answer forwards and pings (beside the coordinator's reply topic).
        self.reply_topic = topics.reply(transport.client_id).rsplit("/", 1)[0] + "/fwd"
        self._forwards: PendingCalls[bytes] = PendingCalls(clock)
        self._traces: dict[bytes, Trace] = {}  # the forwards' calls, for relaying ok replies
        self._pings: PendingCalls[bytes] = PendingCalls(clock, limit=limits.max_pings)
        # Dicts, not sets: waiters failed together resume in the order they started (a set of
        # futures iterates by address, which would make simulated runs differ).
        self._waiting: dict[str, dict[asyncio.Future[bytes], None]] = {}

    @property
    def in_flight(self) -> int:
        """Forwards waiting for a reply."""
        return len(self._forwards)

    def waiting_on(self, device: str) -> int:
        """Forwards waiting for ``device``."""
        return len(self._waiting.get(device, ()))

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
    ) -> asyncio.Future[bytes]:
        """Send one forward; the future resolves to the device's raw ``ok`` reply or raises
        CallError (CallTimeout if unanswered, or if the device goes offline meanwhile).

        The device gets the whole remaining deadline (Message Expiry); we wait at most
        ``patience`` seconds for it, so an idempotent call can still fail over in time.
        Cancelling the future abandons the forward. Its outcome is recorded (registry, trace)
        when it settles, whoever awaits it.
        """
        left = remaining_s(self.clock, deadline, skill)
        if not self.transport.connected:
            raise TransportError(f"not connected: cannot forward {skill!r} to {device!r}")
        wait = left if patience is None else min(left, patience)
        corr, future = self._forwards.open(
            wait, f"no reply from {device}/{skill} within {wait:g} s"
        )
        self._traces[corr] = trace
        waiters = self._waiting.setdefault(device, {})
        waiters[future] = None
        self.registry.started(device, skill)
        started = self.clock.monotonic()

        def settled(fut: asyncio.Future[bytes]) -> None:
            del self._traces[corr]
            waiters.pop(fut, None)
            if not waiters and self._waiting.get(device) is waiters:
                del self._waiting[device]
            took = self.clock.monotonic() - started
            outcome = record_attempt(self.registry, trace, device, skill, took, fut)
            if self.stats is not None:
                self.stats.record(self.stats.key(device), outcome, took)

        future.add_done_callback(settled)
        user: tuple[tuple[str, str], ...] = ((TRACE_PROPERTY, tr),) if tr else ()
        if trace.caller:
            user += ((CALLER_PROPERTY, trace.caller),)
        if trace.hop:
            user += ((HOP_PROPERTY, str(trace.hop)),)
        self.transport.publish_nowait(
            self.topics.call(device, skill),
            payload,
            props=request_props(
                self.reply_topic, corr, left, user_properties=(*user, (IDEMPOTENCY_PROPERTY, idem))
            ),
        )
        return future

    def output_of(self, reply: bytes) -> Any:
        """The output of a device's raw ok reply (a :class:`~.coord_route.Launcher` method)."""
        return output_of(reply)

    def refusal(self, code: ErrorCode, message: str) -> RouteFailure:
        """The router's own refusals are the coordinator's :class:`RouteFailure`."""
        return RouteFailure(code, message)

    async def forward(
        self,
        device: str,
        skill: str,
        payload: bytes,
        deadline: float,
        idem: str,
        tr: str | None,
        trace: Trace,
    ) -> bytes:
        """One forward, waited for; returns the device's raw ok reply or raises CallError."""
        return await self.launch(device, skill, payload, deadline, idem, tr, trace)

    def fail_waiters(self, device: str, why: str) -> None:
        """``device`` went offline or left: its forwards will get no answer."""
        for waiter in list(self._waiting.get(device, ())):
            if not waiter.done():
                waiter.set_exception(CallTimeout(f"device {device!r} {why}"))

    def maybe_ping(self, device: str) -> None:
        """Ping a device that has not answered yet (bounded, in the background)."""
        e = self.registry.devices.get(device)
        now = self.clock.monotonic()
        if (
            e is None
            or e.pinging
            or len(self._pings) >= self.limits.max_pings
            or not self.transport.connected
            or (e.pinged_at is not None and now - e.pinged_at < self.limits.ping_interval_s)
        ):
            return
        e.pinging, e.pinged_at = True, now
        wait = max(MIN_PATIENCE_S, self.limits.ping_interval_s)
        corr, future = self._pings.open(wait, "no pong")

        def settled(fut: asyncio.Future[bytes]) -> None:
            entry = self.registry.devices.get(device)
            if entry is None:
                return
            entry.pinging = False
            if not fut.cancelled() and fut.exception() is None:
                entry.vouched = True

        future.add_done_callback(settled)
        self.transport.publish_nowait(
            self.topics.call(device, PING_SKILL),
            b"{}",
            props=request_props(self.reply_topic, corr, wait),
        )

    def cancel_pings(self) -> None:
        for corr in self._pings:
            future = self._pings.get(corr)
            if future is not None:
                future.cancel()

    def on_reply(self, msg: Inbound) -> None:
        """A device answered a forward or a ping (or something else arrived: dropped)."""
        corr = msg.props.correlation_data
        if corr is not None and corr in self._pings:
            if msg.payload.startswith(OK_PREFIX):
                self._pings.resolve(corr, msg.payload)
            return
        future = self._forwards.get(corr)
        if future is None:
            log.debug("late or unknown reply on %s dropped", msg.topic)
            return
        assert corr is not None
        payload = msg.payload
        # An edgeagent agent's ok reply is taken as is (the caller's client validates it).
        if not (payload.startswith(OK_PREFIX) and payload.endswith(b"}")):
            try:
                reply = decode_reply(payload)
            except ValidationError as exc:
                future.set_exception(InternalError(f"malformed reply: {exc.errors()[0]['msg']}"))
                return
            if isinstance(reply, ErrorReply):
                future.set_exception(CallError.from_reply(reply))
                return
        trace = self._traces[corr]
        if trace.relay is not None and not trace.answered:
            # Answer now rather than a few event-loop turns later, when the routing task wakes.
            trace.answered = True
            self.transport.publish_nowait(trace.relay[0], payload, props=trace.relay[1])
        future.set_result(payload)
