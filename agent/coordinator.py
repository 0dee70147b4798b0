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

The hot path is kept lean (``docs/benchmarks.md``): a forward is a future resolved by the reply
handler (no task, no ``asyncio.wait``), and a device's ``ok`` reply is relayed to the caller as
the device sent it unless the caller asked for ``explain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .client import encode_input
from .clock import SYSTEM_CLOCK, Clock
from .device import PING_SKILL
from .errors import CallError, CallTimeout, InternalError, TransportError
from .limits import CoordinatorLimits
from .logutil import LogLimiter, clip
from .protocol import (
    CALLER_PROPERTY,
    EXPLAIN_PROPERTY,
    HOP_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    JSON_CONTENT_TYPE,
    MAX_IDEMPOTENCY_KEY,
    MODE_PROPERTY,
    TRACE_PROPERTY,
    WHERE_PROPERTY,
    ErrorCode,
    ErrorReply,
    Event,
    Health,
    Manifest,
    Message,
    Ok,
    SkillSpec,
    StateMessage,
    Topics,
    check_name,
    decode,
    decode_reply,
    encode,
)
from .registry import Registry
from .routing import Decision, decide, parse_where
from .rules import Action, RuleSet
from .transport.base import Inbound, Props, Transport, valid_publish_topic

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 10.0
#: Hedge no earlier than this, seconds: below it a second request costs more than it saves.
MIN_HEDGE_S = 0.002
#: Least time to wait for one device before an idempotent call fails over, seconds.
MIN_PATIENCE_S = 0.25
_RETRYABLE: frozenset[str] = frozenset({"busy", "unavailable", "not_found", "timeout"})
_NEVER_RAN: frozenset[str] = frozenset({"busy", "unavailable", "not_found"})
#: Longest response topic a call may ask to be answered on, characters.
MAX_RESPONSE_TOPIC = 1024
#: How every edgeagent agent starts an ok reply; such a reply is relayed without parsing.
_OK_PREFIX = b'{"type":"ok",'


@dataclass(slots=True)
class _Attempt:
    device: str
    outcome: str
    ms: float


@dataclass(slots=True)
class _Trace:
    """One call's record (what ``explain`` returns) and where its answer goes."""

    decisions: list[Decision | dict[str, Any]] = field(default_factory=list)
    attempts: list[_Attempt] = field(default_factory=list)
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
        from .client import Fleet

        self.topics = Topics(root, fleet)
        self.transport = transport
        self.group = group
        self.retry_budget = retry_budget
        self.hedge = hedge
        self.clock = clock
        self.rng = rng or random.Random()
        self.limits = limits or CoordinatorLimits()
        self.registry = Registry(
            self.limits.max_devices, self.limits.suspect_after, self.limits.max_manifests_bytes
        )
        self._log = LogLimiter(log)
        # Calls being served: in all, and per caller (response topic; no entry when none).
        self._serving = 0
        self._per_caller: dict[str, int] = {}
        self._pings: dict[bytes, asyncio.Future[bytes]] = {}  # in flight, by correlation
        self._fleet = Fleet(transport=transport, root=root, fleet=fleet, clock=clock)
        self._tasks: set[asyncio.Task[None]] = set()
        # Forwards in flight: by correlation data, and by device (failed at once if it goes
        # offline). Each resolves to the device's raw ok reply or raises CallError.
        self._forwards: dict[bytes, tuple[asyncio.Future[bytes], _Trace]] = {}
        # Dicts, not sets: waiters failed together resume in the order they started (a set of
        # futures iterates by address, which would make simulated runs differ).
        self._waiting: dict[str, dict[asyncio.Future[bytes], None]] = {}
        self._forward_topic = self.topics.reply(transport.client_id).rsplit("/", 1)[0] + "/fwd"
        self.rules = rules
        self.routed = 0
        self.failovers = 0
        self.hedges = 0
        self.rules_fired = 0
        self.rules_cut = 0
        self.rules_limited = 0
        self.dropped = 0
        self.refused = 0

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        for topic_filter in (
            self.topics.all_states(),
            self.topics.all_manifests(),
            self.topics.all_health(),
        ):
            await self.transport.subscribe(topic_filter, self._on_fleet, qos=1)
        await self.transport.subscribe(self._forward_topic, self._on_forward_reply)
        await self.transport.subscribe(
            self.topics.coord_calls_filter(self.group), self._on_call, qos=1
        )
        if self.rules is not None:
            # Shared too: with several replicas, one of them acts on each event.
            for topic_filter in self.rules.event_filters(self.topics.root, self.topics.fleet):
                await self.transport.subscribe(
                    f"$share/{self.group}-rules/{topic_filter}", self._on_event, qos=1
                )
        await self._fleet.__aenter__()
        await self._fleet._sync()  # the retained fleet has arrived: the registry is complete

    async def stop(self) -> None:
        for ping in list(self._pings.values()):
            ping.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._fleet.close()

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
            if kind == "state":
                self.registry.clear_state(device)
            elif kind == "manifest":
                self.registry.clear_manifest(device)
            if device not in self.registry.devices:
                self._fail_waiters(device, "left the fleet")
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
        problem = self._fleet_problem(device, kind, message)
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
            self._fail_waiters(device, "went offline during the call")

    def _fleet_problem(self, device: str, kind: str, message: Message) -> str | None:
        """Why a state, manifest or health message cannot be believed (None: it can). The topic
        is the identity: the broker's ACL decides who may publish there, the payload does not."""
        expected = {"state": StateMessage, "manifest": Manifest, "health": Health}.get(kind)
        if expected is None or not isinstance(message, expected):
            return f"a {getattr(message, 'type', '?')} message on a {kind} topic"
        assert isinstance(message, StateMessage | Manifest | Health)
        if message.device != device:
            return f"it names device {clip(message.device, 60)!r}, the topic {device!r}"
        try:
            check_name(device, "device id")
            if isinstance(message, Manifest):
                lim = self.limits
                if len(message.skills) > lim.max_skills:
                    return f"{len(message.skills)} skills (limit {lim.max_skills})"
                if len(message.tags) > lim.max_tags:
                    return f"{len(message.tags)} tags (limit {lim.max_tags})"
                for spec in message.skills:
                    check_name(spec.name, "skill name")
                for key, value in message.tags.items():
                    check_name(key, "tag name")
                    check_name(value, "tag value")
        except ValueError as exc:
            return clip(str(exc))
        return None

    def _fail_waiters(self, device: str, why: str) -> None:
        for waiter in list(self._waiting.get(device, ())):
            if not waiter.done():
                waiter.set_exception(CallTimeout(f"device {device!r} {why}"))

    # Rules --------------------------------------------------------------------------------------

    def _on_event(self, msg: Inbound) -> None:
        assert self.rules is not None
        if len(msg.payload) > self.limits.max_message_bytes:
            self._drop("oversized", msg.topic, f"an event of {len(msg.payload):,} bytes")
            return
        try:
            event = decode(msg.payload)
        except ValidationError as exc:
            self._drop("malformed", msg.topic, clip(exc.errors()[0]["msg"]))
            return
        parsed = self.topics.parse_device_topic(msg.topic)
        if not isinstance(event, Event) or parsed is None:
            return
        if (event.device, event.name) != (parsed[0], parsed[2]):
            self._drop("spoofed", msg.topic, f"event names {clip(event.device, 60)!r}")
            return
        raw_hop = msg.props.user_property(HOP_PROPERTY) or "0"
        hop = int(raw_hop) if raw_hop.isascii() and raw_hop.isdigit() and len(raw_hop) < 4 else -1
        if not 0 <= hop < self.limits.rule_max_depth:
            self.rules_cut += 1
            self._log.warning(
                "rule-loop",
                "rules: event %s from %s came from a chain of %s rule-made calls (limit %d): "
                "no rule fires for it (a loop between rules?)",
                event.name, event.device, clip(raw_hop, 8), self.limits.rule_max_depth,
            )  # fmt: skip
            return
        entry = self.registry.devices.get(event.device)
        tags = entry.tags if entry is not None and entry.manifest is not None else None
        for action in self.rules.match(
            event, tags=tags, now=self.clock.time(), max_per_minute=self.limits.rule_max_per_minute
        ):
            if action.limited:
                self.rules_limited += 1
                self._log.warning(
                    "rule-rate",
                    "rule %s: fired %d times in the last minute (limit): not firing for %s/%s",
                    action.rule, self.limits.rule_max_per_minute, event.device, event.name,
                )  # fmt: skip
                continue
            self.rules_fired += 1
            # The key is the event's own id: a redelivered event never acts twice, and two
            # events in the same millisecond are two. (Older agents send no id.)
            idem = f"rule-{action.rule}-{event.id or uuid.uuid4().hex}"
            task = asyncio.get_running_loop().create_task(self._act(action, idem, hop + 1))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _act(self, action: Action, idem: str, hop: int = 1) -> None:
        deadline = self.clock.monotonic() + DEFAULT_DEADLINE_S
        payload = encode_input(action.input)
        trace = _Trace(caller=f"rule/{action.rule}", hop=hop)
        try:
            if action.device is not None:
                out: Any = _output(
                    await self._forward(
                        action.device, action.skill, payload, deadline, idem, None, trace
                    )
                )
            elif action.mode == "all":
                out = await self._fan_out(
                    action.skill, payload, action.where, deadline, idem, None, trace
                )
            else:
                out = _output(
                    await self._route_one(
                        action.skill, payload, action.where, deadline, idem, None, trace
                    )
                )
            self._log.info("rule-ok", "rule %s: %s -> %s", action.rule, action.explanation,
                           clip(out))  # fmt: skip
        except (CallError, _Fail) as exc:
            self._log.warning("rule-failed", "rule %s: %s failed: %s", action.rule, action.skill,
                              clip(exc))  # fmt: skip

    # Calls --------------------------------------------------------------------------------------

    def _on_call(self, msg: Inbound) -> None:
        props = msg.props
        reply_to = props.response_topic
        if not reply_to or not valid_publish_topic(reply_to):
            self._drop("no-response-topic", msg.topic, "a call without a usable response topic")
            return
        skill = msg.topic.rsplit("/", 1)[1]
        trace = props.user_property(TRACE_PROPERTY)
        reply_props = Props(
            correlation_data=props.correlation_data,
            content_type=JSON_CONTENT_TYPE,
            user_properties=((TRACE_PROPERTY, trace),) if trace else (),
        )
        refusal = self._admit(reply_to, props)
        if refusal is not None:
            self.refused += 1
            self._log.info("refused-" + refusal.code, "coordinator call %s -> %s: %s",
                           clip(skill), refusal.code, refusal.message)  # fmt: skip
            self.transport.publish_nowait(reply_to, encode(refusal), props=reply_props)
            return
        expiry = props.message_expiry
        wait = DEFAULT_DEADLINE_S if expiry is None else min(expiry, self.limits.max_deadline_s)
        deadline = self.clock.monotonic() + wait
        self._serving += 1
        self._per_caller[reply_to] = self._per_caller.get(reply_to, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._serve(skill, msg.payload, props, reply_to, reply_props, deadline)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._served_one(reply_to))

    def _admit(self, reply_to: str, props: Props) -> ErrorReply | None:
        """Refuse at once what the limits do not allow (None: go ahead)."""
        if len(reply_to) > MAX_RESPONSE_TOPIC:
            return ErrorReply(
                code="bad_request",
                message=f"response topic of {len(reply_to):,} characters: use at most "
                f"{MAX_RESPONSE_TOPIC}",
            )
        key = props.user_property(IDEMPOTENCY_PROPERTY)
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            return ErrorReply(
                code="bad_request",
                message=f"idempotency key of {len(key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}",
            )
        lim = self.limits
        if self._serving >= lim.max_in_flight:
            return ErrorReply(
                code="busy",
                message=f"coordinator at capacity ({lim.max_in_flight} calls in flight); "
                "retry later",
            )
        if self._per_caller.get(reply_to, 0) >= lim.max_in_flight_per_caller:
            return ErrorReply(
                code="busy",
                message=f"this caller has {lim.max_in_flight_per_caller} calls in flight "
                "(the limit); wait for some to finish",
            )
        return None

    def _served_one(self, caller: str) -> None:
        self._serving -= 1
        left = self._per_caller.get(caller, 1) - 1
        if left > 0:
            self._per_caller[caller] = left
        else:
            self._per_caller.pop(caller, None)

    async def _serve(
        self,
        skill: str,
        payload: bytes,
        props: Props,
        reply_to: str,
        reply_props: Props,
        deadline: float,
    ) -> None:
        explain = props.user_property(EXPLAIN_PROPERTY) == "1"
        trace = _Trace(caller=reply_to)
        reply: Ok | ErrorReply | None = None
        raw = b""
        try:
            where = parse_where(props.user_property(WHERE_PROPERTY))
            mode = props.user_property(MODE_PROPERTY) or "one"
            if mode not in ("one", "all"):
                raise _Fail("bad_request", f"mode must be one or all, not {mode!r}")
            idem = props.user_property(IDEMPOTENCY_PROPERTY) or uuid.uuid4().hex
            tr = props.user_property(TRACE_PROPERTY)
            if mode == "all":
                output: Any = await self._fan_out(skill, payload, where, deadline, idem, tr, trace)
                reply = Ok(output=output, route=trace.as_dict() if explain else None)
            else:
                if not explain:
                    # The device's ok reply goes back as it came (only the properties change),
                    # straight from the reply handler.
                    trace.relay = (reply_to, reply_props)
                raw = await self._route_one(skill, payload, where, deadline, idem, tr, trace)
                if explain:
                    reply = Ok(output=_output(raw), route=trace.as_dict())
            self.routed += 1
        except ValueError as exc:
            reply = ErrorReply(code="bad_request", message=str(exc))
        except (_Fail, CallError) as exc:
            reply = ErrorReply(
                code=exc.code,
                message=exc.message,
                details=exc.details,
                route=trace.as_dict() if explain else None,
            )
        except TransportError as exc:  # our own connection dropped mid-call (a broker restart)
            log.warning("routing %s failed: %s", skill, exc)
            reply = ErrorReply(code="unavailable", message=f"coordinator: {exc}")
        except Exception as exc:  # never leave a caller hanging
            log.exception("routing %s failed", skill)
            reply = ErrorReply(code="internal", message=f"coordinator: {type(exc).__name__}: {exc}")
        if isinstance(reply, ErrorReply):
            self._log.info("call-" + reply.code, "coordinator call %s -> %s: %s", clip(skill),
                           reply.code, clip(reply.message))  # fmt: skip
        if trace.answered:
            return
        if reply is not None:
            raw = encode(reply)
        self.transport.publish_nowait(reply_to, raw, props=reply_props)

    def _remaining(self, deadline: float, skill: str) -> float:
        left = deadline - self.clock.monotonic()
        if left <= 0:
            raise _Fail("timeout", f"deadline passed before {skill!r} could be forwarded")
        return left

    def _decide(
        self, skill: str, where: dict[str, str], tried: frozenset[str], trace: _Trace
    ) -> Decision:
        candidates, rejected = self.registry.candidates(skill, where, exclude=tried)
        decision = decide(
            skill, where, candidates, rejected, self.rng, suspect_after=self.limits.suspect_after
        )
        for c in candidates:
            if c.device in decision.rejected:  # left out until it answers a ping
                self._maybe_ping(c.device)
        trace.decisions.append(decision)
        return decision

    def _no_device(self, skill: str, where: dict[str, str], decision: Decision) -> _Fail:
        if not self.registry.has_skill(skill):
            return _Fail("not_found", f"no device in the fleet has a skill {skill!r}")
        why = "; ".join(f"{d}: {r}" for d, r in decision.rejected.items()) or "none matches"
        only_tags = all(r.startswith("tags ") for r in decision.rejected.values())
        code: ErrorCode = "not_found" if only_tags else "unavailable"
        return _Fail(code, f"no device can take {skill!r} where {where or '{}'}: {why}")

    # Forwards -----------------------------------------------------------------------------------

    def _launch(
        self,
        device: str,
        skill: str,
        payload: bytes,
        deadline: float,
        idem: str,
        tr: str | None,
        trace: _Trace,
        patience: float | None = None,
    ) -> asyncio.Future[bytes]:
        """Send one forward; the future resolves to the device's raw ``ok`` reply or raises
        CallError (CallTimeout if unanswered, or if the device goes offline meanwhile).

        The device gets the whole remaining deadline (Message Expiry); we wait at most
        ``patience`` seconds for it, so an idempotent call can still fail over in time.
        Cancelling the future abandons the forward. Its outcome is recorded (registry, trace)
        when it settles, whoever awaits it.
        """
        left = self._remaining(deadline, skill)
        if not self.transport.connected:
            raise TransportError(f"not connected: cannot forward {skill!r} to {device!r}")
        wait = left if patience is None else min(left, patience)
        loop = asyncio.get_running_loop()
        # Unguessable: a device may publish replies, so it must not be able to answer for
        # another device's forward.
        corr = os.urandom(12)
        future: asyncio.Future[bytes] = loop.create_future()
        self._forwards[corr] = (future, trace)
        waiters = self._waiting.setdefault(device, {})
        waiters[future] = None
        self.registry.started(device, skill)
        started = self.clock.monotonic()
        timer = loop.call_later(
            wait, _expire, future, f"no reply from {device}/{skill} within {wait:g} s"
        )

        def settled(fut: asyncio.Future[bytes]) -> None:
            timer.cancel()
            self._forwards.pop(corr, None)
            waiters.pop(fut, None)
            took = self.clock.monotonic() - started
            if fut.cancelled():
                self.registry.finished(device, skill, took, False, False)
                return
            exc = fut.exception()
            if exc is None:
                self.registry.finished(device, skill, took, True)
                trace.attempts.append(_Attempt(device, "ok", round(took * 1000, 3)))
                return
            code = exc.code if isinstance(exc, CallError) else "internal"
            self.registry.finished(device, skill, took, False, code == "timeout")
            trace.attempts.append(_Attempt(device, code, round(took * 1000, 3)))

        future.add_done_callback(settled)
        user: tuple[tuple[str, str], ...] = ((TRACE_PROPERTY, tr),) if tr else ()
        if trace.caller:
            user += ((CALLER_PROPERTY, trace.caller),)
        if trace.hop:
            user += ((HOP_PROPERTY, str(trace.hop)),)
        self.transport.publish_nowait(
            self.topics.call(device, skill),
            payload,
            props=Props(
                response_topic=self._forward_topic,
                correlation_data=corr,
                message_expiry=max(1, math.ceil(left)),
                user_properties=(*user, (IDEMPOTENCY_PROPERTY, idem)),
            ),
        )
        return future

    def _maybe_ping(self, device: str) -> None:
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
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        corr = os.urandom(12)
        self._pings[corr] = future
        wait = max(MIN_PATIENCE_S, self.limits.ping_interval_s)
        timer = asyncio.get_running_loop().call_later(wait, _expire, future, "no pong")

        def settled(fut: asyncio.Future[bytes]) -> None:
            timer.cancel()
            del self._pings[corr]
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
            props=Props(
                response_topic=self._forward_topic,
                correlation_data=corr,
                message_expiry=max(1, math.ceil(wait)),
            ),
        )

    def _on_forward_reply(self, msg: Inbound) -> None:
        corr = msg.props.correlation_data
        if corr is not None and corr in self._pings:
            pong = self._pings[corr]
            if not pong.done() and msg.payload.startswith(_OK_PREFIX):
                pong.set_result(msg.payload)
            return
        entry = self._forwards.get(corr) if corr is not None else None
        if entry is None or entry[0].done():
            log.debug("late or unknown reply on %s dropped", msg.topic)
            return
        future, trace = entry
        payload = msg.payload
        # An edgeagent agent's ok reply is taken as is (the caller's client validates it).
        if not (payload.startswith(_OK_PREFIX) and payload.endswith(b"}")):
            try:
                reply = decode_reply(payload)
            except ValidationError as exc:
                future.set_exception(InternalError(f"malformed reply: {exc.errors()[0]['msg']}"))
                return
            if isinstance(reply, ErrorReply):
                future.set_exception(CallError.from_reply(reply))
                return
        if trace.relay is not None and not trace.answered:
            # Answer now rather than a few event-loop turns later, when the routing task wakes.
            trace.answered = True
            self.transport.publish_nowait(trace.relay[0], payload, props=trace.relay[1])
        future.set_result(payload)

    async def _forward(
        self,
        device: str,
        skill: str,
        payload: bytes,
        deadline: float,
        idem: str,
        tr: str | None,
        trace: _Trace,
        patience: float | None = None,
    ) -> bytes:
        """One forward; returns the device's raw ok reply or raises CallError."""
        return await self._launch(device, skill, payload, deadline, idem, tr, trace, patience)

    def _patience(self, spec: SkillSpec, device: str, deadline: float) -> float | None:
        """How long to wait for one device before failing over (idempotent skills only):
        8 × its measured p95, at least 0.25 s; unmeasured, half of what is left. None: all."""
        if not spec.idempotent or self.retry_budget == 0:
            return None
        p95 = self.registry.p95_s(device, spec.name)
        if p95 is None:
            return max(MIN_PATIENCE_S, (deadline - self.clock.monotonic()) / 2)
        return max(MIN_PATIENCE_S, 8 * p95)

    def _ms(self, since: float) -> float:
        return round((self.clock.monotonic() - since) * 1000, 3)

    async def _route_one(
        self,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: _Trace,
    ) -> bytes:
        """Route to one device, failing over; returns its raw ok reply."""
        tried: set[str] = set()
        attempts = 0
        last: CallError | None = None
        while True:
            self._remaining(deadline, skill)
            decision = self._decide(skill, where, frozenset(tried), trace)
            if decision.chosen is None:
                if last is not None:  # every candidate was tried: the last answer stands
                    raise last
                raise self._no_device(skill, where, decision)
            device = decision.chosen
            spec = self.registry.devices[device].skill(skill)
            assert spec is not None
            tried.add(device)
            try:
                if self.hedge and spec.side_effect == "read" and spec.idempotent:
                    return await self._hedged(device, skill, payload, where, deadline, idem, tr,
                                              trace, tried)  # fmt: skip
                return await self._launch(
                    device,
                    skill,
                    payload,
                    deadline,
                    idem,
                    tr,
                    trace,
                    self._patience(spec, device, deadline),
                )
            except CallError as exc:
                retry = exc.code in (_RETRYABLE if spec.idempotent else _NEVER_RAN)
                if not retry or attempts >= self.retry_budget:
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
        trace: _Trace,
        tried: set[str],
    ) -> bytes:
        """Forward; if no answer after the device's p95, also ask a second device."""
        first = self._launch(device, skill, payload, deadline, idem, tr, trace)
        p95 = self.registry.p95_s(device, skill)
        if p95 is None:  # never measured: hedge after half of what is left
            delay = max(MIN_PATIENCE_S, (deadline - self.clock.monotonic()) / 2)
        else:
            delay = max(p95, MIN_HEDGE_S)
        if await _settled_within(first, min(delay, self._remaining(deadline, skill))):
            return first.result()
        decision = self._decide(skill, where, frozenset(tried), trace)
        if decision.chosen is None:
            return await first
        tried.add(decision.chosen)
        self.hedges += 1
        try:
            # A hedge is a separate read: its own key, so the device does not merge it.
            second = self._launch(decision.chosen, skill, payload, deadline, idem + "-h", tr, trace)
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

    async def _fan_out(
        self,
        skill: str,
        payload: bytes,
        where: dict[str, str],
        deadline: float,
        idem: str,
        tr: str | None,
        trace: _Trace,
    ) -> dict[str, Any]:
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
            raise self._no_device(skill, where, Decision(skill, where, None, "all", [], rejected))
        results = await asyncio.gather(
            *(
                self._forward(c.device, skill, payload, deadline, f"{idem}-{c.device}", tr, trace)
                for c in candidates
            ),
            return_exceptions=True,
        )
        out: dict[str, Any] = {"results": {}, "errors": {}}
        for c, r in zip(candidates, results, strict=True):
            if isinstance(r, bytes):
                try:
                    out["results"][c.device] = _output(r)
                    continue
                except CallError as exc:
                    r = exc
            if isinstance(r, CallError):
                out["errors"][c.device] = {"code": r.code, "message": r.message}
            else:
                out["errors"][c.device] = {"code": "internal", "message": str(r)}
        return out

    def statistics(self) -> dict[str, int]:
        return {
            "routed": self.routed,
            "failovers": self.failovers,
            "hedges": self.hedges,
            "rules_fired": self.rules_fired,
        }


class _Fail(Exception):
    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _output(raw: bytes) -> Any:
    """The output of a device's raw ok reply."""
    try:
        reply = decode_reply(raw)
    except ValidationError as exc:
        raise InternalError(f"malformed reply: {exc.errors()[0]['msg']}") from exc
    if isinstance(reply, ErrorReply):  # pragma: no cover - only ok replies are kept raw
        raise CallError.from_reply(reply)
    return reply.output


def _expire(future: asyncio.Future[bytes], message: str) -> None:
    if not future.done():
        future.set_exception(CallTimeout(message))


async def _settled_within(future: asyncio.Future[Any], timeout: float) -> bool:
    """Wait until ``future`` is done or ``timeout`` seconds passed; True if it is done.
    (``asyncio.wait`` with a timeout, without its sets.)"""
    if not future.done():
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(*_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        handle = loop.call_later(timeout, wake)
        future.add_done_callback(wake)
        try:
            await waiter
        finally:
            handle.cancel()
            future.remove_done_callback(wake)
    return future.done()
