"""The client library: list a fleet and call skills.

::

    async with Fleet("mqtt://127.0.0.1:1883", fleet="home") as fleet:
        for d in await fleet.devices():
            print(d.device, d.status, [s.name for s in d.skills])
        state = await fleet.call("lamp-kitchen", "set_brightness", {"level": 40})

``call`` returns the skill's output (parsed JSON, or ``result_type`` if given) or raises a
:class:`~edgeagent.errors.CallError` subclass. Bound the time with ``timeout=`` (also sent as the
request's Message Expiry Interval, so a device never runs a call nobody waits for) or with an
enclosing ``asyncio.timeout()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import math
import os
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .broker import BrokerConfig
from .clock import SYSTEM_CLOCK, Clock
from .errors import CallError, CallTimeout, InternalError, NotFound, Unavailable
from .protocol import (
    BINARY_CONTENT_TYPE,
    DEFAULT_FLEET,
    DEFAULT_ROOT,
    EXPLAIN_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    INPUT_PROPERTY,
    MODE_PROPERTY,
    TRACE_PROPERTY,
    WHERE_PROPERTY,
    ErrorReply,
    Event,
    Health,
    Manifest,
    Message,
    SkillSpec,
    StateMessage,
    Topics,
    check_name,
    decode,
    decode_reply,
)
from .transport.base import Inbound, Props, Transport

log = logging.getLogger(__name__)
#: Most devices a client's fleet view holds (a flood of made-up manifests cannot grow it more).
MAX_DEVICES = 10_000

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
#: How many device names a not_found for an unknown device lists (closest names first).
KNOWN_DEVICES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the broker's retained messages (and live health) say about one device."""

    device: str
    status: str = "unknown"
    since: float | None = None
    manifest: Manifest | None = None
    health: Health | None = None
    skills: tuple[SkillSpec, ...] = field(default=())

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.manifest.tags) if self.manifest else {}

    @property
    def online(self) -> bool:
        return self.status == "online"


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    """A cached TypeAdapter: building one costs far more than using it."""
    adapter = _ADAPTERS.get(tp)
    if adapter is None:
        adapter = _ADAPTERS[tp] = TypeAdapter(tp)
    return adapter


@dataclass(frozen=True, slots=True)
class AskResult:
    """What :meth:`Fleet.ask` understood and what came back (``unsure`` when it would not guess)."""

    text: str
    interpretation: Any
    """The :class:`edgeagent.nlu.Interpretation` that was carried out, or None."""
    unsure: Any
    """The :class:`edgeagent.nlu.Unsure` (best candidates, reason) when nothing was called."""
    output: Any


def encode_input(value: Any) -> bytes:
    """A skill input as request bytes: models, dicts and lists as JSON; bytes and str as is."""
    if value is None:
        return b"{}"
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class Fleet:
    """A connection to one fleet: device listing, skill calls, live updates."""

    def __init__(
        self,
        broker: str | BrokerConfig | None = None,
        *,
        fleet: str = DEFAULT_FLEET,
        root: str = DEFAULT_ROOT,
        transport: Transport | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.topics = Topics(root, fleet)
        self.broker = broker if isinstance(broker, BrokerConfig) else BrokerConfig.from_url(broker)
        if transport is None:
            from .transport.mqtt import MqttTransport

            transport = MqttTransport(self.broker, client_id=f"ea-cli-{uuid.uuid4().hex[:10]}")
        self.transport = transport
        self.timeout = timeout
        self.clock = clock
        self._reply_topic = self.topics.reply(transport.client_id)
        self._sync_topic = self._reply_topic.rsplit("/", 1)[0] + "/sync"
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._devices: dict[str, DeviceInfo] = {}
        self._tracking = False
        self._syncs: dict[bytes, asyncio.Future[None]] = {}
        self._watchers: list[asyncio.Queue[Message]] = []

    async def __aenter__(self) -> Fleet:
        await self.transport.subscribe(self._reply_topic, self._on_reply)
        await self.transport.subscribe(self._sync_topic, self._on_sync)
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("client closed"))
        await self.transport.close()

    # Calls --------------------------------------------------------------------------------------

    async def call(
        self,
        device: str,
        skill: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        trace: str | None = None,
        result_type: type[T] | None = None,
        binary: bytes | None = None,
        check_device: bool = True,
    ) -> Any:
        """Call ``skill`` on ``device`` and return its output.

        ``binary`` sends raw bytes (an image, audio) for the skill's ``bytes`` input field
        without base64: Content Type ``application/octet-stream``, the other inputs (``input``)
        as JSON in a User Property. Raises :class:`CallTimeout` when no reply arrives within
        ``timeout`` seconds, or the :class:`CallError` subclass matching the device's error reply.

        A device that has never announced itself (no retained state or manifest in the fleet)
        gets :class:`NotFound` at once, naming the devices that did, closest names first, instead
        of a wait for the whole ``timeout``. The fleet view this reads is synced on the first
        call and kept current, so a known device costs no round trip. ``check_device=False``
        sends the call regardless (a responder that never announces itself).
        """
        timeout = self.timeout if timeout is None else timeout
        topic = self.topics.call(device, skill)
        what = f"{device}/{skill}"
        if check_device and device not in self._devices:
            await self._check_announced(device)
        if binary is None:
            reply = await self.request(
                topic, encode_input(input), timeout=timeout, trace=trace, what=what
            )
        else:
            others = () if input is None else ((INPUT_PROPERTY, encode_input(input).decode()),)
            reply = await self.request(
                topic,
                binary,
                timeout=timeout,
                trace=trace,
                what=what,
                content_type=BINARY_CONTENT_TYPE,
                user_properties=others,
            )
        if isinstance(reply, ErrorReply):
            raise CallError.from_reply(reply)
        if result_type is None:
            return reply.output
        try:
            return _adapter(result_type).validate_python(reply.output)
        except ValidationError as exc:
            raise InternalError(f"{device}/{skill} replied with unexpected output: {exc}") from exc

    async def call_skill(
        self,
        skill: str,
        input: Any = None,
        *,
        where: dict[str, str] | None = None,
        mode: str = "one",
        timeout: float | None = None,
        trace: str | None = None,
        explain: bool = False,
        idempotency_key: str | None = None,
        retry_after: float | None = None,
    ) -> Any:
        """Call ``skill`` on whichever device the coordinator picks (``mode="all"``: every
        matching device; the output is then ``{"results": {device: output}, "errors": {...}}``).

        ``where`` filters devices by tags. With ``explain=True`` the return value is
        ``(output, route)``, the coordinator's routing record. An idempotency key is sent (one is
        made if not given), so a retried call is never run twice. ``retry_after`` seconds without
        a reply, the same call (same key) is sent again, until ``timeout``: with coordinator
        replicas, a call held by one that died is taken up by another.
        """
        timeout = self.timeout if timeout is None else timeout
        props: tuple[tuple[str, str], ...] = (
            (IDEMPOTENCY_PROPERTY, idempotency_key or uuid.uuid4().hex),
        )
        if mode != "one":  # one is the default: every property costs decoding time
            props += ((MODE_PROPERTY, mode),)
        if where:
            props += ((WHERE_PROPERTY, ",".join(f"{k}={v}" for k, v in sorted(where.items()))),)
        if explain:
            props += ((EXPLAIN_PROPERTY, "1"),)
        payload = encode_input(input)
        deadline = self.clock.monotonic() + timeout
        while True:
            left = deadline - self.clock.monotonic()
            attempt = left if retry_after is None else min(retry_after, left)
            try:
                reply = await self.request(
                    self.topics.coord_call(skill),
                    payload,
                    timeout=attempt,
                    trace=trace,
                    what=f"the coordinator ({skill})",
                    user_properties=props,
                    expiry_s=left,
                )
                break
            except CallTimeout:
                if retry_after is None or deadline - self.clock.monotonic() <= 0:
                    raise
                log.info("no reply for %s after %.2g s; sending it again", skill, attempt)
        if isinstance(reply, ErrorReply):
            error = CallError.from_reply(reply)
            error.route = reply.route
            raise error
        return (reply.output, reply.route) if explain else reply.output

    async def ask(
        self,
        text: str,
        *,
        threshold: float = 0.6,
        timeout: float | None = None,
        router: Any = None,
    ) -> AskResult:
        """Understand a plain-language request and carry it out through the coordinator.

        The layered router (:mod:`edgeagent.nlu`: exact skill syntax, a grammar, then the zoo's
        intent model) maps ``text`` to a skill, its input and a ``where`` over the devices that
        are online now. Only a command understood with certainty is called; otherwise (below
        ``threshold``, a statement, question about an action, condition, unknown room or unit,
        several matching devices) nothing is called: ``result.unsure`` holds the best
        candidates, the reason, and the question to ask back (``result.unsure.question``).
        """
        from .nlu import Catalog, Interpretation, Router

        if router is None:
            manifests = [d.manifest for d in await self.devices() if d.online and d.manifest]
            router = Router(Catalog.from_manifests(manifests), threshold=threshold)
        reading = router.route(text)
        if not isinstance(reading, Interpretation):
            return AskResult(text=text, interpretation=None, unsure=reading, output=None)
        output = await self.call_skill(
            reading.skill,
            reading.input,
            where=reading.where,
            mode=reading.mode,
            timeout=timeout,
        )
        return AskResult(text=text, interpretation=reading, unsure=None, output=output)

    async def request(
        self,
        topic: str,
        payload: bytes,
        *,
        timeout: float,
        trace: str | None = None,
        what: str = "",
        content_type: str | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
        expiry_s: float | None = None,
    ) -> Any:
        """Low level: publish ``payload`` to ``topic`` as an MQTT 5 request, await the reply.

        The request's Message Expiry Interval is ``expiry_s`` (default: ``timeout``), rounded up
        to whole seconds.
        """
        loop = asyncio.get_running_loop()
        # Unguessable: devices may publish on reply topics, so none can answer for another.
        corr = os.urandom(12)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[corr] = fut
        user = (((TRACE_PROPERTY, trace),) if trace else ()) + user_properties
        props = Props(
            response_topic=self._reply_topic,
            correlation_data=corr,
            message_expiry=max(1, math.ceil(timeout if expiry_s is None else expiry_s)),
            content_type=content_type,
            user_properties=user,
        )
        try:
            await self.transport.publish(topic, payload, props=props)
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            raise CallTimeout(f"no reply from {what or topic} within {timeout:g} s") from exc
        finally:
            self._pending.pop(corr, None)

    async def _check_announced(self, device: str) -> None:
        """Raise :class:`NotFound` unless ``device`` has announced itself in the fleet.

        Syncs the fleet view first (the first time: subscribe and sync; after that: one marker
        round trip, so a device that announced itself a moment ago is found too).
        """
        if self._tracking:
            await self._sync()
        else:
            await self._track()
        if device in self._devices:
            return
        known = sorted(self._devices)
        close = difflib.get_close_matches(device, known, n=5, cutoff=0.6)
        ordered = close + [d for d in known if d not in close]
        shown = ", ".join(ordered[:KNOWN_DEVICES_SHOWN]) or "none"
        if len(ordered) > KNOWN_DEVICES_SHOWN:
            shown += f" and {len(ordered) - KNOWN_DEVICES_SHOWN} more"
        hint = f"; did you mean {' or '.join(repr(c) for c in close[:3])}?" if close else ""
        raise NotFound(
            f"no device {device!r} has announced itself in fleet {self.topics.fleet!r}{hint} "
            f"(devices: {shown})",
            details={"device": device, "known": ordered[:KNOWN_DEVICES_SHOWN]},
        )

    def _on_reply(self, msg: Inbound) -> None:
        corr = msg.props.correlation_data
        fut = self._pending.get(corr) if corr is not None else None
        if fut is None or fut.done():
            log.debug("late or unknown reply on %s dropped", msg.topic)
            return
        try:
            fut.set_result(decode_reply(msg.payload))
        except ValidationError as exc:
            fut.set_exception(InternalError(f"malformed reply: {exc.errors()[0]['msg']}"))

    # Fleet view ---------------------------------------------------------------------------------

    async def devices(self, *, include_offline: bool = True) -> list[DeviceInfo]:
        """Every device that announced itself (from retained state and manifests)."""
        await self._track()
        found = sorted(self._devices.values(), key=lambda d: d.device)
        return [d for d in found if include_offline or d.online]

    async def device(self, device: str) -> DeviceInfo | None:
        await self._track()
        return self._devices.get(device)

    async def watch(self, *, maxsize: int = 1000) -> AsyncGenerator[Message, None]:
        """Follow state, manifest and health messages as they arrive (retained ones first)."""
        await self._track(health=True)
        # Snapshot and registration happen with no await between them: nothing is missed and
        # nothing is seen twice.
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize)
        self._watchers.append(queue)
        snapshot: list[Message] = []
        for info in sorted(self._devices.values(), key=lambda d: d.device):
            if info.manifest is not None:
                snapshot.append(info.manifest)
            snapshot.append(StateMessage(device=info.device, status=info.status, ts=info.since))
        try:
            for message in snapshot:
                yield message
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def events(self, name: str = "+", *, maxsize: int = 1000) -> AsyncGenerator[Event, None]:
        """Follow events named ``name`` (``+``: all) from every device of the fleet."""
        if name != "+":
            check_name(name, "event name")
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        topic_filter = self.topics.all_events(name)

        def on_event(msg: Inbound) -> None:
            try:
                event = decode(msg.payload)
            except ValidationError as exc:
                log.warning("ignoring malformed event on %s: %s", msg.topic, exc.errors()[0]["msg"])
                return
            if not isinstance(event, Event):
                return
            if queue.full():
                queue.get_nowait()
                log.warning("event listener is slow; dropped its oldest event")
            queue.put_nowait(event)

        await self.transport.subscribe(topic_filter, on_event)
        try:
            while True:
                yield await queue.get()
        finally:
            if self.transport.connected:
                await self.transport.unsubscribe(topic_filter)

    async def _track(self, *, health: bool = False) -> None:
        if not self._tracking:
            self._tracking = True
            await self.transport.subscribe(self.topics.all_states(), self._on_fleet_message)
            await self.transport.subscribe(self.topics.all_manifests(), self._on_fleet_message)
            await self._sync()
        if health and not getattr(self, "_health", False):
            self._health = True
            await self.transport.subscribe(self.topics.all_health(), self._on_fleet_message)

    async def _sync(self, timeout: float = 5.0) -> None:
        """Wait until retained messages sent before now have arrived (a marker round trip)."""
        token = uuid.uuid4().bytes
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[token] = fut
        try:
            await self.transport.publish(self._sync_topic, token, qos=1)
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            log.warning("retained messages may be incomplete: sync marker did not return")
        finally:
            self._syncs.pop(token, None)

    def _on_sync(self, msg: Inbound) -> None:
        fut = self._syncs.get(msg.payload)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_fleet_message(self, msg: Inbound) -> None:
        parsed = self.topics.parse_device_topic(msg.topic)
        if parsed is None or not msg.payload:
            if parsed is not None and not msg.payload:
                self._devices.pop(parsed[0], None)  # retained message cleared: device removed
            return
        device = parsed[0]
        try:
            message = decode(msg.payload)
        except ValidationError as exc:
            log.warning("ignoring malformed message on %s: %s", msg.topic, exc.errors()[0]["msg"])
            return
        if getattr(message, "device", device) != device:  # the topic is the identity
            log.warning("ignoring %s: it names another device", msg.topic[:200])
            return
        info = self._devices.get(device)
        if info is None:
            if len(self._devices) >= MAX_DEVICES:
                log.warning("fleet view full (%d devices): ignoring %s", MAX_DEVICES, device)
                return
            info = DeviceInfo(device=device)
        if isinstance(message, StateMessage):
            info = replace(info, status=message.status, since=message.ts)
        elif isinstance(message, Manifest):
            info = replace(info, manifest=message, skills=tuple(message.skills))
        elif isinstance(message, Health):
            info = replace(info, health=message)
        else:
            return
        self._devices[device] = info
        for queue in self._watchers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                log.warning("fleet watcher is slow; dropped its oldest update")
            queue.put_nowait(message)
