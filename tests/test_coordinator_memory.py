"""The coordinator without a broker: its admission policy alone, and the whole coordinator with
real DeviceAgents on the in-memory broker and virtual time (simulator/vclock.py), so patience,
hedging and deadlines of seconds run in milliseconds and every run is the same.

Scenarios that need a particular device asked first start with that device alone: the call is
forwarded to it, then a second device joins while the first still holds the call, so what
happens next (failover, hedge, or no retry) does not hang on a random draw.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from edgeagent import AgentConfig, DeviceAgent, Fleet, skill
from edgeagent.coord_admission import MAX_RESPONSE_TOPIC, Admission
from edgeagent.coord_forward import RouteFailure, Trace
from edgeagent.coordinator import Coordinator
from edgeagent.errors import Busy, CallError, CallTimeout, NotFound, Unavailable
from edgeagent.limits import CoordinatorLimits
from edgeagent.protocol import IDEMPOTENCY_PROPERTY, MAX_IDEMPOTENCY_KEY, SideEffect
from edgeagent.simulator.vclock import InlineExecutor, VirtualClock, VirtualTimeLoop
from edgeagent.skills import Skill, build_skill
from edgeagent.transport.memory import MemoryBroker, MemoryTransport

FLEET = "mem"
#: Float slack on virtual times (a sum of virtual steps is not exact), seconds.
EPS = 1e-6

# Admission, the pure policy -----------------------------------------------------------------


def test_admission_counts_calls_per_caller_and_in_all() -> None:
    adm = Admission(CoordinatorLimits(max_in_flight=3, max_in_flight_per_caller=2))
    assert adm.admit("a", None) is None
    assert adm.admit("a", "key") is None
    refused = adm.admit("a", None)
    assert refused is not None
    assert (refused.code, refused.message) == (
        "busy",
        "this caller has 2 calls in flight (the limit); wait for some to finish",
    )
    assert adm.admit("b", None) is None
    full = adm.admit("c", None)
    assert full is not None
    assert (full.code, full.message) == (
        "busy",
        "coordinator at capacity (3 calls in flight); retry later",
    )
    assert (adm.in_flight, adm.callers, adm.in_flight_for("a")) == (3, 2, 2)
    # A refused call was never counted in.
    assert adm.in_flight_for("c") == 0
    adm.release("a")
    assert adm.admit("c", None) is None  # room again, in all
    again = adm.admit("a", None)  # room for `a`, but not in all
    assert again is not None
    assert again.message.startswith("coordinator at capacity")
    adm.release("b")
    assert adm.admit("a", None) is None
    assert (adm.in_flight, adm.callers, adm.in_flight_for("a")) == (3, 2, 2)
    for caller in ("a", "a", "c"):
        adm.release(caller)
    assert (adm.in_flight, adm.callers) == (0, 0)
    with pytest.raises(ValueError, match="no call of 'a'"):
        adm.release("a")


def test_admission_bounds_the_response_topic_and_the_idempotency_key() -> None:
    adm = Admission(CoordinatorLimits())
    assert adm.admit("t" * MAX_RESPONSE_TOPIC, None) is None
    long_topic = adm.admit("t" * (MAX_RESPONSE_TOPIC + 1), None)
    assert long_topic is not None
    assert (long_topic.code, long_topic.message) == (
        "bad_request",
        "response topic of 1,025 characters: use at most 1024",
    )
    assert adm.admit("r", "k" * MAX_IDEMPOTENCY_KEY) is None
    for key in ("", "k" * (MAX_IDEMPOTENCY_KEY + 1)):
        bad = adm.admit("r", key)
        assert bad is not None
        assert bad.code == "bad_request"
        assert bad.message == (
            f"idempotency key of {len(key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}"
        )
    # Only the calls let in count; `refusal` alone counts nothing.
    assert adm.in_flight == 2
    assert adm.refusal("r", None) is None
    assert adm.in_flight == 2


def test_admission_refuses_bad_requests_before_counting_capacity() -> None:
    adm = Admission(CoordinatorLimits(max_in_flight=1))
    assert adm.admit("a", None) is None
    bad = adm.admit("a", "")
    assert bad is not None
    assert bad.code == "bad_request"


# The coordinator on the in-memory broker and virtual time ------------------------------------


@dataclass
class World:
    """A fleet on one in-memory broker and one virtual clock."""

    loop: asyncio.AbstractEventLoop
    clock: VirtualClock
    broker: MemoryBroker
    stack: AsyncExitStack
    coord: Coordinator
    fleet: Fleet
    runs: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return self.loop.time()

    async def device(
        self, name: str, skills: Sequence[Skill], tags: dict[str, str] | None = None
    ) -> DeviceAgent:
        """Start a device agent; return once the coordinator sees it online."""
        cfg = AgentConfig(
            device=name,
            fleet=FLEET,
            tags=tags or {"kind": "worker"},
            skills=[{"module": "unused"}],
        )
        agent = DeviceAgent(
            cfg,
            transport=MemoryTransport(self.broker, f"dev-{name}"),
            skills=list(skills),
            clock=self.clock,
            executor=InlineExecutor(),
        )
        await self.stack.enter_async_context(agent)
        await until(lambda: self.coord.registry.online(name), f"{name} online")
        return agent

    async def call(self, skill_name: str, **kw: Any) -> Any:
        return await self.fleet.call_skill(skill_name, **kw)


async def until(check: Callable[[], bool], what: str, within_s: float = 5.0) -> None:
    """Wait (virtual time) until ``check()`` holds."""
    for _ in range(int(within_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def world(**coord_kw: Any) -> AsyncIterator[World]:
    loop = asyncio.get_running_loop()
    clock = VirtualClock(loop)
    broker = MemoryBroker(clock=loop.time)
    async with AsyncExitStack() as stack:
        coord = Coordinator(
            MemoryTransport(broker, "coord"),
            root="edgeagent",
            fleet=FLEET,
            clock=clock,
            rng=random.Random(7),
            **coord_kw,
        )
        await stack.enter_async_context(coord)
        fleet = Fleet(fleet=FLEET, transport=MemoryTransport(broker, "cli"), clock=clock)
        await stack.enter_async_context(fleet)
        yield World(loop, clock, broker, stack, coord, fleet)


def virtual(main: Callable[[], Awaitable[float]], *, at_least_s: float) -> None:
    """Run ``main`` on a virtual-time loop; it returns the virtual seconds it covered, which
    must be at least ``at_least_s`` and take a small fraction of that in real time."""

    async def go() -> float:
        return await main()

    wall = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        covered = runner.run(go())
    wall = time.perf_counter() - wall
    assert covered >= at_least_s, covered
    assert wall < max(1.0, covered / 5), (wall, covered)


def named(name: str, *, side_effect: SideEffect = "read", idempotent: bool | None = None,
          delay_s: float = 0.0, error: CallError | None = None,
          runs: dict[str, int] | None = None) -> Skill:  # fmt: skip
    """A skill ``work`` answering this device's name after ``delay_s`` (or raising ``error``)."""

    @skill(side_effect=side_effect, idempotent=idempotent, timeout_s=120)
    async def work() -> str:
        if runs is not None:
            runs[name] = runs.get(name, 0) + 1
        await asyncio.sleep(delay_s)
        if error is not None:
            raise error
        return name

    return build_skill(work)


def attempts(route: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["device"], a["outcome"]) for a in route["attempts"]]


def test_routes_by_tags_and_explains_on_virtual_time() -> None:
    async def main() -> float:
        async with world() as w:
            await w.device("lamp-k", [named("lamp-k")], {"room": "kitchen", "kind": "lamp"})
            await w.device("lamp-h", [named("lamp-h")], {"room": "hall", "kind": "lamp"})
            for _ in range(5):
                out, route = await w.call("work", where={"room": "hall"}, explain=True)
                assert out == "lamp-h"
                (decision,) = route["decisions"]
                assert decision["chosen"] == "lamp-h"
                assert decision["rejected"] == {"lamp-k": "tags room=kitchen≠hall"}
            assert await w.call("work", where={"room": "kitchen", "kind": "lamp"}) == "lamp-k"
            with pytest.raises(NotFound, match="attic"):
                await w.call("work", where={"room": "attic"})
            with pytest.raises(NotFound, match="no device in the fleet has a skill 'fly'"):
                await w.call("fly")
            assert w.coord.routed == 6
            return w.now()

    virtual(main, at_least_s=0.0)


@pytest.mark.parametrize("error", [Busy("queue full"), Unavailable("warming up")])
@pytest.mark.parametrize("idempotent", [True, False])
def test_a_call_the_device_never_ran_fails_over(error: CallError, idempotent: bool) -> None:
    """busy and unavailable prove the call did not run: even a non-idempotent one moves on."""
    side_effect: SideEffect = "read" if idempotent else "actuate"

    async def main() -> float:
        runs: dict[str, int] = {}
        async with world(hedge=False) as w:
            await w.device("d1", [named("d1", side_effect=side_effect, idempotent=idempotent,
                                        delay_s=1.0, error=error, runs=runs)])  # fmt: skip
            call = asyncio.ensure_future(w.call("work", explain=True, timeout=10))
            await until(lambda: runs.get("d1") == 1, "d1 holds the call")
            await w.device("d2", [named("d2", side_effect=side_effect, idempotent=idempotent,
                                        runs=runs)])  # fmt: skip
            out, route = await call
            assert out == "d2"
            assert attempts(route) == [("d1", error.code), ("d2", "ok")]
            assert runs == {"d1": 1, "d2": 1}
            assert w.coord.failovers == 1
            return w.now()

    virtual(main, at_least_s=1.0)


def test_the_last_answer_stands_when_every_device_refused() -> None:
    async def main() -> float:
        async with world(hedge=False) as w:
            await w.device("d1", [named("d1", error=Busy("full"))])
            await w.device("d2", [named("d2", error=Busy("full"))])
            with pytest.raises(Busy, match="full"):
                await w.call("work")
            assert w.coord.failovers == 2  # counted as each retry was decided
            assert w.coord.forwarder.in_flight == 0
            return w.now()

    virtual(main, at_least_s=0.0)


def test_an_idempotent_call_fails_over_after_its_patience() -> None:
    async def main() -> float:
        runs: dict[str, int] = {}
        async with world(hedge=False) as w:
            await w.device("d1", [named("d1", delay_s=100, runs=runs)])
            t0 = w.now()
            call = asyncio.ensure_future(w.call("work", explain=True, timeout=10))
            await until(lambda: runs.get("d1") == 1, "d1 holds the call")
            await w.device("d2", [named("d2", runs=runs)])
            out, route = await call
            took = w.now() - t0
            assert out == "d2"
            assert attempts(route) == [("d1", "timeout"), ("d2", "ok")]
            # Unmeasured: half of the 10 s deadline, not the device's 100 s.
            assert 5.0 - EPS <= took < 5.1, took
            assert w.coord.failovers == 1
            await w.stack.aclose()
            return w.now()

    virtual(main, at_least_s=5.0)


def test_a_non_idempotent_call_is_never_retried_after_a_timeout() -> None:
    async def main() -> float:
        runs: dict[str, int] = {}
        async with world() as w:
            await w.device("d1", [named("d1", side_effect="actuate", idempotent=False,
                                        delay_s=30, runs=runs)])  # fmt: skip
            t0 = w.now()
            call = asyncio.ensure_future(
                w.fleet.request(
                    w.fleet.topics.coord_call("work"),
                    b"{}",
                    timeout=10,
                    expiry_s=3,
                    user_properties=((IDEMPOTENCY_PROPERTY, "once"),),
                )
            )
            await until(lambda: runs.get("d1") == 1, "d1 holds the call")
            await w.device("d2", [named("d2", side_effect="actuate", idempotent=False,
                                        runs=runs)])  # fmt: skip
            reply = await call
            assert reply.code == "timeout"
            assert reply.message.startswith("no reply from d1/work within 3 s")
            # The whole deadline went to d1 (it may still run the call): nothing elsewhere.
            assert 3.0 - EPS <= w.now() - t0 < 3.1
            await asyncio.sleep(40)  # d1 finishes; still nothing ran twice
            assert runs == {"d1": 1}
            assert w.coord.failovers == 0
            return w.now()

    virtual(main, at_least_s=40.0)


def test_a_slow_read_is_hedged_and_the_second_device_wins() -> None:
    async def main() -> float:
        runs: dict[str, int] = {}
        async with world() as w:
            await w.device("r1", [named("r1", delay_s=60, runs=runs)])
            t0 = w.now()
            call = asyncio.ensure_future(w.call("work", explain=True, timeout=10))
            await until(lambda: runs.get("r1") == 1, "r1 holds the call")
            await w.device("r2", [named("r2", runs=runs)])
            out, route = await call
            took = w.now() - t0
            assert out == "r2"
            assert w.coord.hedges == 1
            assert w.coord.failovers == 0
            # r1 unmeasured: the hedge goes after half of what was left (5 s), not r1's 60 s.
            assert 5.0 - EPS <= took < 5.1, took
            assert ("r2", "ok") in attempts(route)
            assert [d["chosen"] for d in route["decisions"]] == ["r1", "r2"]
            # The abandoned first forward is not left waiting.
            assert w.coord.forwarder.in_flight == 0
            assert w.coord.registry.devices["r1"].loads["work"].outstanding == 0
            return w.now()

    virtual(main, at_least_s=5.0)


def test_a_measured_read_is_hedged_after_its_p95() -> None:
    async def main() -> float:
        slow = {"r1": 0.2, "r2": 0.2}

        def reader(name: str) -> Skill:
            @skill(side_effect="read", timeout_s=120)
            async def look() -> str:
                await asyncio.sleep(slow[name])
                return name

            return build_skill(look)

        async with world() as w:
            await w.device("r1", [reader("r1")])
            await w.device("r2", [reader("r2")])
            for _ in range(20):  # both measured: p95 0.2 s
                await w.call("look")
            slow["r1"] = slow["r2"] = 50.0
            hedges = w.coord.hedges
            t0 = w.now()
            with pytest.raises(CallTimeout):
                await w.call("look", timeout=3)
            # Hedged after ~0.2 s (not the half of what was left); both then hold it.
            assert w.coord.hedges == hedges + 1
            assert 3.0 - EPS <= w.now() - t0 < 3.2
            return w.now()

    virtual(main, at_least_s=3.0)


def test_fan_out_gathers_every_device_and_every_error() -> None:
    async def main() -> float:
        async with world() as w:
            await w.device("a", [named("a", delay_s=0.5)], {"kind": "lamp"})
            await w.device("b", [named("b", delay_s=2.0)], {"kind": "lamp"})
            await w.device("c", [named("c", error=Unavailable("bulb gone"))], {"kind": "lamp"})
            await w.device("x", [named("x")], {"kind": "fan"})
            t0 = w.now()
            out = await w.call("work", mode="all", where={"kind": "lamp"})
            assert out["results"] == {"a": "a", "b": "b"}
            assert out["errors"] == {"c": {"code": "unavailable", "message": "bulb gone"}}
            assert 2.0 - EPS <= w.now() - t0 < 2.1  # in parallel: the slowest device, not the sum
            with pytest.raises(NotFound, match="no device can take 'work'"):
                await w.call("work", mode="all", where={"kind": "oven"})
            return w.now()

    virtual(main, at_least_s=2.0)


def test_the_deadline_is_kept_and_a_passed_one_is_not_forwarded() -> None:
    async def main() -> float:
        runs: dict[str, int] = {}
        async with world(hedge=False) as w:
            await w.device("s", [named("s", side_effect="actuate", idempotent=False,
                                       delay_s=30, runs=runs)])  # fmt: skip
            t0 = w.now()
            reply = await w.fleet.request(
                w.fleet.topics.coord_call("work"), b"{}", timeout=10, expiry_s=2
            )
            assert reply.code == "timeout"
            assert 2.0 - EPS <= w.now() - t0 < 2.05  # the coordinator's answer, at the deadline
            assert runs == {"s": 1}
            # With no time left, nothing is sent to any device.
            with pytest.raises(RouteFailure, match="deadline passed before 'work'"):
                await w.coord.router.route_one(
                    "work", b"{}", {}, w.clock.monotonic(), "k", None, Trace()
                )
            assert w.coord.forwarder.in_flight == 0
            await asyncio.sleep(1)
            assert runs == {"s": 1}
            return w.now()

    virtual(main, at_least_s=3.0)


def test_admission_refuses_past_its_limits_with_the_same_messages() -> None:
    limits = CoordinatorLimits(max_in_flight=3, max_in_flight_per_caller=2, max_deadline_s=5)

    async def main() -> float:
        runs: dict[str, int] = {}
        async with world(limits=limits, hedge=False) as w:
            await w.device("mute", [named("mute", side_effect="actuate", idempotent=False,
                                          delay_s=100, runs=runs)])  # fmt: skip
            other = Fleet(fleet=FLEET, transport=MemoryTransport(w.broker, "cli-2"), clock=w.clock)
            await w.stack.enter_async_context(other)
            topic = w.fleet.topics.coord_call("work")

            def ask(client: Fleet, **kw: Any) -> asyncio.Future[Any]:
                return asyncio.ensure_future(client.request(topic, b"{}", timeout=10, **kw))

            held = [ask(w.fleet), ask(w.fleet)]
            await until(lambda: w.coord.admission.in_flight == 2, "two calls held")
            refused = await ask(w.fleet)
            assert (refused.code, refused.message) == (
                "busy",
                "this caller has 2 calls in flight (the limit); wait for some to finish",
            )
            held.append(ask(other))
            await until(lambda: w.coord.admission.in_flight == 3, "three calls held")
            full = await ask(other)
            assert (full.code, full.message) == (
                "busy",
                "coordinator at capacity (3 calls in flight); retry later",
            )
            assert w.coord.refused == 2
            long_key = "k" * (MAX_IDEMPOTENCY_KEY + 1)
            bad = await ask(other, user_properties=((IDEMPOTENCY_PROPERTY, long_key),))
            assert (bad.code, bad.message) == (
                "bad_request",
                f"idempotency key of {len(long_key)} characters: use 1 to {MAX_IDEMPOTENCY_KEY}",
            )
            assert w.coord.refused == 3
            results = await asyncio.gather(*held, return_exceptions=True)
            # The deadline was cut to max_deadline_s: each held call timed out after 5 s.
            assert [getattr(r, "code", r) for r in results] == ["timeout"] * 3
            await until(lambda: w.coord.admission.in_flight == 0, "the calls released")
            assert w.coord.admission.callers == 0
            assert w.coord.forwarder.in_flight == 0
            return w.now()

    virtual(main, at_least_s=5.0)
