"""The device side of a simulated rollout: ``system.info``/``update``/``rollback``/``restart`` on
every simulated agent, the device's releases on its "disk", and the device tool's switch.

A release is a version name and a list of content files (``sha256``, size) made up from the
spec's sizes (:class:`Catalog`): the starting release and the new one share the unchanged files,
so a one-file change misses one file and a full update misses everything. What a device holds
survives agent restarts and crashes (:class:`Disk`); what its agent does dies with it.

An update, as ``agent/system.py`` does it, with the same skills' input and output models and
the same retained ``…/dev/{device}/update`` reports (its ``_publish``, self-test and states):

1. ``system.update`` checks the manifest (``agent.system._parse_manifest``), answers ``current``
   or ``downloading`` with the missing files and bytes, and goes on in the background;
2. *downloading*: the missing bytes at the link's bandwidth, about one second of data per step,
   counted in ``Disk.bytes_in``; a partial file survives a crash and is resumed from its last
   whole chunk (``deploy.transfer.CHUNK``); a connection down for 50 s (the fetch's 10 s timeout
   times 5 attempts) fails the fetch;
3. *applying*: the device tool (a task of the device, not of its agent) switches the release,
   stops the agent and starts the new one after the restart time, with a deadline to confirm;
4. *verifying*: the new agent calls its own ``_ping`` through the broker (``self_test``); a bad
   release fails here. Healthy: commit. Not confirmed by the deadline: the tool switches back and
   the old release's agent reports ``rolled_back``. A device that crashes while a release is
   switched but unconfirmed comes back on its previous release (the unit's pre-start check).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..deploy.transfer import CHUNK
from ..errors import Unavailable
from ..skills import collect_skills, skill
from ..system import (
    STARTING,
    Done,
    SystemInfo,
    SystemSkills,
    UpdateRequest,
)
from .spec import RolloutScenario

#: A fetch gives up after this long without its server: ``fetch_files``' 10 s timeout x 5 attempts.
TRANSFER_GIVE_UP_S = 50.0


def file_hash(release: str, part: str) -> str:
    return hashlib.sha256(f"sim/{release}/{part}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Catalog:
    """The releases of a simulated rollout: their files, and where the new one is bad."""

    old: str
    new: str
    files: dict[str, tuple[tuple[str, int], ...]]
    bad: frozenset[str]
    """Devices on which the new release fails its self-test."""

    @classmethod
    def build(cls, r: RolloutScenario, devices: list[tuple[str, str]], seed: int) -> Catalog:
        """``devices``: (device id, group) of the fleet."""
        same = r.size_bytes - r.changed
        shared = ((file_hash("base", "unchanged"), same),) if same else ()
        files = {
            r.from_release: (*shared, (file_hash(r.from_release, "changed"), r.changed)),
            r.release: (*shared, (file_hash(r.release, "changed"), r.changed)),
        }
        bad: set[str] = set()
        if r.bad is not None:
            rng = random.Random(f"{seed}/rollout/bad")
            groups, named = set(r.bad.groups), set(r.bad.devices)
            for device, group in devices:  # one draw per device, in fleet order
                drawn = rng.random() < r.bad.fraction
                if drawn or group in groups or device in named:
                    bad.add(device)
        return cls(r.from_release, r.release, files, frozenset(bad))

    def manifest(self, version: str) -> str:
        files = [{"sha256": sha, "size": size} for sha, size in self.files[version]]
        return json.dumps({"version": version, "files": files}, separators=(",", ":"))

    def working(self, device: str, release: str) -> bool:
        return release in self.files and not (release == self.new and device in self.bad)


@dataclass(slots=True)
class Disk:
    """What one device holds across restarts: its releases and content files."""

    release: str
    store: set[str]
    previous: str | None = None
    pending: str | None = None
    """Switched to and not yet confirmed healthy."""
    rolled_back: tuple[str, str] | None = None
    """(failed version, reason) when the last switch was a rollback."""
    partial: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    switches: int = 0
    tool: asyncio.Task[None] | None = None
    down: bool = False
    """Crashed: nothing runs on the device until the fault ends."""


class Control(Protocol):
    """What the device tool asks of the simulation (``runner.Simulation`` implements it)."""

    async def stop_agent(self, dev: Any) -> None: ...
    async def start_agent(self, dev: Any) -> None: ...


@dataclass(slots=True)
class DeviceSystem:
    """The device's own side (the device tool) of one simulated device."""

    dev: Any
    """The ``SimDevice``."""
    disk: Disk
    catalog: Catalog
    control: Control
    bandwidth: float
    """Bytes per second."""
    restart_s: float

    def _spawn_tool(self, work: Any) -> None:
        old = self.disk.tool
        if old is not None and not old.done():
            old.cancel()
        self.disk.tool = asyncio.get_running_loop().create_task(work)

    def apply(self, version: str, confirm_within: float) -> None:
        self._spawn_tool(self._apply(version, confirm_within))

    def rollback(self, reason: str) -> bool:
        if self.disk.previous is None:
            return False
        self._spawn_tool(self._rollback(reason))
        return True

    def restart(self) -> None:
        self._spawn_tool(self._restart())

    async def _restart(self) -> None:
        await asyncio.sleep(0.5)  # the tool starts (and the call that asked for it is answered)
        await self.control.stop_agent(self.dev)
        await asyncio.sleep(self.restart_s)
        if not self.disk.down:
            await self.control.start_agent(self.dev)

    async def _apply(self, version: str, confirm_within: float) -> None:
        d = self.disk
        d.previous, d.release, d.pending, d.rolled_back = d.release, version, version, None
        d.switches += 1
        deadline = asyncio.get_running_loop().time() + confirm_within
        await self._restart()
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        if d.pending == version:
            await self._rollback(f"not confirmed within {confirm_within:g} s")

    async def _rollback(self, reason: str) -> None:
        d = self.disk
        if d.previous is None:
            return
        d.rolled_back = (d.release, reason)
        d.release, d.previous, d.pending = d.previous, None, None
        d.switches += 1
        await self._restart()

    def crashed(self) -> None:
        """A power cut: the tool's work dies with the device."""
        self.disk.down = True
        if self.disk.tool is not None:
            self.disk.tool.cancel()
            self.disk.tool = None

    def booting(self) -> None:
        """Before the agent starts after a crash: an unconfirmed switch is undone."""
        d = self.disk
        d.down = False
        if d.pending is not None and d.previous is not None:
            d.rolled_back = (d.release, "not confirmed before a restart")
            d.release, d.previous, d.pending = d.previous, None, None
            d.switches += 1


class SimSystemSkills(SystemSkills):
    """One per simulated agent: ``agent/system.py``'s skills on a simulated device (its
    reporting and self-test are inherited; installing is :class:`DeviceSystem`'s)."""

    def __init__(self, system: DeviceSystem) -> None:
        super().__init__(Path("/nonexistent/edgeagent-sim"), system.disk.release, Path("/"))
        self.system = system

    def skills(self) -> list[Any]:
        return collect_skills(self)

    @skill(name="system.info", side_effect="read", description="Release, uptime, space, Python.")
    async def info(self) -> SystemInfo:
        agent, d = self._ready(), self.system.disk
        return SystemInfo(
            device=self._device_id(), release=d.release, previous=d.previous, pending=d.pending,
            uptime_s=round(agent.clock.monotonic() - self._started, 3), python="simulated",
            platform="sim", machine="sim", free_bytes=None, service="sim", update=self._last,
        )  # fmt: skip

    # system.update is the real one (agent/system.py): these are its device-specific steps.

    def _check_fits(self, manifest: dict[str, Any]) -> None:
        version = str(manifest["version"])
        if version not in self.system.catalog.files:
            raise ValueError(f"release {version} is not signed by a trusted key")

    def _missing(self, manifest: dict[str, Any]) -> list[tuple[str, int]]:
        store = self.system.disk.store
        wanted = [(str(f["sha256"]), int(f["size"])) for f in manifest["files"]]
        return [(sha, size) for sha, size in dict(wanted).items() if sha not in store]

    async def _run_update(
        self, req: UpdateRequest, manifest: dict[str, Any], wanted: list[tuple[str, int]]
    ) -> None:
        await self._run_sim_update(req, str(manifest["version"]), wanted)

    async def _run_sim_update(
        self, req: UpdateRequest, version: str, wanted: list[tuple[str, int]]
    ) -> None:
        total = sum(size for _, size in wanted)
        try:
            self._publish("downloading", version, rollout=req.rollout, total=total, done=0)
            await self._fetch(version, req.rollout, wanted, total)
            self._publish("applying", version, rollout=req.rollout, total=total, done=total)
            await self._set_updating(True, f"updating to {version}")  # about to restart
            self.system.apply(version, req.confirm_within_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported, never raised: the agent keeps serving
            self._publish("failed", version, rollout=req.rollout, error=str(exc)[:500])

    async def _fetch(
        self, version: str, rollout: str | None, wanted: list[tuple[str, int]], total: int
    ) -> None:
        disk, loop = self.system.disk, asyncio.get_running_loop()
        rate = self.system.bandwidth
        step = max(CHUNK, int(rate) // CHUNK * CHUNK)  # about a second of data at a time
        transport = self._agent.transport
        done = sum(min(size, disk.partial.get(sha, 0) // CHUNK * CHUNK) for sha, size in wanted)
        reported = loop.time()
        for sha, size in wanted:
            have = min(size, disk.partial.get(sha, 0) // CHUNK * CHUNK)  # resumed
            silent_since: float | None = None
            while have < size:
                if not transport.connected:
                    now = loop.time()
                    silent_since = now if silent_since is None else silent_since
                    if now - silent_since >= TRANSFER_GIVE_UP_S:
                        raise RuntimeError(f"{sha}: offset {have}: no answer from the server")
                    await asyncio.sleep(1.0)
                    continue
                silent_since = None
                n = min(step, size - have)
                await asyncio.sleep(n / rate)
                have += n
                done += n
                disk.partial[sha] = have
                disk.bytes_in += n
                if loop.time() - reported >= 1.0:
                    reported = loop.time()
                    self._publish("downloading", version, rollout=rollout, total=total, done=done)
            disk.partial.pop(sha, None)
            disk.store.add(sha)

    @skill(
        name="system.rollback", side_effect="actuate", description="Back to the previous release."
    )
    async def rollback(self) -> Done:
        self._ready()
        if self.system.disk.previous is None:
            return Done(ok=False, detail="no previous release to go back to")
        await self._set_updating(True, "rolling back")
        self.system.rollback("system.rollback")
        return Done(ok=True, detail="rolling back (this agent is being replaced)")

    @skill(name="system.restart", side_effect="actuate", description="Restart the agent.")
    async def restart(self) -> Done:
        self._ready()
        self.system.restart()
        return Done(ok=True, detail="restarting")

    async def run(self, device: Any) -> None:
        """The agent's start: confirm a pending switch to this release, or report a rollback;
        then stay until the agent stops (its download dies with it)."""
        self._agent = device
        self._started = device.clock.monotonic()
        d = self.system.disk
        try:
            if d.pending is not None and d.pending == self.release:
                await self._verify(self.release)
            elif d.rolled_back is not None and d.release == self.release:
                failed, reason = d.rolled_back
                self._publish("rolled_back", failed, error=reason)
            await asyncio.get_running_loop().create_future()
        finally:
            if self._task is not None:
                self._task.cancel()

    async def _verify(self, version: str) -> None:
        # Not routable until proven (announced so from the agent's first connect: updating=).
        await self._set_updating(True, f"verifying {version}")
        self._publish("verifying", version)
        while not self._agent.transport.connected:  # noqa: ASYNC110 (as agent/system.py)
            await asyncio.sleep(0.2)
        if self._device_id() in self.system.catalog.bad and version == self.system.catalog.new:
            # A bad release: its skills fail. The tool's timer rolls it back at the deadline.
            self._publish(
                "failed", version, error="self-test: a skill fails (simulated bad release)"
            )
            return
        try:
            await self.self_test()
        except Exception as exc:
            self._publish("failed", version, error=f"self-test: {exc}")
            return
        self.system.disk.pending = None  # commit
        await self._set_updating(False)
        self._publish("healthy", version)

    def _ready(self) -> Any:
        if self._agent is None:
            raise Unavailable(STARTING)
        return self._agent


def attach_systems(plan: Any, control: Control) -> Catalog:
    """Give every device of ``plan`` (a ``FleetPlan`` whose spec has a rollout) its disk, on the
    rollout's starting release, and its device tool."""
    spec = plan.spec
    r: RolloutScenario = spec.rollout
    devices = [(d.id, g.group.name) for g in plan.groups for d in g.devices]
    catalog = Catalog.build(r, devices, spec.seed)
    start = {sha for sha, _ in catalog.files[r.from_release]}
    for g in plan.groups:
        link = g.group.link or spec.link
        bandwidth = link.bandwidth_mbps * 1e6 / 8
        restart_s = r.restart_s * g.profile.speed.python.value
        for dev in g.devices:
            disk = Disk(r.from_release, set(start))
            dev.system = DeviceSystem(dev, disk, catalog, control, bandwidth, restart_s)
            if dev.config.release != r.from_release:
                dev.config = dev.config.model_copy(update={"release": r.from_release})
    return catalog


def system_skills(dev: Any) -> tuple[list[Any], list[Any], str | None]:
    """The skills and skill sets of a new agent of ``dev``: its own plus the system skills, on
    the release its disk holds; and why it starts as ``updating`` (a switch to confirm)."""
    system: DeviceSystem = dev.system
    disk = system.disk
    if dev.config.release != disk.release:
        dev.config = dev.config.model_copy(update={"release": disk.release})
    sys_set = SimSystemSkills(system)
    verifying = f"verifying {disk.release}" if disk.pending == disk.release else None
    return [*dev.skills, *sys_set.skills()], [*dev.sets, sys_set], verifying
