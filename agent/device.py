"""The device agent: announces a device and its skills, serves calls, reports health.

Lifecycle (an async context manager owning one ``asyncio.TaskGroup``)::

    async with DeviceAgent(config, transport=...) as agent:   # connected and announced
        await agent.wait_stopped()                            # until stop() / SIGTERM

On every (re)connect: retained ``state`` online, retained ``manifest``; the last will sets
``state`` offline. Calls arrive on ``…/call/{skill}`` and are answered on their Response Topic with
their Correlation Data. Each skill admits ``max_concurrency`` running calls plus ``max_queue``
waiting ones; past that the caller gets ``busy`` at once. A request whose deadline (Message Expiry
Interval) passes while it waits is dropped, not run. :meth:`stop` drains: new calls get
``unavailable``, in-flight calls get ``grace_s`` to finish, then ``offline`` is published and the
connection closed cleanly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from . import __version__
from .clock import SYSTEM_CLOCK, Clock
from .config import AgentConfig, load_skills
from .errors import CallError
from .logutil import LogLimiter, clip
from .protocol import (
    BINARY_CONTENT_TYPE,
    CALLER_PROPERTY,
    HOP_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    INPUT_PROPERTY,
    JSON_CONTENT_TYPE,
    MAX_IDEMPOTENCY_KEY,
    TRACE_PROPERTY,
    ErrorCode,
    ErrorReply,
    Event,
    EventSpec,
    Health,
    Manifest,
    Ok,
    SkillHealth,
    StateMessage,
    Topics,
    check_name,
    encode,
)
from .skills import Skill, SkillContext, SkillSet
from .stats import LatencyWindow, rss_bytes
from .transport.base import NO_PROPS, Inbound, Props, Transport, Will, valid_publish_topic

log = logging.getLogger(__name__)
#: One limiter for every agent in the process (a simulated fleet runs 100,000): refused and
#: failed calls are logged a few at a time per kind, with counts of the rest.
_limited = LogLimiter(log)

_OK_PREFIX = b'{"type":"ok","output":'
#: The system skill every agent answers (unless it has a skill of that name): device, release,
#: agent version, uptime. Names starting with "_" are reserved for such system skills.
PING_SKILL = "_ping"


#: How many idempotency keys (and their replies) an agent remembers.
IDEMPOTENCY_KEYS_KEPT = 4096
#: Repeats of a call still running that wait for its reply; more get ``busy``.
IDEMPOTENCY_WAITERS = 16
#: Deepest chain of rule-made calls an agent accepts (the coordinator cuts far earlier).
MAX_HOP = 64


@dataclass(slots=True)
class _IdemEntry:
    digest: bytes
    payload: bytes | None = None
    waiters: list[tuple[str, Props]] = field(default_factory=list)


class _Slot:
    """Admission and statistics for one skill."""

    __slots__ = ("calls", "errors", "in_flight", "latency", "queued", "rejected", "sem", "skill")

    def __init__(self, skill: Skill) -> None:
        self.skill = skill
        self.sem = asyncio.Semaphore(skill.options.max_concurrency)
        self.in_flight = 0
        self.queued = 0
        self.calls = 0
        self.errors = 0
        self.rejected = 0
        self.latency = LatencyWindow()

    def full(self) -> bool:
        o = self.skill.options
        return self.in_flight + self.queued >= o.max_concurrency + o.max_queue

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
class AgentStatistics:
    served: int
    failed: int
    dropped: int
    in_flight: int
    queued: int
    connects: int


class DeviceAgent:
    """Serve a device's skills over a :class:`~edgeagent.transport.Transport`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport | None = None,
        skills: Sequence[Skill] | None = None,
        skill_sets: Sequence[SkillSet] = (),
        events: dict[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        executor: concurrent.futures.Executor | None = None,
        updating: str | None = None,
    ) -> None:
        """``executor`` runs synchronous skills (default: ``config.workers`` threads of the
        agent's own); one handed in is shared, so the agent never shuts it down. ``updating``:
        announce ``updating`` (with this reason) rather than ``online`` from the first connect,
        until :meth:`set_updating` says otherwise (a release that must prove itself first)."""
        self.config = config
        self.device_id = config.device
        self.topics = Topics(config.root, config.fleet)
        if skills is None:
            skills, skill_sets, loaded_events = load_skills(config)
            events = {**loaded_events, **(events or {})}
        self._slots = {s.name: _Slot(s) for s in skills}
        self._sets = list(skill_sets)
        self._events = dict(events or {})
        self.clock = clock
        self._will_payload = encode(
            StateMessage(device=self.device_id, status="offline", reason="connection lost")
        )
        will = Will(self.topics.state(self.device_id), self._will_payload, qos=1, retain=True)
        if transport is None:
            from .transport.mqtt import MqttTransport

            transport = MqttTransport(
                config.broker,
                client_id=f"ea-dev-{self.device_id}",
                will=will,
                retry_first_connect=True,
            )
        elif transport.will is None:
            transport.will = will  # a transport handed in unconfigured gets the agent's will
        self.transport = transport
        self._call_prefix = self.topics.call(self.device_id, "")
        self._tg: asyncio.TaskGroup | None = None
        self._background: list[asyncio.Task[None]] = []
        # A dict, not a set: cancelled in the order they came (sets of tasks iterate by address).
        self._calls: dict[asyncio.Task[None], None] = {}
        # Keyed by (caller, skill, key): a key is only ever matched within one caller's calls
        # to one skill, and remembered with a hash of the input it came with.
        self._idem: OrderedDict[tuple[str, str, str], _IdemEntry] = OrderedDict()
        self._boot_id: str | None = None  # made on the first event: unique event ids
        self._events_sent = 0
        self._executor: concurrent.futures.Executor | None = executor
        self._own_executor = executor is None
        self._draining = False
        self._updating = updating  # why, while the state says "updating"
        # Made when needed: an idle agent holds no event (a simulated fleet has 100,000).
        self._stopped: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._started_mono = 0.0
        self._served = 0
        self._failed = 0
        self._dropped = 0

    # Lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._started_mono = self.clock.monotonic()
        if self._own_executor:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix=f"skill-{self.device_id}"
            )
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self.transport.on_connect(self._announce)
        await self.transport.subscribe(
            self.topics.calls_filter(self.device_id), self._on_call, qos=1
        )
        await self.transport.connect()
        self._background.append(
            self._tg.create_task(self._health_loop(), name=f"health-{self.device_id}")
        )
        for s in self._sets:
            self._background.append(
                self._tg.create_task(self._run_set(s), name=f"{type(s).__name__}-{self.device_id}")
            )
        log.info("%s: serving %d skills", self.device_id, len(self._slots))

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and leave: refuse new calls, let in-flight ones finish, publish offline."""
        if self._is_stopped() or self._tg is None:
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        self._draining = True
        self._idle = asyncio.Event()
        with contextlib.suppress(Exception):
            await self._publish_state("draining", "shutting down")
        if self._busy_count():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()  # set by _finish when the last call ends
        if self._busy_count():
            log.warning(
                "%s: %d calls unfinished after %.1f s grace",
                self.device_id,
                self._busy_count(),
                grace,
            )
        for task in self._background:  # no health after the offline state
            task.cancel()
        with contextlib.suppress(Exception):
            await self._publish_state("offline", "stopped")
        await self.transport.close()
        tg, self._tg = self._tg, None
        # Cancel the calls still running past the grace period, then join the group.
        for task in list(self._calls):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tg.__aexit__(None, None, None)
        if self._executor is not None and self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopping_event().set()

    def _is_stopped(self) -> bool:
        return self._stopped is not None and self._stopped.is_set()

    def _stopping_event(self) -> asyncio.Event:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        return self._stopped

    async def abort(self) -> None:
        """Die as a crashed process would: cancel everything, publish nothing more.

        The caller breaks the connection first (so the broker publishes the last will); the
        simulator uses this for crash faults.
        """
        if self._is_stopped() or self._tg is None:
            return
        self._draining = True
        for task in [*self._background, *self._calls]:
            task.cancel()
        tg, self._tg = self._tg, None
        with contextlib.suppress(asyncio.CancelledError):
            await tg.__aexit__(None, None, None)
        if self._executor is not None and self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.transport.connected:
            await self.transport.close()
        self._stopping_event().set()

    async def wait_stopped(self) -> None:
        await self._stopping_event().wait()

    def _busy_count(self) -> int:
        return sum(s.in_flight + s.queued for s in self._slots.values())

    # Announcements ------------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        return Manifest(
            device=self.device_id,
            fleet=self.config.fleet,
            profile=self.config.profile,
            tags=self.config.tags,
            skills=[s.skill.spec for s in self._slots.values()],
            events=[EventSpec(name=k, description=v) for k, v in sorted(self._events.items())],
            max_payload=self.config.max_payload,
            agent_version=__version__,
            release=self.config.release,
        )

    async def set_updating(self, updating: bool, reason: str = "updating") -> None:
        """Say on the retained state that this device is about to restart into another release
        (``updating``, with ``reason``: coordinators route nothing to it, calls made to it by
        name are still served) or, with False, that it serves as before (``online``). Kept
        across reconnects; a drain's ``draining`` wins."""
        self._updating = reason if updating else None
        if self._draining or self._tg is None or not self.transport.connected:
            return  # the next (re)connect announces it
        await self._publish_state("updating" if updating else "online", self._updating)

    async def _publish_state(
        self,
        status: Literal["online", "offline", "draining", "updating"],
        reason: str | None = None,
    ) -> None:
        msg = StateMessage(
            device=self.device_id,
            status=status,
            ts=round(self.clock.time(), 3),
            reason=reason,
        )
        await self.transport.publish(
            self.topics.state(self.device_id), encode(msg), qos=1, retain=True
        )

    async def _announce(self) -> None:
        await self.transport.publish(
            self.topics.manifest(self.device_id), encode(self.manifest()), qos=1, retain=True
        )
        if self._draining:
            await self._publish_state("draining")
        elif self._updating is not None:
            await self._publish_state("updating", self._updating)
        else:
            await self._publish_state("online")

    def health(self) -> Health:
        slots = self._slots.values()
        return Health(
            device=self.device_id,
            ts=round(self.clock.time(), 3),
            uptime_s=round(self.clock.monotonic() - self._started_mono, 3),
            calls_served=self._served,
            calls_failed=self._failed,
            calls_dropped=self._dropped,
            in_flight=sum(s.in_flight for s in slots),
            queue_depth=sum(s.queued for s in slots),
            memory_rss_bytes=rss_bytes(),
            skills={s.skill.name: s.health() for s in slots},
        )

    async def _health_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.health_interval_s)
            if self.transport.connected:
                self.transport.publish_nowait(
                    self.topics.health(self.device_id), encode(self.health())
                )

    async def _run_set(self, skill_set: SkillSet) -> None:
        try:
            await skill_set.run(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: background task of %s failed", self.device_id, type(skill_set))

    # DeviceHandle -------------------------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any] | BaseModel | None = None) -> None:
        """Publish an event on ``…/event/{name}``."""
        self._emit(name, data, 0)

    def _emit(self, name: str, data: dict[str, Any] | BaseModel | None, hop: int) -> None:
        """An event, with the hop of the call whose skill emitted it (0: none)."""
        check_name(name, "event name")
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data or {})
        if self._boot_id is None:
            self._boot_id = os.urandom(6).hex()
        self._events_sent += 1
        event = Event(
            device=self.device_id,
            name=name,
            ts=round(self.clock.time(), 3),
            data=payload,
            id=f"{self._boot_id}-{self._events_sent}",
        )
        props = Props(user_properties=((HOP_PROPERTY, str(hop)),)) if hop else NO_PROPS
        self.transport.publish_nowait(
            self.topics.event(self.device_id, name), encode(event), props=props
        )

    def statistics(self) -> AgentStatistics:
        slots = self._slots.values()
        return AgentStatistics(
            served=self._served,
            failed=self._failed,
            dropped=self._dropped,
            in_flight=sum(s.in_flight for s in slots),
            queued=sum(s.queued for s in slots),
            connects=self.transport.statistics().connects,
        )

    # Serving calls ------------------------------------------------------------------------------

    def _error_bytes(
        self,
        code: ErrorCode,
        message: str,
        skill: str,
        details: dict[str, Any] | None = None,
    ) -> bytes:
        self._failed += 1
        _limited.warning(
            f"call-{code}",
            "%s: call %s -> %s: %s",
            self.device_id,
            clip(skill),
            code,
            clip(message),
        )
        return encode(ErrorReply(code=code, message=message, details=details))

    def _reply_error(
        self,
        topic: str,
        props: Props,
        code: ErrorCode,
        message: str,
        skill: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        payload = self._error_bytes(code, message, skill, details)
        self.transport.publish_nowait(topic, payload, props=props)

    def _reply_ping(self, topic: str, props: Props) -> None:
        """The system skill every agent answers (not listed among the skills): who and what
        it runs, so a deploy's health check needs nothing from the user's skills."""
        out = {
            "device": self.device_id,
            "release": self.config.release,
            "agent_version": __version__,
            "uptime_s": round(self.clock.monotonic() - self._started_mono, 3),
            "skills": len(self._slots),
        }
        self.transport.publish_nowait(topic, encode(Ok(output=out)), props=props)

    # Idempotency keys: a repeated key gets the first run's reply, never a second run.

    def _idem_seen(
        self, key: tuple[str, str, str], digest: bytes, reply_to: str, props: Props
    ) -> bool:
        """Answer a repeated key from its first call; True if the call is handled."""
        entry = self._idem.get(key)
        if entry is None:
            return False
        self._idem.move_to_end(key)
        if entry.digest != digest:
            self._reply_error(
                reply_to,
                props,
                "bad_request",
                f"idempotency key {clip(key[2], 40)!r} was used for a call to {key[1]!r} with a "
                "different input: use a new key for a new call",
                key[1],
            )
            return True
        if entry.payload is not None:
            self.transport.publish_nowait(reply_to, entry.payload, props=props)
        elif len(entry.waiters) >= IDEMPOTENCY_WAITERS:
            self._reply_error(
                reply_to, props, "busy", "too many repeats of a call still running", key[1]
            )
            return True
        else:
            entry.waiters.append((reply_to, props))
        _limited.info(
            "duplicate",
            "%s: duplicate call (idempotency key %s) answered from the first",
            self.device_id,
            clip(key[2], 40),
        )
        return True

    def _idem_start(self, key: tuple[str, str, str] | None, digest: bytes) -> None:
        if key is None:
            return
        self._idem[key] = _IdemEntry(digest)
        while len(self._idem) > IDEMPOTENCY_KEYS_KEPT:
            self._idem.popitem(last=False)

    def _idem_finish(self, key: tuple[str, str, str] | None, payload: bytes | None) -> None:
        """Record the reply (None: the call never ran, so the key may run again)."""
        if key is None:
            return
        entry = self._idem.get(key)
        if entry is None:
            return
        if payload is None:
            del self._idem[key]
            return
        entry.payload = payload
        for reply_to, props in entry.waiters:
            self.transport.publish_nowait(reply_to, payload, props=props)
        entry.waiters.clear()

    def _on_call(self, msg: Inbound) -> None:
        name = msg.topic[len(self._call_prefix) :]
        props = msg.props
        reply_to = props.response_topic
        if not reply_to or not valid_publish_topic(reply_to):
            self._dropped += 1
            _limited.warning(
                "no-response-topic",
                "%s: call to %r dropped: without a response topic (or not a publishable one: %r)",
                self.device_id,
                clip(name),
                clip(reply_to),
            )
            return
        trace = props.user_property(TRACE_PROPERTY)
        reply_props = Props(
            correlation_data=props.correlation_data,
            content_type=JSON_CONTENT_TYPE,
            user_properties=((TRACE_PROPERTY, trace),) if trace else (),
        )
        key = props.user_property(IDEMPOTENCY_PROPERTY)
        idem: tuple[str, str, str] | None = None
        digest = b""
        if key is not None:
            if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
                self._reply_error(
                    reply_to,
                    reply_props,
                    "bad_request",
                    f"idempotency key of {len(key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}",
                    name,
                )
                return
            caller = props.user_property(CALLER_PROPERTY) or reply_to
            idem = (hashlib.blake2b(caller.encode(), digest_size=16).hexdigest(), name, key)
            digest = _input_digest(msg.payload, props)
            if self._idem_seen(idem, digest, reply_to, reply_props):
                return
        hop = _hop(props.user_property(HOP_PROPERTY))
        if hop is None:
            self._reply_error(
                reply_to,
                reply_props,
                "bad_request",
                f"user property {HOP_PROPERTY!r} must be a whole number from 0 to {MAX_HOP}",
                name,
            )
            return
        if self._draining:
            self._reply_error(reply_to, reply_props, "unavailable", "device is shutting down", name)
            return
        size = len(msg.payload)
        if size > self.config.max_payload:
            self._reply_error(
                reply_to,
                reply_props,
                "bad_request",
                f"payload of {size} bytes exceeds this device's limit of "
                f"{self.config.max_payload} bytes",
                name,
            )
            return
        slot = self._slots.get(name)
        if slot is None and name == PING_SKILL:
            self._reply_ping(reply_to, reply_props)
            return
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            self._reply_error(
                reply_to,
                reply_props,
                "not_found",
                f"device {self.device_id!r} has no skill {name!r} (skills: {known})",
                name,
            )
            return
        if slot.full():
            slot.rejected += 1
            o = slot.skill.options
            self._reply_error(
                reply_to,
                reply_props,
                "busy",
                f"skill {name!r} is at capacity ({o.max_concurrency} running, {o.max_queue} "
                "queued); retry later or elsewhere",
                name,
            )
            return
        try:
            if props.content_type == BINARY_CONTENT_TYPE:
                value = slot.skill.validate_binary_input(
                    msg.payload, props.user_property(INPUT_PROPERTY)
                )
            else:
                value = slot.skill.validate_input(msg.payload)
        except ValidationError as exc:
            self._reply_error(reply_to, reply_props, "bad_request", _summarize(exc), name)
            return
        except ValueError as exc:  # binary request: no bytes field, or bad `input` property
            self._reply_error(reply_to, reply_props, "bad_request", str(exc), name)
            return
        deadline = (
            self.clock.monotonic() + props.message_expiry
            if props.message_expiry is not None
            else None
        )
        assert self._tg is not None
        slot.queued += 1
        self._idem_start(idem, digest)
        task = self._tg.create_task(
            self._run(slot, value, reply_to, reply_props, trace, deadline, idem, hop)
        )
        self._calls[task] = None
        task.add_done_callback(self._forget_call)

    async def _run(
        self,
        slot: _Slot,
        value: BaseModel,
        reply_to: str,
        reply_props: Props,
        trace: str | None,
        deadline: float | None,
        idem: tuple[str, str, str] | None = None,
        hop: int = 0,
    ) -> None:
        skill = slot.skill
        replied: bytes | None = None
        # `queued` was counted at admission (in _on_call), so a burst cannot overrun the limit.
        try:
            await slot.sem.acquire()
        finally:
            slot.queued -= 1
        release = True
        running = False
        try:
            now = self.clock.monotonic()
            if deadline is not None and now >= deadline:
                self._dropped += 1
                _limited.warning(
                    "expired",
                    "%s: call to %s expired while queued; dropped",
                    self.device_id,
                    skill.name,
                )
                return
            slot.in_flight += 1
            running = True
            budget = skill.options.timeout_s
            if deadline is not None:
                budget = min(budget, deadline - now)
            ctx = SkillContext(
                device=self.device_id,
                skill=skill.name,
                trace=trace,
                deadline=deadline,
                emit=self.emit if not hop else functools.partial(self._emit, hop=hop),
                log=log,
            )
            started = self.clock.monotonic()
            code: ErrorCode | None = None
            message = ""
            details: dict[str, Any] | None = None
            payload = b""
            try:
                async with asyncio.timeout(budget):
                    if skill.is_async:
                        result = await skill.invoke(value, ctx)
                    else:
                        assert self._executor is not None
                        fut = asyncio.wrap_future(self._executor.submit(skill.invoke, value, ctx))
                        try:
                            result = await asyncio.shield(fut)
                        except asyncio.CancelledError:
                            # The thread cannot be stopped: keep its slot until it returns.
                            release = False
                            fut.add_done_callback(lambda _f: self._finish(slot))
                            raise
                try:
                    payload = _OK_PREFIX + skill.dump_output(result) + b"}"
                except (PydanticSerializationError, ValidationError) as exc:
                    raise _BadOutput(str(exc)) from exc
            except TimeoutError:
                code, message = (
                    "timeout",
                    f"skill {skill.name!r} did not finish within {budget:.3g} s",
                )
            except CallError as exc:
                code, message, details = exc.code, exc.message, exc.details
            except _BadOutput as exc:
                log.error("%s: %s returned invalid output: %s", self.device_id, skill.name, exc)
                code, message = (
                    "internal",
                    f"skill {skill.name!r} returned output not matching its schema",
                )
            except Exception as exc:
                log.exception("%s: skill %s raised", self.device_id, skill.name)
                code, message = (
                    "internal",
                    f"skill {skill.name!r} failed: {type(exc).__name__}: {exc}",
                )
            slot.latency.add(self.clock.monotonic() - started)
            slot.calls += 1
            if code is None:
                self._served += 1
            else:
                slot.errors += 1
                payload = self._error_bytes(code, message, skill.name, details)
            self.transport.publish_nowait(reply_to, payload, props=reply_props)
            replied = payload
        finally:
            self._idem_finish(idem, replied)
            if release:
                self._finish(slot, counted=running)

    def _forget_call(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    def _finish(self, slot: _Slot, counted: bool = True) -> None:
        if counted:
            slot.in_flight -= 1
        slot.sem.release()
        if self._draining and not self._busy_count() and self._idle is not None:
            self._idle.set()


def _input_digest(payload: bytes, props: Props) -> bytes:
    """What makes two calls "the same input": the bytes, their content type, binary inputs."""
    h = hashlib.blake2b(payload, digest_size=16)
    h.update(b"\0" + (props.content_type or "").encode())
    h.update(b"\0" + (props.user_property(INPUT_PROPERTY) or "").encode())
    return h.digest()


def _hop(value: str | None) -> int | None:
    """The hop user property as a number (0 when absent), None when it is not a valid one."""
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 3 or int(value) > MAX_HOP:
        return None
    return int(value)


class _BadOutput(Exception):
    """A skill returned something its output type does not allow."""


def _summarize(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid input: " + "; ".join(parts)
