"""The coordinator: routes calls addressed to a skill (not a device) to a device that has it.

::

    {root}/{fleet}/coord/call/{skill}     request: the skill input; User Properties
                                          where=room=kitchen,kind=lamp  mode=one|all  explain=1
                                          idem=KEY (optional; generated if absent)

It is a plain MQTT 5 client, stateless beyond what the broker holds: the registry is rebuilt from
retained state and manifest messages (plus live health), and any number of replicas share the
calls through the shared subscription ``$share/{group}/…/coord/call/+``.

Per call: candidates are the online devices with the skill whose tags match ``where``; one is
chosen by power-of-two choices on (outstanding + 1) × latency (:mod:`edgeagent.routing`). The
deadline (Message Expiry Interval) is carried over: a call whose deadline has passed is never
forwarded, and each forward gets only what remains. Failover: a ``busy``, ``unavailable``,
``not_found`` or unanswered forward is retried on another device within ``retry_budget``; for a
skill that is not idempotent only when the device certainly did not run it (``busy``,
``unavailable``, ``not_found``), never after a timeout. Every forward carries an idempotency key,
so even a duplicate delivery cannot run a call twice. Read skills are hedged: if the first device
has not answered after its measured p95, a second request goes to another device and the first
answer wins. ``mode=all`` fans out to every matching device and gathers replies and errors.

This module is the I/O shell; the decisions are pure and live apart: which calls are taken on
(:mod:`edgeagent.coord_admission`), which messages about the fleet are believed
(:mod:`edgeagent.coord_fleet`), which device, failover, patience and hedging
(:mod:`edgeagent.routing`, :mod:`edgeagent.failover`, acted on by
:mod:`edgeagent.coord_route`), what the rules do (:mod:`edgeagent.rules`, acted on by
:mod:`edgeagent.coord_rules`). Forwards are futures
in :mod:`edgeagent.coord_forward`; every timer is the injected clock's; every task belongs to
one ``asyncio.TaskGroup`` entered in :meth:`Coordinator.start` and left in
:meth:`Coordinator.stop`.

The hot path is kept lean (``docs/benchmarks.md``): a forward is a future resolved by the reply
handler (no task, no ``asyncio.wait``), and a device's ``ok`` reply is relayed to the caller as
the device sent it unless the caller asked for ``explain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError

from .client import Fleet
from .clock import SYSTEM_CLOCK, Clock
from .coord_admission import MAX_RESPONSE_TOPIC, Admission
from .coord_fleet import fleet_problem
from .coord_forward import Forwarder, RouteFailure, Trace, output_of
from .coord_route import CallRouter
from .coord_rules import RuleActions
from .errors import CallError, TransportError
from .limits import CoordinatorLimits
from .logutil import LogLimiter, clip
from .metrics_stats import DEVICE_LABELS, OTHER, SKILL_LABELS, CallStats, LabelCap
from .protocol import (
    EXPLAIN_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    MODE_PROPERTY,
    TRACE_PROPERTY,
    WHERE_PROPERTY,
    ErrorReply,
    Ok,
    StateMessage,
    Topics,
    decode,
    encode,
)
from .registry import Registry
from .routing import parse_where
from .rpc import reply_props
from .rules import RuleSet
from .transport.base import Inbound, Props, Transport, valid_publish_topic

__all__ = ["DEFAULT_DEADLINE_S", "MAX_RESPONSE_TOPIC", "Coordinator"]

log = logging.getLogger(__name__)

#: Deadline of a call that carries no Message Expiry, and of a rule-made call, seconds.
DEFAULT_DEADLINE_S = 10.0


class Coordinator:
    """Route calls by skill and tags, with failover, hedging and fan-out."""

    def __init__(
        self,
        transport: Transport,
        *,
        root: str,
        fleet: str,
        group: str = "edgeagent-coord",
        retry_budget: int = 2,
        hedge: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        rules: RuleSet | None = None,
        limits: CoordinatorLimits | None = None,
    ) -> None:
        self.topics = Topics(root, fleet)
        self.transport = transport
        self.group = group
        self.clock = clock
        self.rng = rng or random.Random()
        self.limits = limits or CoordinatorLimits()
        self.registry = Registry(
            self.limits.max_devices, self.limits.suspect_after, self.limits.max_manifests_bytes
        )
        self._log = LogLimiter(log)
        # Read by a metrics exporter at scrape time: calls by (skill,) and forwards by
        # (device,), counted by outcome and timed; label values capped.
        self.call_stats = CallStats((LabelCap(SKILL_LABELS),))
        self.forward_stats = CallStats((LabelCap(DEVICE_LABELS),))
        #: Calls being served, in all and per caller (response topic), and the bounds on them.
        self.admission = Admission(self.limits)
        #: Forwards and pings in flight.
        self.forwarder = Forwarder(
            transport, self.topics, self.registry, clock, self.limits, self.forward_stats
        )
        self.router = CallRouter(
            self.forwarder, self.registry, clock, self.rng, self.limits,
            retry_budget=retry_budget, hedge=hedge,
        )  # fmt: skip
        # The retained fleet's arrival is awaited with the client's marker round trip.
        self._fleet = Fleet(transport=transport, root=root, fleet=fleet, clock=clock)
        self._calls: asyncio.TaskGroup | None = None  # every call served and rule-made call
        self.rules = rules
        self.actions: RuleActions | None = None
        if rules is not None:
            self.actions = RuleActions(
                rules, topics=self.topics, registry=self.registry, clock=clock,
                limits=self.limits, router=self.router, forwarder=self.forwarder,
                spawn=self._spawn, drop=self._drop,
            )  # fmt: skip
        self.routed = 0
        self.dropped = 0
        self.refused = 0

    # The routing knobs and counters live in the router; read (and set) them here as before.

    @property
    def retry_budget(self) -> int:
        return self.router.retry_budget

    @retry_budget.setter
    def retry_budget(self, value: int) -> None:
        self.router.retry_budget = value

    @property
    def hedge(self) -> bool:
        return self.router.hedge

    @hedge.setter
    def hedge(self, value: bool) -> None:
        self.router.hedge = value

    @property
    def failovers(self) -> int:
        return self.router.failovers

    @property
    def hedges(self) -> int:
        return self.router.hedges

    @property
    def rules_fired(self) -> int:
        return 0 if self.actions is None else self.actions.fired

    @property
    def rules_cut(self) -> int:
        """Events that fired no rule: they came from too long a chain of rule-made calls."""
        return 0 if self.actions is None else self.actions.cut

    @property
    def rules_limited(self) -> int:
        """Rule firings skipped by the per-minute rate limit."""
        return 0 if self.actions is None else self.actions.limited

    # Lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._calls = asyncio.TaskGroup()
        await self._calls.__aenter__()
        try:
            for topic_filter in (
                self.topics.all_states(),
                self.topics.all_manifests(),
                self.topics.all_health(),
            ):
                await self.transport.subscribe(topic_filter, self._on_fleet, qos=1)
            await self.transport.subscribe(self.forwarder.reply_topic, self.forwarder.on_reply)
            await self.transport.subscribe(
                self.topics.coord_calls_filter(self.group), self._on_call, qos=1
            )
            if self.actions is not None:
                # Shared too: with several replicas, one of them acts on each event.
                rules = self.actions.rules
                for topic_filter in rules.event_filters(self.topics.root, self.topics.fleet):
                    await self.transport.subscribe(
                        f"$share/{self.group}-rules/{topic_filter}", self.actions.on_event, qos=1
                    )
            await self._fleet.__aenter__()
            await self._fleet.sync()  # the retained fleet has arrived: the registry is complete
        except BaseException:
            await self._leave_group()
            raise

    async def stop(self) -> None:
        """Abandon pings and the calls in flight (their tasks are cancelled and joined), then
        disconnect."""
        self.forwarder.cancel_pings()
        await self._leave_group()
        await self._fleet.close()

    async def _leave_group(self) -> None:
        group, self._calls = self._calls, None
        if group is not None:
            # Leaving the group as if its body were cancelled cancels every task still in it,
            # then waits for them all.
            with contextlib.suppress(asyncio.CancelledError):
                await group.__aexit__(asyncio.CancelledError, asyncio.CancelledError(), None)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """A task in the coordinator's group (None, and the coroutine closed, once stopping)."""
        if self._calls is None:
            coro.close()
            return None
        task: asyncio.Task[None] = self._calls.create_task(coro, name=name)
        return task

    # Registry feed ------------------------------------------------------------------------------

    def _drop(self, kind: str, topic: str, why: str) -> None:
        self.dropped += 1
        self._log.warning(kind, "ignoring %s: %s", clip(topic), why)

    def _on_fleet(self, msg: Inbound) -> None:
        parsed = self.topics.parse_device_topic(msg.topic)
        if parsed is None:
            return
        device, kind, _ = parsed
        if not msg.payload:  # a retained message cleared
            self._on_cleared(device, kind)
            return
        limit = (
            self.limits.max_manifest_bytes if kind == "manifest" else self.limits.max_message_bytes
        )
        if len(msg.payload) > limit:
            self._drop("oversized", msg.topic, f"{len(msg.payload):,} bytes (limit {limit:,})")
            return
        try:
            message = decode(msg.payload)
        except ValidationError as exc:
            self._drop("malformed", msg.topic, clip(exc.errors()[0]["msg"]))
            return
        problem = fleet_problem(device, kind, message, self.limits)
        if problem:
            self._drop("spoofed", msg.topic, problem)
            return
        if not self.registry.apply(message, self.clock.monotonic(), len(msg.payload)):
            lim = self.limits
            self._drop(
                "fleet-full",
                msg.topic,
                f"the registry is full ({lim.max_devices} devices, "
                f"{lim.max_manifests_bytes:,} bytes of manifests)",
            )
            return
        if isinstance(message, StateMessage) and message.status == "offline":
            # Its last will (or a clean stop): calls waiting on it will get no answer.
            self.forwarder.fail_waiters(device, "went offline during the call")

    def _on_cleared(self, device: str, kind: str) -> None:
        if kind == "state":
            self.registry.clear_state(device)
        elif kind == "manifest":
            self.registry.clear_manifest(device)
        if device not in self.registry.devices:
            self.forwarder.fail_waiters(device, "left the fleet")

    # Calls --------------------------------------------------------------------------------------

    def _on_call(self, msg: Inbound) -> None:
        props = msg.props
        reply_to = props.response_topic
        if not reply_to or not valid_publish_topic(reply_to):
            self._drop("no-response-topic", msg.topic, "a call without a usable response topic")
            return
        skill = msg.topic.rsplit("/", 1)[1]
        answer_props = reply_props(props)
        refusal = self.admission.admit(reply_to, props.user_property(IDEMPOTENCY_PROPERTY))
        if refusal is not None:
            self.refused += 1
            self._log.info("refused-" + refusal.code, "coordinator call %s -> %s: %s",
                           clip(skill), refusal.code, refusal.message)  # fmt: skip
            self.transport.publish_nowait(reply_to, encode(refusal), props=answer_props)
            return
        expiry = props.message_expiry
        wait = DEFAULT_DEADLINE_S if expiry is None else min(expiry, self.limits.max_deadline_s)
        deadline = self.clock.monotonic() + wait
        task = self._spawn(
            "coord-call", self._serve(skill, msg.payload, props, reply_to, answer_props, deadline)
        )
        if task is None:  # stopping: the call is not taken on after all
            self.admission.release(reply_to)
            return
        task.add_done_callback(lambda _t: self.admission.release(reply_to))

    async def _serve(
        self,
        skill: str,
        payload: bytes,
        props: Props,
        reply_to: str,
        answer_props: Props,
        deadline: float,
    ) -> None:
        explain = props.user_property(EXPLAIN_PROPERTY) == "1"
        trace = Trace(caller=reply_to)
        started = self.clock.monotonic()
        answer: bytes | Ok | ErrorReply
        try:
            answer = await self._route(skill, payload, props, answer_props, deadline, trace)
            self.routed += 1
        except Exception as exc:  # never leave a caller hanging
            answer = self._failure(skill, exc, trace, explain)
        stats = self.call_stats  # a skill no device announced is not a label of its own
        stats.record(
            stats.key(skill) if self.registry.has_skill(skill) else (OTHER,),
            answer.code if isinstance(answer, ErrorReply) else "ok",
            self.clock.monotonic() - started,
        )
        if trace.answered:
            return
        raw = answer if isinstance(answer, bytes) else encode(answer)
        try:
            self.transport.publish_nowait(reply_to, raw, props=answer_props)
        except Exception as exc:  # a task of the group must not fail it (and the coordinator)
            log.warning("answering a call to %s failed: %s", clip(skill), exc)

    async def _route(
        self, skill: str, payload: bytes, props: Props, answer_props: Props, deadline: float,
        trace: Trace,
    ) -> bytes | Ok:  # fmt: skip
        """Route one call; its answer: the device's raw ok reply, or an Ok to encode."""
        explain = props.user_property(EXPLAIN_PROPERTY) == "1"
        where = parse_where(props.user_property(WHERE_PROPERTY))
        mode = props.user_property(MODE_PROPERTY) or "one"
        if mode not in ("one", "all"):
            raise RouteFailure("bad_request", f"mode must be one or all, not {mode!r}")
        idem = props.user_property(IDEMPOTENCY_PROPERTY) or uuid.uuid4().hex
        tr = props.user_property(TRACE_PROPERTY)
        if mode == "all":
            output = await self.router.fan_out(skill, payload, where, deadline, idem, tr, trace)
            return Ok(output=output, route=trace.as_dict() if explain else None)
        if not explain:
            # The device's ok reply goes back as it came (only the properties change), straight
            # from the reply handler.
            assert props.response_topic is not None
            trace.relay = (props.response_topic, answer_props)
        raw = await self.router.route_one(skill, payload, where, deadline, idem, tr, trace)
        return Ok(output=output_of(raw), route=trace.as_dict()) if explain else raw

    def _failure(self, skill: str, exc: Exception, trace: Trace, explain: bool) -> ErrorReply:
        """The error reply to a call that could not be routed or answered."""
        if isinstance(exc, ValueError):
            reply = ErrorReply(code="bad_request", message=str(exc))
        elif isinstance(exc, RouteFailure | CallError):
            reply = ErrorReply(
                code=exc.code,
                message=exc.message,
                details=exc.details,
                route=trace.as_dict() if explain else None,
            )
        elif isinstance(exc, TransportError):  # our own connection dropped (a broker restart)
            log.warning("routing %s failed: %s", skill, exc)
            reply = ErrorReply(code="unavailable", message=f"coordinator: {exc}")
        else:
            log.error("routing %s failed", skill, exc_info=exc)
            reply = ErrorReply(code="internal", message=f"coordinator: {type(exc).__name__}: {exc}")
        self._log.info("call-" + reply.code, "coordinator call %s -> %s: %s", clip(skill),
                       reply.code, clip(reply.message))  # fmt: skip
        return reply

    def statistics(self) -> dict[str, int]:
        return {
            "routed": self.routed,
            "failovers": self.failovers,
            "hedges": self.hedges,
            "rules_fired": self.rules_fired,
        }
