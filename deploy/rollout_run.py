"""The operator's side of a fleet rollout: the planner (``rollout_plan.Rollout``) driven over
MQTT.

:func:`start_rollout` lists the fleet from retained messages, leaves devices claimed by another
active rollout alone (``conflict``) and builds the planner; ``rollout_driver.Driver`` then serves
the release's content files, feeds the planner what the devices report and carries out what it
decides. The planner's state is retained on ``…/rollout/{id}``, so :func:`resume_rollout`, on
this machine or another, carries on from it. ``…/rollout/{id}/driver`` says which process drives
a rollout (its last will says when it died); ``…/control`` carries pause, resume and abort to it
(:func:`command`). Topics and encodings: ``rollout_io``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from ..broker import BrokerConfig
from ..client import DeviceInfo, Fleet
from ..errors import TransportError
from ..protocol import Topics
from ..transport.base import Inbound, Will
from .rollout_driver import Driver, Outcome, QuietReporter, Reporter
from .rollout_io import (
    COMMANDS,
    Known,
    Release,
    claims_of,
    control_topic,
    describe_driver,
    driver_record,
    driver_topic,
    encode_state,
    load_state,
    read_rollouts,
    state_topic,
    whoami,
)
from .rollout_plan import Rollout
from .rollout_state import DeviceView, RolloutError, RolloutSpec

__all__ = [
    "Conn", "Driver", "Outcome", "QuietReporter", "Reporter", "command", "open_fleet",
    "resume_rollout", "select_views", "start_rollout",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Conn:
    broker: BrokerConfig
    root: str
    fleet: str

    @property
    def topics(self) -> Topics:
        return Topics(self.root, self.fleet)


@contextlib.asynccontextmanager
async def open_fleet(conn: Conn, driving: str | None = None) -> AsyncIterator[Fleet]:
    """A connection to the fleet; ``driving``: the rollout this connection drives (its last
    will marks the rollout undriven)."""
    from ..transport.mqtt import MqttTransport

    will = None
    if driving is not None:
        record = driver_record(False, time.time(), "connection lost")
        will = Will(driver_topic(conn.topics, driving), record, qos=1, retain=True)
    transport = MqttTransport(
        conn.broker, client_id=f"ea-rollout-{uuid.uuid4().hex[:10]}", will=will
    )
    async with Fleet(conn.broker, fleet=conn.fleet, root=conn.root, transport=transport) as fleet:
        yield fleet


def select_views(
    infos: list[DeviceInfo], release: Release, spec: RolloutSpec, claimed: Mapping[str, str]
) -> tuple[list[DeviceView], dict[str, str]]:
    """The planner's view of the fleet, and the devices left out with why: no bundle for them
    in the release, another profile than their bundle's, or no ``system.update`` skill."""
    views: list[DeviceView] = []
    excluded: dict[str, str] = {}
    for info in infos:
        d = info.device
        m = info.manifest
        release_of = m.release if m is not None else None
        view = DeviceView(d, release.norm(d, release_of), info.online, info.tags, claimed.get(d))
        bundle = release.bundles.get(d)
        if not view.matches(spec.where):
            views.append(view)  # counted by the planner as not matching
        elif bundle is None:
            excluded[d] = f"no bundle for it in {release.path}"
        elif m is not None and m.profile is not None and m.profile != bundle.profile:
            excluded[d] = f"profile {m.profile}, its bundle is for {bundle.profile}"
        elif m is not None and not any(s.name == "system.update" for s in info.skills):
            excluded[d] = "no system.update skill (not a deployed agent, or system_skills off)"
        else:
            views.append(view)
    return views, excluded


async def start_rollout(
    conn: Conn, release: Release, spec: RolloutSpec, reporter: Reporter, stop: asyncio.Event
) -> Outcome:
    """Plan ``spec`` over the fleet and drive it to its end (or until ``stop`` is set)."""
    async with open_fleet(conn) as fleet:
        known = await read_rollouts(fleet.transport, fleet.topics)
        if spec.id in known:
            old = known[spec.id].rollout
            raise RolloutError(
                f"fleet {conn.fleet} has a rollout {spec.id} already"
                + (f" ({old.phase})" if old else "")
                + f": give another --id, or `edgeagent rollout resume {spec.id}`"
            )
        infos = await fleet.devices()
    if not infos:
        raise RolloutError(f"no device has announced itself in fleet {conn.fleet}")
    views, excluded = select_views(infos, release, spec, claims_of(known))
    rollout = Rollout.new(spec, views, time.time())
    if not rollout.ids:
        raise RolloutError(
            f"no device selected among the {len(infos)} of fleet {conn.fleet}: "
            f"{rollout.unmatched} do not match the selection, {len(excluded)} have no bundle "
            f"in {release.path} or another profile"
        )
    reporter.selected(rollout, excluded)
    return await _drive(conn, rollout, release, reporter, stop)


async def resume_rollout(
    conn: Conn, rollout_id: str, release: Release, reporter: Reporter, stop: asyncio.Event
) -> Outcome:
    """Drive rollout ``rollout_id`` again from its retained state (nobody else may drive it);
    a paused one is resumed."""
    async with open_fleet(conn) as fleet:
        k = (await read_rollouts(fleet.transport, fleet.topics, rollout_id)).get(rollout_id)
    rollout = _known(k, rollout_id, conn)
    if k is not None and k.driven:
        raise RolloutError(
            f"rollout {rollout_id} is driven by {describe_driver(k.driver)}; "
            f"`edgeagent rollout pause|resume|abort {rollout_id}` tells it what to do"
        )
    if rollout.spec.version != release.label:
        raise RolloutError(
            f"{release.path} is release {release.label}; rollout {rollout_id} rolls out "
            f"{rollout.spec.version}"
        )
    if rollout.phase == "paused" or rollout.finished:
        rollout.resume()  # a finished one is refused, with why
    reporter.note(f"resuming rollout {rollout_id} ({rollout.phase}, wave {rollout.wave})")
    return await _drive(conn, rollout, release, reporter, stop)


def _known(k: Known | None, rollout_id: str, conn: Conn) -> Rollout:
    if k is None:
        raise RolloutError(f"no rollout {rollout_id} in fleet {conn.fleet}")
    if k.rollout is None:
        raise RolloutError(f"rollout {rollout_id}: {k.error}")
    return k.rollout


async def _drive(
    conn: Conn, rollout: Rollout, release: Release, reporter: Reporter, stop: asyncio.Event
) -> Outcome:
    rid = rollout.spec.id
    since = time.time()
    async with open_fleet(conn, driving=rid) as fleet:
        t = fleet.transport
        await t.publish(driver_topic(conn.topics, rid), driver_record(True, since), qos=1,
                        retain=True)  # fmt: skip
        driver = Driver(fleet, rollout, release, reporter)
        try:
            outcome = await driver.run(stop)
        finally:
            reason = "stopped" if stop.is_set() else rollout.phase
            record = driver_record(False, since, reason)
            with contextlib.suppress(TransportError):
                await t.publish(driver_topic(conn.topics, rid), record, qos=1, retain=True)
    return outcome


async def command(conn: Conn, rollout_id: str, what: str, timeout: float = 10.0) -> str:
    """Pause, resume or abort a rollout. A driving process is told (and its next state waited
    for); with none, pause and abort change the retained state themselves. Returns what
    happened, in words."""
    if what not in COMMANDS:
        raise RolloutError(f"unknown rollout command {what!r}")
    async with open_fleet(conn) as fleet:
        t, topics = fleet.transport, fleet.topics
        k = (await read_rollouts(t, topics, rollout_id)).get(rollout_id)
        rollout = _known(k, rollout_id, conn)
        getattr(rollout, what)()  # refused here (RolloutError) when the planner would refuse it
        want = rollout.phase
        assert k is not None
        if not k.driven:
            if what == "resume":
                raise RolloutError(
                    f"no process drives rollout {rollout_id}: `edgeagent rollout resume "
                    f"{rollout_id} --bundle BUNDLE` drives it again"
                )
            payload, props = encode_state(rollout.to_json())
            await t.publish(state_topic(topics, rollout_id), payload, qos=1, retain=True,
                            props=props)  # fmt: skip
            return f"rollout {rollout_id} {want} (no process drives it)"
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_state(msg: Inbound) -> None:
            with contextlib.suppress(RolloutError):
                if msg.payload and load_state(msg).phase == want and not seen.done():
                    seen.set_result(None)

        await t.subscribe(state_topic(topics, rollout_id), on_state, qos=1)
        body = {"command": what, "by": whoami(), "ts": round(time.time(), 3)}
        await t.publish(control_topic(topics, rollout_id), json.dumps(body).encode(), qos=1)
        try:
            async with asyncio.timeout(timeout):
                await seen
        except TimeoutError:
            raise RolloutError(
                f"rollout {rollout_id}: its driver ({describe_driver(k.driver)}) did not "
                f"report {want} within {timeout:g} s"
            ) from None
        return f"rollout {rollout_id} {want} (driven by {describe_driver(k.driver)})"
