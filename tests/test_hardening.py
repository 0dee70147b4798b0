"""The coordinator and agent as an attacker on an OPEN broker finds them (issue 10's probes).

Each test replays one probe against a real mosquitto: spoofed and forged retained messages,
hostile manifests, floods of calls with huge deadlines, idempotency keys reused across callers
and skills, rule loops, same-millisecond events, log floods, silent impostors. The broker's ACL
(tests/test_trust.py) stops most of these on a secured fleet; these tests check that the
coordinator and the agents hold up even without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from edgeagent import AgentConfig, BrokerConfig, DeviceAgent, Fleet, skill
from edgeagent.coordinator import Coordinator
from edgeagent.device_calls import CALL_LOG
from edgeagent.errors import BadRequest, CallTimeout
from edgeagent.limits import CoordinatorLimits
from edgeagent.protocol import (
    CALLER_PROPERTY,
    HOP_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    Topics,
)
from edgeagent.rules import parse_rules
from edgeagent.skills import Skill, build_skill
from edgeagent.transport.base import Inbound, Props
from edgeagent.transport.mqtt import MqttTransport

pytestmark = pytest.mark.broker


def agent(
    url: str,
    fleet: str,
    device: str,
    skills: Sequence[Skill] | None = None,
    *,
    tags: dict[str, str] | None = None,
    health_s: float = 10.0,
) -> DeviceAgent:
    cfg = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        tags=tags or {"kind": "worker"},
        skills=[{"module": "smarthome.lamp:Lamp"}],
        health_interval_s=health_s,
    )
    return DeviceAgent(cfg, skills=None if skills is None else list(skills))


def coordinator(url: str, fleet: str, **kw: Any) -> Coordinator:
    return Coordinator(MqttTransport(BrokerConfig(url=url)), root="edgeagent", fleet=fleet, **kw)


class Raw:
    """A bare MQTT client: what an attacker on the broker has."""

    def __init__(self, url: str) -> None:
        self.t = MqttTransport(BrokerConfig(url=url))

    async def __aenter__(self) -> Raw:
        await self.t.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.t.close()

    async def retain(self, topic: str, doc: dict[str, Any] | None) -> None:
        payload = b"" if doc is None else json.dumps(doc).encode()
        await self.t.publish(topic, payload, qos=1, retain=True)

    async def send(self, topic: str, doc: dict[str, Any], props: Props | None = None) -> None:
        await self.t.publish(topic, json.dumps(doc).encode(), qos=1, props=props or Props())


async def until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def counter_skills(counts: dict[str, int]) -> list[Skill]:
    @skill(side_effect="read")
    async def echo(text: str) -> str:
        counts["echo"] = counts.get("echo", 0) + 1
        return f"echo:{text}"

    @skill(side_effect="read")
    async def slow_echo(text: str) -> str:
        counts["slow_echo"] = counts.get("slow_echo", 0) + 1
        await asyncio.sleep(0.05)
        return f"slow:{text}"

    @skill(side_effect="actuate")
    async def bump(n: int) -> int:
        counts["bump"] = counts.get("bump", 0) + 1
        return n

    return [build_skill(echo), build_skill(slow_echo), build_skill(bump)]


def spec(name: str, side_effect: str = "read") -> dict[str, Any]:
    """A well-formed skill spec, as an impostor would copy it from a real manifest."""
    return {
        "name": name, "side_effect": side_effect, "idempotent": side_effect == "read",
        "input_schema": {"type": "object"}, "output_schema": {}, "max_concurrency": 1,
        "max_queue": 8, "timeout_s": 10.0,
    }  # fmt: skip


def silent_skills() -> list[Skill]:
    @skill(side_effect="read", max_queue=100_000)
    async def hang(n: int) -> int:
        await asyncio.sleep(3600)
        return n

    return [build_skill(hang)]


# --- the topic is the identity --------------------------------------------------------------


def test_spoofed_states_and_manifests_are_dropped(broker_url: str, fleet_name: str) -> None:
    topics = Topics("edgeagent", fleet_name)

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "lamp-hall", tags={"room": "hall", "kind": "lamp"}),
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url) as evil,
        ):
            # 1. lamp-hall declared offline on ANOTHER device's state topic.
            await evil.retain(
                topics.state("lamp-x"),
                {"type": "state", "device": "lamp-hall", "status": "offline"},
            )
            # 2. a manifest whose device and skill names break the name rules.
            bad_manifest = {
                "type": "manifest", "device": "evil", "fleet": fleet_name, "max_payload": 1,
                "agent_version": "0", "tags": {"room": "hall"},
                "skills": [spec("x/+/#")],
            }  # fmt: skip
            await evil.retain(topics.manifest("evil"), bad_manifest)
            # 3. a manifest naming another device than its topic.
            await evil.retain(topics.manifest("fake"), {**bad_manifest, "device": "lamp-hall"})
            await until(lambda: coord.dropped >= 3, what="three dropped messages")
            assert coord.registry.online("lamp-hall")
            assert "evil" not in coord.registry.devices or not coord.registry.devices["evil"].specs
            assert coord.registry.devices["lamp-hall"].skill("x/+/#") is None
            out = await fleet.call_skill("turn_on", where={"room": "hall"}, timeout=5)
            assert out["on"] is True
            # The client's own fleet view is not fooled either.
            view = {d.device: d for d in await fleet.devices()}
            assert view["lamp-hall"].online
            assert "lamp-x" not in view
            assert "fake" not in view
            for t in (topics.state("lamp-x"), topics.manifest("evil"), topics.manifest("fake")):
                await evil.retain(t, None)

    asyncio.run(main())


def test_a_forged_offline_is_undone_by_live_health(broker_url: str, fleet_name: str) -> None:
    topics = Topics("edgeagent", fleet_name)

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "lamp-k", tags={"kind": "lamp"}, health_s=0.2),
            coordinator(broker_url, fleet_name) as coord,
            Raw(broker_url) as evil,
        ):
            # A forged offline on the device's own topic (an open broker lets anyone write it).
            await evil.retain(
                topics.state("lamp-k"),
                {"type": "state", "device": "lamp-k", "status": "offline", "ts": time.time()},
            )
            await until(lambda: not coord.registry.online("lamp-k"), what="the forged offline")
            # The device is still sending health: it is online again within a health period.
            await until(lambda: coord.registry.online("lamp-k"), what="health to revive it")
            # Clearing the forged retained state leaves it online (its live messages say so).
            await evil.retain(topics.state("lamp-k"), None)
            await asyncio.sleep(0.5)
            assert coord.registry.online("lamp-k")
            assert coord.registry.devices["lamp-k"].skill("turn_on") is not None

    asyncio.run(main())


def test_hostile_manifests_are_bounded(broker_url: str, fleet_name: str) -> None:
    topics = Topics("edgeagent", fleet_name)
    limits = CoordinatorLimits(max_devices=5, max_skills=50)

    def manifest(device: str, n_skills: int) -> dict[str, Any]:
        return {
            "type": "manifest", "device": device, "fleet": fleet_name, "max_payload": 1,
            "agent_version": "0",
            "skills": [spec(f"s{i}") for i in range(n_skills)],
        }  # fmt: skip

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "real", tags={"kind": "lamp"}),
            coordinator(broker_url, fleet_name, limits=limits) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url) as evil,
        ):
            await evil.retain(topics.manifest("huge"), manifest("huge", 10_000))  # 1 MB
            await evil.retain(topics.manifest("many"), manifest("many", 51))  # > max_skills
            for i in range(10):
                await evil.retain(topics.manifest(f"fake{i}"), manifest(f"fake{i}", 1))
            await until(lambda: coord.dropped >= 8, what="the fleet to fill up")
            assert "huge" not in coord.registry.devices
            assert "many" not in coord.registry.devices
            assert len(coord.registry.devices) == 5
            assert (await fleet.call_skill("turn_on", timeout=5))["on"] is True
            # One leaves, the next newcomer gets its place.
            await evil.retain(topics.manifest("fake0"), None)
            await until(lambda: "fake0" not in coord.registry.devices, what="fake0 to leave")
            await evil.retain(topics.manifest("late"), manifest("late", 1))
            await until(lambda: "late" in coord.registry.devices, what="a newcomer")
            for t in ["huge", "many", "late", *(f"fake{i}" for i in range(10))]:
                await evil.retain(topics.manifest(t), None)

    asyncio.run(main())


# --- calls in flight and deadlines ------------------------------------------------------------


def test_calls_to_a_silent_device_are_bounded(broker_url: str, fleet_name: str) -> None:
    limits = CoordinatorLimits(max_in_flight_per_caller=20, max_deadline_s=1.0)

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "mute", silent_skills()),
            coordinator(broker_url, fleet_name, limits=limits, retry_budget=0) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            topic = fleet.topics.coord_call("hang")
            started = time.monotonic()
            # Message Expiry 2^32 - 1: honoured only up to max_deadline_s.
            results = await asyncio.gather(
                *(
                    fleet.request(topic, b'{"n": 1}', timeout=30, expiry_s=2**32 - 1)
                    for _ in range(50)
                ),
                return_exceptions=True,
            )
            took = time.monotonic() - started
            codes = [getattr(r, "code", type(r).__name__) for r in results]
            assert codes.count("busy") == 30, codes
            assert codes.count("timeout") == 20, codes
            assert took < 5, took
            await until(
                lambda: coord.admission.in_flight == 0 and coord.admission.callers == 0,
                what="cleanup",
            )
            assert coord.forwarder.in_flight == 0

    asyncio.run(main())


def test_waiters_are_freed_when_their_device_leaves(broker_url: str, fleet_name: str) -> None:
    topics = Topics("edgeagent", fleet_name)

    async def main() -> None:
        async with (
            coordinator(broker_url, fleet_name, retry_budget=0) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url) as ghost,
        ):
            # A device that announced itself and never answers, then vanishes.
            manifest = {
                "type": "manifest", "device": "ghost", "fleet": fleet_name, "max_payload": 9,
                "agent_version": "0",
                "skills": [spec("boo", "actuate")],
            }  # fmt: skip
            await ghost.retain(topics.manifest("ghost"), manifest)
            await ghost.retain(
                topics.state("ghost"), {"type": "state", "device": "ghost", "status": "online"}
            )
            await until(lambda: coord.registry.online("ghost"), what="the ghost")
            call = asyncio.ensure_future(fleet.call_skill("boo", timeout=30))
            await until(lambda: coord.forwarder.in_flight > 0, what="the forward")
            started = time.monotonic()
            await ghost.retain(topics.state("ghost"), None)
            await ghost.retain(topics.manifest("ghost"), None)
            with pytest.raises(CallTimeout, match="left the fleet"):
                await call
            assert time.monotonic() - started < 3

    asyncio.run(main())


# --- idempotency keys -----------------------------------------------------------------------


def test_idempotency_keys_are_scoped_by_caller_skill_and_input(
    broker_url: str, fleet_name: str
) -> None:
    counts: dict[str, int] = {}

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "w", counter_skills(counts)),
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as alice,
            Fleet(broker_url, fleet=fleet_name) as mallory,
        ):
            assert coord.registry.online("w")
            assert await alice.call_skill("echo", {"text": "a"}, idempotency_key="K") == "echo:a"
            # Same key, another skill: its own run, never echo's output.
            got = await alice.call_skill("slow_echo", {"text": "a"}, idempotency_key="K")
            assert got == "slow:a"
            # Same key, same skill, another input: refused.
            with pytest.raises(BadRequest, match="different input"):
                await alice.call_skill("echo", {"text": "b"}, idempotency_key="K")
            # Same key and input from another caller: its own run.
            assert await mallory.call_skill("echo", {"text": "a"}, idempotency_key="K") == "echo:a"
            assert counts == {"echo": 2, "slow_echo": 1}
            # Same caller, same key, same input: the first run's answer, not a second run.
            assert await alice.call_skill("bump", {"n": 7}, idempotency_key="B") == 7
            assert await alice.call_skill("bump", {"n": 7}, idempotency_key="B") == 7
            assert counts["bump"] == 1

            # Straight to the device: a forged `caller` is only a scope (the answer goes to the
            # forger's own response topic); the key is still bound to the input.
            topic = alice.topics.call("w", "echo")
            props = ((IDEMPOTENCY_PROPERTY, "D"),)
            raw = await alice.request(topic, b'{"text": "x"}', timeout=5, user_properties=props)
            assert raw.output == "echo:x"
            raw = await alice.request(topic, b'{"text": "y"}', timeout=5, user_properties=props)
            assert raw.code == "bad_request"
            other = (*props, (CALLER_PROPERTY, "someone-else"))
            raw = await alice.request(topic, b'{"text": "y"}', timeout=5, user_properties=other)
            assert raw.output == "echo:y"

    asyncio.run(main())


def test_huge_keys_are_refused_and_logs_stay_small(
    broker_url: str, fleet_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    counts: dict[str, int] = {}
    key = "k" * 60_000

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "w", counter_skills(counts)),
            coordinator(broker_url, fleet_name),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            with pytest.raises(BadRequest, match="idempotency key of 60000 characters"):
                await fleet.call_skill("echo", {"text": "a"}, idempotency_key=key)
            topic = fleet.topics.call("w", "echo")
            raw = await fleet.request(
                topic, b'{"text": 1}', timeout=5, user_properties=((IDEMPOTENCY_PROPERTY, key),)
            )
            assert raw.code == "bad_request"
            # A flood of bad requests: every one answered, few logged.
            replies = await asyncio.gather(
                *(fleet.request(topic, b'{"text": 5}', timeout=10) for _ in range(2000))
            )
            assert all(r.code == "bad_request" for r in replies)
            assert counts == {}

    before = CALL_LOG.suppressed_total.get("call-bad_request", 0)
    with caplog.at_level(logging.INFO, logger="edgeagent"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.name.startswith("edgeagent.device")]
    assert len(records) < 30, len(records)
    assert max(len(r.getMessage()) for r in caplog.records) < 2_000
    # Counted, not written (and reported with the next record of the kind that is written).
    after = CALL_LOG.suppressed_total["call-bad_request"]
    assert after - before >= 1_980


# --- rules ----------------------------------------------------------------------------------


LOOP_RULES = """
rules:
  - name: x-to-y
    when: {event: changed, device: lamp-x}
    then: {skill: toggle, device: lamp-y}
  - name: y-to-x
    when: {event: changed, device: lamp-y}
    then: {skill: toggle, device: lamp-x}
"""


def test_a_rule_loop_is_cut(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "lamp-x", tags={"kind": "lamp"}),
            agent(broker_url, fleet_name, "lamp-y", tags={"kind": "lamp"}),
            coordinator(broker_url, fleet_name, rules=parse_rules(LOOP_RULES)) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            await fleet.call("lamp-x", "toggle")  # changed (hop 0) -> the loop starts
            await until(lambda: coord.rules_cut >= 1, what="the loop to be cut")
            await asyncio.sleep(1.0)
            depth = coord.limits.rule_max_depth
            assert coord.rules_fired == depth, coord.statistics()
            assert coord.rules_cut == 1

    asyncio.run(main())


def test_events_in_one_millisecond_each_fire_and_rules_are_rate_limited(
    broker_url: str, fleet_name: str
) -> None:
    counts: dict[str, int] = {}
    rules = parse_rules(
        """
rules:
  - name: on-ring
    when: {event: ring}
    then: {skill: bump, device: w, input: {n: 1}}
"""
    )
    topics = Topics("edgeagent", fleet_name)
    limits = CoordinatorLimits(rule_max_per_minute=5)

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "w", counter_skills(counts)),
            coordinator(broker_url, fleet_name, rules=rules, limits=limits) as coord,
            Raw(broker_url) as bell,
        ):
            ts = round(time.time(), 3)
            for i in range(2):  # same device, same name, same millisecond; two ids
                event = {
                    "type": "event",
                    "device": "bell",
                    "name": "ring",
                    "ts": ts,
                    "id": f"b-{i}",
                }
                await bell.send(topics.event("bell", "ring"), event)
            await until(lambda: counts.get("bump", 0) == 2, what="both events to act")
            for i in range(2, 10):
                event = {
                    "type": "event",
                    "device": "bell",
                    "name": "ring",
                    "ts": ts,
                    "id": f"b-{i}",
                }
                await bell.send(topics.event("bell", "ring"), event)
            await until(lambda: coord.rules_limited == 5, what="the rate limit")
            await asyncio.sleep(0.3)
            assert counts["bump"] == 5
            assert coord.rules_fired == 5
            # An event claiming another device on this device's topic is not believed.
            forged = {"type": "event", "device": "w", "name": "ring", "ts": ts, "id": "f"}
            before = coord.dropped
            await bell.send(topics.event("bell", "ring"), forged)
            await until(lambda: coord.dropped == before + 1, what="the forged event")
            # A hop count at the limit fires nothing.
            deep = Props(user_properties=((HOP_PROPERTY, str(limits.rule_max_depth)),))
            event = {"type": "event", "device": "bell", "name": "ring", "ts": ts, "id": "deep"}
            await bell.send(topics.event("bell", "ring"), event, deep)
            await until(lambda: coord.rules_cut == 1, what="the cut")

    asyncio.run(main())


# --- routing: newcomers and impostors -------------------------------------------------------


def test_a_new_device_gets_calls_and_silent_impostors_do_not(
    broker_url: str, fleet_name: str
) -> None:
    served: dict[str, int] = {}
    topics = Topics("edgeagent", fleet_name)

    def worker(name: str) -> list[Skill]:
        @skill(side_effect="read")
        async def work(n: int) -> str:
            served[name] = served.get(name, 0) + 1
            await asyncio.sleep(0.05)  # the same work on both: equal within timing noise
            return name

        return [build_skill(work)]

    async def main() -> None:
        async with (
            agent(broker_url, fleet_name, "old", worker("old")),
            coordinator(broker_url, fleet_name, hedge=False) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url) as evil,
        ):
            for i in range(5):
                await fleet.call_skill("work", {"n": i})
            assert served == {"old": 5}
            # An identical newcomer: it is probed and then shares the calls.
            async with agent(broker_url, fleet_name, "new", worker("new")):
                await until(lambda: coord.registry.online("new"), what="the newcomer")
                for i in range(40):
                    await fleet.call_skill("work", {"n": i})
                assert served["new"] >= 8, served
                assert served["old"] >= 5 + 8, served
            # 100 silent impostors announce the same skill.
            hits: list[str] = []

            def hit(msg: Inbound) -> None:
                hits.append(msg.topic)

            await evil.t.subscribe(f"edgeagent/{fleet_name}/dev/+/call/work", hit)
            for i in range(100):
                d = f"imp{i:03d}"
                await evil.retain(
                    topics.manifest(d),
                    {"type": "manifest", "device": d, "fleet": fleet_name, "max_payload": 9,
                     "agent_version": "0", "skills": [spec("work")]},
                )  # fmt: skip
                await evil.retain(
                    topics.state(d), {"type": "state", "device": d, "status": "online"}
                )
            await until(lambda: coord.registry.online("imp099"), what="the impostors")
            started = time.monotonic()
            for i in range(30):
                assert await fleet.call_skill("work", {"n": i}, timeout=10) == "old"
            took = time.monotonic() - started
            to_impostors = [t for t in hits if "/imp" in t]
            # About one probe per second at most, each failing over after its patience.
            assert len(to_impostors) <= 2 + took, (len(to_impostors), took)
            for i in range(100):
                await evil.retain(topics.manifest(f"imp{i:03d}"), None)
                await evil.retain(topics.state(f"imp{i:03d}"), None)

    asyncio.run(main())


def test_log_limiter_counts_and_reports_what_it_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edgeagent.logutil import LogLimiter, clip

    now = [0.0]
    limiter = LogLimiter(
        logging.getLogger("edgeagent.test"), burst=2, period_s=10, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="edgeagent.test"):
        written = [limiter.warning("bad", "bad request %d", i) for i in range(100)]
        now[0] = 11.0
        limiter.warning("bad", "bad request %d", 100)
        limiter.warning("other", "another kind")
    assert written[:2] == [True, True]
    assert not any(written[2:])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad request 0",
        "bad request 1",
        "bad request 100 (and 98 more like it not logged)",
        "another kind",
    ]
    assert limiter.suppressed_total == {"bad": 98}
    assert clip("k" * 60_000) == "k" * 120 + "…[60,000 chars]"
    assert clip("short") == "short"


def test_every_bound_is_documented_and_settable_from_the_cli() -> None:
    from pathlib import Path

    from edgeagent.errors import ConfigError
    from edgeagent.limits import parse_limits

    doc = (Path(__file__).resolve().parent.parent / "docs" / "coordinator.md").read_text()
    for name in CoordinatorLimits.model_fields:
        assert f"| `{name}` |" in doc, name
    limits = parse_limits(["max_devices=7", "max-deadline-s=2.5"])
    assert (limits.max_devices, limits.max_deadline_s) == (7, 2.5)
    with pytest.raises(ConfigError, match="unknown limit 'max_lamps'"):
        parse_limits(["max_lamps=3"])
    with pytest.raises(ConfigError, match="max_devices"):
        parse_limits(["max_devices=0"])
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_limits(["max_devices"])


def test_the_registry_holds_a_bounded_total_of_manifests() -> None:
    from edgeagent.protocol import Manifest
    from edgeagent.registry import Registry

    def m(device: str) -> Manifest:
        return Manifest(device=device, fleet="f", max_payload=1, agent_version="0")

    reg = Registry(max_devices=10, max_manifest_total=1000)
    assert reg.apply(m("a"), 0.0, 600)
    assert not reg.apply(m("b"), 0.0, 600)  # 1,200 > 1,000
    assert "b" not in reg.devices
    assert reg.apply(m("a"), 0.0, 900)  # a replacement counts once
    assert reg.manifest_total == 900
    reg.clear_manifest("a")
    assert reg.manifest_total == 0
    assert reg.apply(m("b"), 0.0, 999)


# --- routing decisions (pure) ---------------------------------------------------------------


def _cand(device: str, **kw: Any) -> Any:
    from edgeagent.protocol import SkillSpec
    from edgeagent.registry import Candidate

    base: dict[str, Any] = {"outstanding": 0, "latency_s": 0.010, "measured": True,
                            "timeouts_in_row": 0, "vouched": True}  # fmt: skip
    base.update(kw)
    return Candidate(device=device, spec=SkillSpec.model_validate(spec("work")), **base)


def test_decide_breaks_ties_at_random_and_keeps_unvouched_devices_out() -> None:
    import random

    from edgeagent.routing import decide

    rng = random.Random(5)
    # Equal devices (and scores within the tie band) share the calls.
    a, b = _cand("a", latency_s=0.010), _cand("b", latency_s=0.011)
    chosen = [decide("work", {}, [a, b], {}, rng).chosen for _ in range(400)]
    assert 150 < chosen.count("a") < 250, chosen.count("a")
    # A clearly faster device wins every draw it is in.
    fast = _cand("fast", latency_s=0.002)
    assert {decide("work", {}, [a, fast], {}, rng).chosen for _ in range(50)} == {"fast"}
    # Newcomers that never answered are left out while someone else can serve...
    ghosts = [_cand(f"g{i}", latency_s=None, measured=False, vouched=False) for i in range(50)]
    d = decide("work", {}, [a, *ghosts], {}, rng)
    assert d.chosen == "a"
    assert d.rejected["g0"].startswith("new: not measured")
    # ...once one answered a ping it shares the calls (scored as a typical settled device)...
    new = _cand("new", latency_s=0.5, measured=False, vouched=True)
    chosen = [decide("work", {}, [a, new], {}, rng).chosen for _ in range(400)]
    assert chosen.count("new") > 100
    decisions = [decide("work", {}, [a, new], {}, rng) for _ in range(50)]
    assert all(d.probe is (d.chosen == "new") for d in decisions)
    # ...and a suspect (timeouts in a row) is out until it answers again.
    sus = _cand("sus", timeouts_in_row=3, vouched=False)
    d = decide("work", {}, [a, sus], {}, rng, suspect_after=3)
    assert d.chosen == "a"
    assert d.rejected["sus"] == "suspect: 3 timeouts in a row"
    # When nobody has answered yet (a coordinator just started), everyone is in the draw.
    assert decide("work", {}, ghosts[:2], {}, rng).chosen in {"g0", "g1"}
