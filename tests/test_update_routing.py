"""A device about to restart into another release says so (issue 12): its retained state turns
``updating`` when ``system.update`` reaches the switch, and the coordinator routes nothing to it
until it is ``online`` again (the new release, or the old one when the switch failed).

Real agents and a real coordinator on the test's mosquitto; the device tool is a stand-in that
holds the switch until the test lets it fail (no bundle is built: seconds, not minutes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeagent import AgentConfig, BrokerConfig, DeviceAgent, Fleet, Unavailable
from edgeagent.config import load_skills
from edgeagent.coordinator import Coordinator
from edgeagent.protocol import Health, StateMessage, decode
from edgeagent.registry import Registry
from edgeagent.skills import collect_skills
from edgeagent.system import SystemSkills
from edgeagent.transport.base import Inbound
from edgeagent.transport.memory import MemoryBroker, MemoryTransport
from edgeagent.transport.mqtt import MqttTransport
from tests.broker.mosquitto import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

#: The device tool's stand-in (``bin/edgeagent-device.py``, run by the agent in process mode):
#: it waits for the test's ``go`` file in the spool, then reports the switch refused.
FAKE_TOOL = """\
import json, os, sys, time
from pathlib import Path
spool = Path(sys.argv[sys.argv.index("--spool") + 1])
request = json.loads((spool / "request.json").read_text())
(spool / "request.json").unlink()
deadline = time.monotonic() + 30
while not (spool / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
out = {"action": request["action"], "ok": False, "error": "bundle.json: bad signature (test)"}
(spool / ".result.tmp").write_text(json.dumps(out))
os.replace(spool / ".result.tmp", spool / "result.json")
"""


def lamp_config(url: str, fleet: str, device: str, room: str, **kw: Any) -> AgentConfig:
    return AgentConfig(
        device=device,
        fleet=fleet,
        broker=BrokerConfig(url=url),
        tags={"room": room, "kind": "lamp"},
        skills=[{"module": "smarthome.lamp:Lamp"}],
        grace_s=0,
        **kw,
    )


def deployed_lamp(root: Path, cfg: AgentConfig) -> tuple[DeviceAgent, SystemSkills]:
    """A lamp with the system skills, on a device layout whose tool is :data:`FAKE_TOOL`."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "edgeagent-device.py").write_text(FAKE_TOOL)
    info = {"device": cfg.device, "profile": "x86-64", "service": "process"}
    (root / "device.json").write_text(json.dumps(info))
    system = SystemSkills(root, cfg.release)
    skills, sets, events = load_skills(cfg)
    agent = DeviceAgent(cfg, skills=[*skills, *collect_skills(system)],
                        skill_sets=[*sets, system], events=events)  # fmt: skip
    return agent, system


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def status_of(coord: Coordinator, device: str) -> str | None:
    entry = coord.registry.devices.get(device)
    return None if entry is None else entry.status


async def routed_to(fleet: Fleet, n: int, **where: str) -> list[str]:
    """Where ``n`` calls of ``set_brightness`` routed by tags went."""
    chosen = []
    for k in range(n):
        _, route = await fleet.call_skill("set_brightness", {"level": k}, where=where,
                                          explain=True, timeout=5)  # fmt: skip
        chosen.append(route["attempts"][-1]["device"])
    return chosen


def test_coordinator_routes_around_a_device_while_it_updates(
    tmp_path: Path, mosquitto: Mosquitto, fleet_name: str
) -> None:
    url = mosquitto.url
    kitchen, system = deployed_lamp(
        tmp_path / "opt", lamp_config(url, fleet_name, "lamp-k", "kitchen", release="1.0")
    )
    hall = DeviceAgent(lamp_config(url, fleet_name, "lamp-h", "hall"))
    coord = Coordinator(MqttTransport(BrokerConfig(url=url)), root="edgeagent", fleet=fleet_name)
    watcher = MqttTransport(BrokerConfig(url=url))
    statuses: list[str] = []

    def on_state(msg: Inbound) -> None:
        message = decode(msg.payload)
        assert isinstance(message, StateMessage)
        statuses.append(message.status)

    async def main() -> None:
        await watcher.subscribe(f"edgeagent/{fleet_name}/dev/lamp-k/state", on_state, qos=1)
        await watcher.connect()
        async with kitchen, hall, coord, Fleet(url, fleet=fleet_name, timeout=5) as fleet:
            await until("both online", lambda: coord.registry.online("lamp-k")
                        and coord.registry.online("lamp-h"))  # fmt: skip
            assert set(await routed_to(fleet, 2, room="kitchen")) == {"lamp-k"}  # the twin

            manifest = {"version": "2.0", "profile": "x86-64", "device": "lamp-k", "files": []}
            accepted = await fleet.call("lamp-k", "system.update", {
                "manifest": json.dumps(manifest), "signature": "x", "server": "files-x",
            })  # fmt: skip
            assert accepted["state"] == "downloading"
            await until("updating", lambda: status_of(coord, "lamp-k") == "updating")
            served_before = kitchen.statistics().served

            # Routed by tag or by skill: never to the device that is switching releases.
            with pytest.raises(Unavailable, match="lamp-k: state updating"):
                await fleet.call_skill("turn_on", where={"room": "kitchen"}, timeout=5)
            assert set(await routed_to(fleet, 6, kind="lamp")) == {"lamp-h"}
            assert set(await routed_to(fleet, 2)) == {"lamp-h"}
            assert kitchen.statistics().served == served_before
            # Called by name, it still answers (it has not stopped yet).
            assert (await fleet.call("lamp-k", "get_state"))["on"] is True

            # The tool refuses the switch: the old release serves on, and says so.
            (system.spool / "go").write_text("")
            await until("online again", lambda: status_of(coord, "lamp-k") == "online")
            assert system.last_report is not None
            assert system.last_report["state"] == "failed"
            assert "bad signature" in system.last_report["error"]
            assert set(await routed_to(fleet, 3, room="kitchen")) == {"lamp-k"}
            assert statuses == ["online", "updating", "online"]

            # A rollback says so too while the tool works, and is back when the tool refuses.
            (system.spool / "go").unlink()
            rollback = asyncio.create_task(fleet.call("lamp-k", "system.rollback", timeout=10))
            await until("rolling back", lambda: status_of(coord, "lamp-k") == "updating")
            assert not rollback.done()
            (system.spool / "go").write_text("")
            assert (await rollback)["ok"] is False
            await until("online after", lambda: status_of(coord, "lamp-k") == "online")
            assert statuses == ["online", "updating", "online", "updating", "online"]
        await watcher.close()

    asyncio.run(main())


def test_updating_is_kept_across_reconnects_and_health() -> None:
    """Driven directly: the retained state stays ``updating`` while health keeps coming and
    after the connection drops and comes back; ``draining`` wins when the agent stops."""

    async def main() -> None:
        broker = MemoryBroker()
        broker.reconnect_delay_s = 0.01
        cfg = AgentConfig(
            device="lamp-k",
            fleet="mem",
            skills=[{"module": "smarthome.lamp:Lamp"}],
            health_interval_s=0.02,
            grace_s=0,
        )
        agent = DeviceAgent(cfg, transport=MemoryTransport(broker, "dev-lamp"))
        seen: list[StateMessage] = []
        healths: list[float] = []
        watcher = MemoryTransport(broker, "watcher")

        def on_msg(msg: Inbound) -> None:
            message = decode(msg.payload)
            if isinstance(message, StateMessage):
                seen.append(message)
            elif isinstance(message, Health):
                healths.append(message.ts)

        await watcher.subscribe("edgeagent/mem/dev/+/state", on_msg)
        await watcher.subscribe("edgeagent/mem/dev/+/health", on_msg)
        await watcher.connect()
        await agent.start()
        await agent.set_updating(True, "updating to 2.0")
        await until("health", lambda: len(healths) >= 3, 5)
        assert [(m.status, m.reason) for m in seen] == [
            ("online", None), ("updating", "updating to 2.0"),
        ]  # fmt: skip
        broker.disconnect_all()  # the broker goes away; the will says offline
        broker.restart()
        await until("re-announced", lambda: len(seen) >= 4, 5)
        assert [m.status for m in seen[2:]] == ["offline", "updating"]
        await agent.set_updating(False)
        await until("online", lambda: len(seen) >= 5, 5)
        assert seen[4].status == "online"
        await agent.set_updating(True)
        await agent.stop()
        await until("stopped", lambda: len(seen) >= 8, 5)
        assert [m.status for m in seen[5:]] == ["updating", "draining", "offline"]
        await watcher.close()

    asyncio.run(main())


def test_registry_never_routes_to_an_updating_device() -> None:
    """Pure: an ``updating`` state keeps a device out of the candidates, and health (which an
    updating agent still sends) does not bring it back; ``online`` does."""
    cfg = AgentConfig(device="lamp-k", skills=[{"module": "smarthome.lamp:Lamp"}])
    manifest = DeviceAgent(cfg, transport=MemoryTransport(MemoryBroker(), "x")).manifest()
    reg = Registry()
    reg.apply(manifest, 0.0)
    reg.apply(StateMessage(device="lamp-k", status="online", ts=1.0), 0.0)
    assert [c.device for c in reg.candidates("turn_on")[0]] == ["lamp-k"]  # the twin
    reg.apply(StateMessage(device="lamp-k", status="updating", ts=2.0, reason="to 2.0"), 0.0)
    assert reg.candidates("turn_on") == ([], {"lamp-k": "state updating"})
    health = Health(device="lamp-k", ts=3.0, uptime_s=1.0, calls_served=0, calls_failed=0,
                    calls_dropped=0, in_flight=0, queue_depth=0)  # fmt: skip
    reg.apply(health, 1.0)  # newer than the state, from a live agent: still updating
    assert not reg.online("lamp-k")
    assert "turn_on" not in reg.skills()
    reg.apply(StateMessage(device="lamp-k", status="online", ts=4.0), 2.0)
    assert reg.online("lamp-k")
    assert [c.device for c in reg.candidates("turn_on")[0]] == ["lamp-k"]
