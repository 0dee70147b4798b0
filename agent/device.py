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

This module is the lifecycle, the announcements, health and events. Serving calls is
:class:`~edgeagent.device_calls.CallServer`'s; what it decides is pure and lives apart:
:mod:`edgeagent.admission` (may the call run?) and :mod:`edgeagent.idempotency` (is it a
repeat?). Their public names are importable from here as before.

Task ownership: :meth:`start` enters the agent's task group (``self._group``) and :meth:`stop` /
:meth:`abort` exit it; the health loop, each skill set's background task and every call are its
tasks, so none outlives the agent and a failure reaches its owner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from . import __version__
from .admission import MAX_HOP, PING_SKILL
from .clock import SYSTEM_CLOCK, Clock
from .config import AgentConfig, load_skills
from .device_calls import CallServer
from .device_run import SkillSlot
from .idempotency import IDEMPOTENCY_KEYS_KEPT, IDEMPOTENCY_WAITERS
from .protocol import (
    HOP_PROPERTY,
    Event,
    EventSpec,
    Health,
    Manifest,
    StateMessage,
    Topics,
    check_name,
    encode,
)
from .skills import Skill, SkillSet
from .stats import rss_bytes
from .transport.base import NO_PROPS, Props, Transport, Will

__all__ = [
    "IDEMPOTENCY_KEYS_KEPT",
    "IDEMPOTENCY_WAITERS",
    "MAX_HOP",
    "PING_SKILL",
    "AgentStatistics",
    "DeviceAgent",
]

if TYPE_CHECKING:
    from .bridges.metrics_http import MetricsServer

log = logging.getLogger(__name__)


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
        self._server = CallServer(
            config,
            list(skills),
            call_prefix=self.topics.call(self.device_id, ""),
            transport=transport,
            clock=clock,
            executor=executor,
            emit_at_hop=self._emit,
        )
        # The agent's tasks (health, skill sets' background, calls): entered by start(), exited
        # by stop()/abort(). The background handles are kept to stop them before the offline
        # state; the calls are indexed by the CallServer.
        self._group: asyncio.TaskGroup | None = None
        self._background: list[asyncio.Task[None]] = []
        self._boot_id: str | None = None  # made on the first event: unique event ids
        self._events_sent = 0
        self._updating = updating  # why, while the state says "updating"
        # Made when needed: an idle agent holds no event (a simulated fleet has 100,000).
        self._stopped: asyncio.Event | None = None
        self._started_mono = 0.0
        #: The ``/metrics`` server when the config has a ``metrics_port`` (made by start()).
        self.metrics: MetricsServer | None = None

    # Lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._started_mono = self.clock.monotonic()
        if self.config.metrics_port is not None and self.metrics is None:
            from .bridges.metrics import serve_agent_metrics

            self.metrics = await serve_agent_metrics(
                self, host=self.config.metrics_host, port=self.config.metrics_port
            )
        group = self._group = asyncio.TaskGroup()
        await group.__aenter__()
        self._server.open(group, self._started_mono)
        self.transport.on_connect(self._announce)
        await self.transport.subscribe(
            self.topics.calls_filter(self.device_id), self._server.on_call, qos=1
        )
        await self.transport.connect()
        self._background.append(
            group.create_task(self._health_loop(), name=f"health-{self.device_id}")
        )
        for s in self._sets:
            self._background.append(
                group.create_task(self._run_set(s), name=f"{type(s).__name__}-{self.device_id}")
            )
        log.info("%s: serving %d skills", self.device_id, len(self._server))

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and leave: refuse new calls, let in-flight ones finish, publish offline."""
        if self._is_stopped() or self._group is None:
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        self._server.begin_drain()
        with contextlib.suppress(Exception):
            await self._publish_state("draining", "shutting down")
        await self._server.wait_idle(grace)
        for task in self._background:  # no health after the offline state
            task.cancel()
        with contextlib.suppress(Exception):
            await self._publish_state("offline", "stopped")
        await self.transport.close()
        group, self._group = self._group, None
        self._server.cancel()  # the calls still running past the grace period
        with contextlib.suppress(asyncio.CancelledError):
            await group.__aexit__(None, None, None)
        self._server.close()
        await self._close_metrics()
        self._stopping_event().set()

    async def _close_metrics(self) -> None:
        server, self.metrics = self.metrics, None
        if server is not None:
            await server.close()

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
        if self._is_stopped() or self._group is None:
            return
        for task in self._background:
            task.cancel()
        self._server.cancel()
        group, self._group = self._group, None
        with contextlib.suppress(asyncio.CancelledError):
            await group.__aexit__(None, None, None)
        self._server.close()
        await self._close_metrics()
        if self.transport.connected:
            await self.transport.close()
        self._stopping_event().set()

    async def wait_stopped(self) -> None:
        await self._stopping_event().wait()

    # Announcements ------------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        return Manifest(
            device=self.device_id,
            fleet=self.config.fleet,
            profile=self.config.profile,
            tags=self.config.tags,
            skills=self._server.specs(),
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
        if self._server.draining or self._group is None or not self.transport.connected:
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
        if self._server.draining:
            await self._publish_state("draining")
        elif self._updating is not None:
            await self._publish_state("updating", self._updating)
        else:
            await self._publish_state("online")

    def _uptime_s(self) -> float:
        return round(self.clock.monotonic() - self._started_mono, 3)

    def health(self) -> Health:
        server = self._server
        return Health(
            device=self.device_id,
            ts=round(self.clock.time(), 3),
            uptime_s=self._uptime_s(),
            calls_served=server.served,
            calls_failed=server.failed,
            calls_dropped=server.dropped,
            in_flight=server.in_flight(),
            queue_depth=server.queued(),
            memory_rss_bytes=rss_bytes(),
            skills=server.skill_health(),
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

    def _emit(
        self, name: str, data: dict[str, Any] | BaseModel | None = None, hop: int = 0
    ) -> None:
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

    def skill_slots(self) -> list[SkillSlot]:
        """Each skill's load and statistics (what a metrics exporter reads)."""
        return self._server.slots()

    def errors_by_code(self) -> dict[tuple[str, str], int]:
        """Error replies so far by (skill, code); ``other`` for a name that is no skill."""
        return dict(self._server.errors_by_code)

    def statistics(self) -> AgentStatistics:
        server = self._server
        return AgentStatistics(
            served=server.served,
            failed=server.failed,
            dropped=server.dropped,
            in_flight=server.in_flight(),
            queued=server.queued(),
            connects=self.transport.statistics().connects,
        )
