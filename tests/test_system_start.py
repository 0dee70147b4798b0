"""The system skills before they have started (issue 12): an agent announces itself online while
it connects, a moment before ``SystemSkills.run`` has taken hold of it; until then every
``system.*`` call is answered ``unavailable`` (never accepted and then lost), and the rollout
driver asks ``system.update`` again a few times, shortly, before it counts as a failure.

A real agent on the test's mosquitto, its system skills held at the start by a gate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeagent import AgentConfig, DeviceAgent, Fleet
from edgeagent.broker import BrokerConfig
from edgeagent.deploy import rollout_driver
from edgeagent.deploy.rollout_driver import Driver, QuietReporter
from edgeagent.deploy.rollout_io import DeviceBundle, Release
from edgeagent.deploy.rollout_plan import Rollout
from edgeagent.deploy.rollout_state import DeviceView, RolloutSpec, UpdateFailed, UpdateHealthy
from edgeagent.errors import Unavailable
from edgeagent.protocol import SYSTEM_SKILLS
from edgeagent.skills import collect_skills
from edgeagent.system import STARTING, SystemSkills
from tests.broker.mosquitto import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

DEVICE = "lamp-1"
RELEASE = "1.0"


class GatedSystem(SystemSkills):
    """The real system skills, whose start waits for the test."""

    def __init__(self, root: Path, release: str) -> None:
        super().__init__(root, release)
        self.gate = asyncio.Event()

    async def run(self, device: Any) -> None:
        await self.gate.wait()
        await super().run(device)


@dataclass
class Lab:
    agent: DeviceAgent
    system: GatedSystem
    fleet: Fleet
    folder: Path

    def request(self, version: str) -> dict[str, Any]:
        manifest = {"version": version, "profile": "x86-64", "device": DEVICE, "files": []}
        return {"manifest": json.dumps(manifest), "signature": "x", "server": "files-x"}

    async def started(self) -> None:
        """Open the gate; return once ``system.info`` answers."""
        self.system.gate.set()
        for _ in range(100):
            try:
                await self.fleet.call(DEVICE, "system.info", {}, timeout=5)
                return
            except Unavailable:
                await asyncio.sleep(0.02)
        raise AssertionError("the system skills never started")


@asynccontextmanager
async def lab(tmp_path: Path, url: str, fleet: str) -> AsyncIterator[Lab]:
    root = tmp_path / "opt"
    root.mkdir()
    info = {"device": DEVICE, "profile": "x86-64", "service": "process"}
    (root / "device.json").write_text(json.dumps(info))
    system = GatedSystem(root, RELEASE)
    cfg = AgentConfig(
        device=DEVICE,
        fleet=fleet,
        broker=BrokerConfig.from_url(url),
        skills=[{"module": "smarthome.lamp:Lamp"}],
        release=RELEASE,
        grace_s=0,
    )
    agent = DeviceAgent(cfg, skills=collect_skills(system), skill_sets=[system])
    async with agent, Fleet(url, fleet=fleet, timeout=5) as client:
        yield Lab(agent, system, client, tmp_path)


def test_system_skills_are_unavailable_until_started(
    tmp_path: Path, mosquitto: Mosquitto, fleet_name: str
) -> None:
    async def main() -> None:
        async with lab(tmp_path, mosquitto.url, fleet_name) as t:
            (dev,) = await t.fleet.devices()
            assert dev.status == "online"  # announced: a rollout would call it now
            announced = {s.name for s in dev.skills}
            assert set(SYSTEM_SKILLS) <= announced  # the names the broker's ACL reserves
            assert {s.name for s in collect_skills(t.system)} == set(SYSTEM_SKILLS)
            calls: list[tuple[str, dict[str, Any]]] = [
                ("system.info", {}),
                ("system.update", t.request("2.0")),  # would start an update
                ("system.rollback", {}),
                ("system.restart", {}),
            ]
            for skill, data in calls:
                with pytest.raises(Unavailable, match="starting"):
                    await t.fleet.call(DEVICE, skill, data, timeout=5)
            assert t.system.update_task is None  # nothing was accepted
            assert t.agent.statistics().failed == len(calls)
            assert not (t.system.spool / "request.json").exists()
            await t.started()
            info = await t.fleet.call(DEVICE, "system.info", {}, timeout=5)
            assert (info["device"], info["release"]) == (DEVICE, RELEASE)
            out = await t.fleet.call(DEVICE, "system.update", t.request(RELEASE), timeout=5)
            assert out["state"] == "current"

    asyncio.run(main())


def _driver(t: Lab) -> Driver:
    """A driver for a one-device rollout to the release the device already runs (its
    ``system.update`` answers ``current`` at once: no transfer)."""
    folder = t.folder / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text(t.request(RELEASE)["manifest"])
    (folder / "bundle.json.minisig").write_text("x")
    bundles = {DEVICE: DeviceBundle(DEVICE, folder, RELEASE, "x86-64")}
    release = Release(folder, RELEASE, "0" * 64, bundles, (folder,))
    spec = RolloutSpec(id="r1", version=RELEASE, canary=0, waves=(1.0,))
    rollout = Rollout.new(spec, [DeviceView(DEVICE, release="0.9")], time.time())
    return Driver(t.fleet, rollout, release, QuietReporter())


def test_driver_asks_again_while_the_system_skills_start(
    tmp_path: Path, mosquitto: Mosquitto, fleet_name: str
) -> None:
    async def main() -> None:
        async with lab(tmp_path, mosquitto.url, fleet_name) as t:
            driver = _driver(t)
            task = asyncio.create_task(driver._update(DEVICE))
            # The first ask is answered `unavailable` (the skills are held); then they start.
            for _ in range(500):
                if t.agent.statistics().failed:
                    break
                await asyncio.sleep(0.01)
            assert t.agent.statistics().failed == 1
            assert not task.done()  # waiting to ask again, not failed
            await t.started()
            async with asyncio.timeout(10):
                await task
            assert driver._events == [UpdateHealthy(DEVICE, RELEASE)]
            assert driver._why == {}

    asyncio.run(main())


def test_driver_gives_up_after_a_few_unavailable_answers(
    tmp_path: Path, mosquitto: Mosquitto, fleet_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rollout_driver, "UNAVAILABLE_RETRIES", (0.05, 0.1))

    async def main() -> None:
        async with lab(tmp_path, mosquitto.url, fleet_name) as t:
            driver = _driver(t)
            started = time.monotonic()
            async with asyncio.timeout(10):
                await driver._update(DEVICE)  # the system skills never start
            assert time.monotonic() - started >= 0.15  # it did wait between the asks
            assert t.agent.statistics().failed == 3  # the first ask and two more
            (event,) = driver._events
            assert isinstance(event, UpdateFailed)
            assert event.device == DEVICE
            assert event.reason == f"system.update: unavailable: {STARTING}"
            assert t.system.update_task is None

    asyncio.run(main())
