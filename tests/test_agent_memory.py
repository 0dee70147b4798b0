"""The same DeviceAgent and Fleet code on the in-memory transport (the simulator's foundation)."""

from __future__ import annotations

import asyncio
import json

from edgeagent import AgentConfig, DeviceAgent, Fleet
from edgeagent.transport.memory import MemoryBroker, MemoryTransport


def lamp(broker: MemoryBroker) -> DeviceAgent:
    cfg = AgentConfig(
        device="lamp",
        fleet="mem",
        skills=[{"module": "smarthome.lamp:Lamp"}],
        health_interval_s=0.05,
    )
    return DeviceAgent(cfg, transport=MemoryTransport(broker, "dev-lamp"))


async def watch_state(broker: MemoryBroker, seen: dict[str, bytes]) -> None:
    watcher = MemoryTransport(broker, "watcher")
    await watcher.subscribe("edgeagent/mem/dev/+/state", lambda m: seen.update(s=m.payload))
    await watcher.connect()


def test_agent_serves_announces_and_dies_with_its_will_in_memory() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        agent = lamp(broker)
        seen: dict[str, bytes] = {}
        await agent.start()
        await watch_state(broker, seen)
        async with Fleet(fleet="mem", transport=MemoryTransport(broker, "cli")) as fleet:
            assert await fleet.call("lamp", "set_brightness", {"level": 30}) == {
                "on": True,
                "brightness": 30,
            }
            (info,) = await fleet.devices()
            assert (info.device, info.status) == ("lamp", "online")
            assert info.tags == {}
            assert "toggle" in {s.name for s in info.skills}
            health = []
            async for msg in fleet.watch():
                if msg.type == "health":
                    health.append(msg)
                    break
            assert health[0].skills["set_brightness"].calls == 1
            assert json.loads(seen["s"])["status"] == "online"
            assert isinstance(agent.transport, MemoryTransport)
            agent.transport.kill()  # as if the device lost power
            await asyncio.sleep(0.01)
            assert json.loads(seen["s"]) == {
                "type": "state",
                "device": "lamp",
                "status": "offline",
                "reason": "connection lost",
            }
            assert (await fleet.device("lamp")).status == "offline"  # type: ignore[union-attr]
        await agent.stop(grace_s=0)

    asyncio.run(main())


def test_agent_reannounces_after_a_memory_broker_restart() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        async with lamp(broker) as agent:
            broker.restart()
            for _ in range(200):
                await asyncio.sleep(0.01)
                if agent.statistics().connects == 2:
                    break
            assert agent.statistics().connects == 2
            async with Fleet(fleet="mem", transport=MemoryTransport(broker, "cli")) as fleet:
                assert (await fleet.call("lamp", "turn_on"))["on"] is True

    asyncio.run(main())


def test_release_is_announced_and_ping_answers_without_being_a_skill() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        cfg = AgentConfig(
            device="lamp",
            fleet="mem",
            skills=[{"module": "smarthome.lamp:Lamp"}],
            release="0.1.0+abcdef123456",
        )
        agent = DeviceAgent(cfg, transport=MemoryTransport(broker, "dev-lamp"))
        await agent.start()
        async with Fleet(fleet="mem", transport=MemoryTransport(broker, "cli")) as fleet:
            info = await fleet.device("lamp")
            assert info is not None
            assert info.manifest is not None
            assert info.manifest.release == "0.1.0+abcdef123456"
            assert "_ping" not in {s.name for s in info.skills}
            out = await fleet.call("lamp", "_ping", {})
            assert out["device"] == "lamp"
            assert out["release"] == "0.1.0+abcdef123456"
            assert out["skills"] == len(info.skills)
            assert out["uptime_s"] >= 0
        await agent.stop()

    asyncio.run(main())
