"""The coordinator against a real mosquitto: routing, failover, idempotency, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from edgeagent import (
    AgentConfig,
    BadRequest,
    BrokerConfig,
    CallTimeout,
    DeviceAgent,
    Fleet,
    NotFound,
    Unavailable,
    skill,
)
from edgeagent.coordinator import Coordinator
from edgeagent.skills import Skill, build_skill
from edgeagent.transport.mqtt import MqttTransport

pytestmark = pytest.mark.broker


def lamp(url: str, fleet: str, device: str, room: str) -> DeviceAgent:
    cfg = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        tags={"room": room, "kind": "lamp"},
        skills=[{"module": "smarthome.lamp:Lamp"}],
    )
    return DeviceAgent(cfg)


def custom(url: str, fleet: str, device: str, skills: Sequence[Skill]) -> DeviceAgent:
    cfg = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        tags={"kind": "worker"},
        skills=[{"module": "unused"}],
    )
    return DeviceAgent(cfg, skills=list(skills))


def coordinator(url: str, fleet: str, **kw: Any) -> Coordinator:
    return Coordinator(MqttTransport(BrokerConfig(url=url)), root="edgeagent", fleet=fleet, **kw)


def test_routes_by_tags_and_explains(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-k", "kitchen"),
            lamp(broker_url, fleet_name, "lamp-h", "hall"),
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            assert set(coord.registry.devices) == {"lamp-k", "lamp-h"}
            out, route = await fleet.call_skill(
                "set_brightness", {"level": 33}, where={"room": "hall"}, explain=True
            )
            assert out == {"on": True, "brightness": 33}
            (decision,) = route["decisions"]
            assert decision["chosen"] == "lamp-h"
            assert decision["rejected"] == {"lamp-k": "tags room=kitchen≠hall"}
            assert route["attempts"][0]["device"] == "lamp-h"
            assert await fleet.call("lamp-h", "get_state") == {"on": True, "brightness": 33}
            assert (await fleet.call("lamp-k", "get_state"))["on"] is False

            both = await fleet.call_skill("turn_on", mode="all", where={"kind": "lamp"})
            assert set(both["results"]) == {"lamp-k", "lamp-h"}
            assert both["errors"] == {}

            with pytest.raises(NotFound, match="no device in the fleet has a skill 'fly'"):
                await fleet.call_skill("fly")
            with pytest.raises(NotFound, match="attic"):
                await fleet.call_skill("turn_on", where={"room": "attic"})
            with pytest.raises(BadRequest, match="level"):
                await fleet.call_skill("set_brightness", {"level": 900}, where={"room": "hall"})
            # The coordinator keeps serving after all of that.
            assert (await fleet.call_skill("get_state", where={"room": "kitchen"}))["on"] is True

    asyncio.run(main())


def test_spreads_load_and_fails_over_when_busy(broker_url: str, fleet_name: str) -> None:
    served: dict[str, int] = {}

    def worker(name: str) -> Skill:
        @skill(side_effect="read", max_concurrency=1, max_queue=0)
        async def slow_read(n: int) -> str:
            served[name] = served.get(name, 0) + 1
            await asyncio.sleep(0.15)
            return name

        return build_skill(slow_read)

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "w1", [worker("w1")]),
            custom(broker_url, fleet_name, "w2", [worker("w2")]),
            coordinator(broker_url, fleet_name, hedge=False) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            # Two at once: each worker takes one at a time, so both must be used (by the
            # choice, or by failover after a `busy`), and neither call fails.
            got = await asyncio.gather(
                fleet.call_skill("slow_read", {"n": 1}), fleet.call_skill("slow_read", {"n": 2})
            )
            assert sorted(got) == ["w1", "w2"]
            # Four at once against capacity two: some are refused everywhere and say so.
            results = await asyncio.gather(
                *(fleet.call_skill("slow_read", {"n": i}) for i in range(4)),
                return_exceptions=True,
            )
            ok = [r for r in results if isinstance(r, str)]
            refused = [r for r in results if not isinstance(r, str)]
            assert len(ok) >= 2
            assert all(getattr(r, "code", None) == "busy" for r in refused), refused
            assert coord.statistics()["failovers"] >= 1

    asyncio.run(main())


def test_non_idempotent_actuation_never_runs_twice(broker_url: str, fleet_name: str) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}

    def counter(name: str, delay: float) -> Skill:
        @skill(side_effect="actuate", idempotent=False, timeout_s=5)
        async def bump() -> int:
            runs[name] += 1
            await asyncio.sleep(delay)
            return runs[name]

        return build_skill(bump)

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "a", [counter("a", 1.5)]),
            custom(broker_url, fleet_name, "b", [counter("b", 1.5)]),
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            # The device is slower than the deadline: the coordinator times out and must NOT
            # try the other device, because the first may (and does) still run the call.
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                await fleet.call_skill("bump", timeout=1)
            assert time.monotonic() - started < 2.5
            await asyncio.sleep(1.0)
            assert sum(runs.values()) == 1
            assert coord.statistics()["failovers"] == 0

            # The same idempotency key twice (a client retry) runs once: the device answers
            # the repeat with the first run's reply.
            first, route = await fleet.call_skill(
                "bump", idempotency_key="k-1", timeout=5, explain=True
            )
            key_device = route["attempts"][-1]["device"]
            total = sum(runs.values())
            again = await fleet.call("a" if key_device == "a" else "b", "bump", None)
            assert again == first + 1  # a different call (no key) does run
            total += 1
            repeat = await fleet.request(
                f"edgeagent/{fleet_name}/dev/{key_device}/call/bump",
                b"{}",
                timeout=5,
                user_properties=(("idem", "k-1"),),
            )
            assert repeat.output == first  # the remembered reply, not a new run
            assert sum(runs.values()) == total

    asyncio.run(main())


def test_offline_device_is_skipped_and_registry_rebuilds(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        kitchen = lamp(broker_url, fleet_name, "lamp-k", "kitchen")
        hall = lamp(broker_url, fleet_name, "lamp-h", "hall")
        async with kitchen, hall, Fleet(broker_url, fleet=fleet_name) as fleet:
            async with coordinator(broker_url, fleet_name) as coord:
                assert coord.registry.online("lamp-k")
                assert isinstance(kitchen.transport, MqttTransport)
                await kitchen.stop(grace_s=0)  # publishes offline
                for _ in range(100):
                    if not coord.registry.online("lamp-k"):
                        break
                    await asyncio.sleep(0.02)
                with pytest.raises(Unavailable, match="lamp-k: state offline"):
                    await fleet.call_skill("turn_on", where={"room": "kitchen"})
                assert (await fleet.call_skill("turn_on"))["on"] is True  # lamp-h takes it
            # A new coordinator knows the fleet from retained messages alone.
            async with coordinator(broker_url, fleet_name) as fresh:
                assert fresh.registry.online("lamp-h")
                assert not fresh.registry.online("lamp-k")

    asyncio.run(main())


def test_deadline_is_never_exceeded_and_expired_calls_are_not_forwarded(
    broker_url: str, fleet_name: str
) -> None:
    started_runs: list[float] = []

    @skill(side_effect="read", timeout_s=30)
    async def sleepy() -> str:
        started_runs.append(time.monotonic())
        await asyncio.sleep(3)
        return "late"

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "s", [build_skill(sleepy)]),
            coordinator(broker_url, fleet_name, hedge=False),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            t0 = time.monotonic()
            with pytest.raises(CallTimeout):
                await fleet.call_skill("sleepy", timeout=1)
            assert time.monotonic() - t0 < 2.0

    asyncio.run(main())
    assert len(started_runs) == 1


def test_rules_turn_the_hall_lamp_on_when_the_doorbell_rings(
    broker_url: str, fleet_name: str
) -> None:
    from edgeagent.rules import load_rules
    from tests.conftest import EXAMPLES

    rules = load_rules(EXAMPLES / "rules.yaml")

    def doorbell() -> DeviceAgent:
        cfg = AgentConfig(
            device="doorbell-front",
            fleet=fleet_name,
            broker={"url": broker_url},
            tags={"room": "hall", "kind": "doorbell"},
            skills=[{"module": "smarthome.doorbell:Doorbell"}],
        )
        return DeviceAgent(cfg)

    async def wait_state(fleet: Fleet, on: bool) -> dict[str, Any]:
        for _ in range(150):
            state: dict[str, Any] = await fleet.call("lamp-hall", "get_state")
            if state["on"] is on:
                return state
            await asyncio.sleep(0.02)
        raise AssertionError(f"lamp-hall never became on={on}: {state}")

    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-hall", "hall"),
            lamp(broker_url, fleet_name, "lamp-kitchen", "kitchen"),
            doorbell(),
            coordinator(broker_url, fleet_name, rules=rules) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            await fleet.call("doorbell-front", "press", {"who": "cat"})
            await asyncio.sleep(0.3)
            assert (await fleet.call("lamp-hall", "get_state"))["on"] is False  # not the cat
            await fleet.call("doorbell-front", "press", {"who": "courier"})
            state = await wait_state(fleet, True)
            assert state["brightness"] == 80
            # The hall lamp's `changed` event fires the next rule: the kitchen follows the hall.
            for _ in range(150):
                kitchen = await fleet.call("lamp-kitchen", "get_state")
                if kitchen["on"]:
                    break
                await asyncio.sleep(0.02)
            assert kitchen == {"on": True, "brightness": 80}
            fired = coord.statistics()["rules_fired"]
            assert fired == 2
            # Cooldown: a second ring within 30 s does not act again.
            await fleet.call("lamp-hall", "turn_off")
            await fleet.call("doorbell-front", "press", {"who": "courier"})
            await asyncio.sleep(0.3)
            assert (await fleet.call("lamp-hall", "get_state"))["on"] is False
            assert coord.statistics()["rules_fired"] == fired

    asyncio.run(main())


def test_ask_in_plain_language_routes_through_the_coordinator(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-hall", "hall"),
            lamp(broker_url, fleet_name, "lamp-kitchen", "kitchen"),
            coordinator(broker_url, fleet_name),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            await fleet.call_skill("turn_on", mode="all")
            done = await fleet.ask("please turn off the kitchen lights")
            assert done.unsure is None
            assert (done.interpretation.skill, done.interpretation.where) == (
                "turn_off",
                {"kind": "lamp", "room": "kitchen"},
            )
            assert done.output == {"on": False, "brightness": 80}
            assert (await fleet.call("lamp-hall", "get_state"))["on"] is True

            dim = await fleet.ask("dim the hall lamp to 25%")
            assert dim.output == {"on": True, "brightness": 25}

            unsure = await fleet.ask("order me a pizza")
            assert unsure.interpretation is None
            assert unsure.output is None
            assert len(unsure.unsure.candidates) <= 3
            # Nothing was called: both lamps are as they were.
            assert (await fleet.call("lamp-hall", "get_state")) == {"on": True, "brightness": 25}
            assert (await fleet.call("lamp-kitchen", "get_state"))["on"] is False

    asyncio.run(main())


def test_slow_reads_are_hedged_to_a_second_device(broker_url: str, fleet_name: str) -> None:
    slow: dict[str, float] = {"r1": 0.0, "r2": 0.0}

    def reader(name: str) -> Skill:
        @skill(side_effect="read")
        async def look(n: int) -> str:
            await asyncio.sleep(slow[name])
            return name

        return build_skill(look)

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "r1", [reader("r1")]),
            custom(broker_url, fleet_name, "r2", [reader("r2")]),
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            for i in range(30):  # both fast and measured: p95 of a few ms
                await fleet.call_skill("look", {"n": i})
            # The device with the better score turns slow (sequential calls go to it; when the
            # two score within the tie band, to a random one of them): call until one call goes
            # to it first. It must be hedged to the other after its p95.
            from edgeagent.routing import DEFAULT_LATENCY_S, score

            cands, _ = coord.registry.candidates("look")
            victim = min(cands, key=lambda c: score(c, DEFAULT_LATENCY_S)).device
            other = "r2" if victim == "r1" else "r1"
            slow[victim] = 1.0
            for _ in range(30):
                hedges_before = coord.statistics()["hedges"]
                t0 = time.monotonic()
                out, route = await fleet.call_skill("look", {"n": -1}, explain=True)
                took = time.monotonic() - t0
                devices = [a["device"] for a in route["attempts"]]
                if route["decisions"][0]["chosen"] == victim:
                    break
            else:
                raise AssertionError(f"{victim} was never chosen first in 30 calls")
            assert coord.statistics()["hedges"] == hedges_before + 1
            assert out == other  # the hedge, sent after the first device's p95, answered first
            assert devices[-1] == other
            assert took < 0.5, took  # not the 1 s of the slow device

    asyncio.run(main())
