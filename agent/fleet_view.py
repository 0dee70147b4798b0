"""The client's view of the fleet: what retained state and manifests (and live health) say.

:class:`FleetView` subscribes to every device's retained ``state`` and ``manifest`` (and, when
asked, live ``health``), keeps one :class:`DeviceInfo` per device, and answers "has everything
retained before now arrived?" with a marker round trip (:meth:`FleetView.sync`: the broker
delivers in order, so once our own marker comes back, every retained message sent before it has
too). The topic is the identity: a message naming another device is dropped.

Besides :meth:`~edgeagent.client.Fleet.devices` and :meth:`~edgeagent.client.Fleet.watch`, the
view feeds a local router's registry (``Fleet(route="local")``) through :attr:`FleetView.router`:
the same messages the coordinator's registry is built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .clock import Clock
from .errors import NotFound
from .protocol import (
    Event,
    Health,
    Manifest,
    Message,
    SkillSpec,
    StateMessage,
    Topics,
    check_name,
    decode,
)
from .transport.base import Inbound, Transport

if TYPE_CHECKING:
    from .local_routing import LocalRouter

__all__ = ["MAX_DEVICES", "DeviceInfo", "FleetView"]

log = logging.getLogger(__name__)
#: Most devices a client's fleet view holds (a flood of made-up manifests cannot grow it more).
MAX_DEVICES = 10_000
#: How many device names a not_found for an unknown device lists (closest names first).
KNOWN_DEVICES_SHOWN = 20
#: Seconds a sync marker may take before the view says it may be incomplete.
SYNC_TIMEOUT_S = 5.0


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


class FleetView:
    """Devices by name, kept current from the broker (see the module docstring)."""

    def __init__(self, transport: Transport, topics: Topics, clock: Clock, sync_topic: str) -> None:
        self.transport = transport
        self.topics = topics
        self.clock = clock
        self.sync_topic = sync_topic
        self.devices: dict[str, DeviceInfo] = {}
        self.tracking = False
        self.health = False
        #: Fed every accepted message (and cleared retained message) when set.
        self.router: LocalRouter | None = None
        self._syncs: dict[bytes, asyncio.Future[None]] = {}
        self._watchers: list[asyncio.Queue[Message]] = []

    async def track(self, *, health: bool = False) -> None:
        """Subscribe (once) to states and manifests, and health if asked; sync the first time."""
        if not self.tracking:
            self.tracking = True
            await self.transport.subscribe(self.topics.all_states(), self.on_message)
            await self.transport.subscribe(self.topics.all_manifests(), self.on_message)
            await self.sync()
        if health and not self.health:
            self.health = True
            await self.transport.subscribe(self.topics.all_health(), self.on_message)

    async def sync(self, timeout: float = SYNC_TIMEOUT_S) -> None:
        """Wait until retained messages sent before now have arrived (a marker round trip)."""
        token = uuid.uuid4().bytes
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[token] = fut
        try:
            await self.transport.publish(self.sync_topic, token, qos=1)
            async with self.clock.timeout(timeout):
                await fut
        except TimeoutError:
            log.warning("retained messages may be incomplete: sync marker did not return")
        finally:
            self._syncs.pop(token, None)

    def on_sync(self, msg: Inbound) -> None:
        fut = self._syncs.get(msg.payload)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def attach(self, router: LocalRouter) -> None:
        """Feed ``router`` from now on, starting with what the view already holds."""
        self.router = router
        for info in self.devices.values():
            if info.manifest is not None:
                router.observe(info.manifest)
            status = info.status
            if status in ("online", "offline", "draining", "updating"):
                router.observe(StateMessage(device=info.device, status=status, ts=info.since))
            if info.health is not None:
                router.observe(info.health)

    def on_message(self, msg: Inbound) -> None:
        parsed = self.topics.parse_device_topic(msg.topic)
        if parsed is None:
            return
        device = parsed[0]
        if not msg.payload:  # retained message cleared: device removed
            self.devices.pop(device, None)
            if self.router is not None:
                self.router.cleared(device, parsed[1])
            return
        try:
            message = decode(msg.payload)
        except ValidationError as exc:
            log.warning("ignoring malformed message on %s: %s", msg.topic, exc.errors()[0]["msg"])
            return
        if getattr(message, "device", device) != device:  # the topic is the identity
            log.warning("ignoring %s: it names another device", msg.topic[:200])
            return
        info = self.devices.get(device)
        if info is None:
            if len(self.devices) >= MAX_DEVICES:
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
        self.devices[device] = info
        if self.router is not None:
            self.router.observe(message, len(msg.payload))
        for queue in self._watchers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                log.warning("fleet watcher is slow; dropped its oldest update")
            queue.put_nowait(message)

    async def watch(self, *, maxsize: int = 1000) -> AsyncGenerator[Message, None]:
        """Follow state, manifest and health messages as they arrive (retained ones first)."""
        await self.track(health=True)
        # Snapshot and registration happen with no await between them: nothing is missed and
        # nothing is seen twice.
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize)
        self._watchers.append(queue)
        snapshot: list[Message] = []
        for info in sorted(self.devices.values(), key=lambda d: d.device):
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

    async def require(self, device: str) -> None:
        """Raise :class:`NotFound` unless ``device`` has announced itself in the fleet.

        Syncs the fleet view first (the first time: subscribe and sync; after that: one marker
        round trip, so a device that announced itself a moment ago is found too).
        """
        if self.tracking:
            await self.sync()
        else:
            await self.track()
        if device in self.devices:
            return
        known = sorted(self.devices)
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
