"""The Home Assistant MQTT discovery bridge: the I/O shell (docs/home-assistant.md).

:class:`HaBridge` follows the fleet through a :class:`~edgeagent.Fleet` and keeps Home
Assistant's view of it current:

* every manifest -> one retained device discovery message (``{prefix}/device/{id}/config``)
  decided by :func:`~edgeagent.bridges.ha_map.map_device`; the device's retained state message
  is the availability topic, so a device going offline is unavailable in Home Assistant with no
  message from the bridge; a deleted manifest -> an empty retained config (Home Assistant
  removes the device) and the bridge's retained state topics cleared;
* a command on ``{root}/ha/{fleet}/{device}/{entity}/set`` -> one direct skill call
  (:func:`~edgeagent.bridges.ha_commands.decode_command`), its reply -> the state topics;
* state kept fresh: read skills polled on start, when a device comes online, every ``poll_s``
  and after commands; events carrying the state (the lamp's ``changed``) render it at once.

Bounded: devices (``max_devices``), entities per device (the mapping's limit), command payload
size, calls in flight (``max_pending``: more commands are refused and counted). A bad command,
a failed call or an odd output is logged (rate-limited) and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeagent.client import Fleet
from edgeagent.errors import EdgeAgentError
from edgeagent.logutil import LogLimiter, clip
from edgeagent.protocol import Event, Manifest, StateMessage
from edgeagent.transport.base import Inbound

from .ha_commands import SkillCall, decode_command, event_carries, render_event, render_state
from .ha_map import MAX_ENTITIES_PER_DEVICE, map_device
from .ha_model import DEFAULT_PREFIX, Command, DeviceMap, HaError, HaNames, StateView

log = logging.getLogger("edgeagent.bridges.ha")

#: Devices the bridge projects; more are logged and left out.
MAX_DEVICES = 1000
#: Skill calls (commands and polls) in flight at once.
MAX_PENDING = 32
#: Seconds between checks for deleted manifests.
RECONCILE_S = 2.0


@dataclass(frozen=True, slots=True)
class HaStats:
    """Counters since start (read by the metrics bridge)."""

    devices: int
    entities: int
    unmapped: int
    published: int
    commands: int
    command_errors: int
    call_errors: int
    polls: int
    events: int
    dropped: int


@dataclass
class _Counters:
    published: int = 0
    commands: int = 0
    command_errors: int = 0
    call_errors: int = 0
    polls: int = 0
    events: int = 0
    dropped: int = 0


@dataclass
class _Device:
    map: DeviceMap
    status: str = "unknown"
    refreshing: set[str] = field(default_factory=set)


async def plan(fleet: Fleet, *, prefix: str = DEFAULT_PREFIX) -> list[DeviceMap]:
    """The mapping of every device that has a manifest now (``bridge run --dry-run``)."""
    names = HaNames(fleet.topics, prefix)
    return [map_device(d.manifest, names) for d in await fleet.devices() if d.manifest is not None][
        :MAX_DEVICES
    ]


class HaBridge:
    """Projects one fleet into Home Assistant until cancelled (see the module docstring)."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        prefix: str = DEFAULT_PREFIX,
        poll_s: float = 30.0,
        call_timeout_s: float = 5.0,
        max_devices: int = MAX_DEVICES,
        max_entities: int = MAX_ENTITIES_PER_DEVICE,
        max_pending: int = MAX_PENDING,
        on_map: Callable[[DeviceMap], None] | None = None,
    ) -> None:
        if poll_s <= 0 or call_timeout_s <= 0:
            raise ValueError("poll_s and call_timeout_s must be positive")
        self.fleet = fleet
        self.names = HaNames(fleet.topics, prefix)
        self.poll_s = poll_s
        self.call_timeout_s = call_timeout_s
        self.max_devices = max_devices
        self.max_entities = max_entities
        self.max_pending = max_pending
        self.on_map = on_map
        self.clock = fleet.clock
        self._devices: dict[str, _Device] = {}
        self._commands: dict[str, tuple[str, Command]] = {}
        self._seen_configs: set[str] = set()
        self._pending = 0
        self._count = _Counters()
        self._limiter = LogLimiter(log, clock=fleet.clock.monotonic)
        self._tg: asyncio.TaskGroup | None = None
        self._hooked = False

    # Public -------------------------------------------------------------------------------------

    def maps(self) -> dict[str, DeviceMap]:
        return {name: d.map for name, d in self._devices.items()}

    def stats(self) -> HaStats:
        c = self._count
        return HaStats(
            devices=len(self._devices),
            entities=sum(d.map.entities for d in self._devices.values()),
            unmapped=sum(len(d.map.unmapped) for d in self._devices.values()),
            published=c.published,
            commands=c.commands,
            command_errors=c.command_errors,
            call_errors=c.call_errors,
            polls=c.polls,
            events=c.events,
            dropped=c.dropped,
        )

    async def run(self) -> None:
        """Serve until cancelled: every task lives in one TaskGroup."""
        transport = self.fleet.transport
        if not self._hooked:  # a transport cannot forget a callback: hook it once
            self._hooked = True
            transport.on_connect(self._reconnected)
        await transport.subscribe(self.names.commands_filter(), self._on_command, qos=1)
        await transport.subscribe(self.names.configs_filter(), self._on_config)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._watch(), name="ha-watch")
                tg.create_task(self._follow_events(), name="ha-events")
                tg.create_task(self._poll(), name="ha-poll")
                tg.create_task(self._reconcile(), name="ha-reconcile")
        finally:
            self._tg = None
            for topic in (self.names.commands_filter(), self.names.configs_filter()):
                with contextlib.suppress(EdgeAgentError, OSError):
                    await transport.unsubscribe(topic)

    # Logging ------------------------------------------------------------------------------------

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        self._limiter.log(logging.WARNING, kind, message, *args)

    # Manifests and state ------------------------------------------------------------------------

    async def _watch(self) -> None:
        async for message in self.fleet.watch():
            if isinstance(message, Manifest):
                await self._manifest(message)
            elif isinstance(message, StateMessage):
                self._state(message)

    async def _manifest(self, manifest: Manifest) -> None:
        known = self._devices.get(manifest.device)
        if known is None and len(self._devices) >= self.max_devices:
            self._warn(
                "devices",
                "HA bridge full (%d devices): %s left out",
                self.max_devices,
                manifest.device,
            )
            return
        new = map_device(manifest, self.names, max_entities=self.max_entities)
        if known is not None and known.map == new:
            return
        device = known or _Device(new)
        device.map = new
        if known is None:  # its state may have arrived first
            info = await self.fleet.device(manifest.device)
            device.status = info.status if info is not None else "unknown"
        self._devices[manifest.device] = device
        self._commands = {
            t: (n, c) for n, d in self._devices.items() for t, c in d.map.commands.items()
        }
        self._log_map(new)
        if new.payload is not None:
            await self._publish(new.config_topic, json.dumps(new.payload).encode())
        elif known is not None and known.map.payload is not None:
            await self._publish(new.config_topic, b"")
        if device.status == "online":
            self._refresh_all(manifest.device)

    def _log_map(self, dm: DeviceMap) -> None:
        skipped = ", ".join(f"{u.skill} ({u.reason})" for u in dm.unmapped) or "none"
        log.info("HA: %s -> %d entities; unmapped: %s", dm.device, dm.entities, skipped)
        if self.on_map is not None:
            self.on_map(dm)

    async def _reconnected(self) -> None:
        """After a reconnect: publish discovery again (a broker restarted without persistence
        lost it) and read every state."""
        if self._tg is None:
            return
        for name, device in list(self._devices.items()):
            if device.map.payload is not None:
                await self._publish(
                    device.map.config_topic, json.dumps(device.map.payload).encode()
                )
            if device.status == "online":
                self._refresh_all(name)

    def _state(self, message: StateMessage) -> None:
        device = self._devices.get(message.device)
        if device is None:
            return
        was, device.status = device.status, message.status
        if message.status == "online" and was != "online":
            self._refresh_all(message.device)

    async def _reconcile(self) -> None:
        """Remove devices whose manifest was deleted; clear discovery left by a previous run."""
        await self.fleet.sync()
        while True:
            present = {d.device: d for d in await self.fleet.devices()}
            for name in [n for n in self._devices if n not in present or not present[n].manifest]:
                await self._remove(name)
            # Every device with a manifest keeps its config, mapped yet or not (no churn).
            wanted = {self.names.config(n) for n, d in present.items() if d.manifest}
            for topic in sorted(self._seen_configs - wanted):
                log.info("HA: removing discovery of a device no longer in the fleet: %s", topic)
                self._seen_configs.discard(topic)
                await self._publish(topic, b"")
            await self.clock.sleep(RECONCILE_S)

    async def _remove(self, name: str) -> None:
        device = self._devices.pop(name)
        self._commands = {t: v for t, v in self._commands.items() if v[0] != name}
        log.info("HA: %s's manifest was deleted: removing it from Home Assistant", name)
        for topic in [device.map.config_topic, *device.map.state_topics()]:
            await self._publish(topic, b"")

    def _on_config(self, msg: Inbound) -> None:
        """Remember retained discovery this fleet's bridge published (to clear stale ones)."""
        if not msg.payload:
            self._seen_configs.discard(msg.topic)
            return
        if len(self._seen_configs) >= 2 * self.max_devices:
            return
        try:
            avty = json.loads(msg.payload).get("avty") or [{}]
            ours = str(avty[0].get("t", "")).startswith(f"{self.fleet.topics.base}/dev/")
        except (ValueError, AttributeError, IndexError):
            return
        if ours:
            self._seen_configs.add(msg.topic)

    # Publishing ---------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        try:
            await self.fleet.transport.publish(topic, payload, qos=1, retain=retain)
        except EdgeAgentError as exc:
            self._count.call_errors += 1
            self._warn("publish", "HA: cannot publish %s: %s", topic, exc)
            return
        self._count.published += 1

    async def _publish_view(self, view: StateView, output: Any) -> None:
        try:
            payload = render_state(view, output)
        except HaError as exc:
            self._count.call_errors += 1
            self._warn("state", "HA: %s: %s", view.topic, exc)
            return
        await self._publish(view.topic, payload)

    # Calls (commands and polls) -----------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> bool:
        """Start a call task if the pending bound allows; False (and counted) if not."""
        if self._tg is None or self._pending >= self.max_pending:
            coro.close()
            self._count.dropped += 1
            self._warn("busy", "HA: %d calls in flight; dropped %s", self._pending, name)
            return False
        self._pending += 1
        self._tg.create_task(coro, name=name)
        return True

    async def _call(self, device: str, call: SkillCall) -> tuple[bool, Any]:
        try:
            output = await self.fleet.call(
                device, call.skill, call.input, timeout=self.call_timeout_s
            )
        except (EdgeAgentError, TimeoutError) as exc:
            self._count.call_errors += 1
            self._warn("call", "HA: %s/%s failed: %s", device, call.skill, clip(exc))
            return False, None
        return True, output

    def _on_command(self, msg: Inbound) -> None:
        self._count.commands += 1
        target = self._commands.get(msg.topic)
        try:
            if target is None:
                raise HaError(f"no entity listens on {clip(msg.topic)}")
            call = decode_command(target[1], msg.payload)
        except HaError as exc:
            self._count.command_errors += 1
            self._warn("command", "HA: refused command on %s: %s", clip(msg.topic), exc)
            return
        device, command = target
        self._spawn(self._command(device, command, call), f"ha-cmd-{device}")

    async def _command(self, device: str, command: Command, call: SkillCall) -> None:
        try:
            ok, output = await self._call(device, call)
            if ok and call.skill in command.direct:
                for view in command.views:
                    await self._publish_view(view, output)
                return
        finally:
            self._pending -= 1
        for skill in dict.fromkeys(v.skill for v in command.views):
            self._refresh(device, skill)

    def _refresh_all(self, name: str) -> None:
        device = self._devices.get(name)
        for skill in device.map.poll_skills if device else ():
            self._refresh(name, skill)

    def _refresh(self, name: str, skill: str) -> None:
        device = self._devices.get(name)
        if device is None or skill in device.refreshing:
            return  # one poll per skill at a time: later requests ride on it
        if self._spawn(self._read(name, device, skill), f"ha-poll-{name}"):
            device.refreshing.add(skill)

    async def _read(self, name: str, device: _Device, skill: str) -> None:
        try:
            self._count.polls += 1
            ok, output = await self._call(name, SkillCall(skill, {}))
            if ok:
                for view in device.map.views:
                    if view.skill == skill:
                        await self._publish_view(view, output)
        finally:
            self._pending -= 1
            device.refreshing.discard(skill)

    async def _poll(self) -> None:
        while True:
            await self.clock.sleep(self.poll_s)
            for name, device in list(self._devices.items()):
                if device.status == "online":
                    self._refresh_all(name)

    # Events -------------------------------------------------------------------------------------

    async def _follow_events(self) -> None:
        async for event in self.fleet.events():
            await self._event(event)

    async def _event(self, event: Event) -> None:
        device = self._devices.get(event.device)
        if device is None:
            return
        self._count.events += 1
        topic = device.map.events.get(event.name)
        if topic is not None:
            await self._publish(topic, render_event(event.name, event.data), retain=False)
        carried = [v for v in device.map.views if event_carries(v, event.data)]
        for view in carried:
            await self._publish_view(view, event.data)
        if not carried and device.map.views:
            self._refresh_all(event.device)
