"""Local routing (``Fleet(route="local")``) against a real mosquitto, with no coordinator running,
and the router's loop alone over a fake sender (no broker).

The same behaviour as tests/test_coordinator.py asks of the coordinator: tags, spreading load,
failover (busy, a killed device), no retry of a non-idempotent call after a timeout, hedged
reads, fan-out, the explain record and the error codes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edgeagent import (
    BadRequest,
    Busy,
    CallResult,
    CallTimeout,
    Fleet,
    LocalRouter,
    NotFound,
    Unavailable,
    skill,
)
from edgeagent.clock import SYSTEM_CLOCK
from edgeagent.coord_route import CallRouter, RoutingLoop
from edgeagent.local_routing import DirectLauncher, RouteTrace
from edgeagent.protocol import ErrorReply, Manifest, Ok, SkillSpec, StateMessage
from edgeagent.routing import DEFAULT_LATENCY_S, score
from edgeagent.skills import Skill, build_skill
from tests.agents import running_agent
from tests.test_coordinator import custom, lamp
from tests.test_coordinator_faults import echo_config


def local(url: str, fleet: str) -> Fleet:
    return Fleet(url, fleet=fleet, route="local")


@pytest.mark.broker
def test_routes_by_tags_fans_out_explains_and_names_errors(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-k", "kitchen"),
            lamp(broker_url, fleet_name, "lamp-h", "hall"),
            local(broker_url, fleet_name) as fleet,
        ):
            result = await fleet.call_skill(
                "set_brightness", {"level": 33}, where={"room": "hall"}, explain=True
            )
            assert isinstance(result, CallResult)
            out, route = result  # the older unpacking still works
            assert out == {"on": True, "brightness": 33}
            (decision,) = route["decisions"]
            assert decision["chosen"] == "lamp-h"
            assert decision["rejected"] == {"lamp-k": "tags room=kitchen≠hall"}
            assert [(a["device"], a["outcome"]) for a in route["attempts"]] == [("lamp-h", "ok")]
            assert await fleet.call("lamp-h", "get_state") == {"on": True, "brightness": 33}
            assert (await fleet.call("lamp-k", "get_state"))["on"] is False

            both = await fleet.call_skill("turn_on", mode="all", where={"kind": "lamp"})
            assert set(both["results"]) == {"lamp-k", "lamp-h"}
            assert both["errors"] == {}
            fan = await fleet.call_skill("get_state", mode="all", explain=True)
            assert fan.route["decisions"][0]["method"] == "all"
            assert sorted(a["device"] for a in fan.route["attempts"]) == ["lamp-h", "lamp-k"]

            with pytest.raises(NotFound, match="no device in the fleet has a skill 'fly'"):
                await fleet.call_skill("fly")
            with pytest.raises(NotFound, match="attic") as info:
                await fleet.call_skill("turn_on", where={"room": "attic"}, explain=True)
            assert info.value.route is not None
            assert info.value.route["decisions"][0]["chosen"] is None
            with pytest.raises(BadRequest, match="level"):
                await fleet.call_skill("set_brightness", {"level": 900}, where={"room": "hall"})
            assert (await fleet.call_skill("get_state", where={"room": "kitchen"}))["on"] is True

            # The same fleet still routes through a coordinator when asked (none runs here).
            with pytest.raises(CallTimeout, match="the coordinator"):
                await fleet.call_skill("get_state", via="coordinator", timeout=0.3)

    asyncio.run(main())


@pytest.mark.broker
def test_offline_device_is_unavailable_and_others_serve(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        kitchen = lamp(broker_url, fleet_name, "lamp-k", "kitchen")
        async with (
            kitchen,
            lamp(broker_url, fleet_name, "lamp-h", "hall"),
            Fleet(broker_url, fleet=fleet_name) as fleet,  # default: through a coordinator
        ):
            router = await fleet.local_router()
            await kitchen.stop(grace_s=0)  # publishes offline
            for _ in range(100):
                if not router.registry.online("lamp-k"):
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(Unavailable, match="lamp-k: state offline"):
                await fleet.call_skill("turn_on", where={"room": "kitchen"}, via="local")
            out = await fleet.call_skill("turn_on", via="local", explain=True)
            assert out.output["on"] is True
            assert out.route["attempts"][-1]["device"] == "lamp-h"

    asyncio.run(main())


@pytest.mark.broker
def test_spreads_load_and_fails_over_when_busy(broker_url: str, fleet_name: str) -> None:
    served: dict[str, int] = {}

    def worker(name: str) -> Skill:
        @skill(side_effect="read", max_concurrency=1, max_queue=0)
        async def slow_read(n: int) -> str:
            served[name] = served.get(name, 0) + 1
            await asyncio.sleep(0.15)
            return name

        return build_skill(slow_read)

    @skill(side_effect="read")
    async def quick(n: int) -> int:
        return n

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "w1", [worker("w1"), build_skill(quick)]),
            custom(broker_url, fleet_name, "w2", [worker("w2"), build_skill(quick)]),
            local(broker_url, fleet_name) as fleet,
        ):
            router = await fleet.local_router()
            router.hedge = False
            got = await asyncio.gather(
                fleet.call_skill("slow_read", {"n": 1}), fleet.call_skill("slow_read", {"n": 2})
            )
            assert sorted(got) == ["w1", "w2"]
            results = await asyncio.gather(
                *(fleet.call_skill("slow_read", {"n": i}) for i in range(4)),
                return_exceptions=True,
            )
            ok = [r for r in results if isinstance(r, str)]
            refused = [r for r in results if not isinstance(r, str)]
            assert len(ok) >= 2
            assert all(getattr(r, "code", None) == "busy" for r in refused), refused
            assert router.statistics()["failovers"] >= 1

            # Concurrent quick calls share the two devices: each call counts as outstanding on
            # its device, so (outstanding + 1) x latency sends the next one to the other device.
            # (Sequential calls would not have to: with no load, the device measured faster may
            # win every draw that is not within the tie band.)
            chosen = []
            for batch in range(5):
                replies = await asyncio.gather(
                    *(
                        fleet.call_skill("quick", {"n": 8 * batch + i}, explain=True)
                        for i in range(8)
                    )
                )
                for i, res in enumerate(replies):
                    assert res.output == 8 * batch + i
                    chosen.append(res.route["attempts"][-1]["device"])
            assert min(chosen.count("w1"), chosen.count("w2")) >= 10, chosen

    asyncio.run(main())


@pytest.mark.broker
def test_non_idempotent_call_is_not_retried_after_a_timeout(
    broker_url: str, fleet_name: str
) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}

    def counter(name: str) -> Skill:
        @skill(side_effect="actuate", idempotent=False, timeout_s=5)
        async def bump() -> int:
            runs[name] += 1
            await asyncio.sleep(1.5)
            return runs[name]

        return build_skill(bump)

    async def main() -> None:
        async with (
            custom(broker_url, fleet_name, "a", [counter("a")]),
            custom(broker_url, fleet_name, "b", [counter("b")]),
            local(broker_url, fleet_name) as fleet,
        ):
            started = time.monotonic()
            with pytest.raises(CallTimeout) as info:
                await fleet.call_skill("bump", timeout=1, explain=True)
            assert time.monotonic() - started < 2.5
            assert info.value.route is not None
            assert [a["outcome"] for a in info.value.route["attempts"]] == ["timeout"]
            await asyncio.sleep(1.0)
            assert sum(runs.values()) == 1
            assert (await fleet.local_router()).statistics()["failovers"] == 0

            # The same key twice runs once: the device answers the repeat from its memory.
            first, route = await fleet.call_skill(
                "bump", idempotency_key="k-1", timeout=5, explain=True
            )
            again = await fleet.call_skill("bump", idempotency_key="k-1", timeout=5, explain=True)
            if again.route["attempts"][-1]["device"] == route["attempts"][-1]["device"]:
                assert again.output == first
            assert sum(runs.values()) in (2, 3)

    asyncio.run(main())


@pytest.mark.broker
def test_slow_reads_are_hedged_to_a_second_device(broker_url: str, fleet_name: str) -> None:
    slow: dict[str, float] = {"r1": 0.0, "r2": 0.0}
    keys: list[str | None] = []

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
            local(broker_url, fleet_name) as fleet,
        ):
            router = await fleet.local_router()
            for i in range(30):  # both fast and measured: p95 of a few ms
                await fleet.call_skill("look", {"n": i})
            cands, _ = router.registry.candidates("look")
            victim = min(cands, key=lambda c: score(c, DEFAULT_LATENCY_S)).device
            other = "r2" if victim == "r1" else "r1"
            slow[victim] = 1.0
            await fleet.transport.subscribe(
                f"edgeagent/{fleet_name}/dev/+/call/look",
                lambda msg: keys.append(msg.props.user_property("idem")),
            )
            for _ in range(30):
                keys.clear()
                hedges_before = router.statistics()["hedges"]
                t0 = time.monotonic()
                out, route = await fleet.call_skill(
                    "look", {"n": -1}, explain=True, idempotency_key="hedge-me"
                )
                took = time.monotonic() - t0
                if route["decisions"][0]["chosen"] == victim:
                    break
            else:
                raise AssertionError(f"{victim} was never chosen first in 30 calls")
            assert router.statistics()["hedges"] == hedges_before + 1
            assert out == other
            assert route["attempts"][-1]["device"] == other
            assert took < 0.5, took
            assert keys == ["hedge-me", "hedge-me-h"]  # the hedge has a key of its own

    asyncio.run(main())


@pytest.mark.broker
def test_killed_device_fails_over_at_its_last_will(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    with (
        running_agent(echo_config(tmp_path, "e1"), broker_url, fleet_name, "e1") as e1,
        running_agent(echo_config(tmp_path, "e2"), broker_url, fleet_name, "e2") as e2,
    ):
        procs = {"e1": e1, "e2": e2}

        async def main() -> tuple[str, Any, float, dict[str, Any]]:
            async with local(broker_url, fleet_name) as fleet:
                (await fleet.local_router()).hedge = False
                forwarded: list[str] = []
                await fleet.transport.subscribe(
                    f"edgeagent/{fleet_name}/dev/+/call/slow_echo",
                    lambda msg: forwarded.append(msg.topic.split("/")[3]),
                )
                call = asyncio.ensure_future(
                    fleet.call_skill(
                        "slow_echo", {"data": "hi", "delay_s": 1.5}, timeout=20, explain=True
                    )
                )
                for _ in range(100):
                    if forwarded:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
                victim = forwarded[0]
                procs[victim].send_signal(signal.SIGKILL)  # its last will marks it offline
                t0 = time.monotonic()
                out, route = await call
                return victim, out, time.monotonic() - t0, route

        victim, out, waited, route = asyncio.run(main())
        other = "e2" if victim == "e1" else "e1"
        assert out == "hi"
        attempts = [(a["device"], a["outcome"]) for a in route["attempts"]]
        assert attempts == [(victim, "timeout"), (other, "ok")], json.dumps(route)
        assert waited < 5, waited  # failed over at the will, not at the 20 s deadline


# The router alone: a fake sender answers at once (no broker, no network) --------------------------


def _router(answers: dict[str, list[str]], sent: list[tuple[str, str | None]]) -> LocalRouter:
    """A router over devices d1..dN (echo, read, idempotent unless named ``w*``)."""

    def send(
        device: str,
        skill: str,
        payload: bytes,
        *,
        expires_in: float,
        wait: float,
        idem: str | None,
        trace: str | None,
    ) -> asyncio.Future[Any]:
        sent.append((device, idem))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        code = answers[device].pop(0) if answers[device] else "ok"

        def answer() -> None:  # later, as a reply from the broker would
            if code == "ok":
                future.set_result(Ok(output=device))
            elif code == "timeout":
                future.set_exception(CallTimeout("no reply"))
            else:
                future.set_result(ErrorReply(code=code, message=f"{device} says {code}"))

        asyncio.get_running_loop().call_soon(answer)
        return future

    router = LocalRouter(send, clock=SYSTEM_CLOCK, rng=random.Random(7))
    for device in answers:
        write = device.startswith("w")
        spec = SkillSpec(
            name="echo", description="", input_schema={}, output_schema={},
            side_effect="actuate" if write else "read", idempotent=not write,
            max_concurrency=1, max_queue=0, timeout_s=5,
        )  # fmt: skip
        router.observe(
            Manifest(device=device, fleet="f", skills=[spec], tags={}, max_payload=1,
                     agent_version="0")
        )  # fmt: skip
        router.observe(StateMessage(device=device, status="online"))
    return router


def _call(router: LocalRouter, mode: str = "one") -> Any:
    async def main() -> Any:
        deadline = SYSTEM_CLOCK.monotonic() + 5
        return await router.call(
            "echo", b"{}", where={}, mode=mode, deadline=deadline, idem="k", trace=None,
            explain=True,
        )  # fmt: skip

    return asyncio.run(main())


def test_busy_everywhere_stops_at_the_retry_budget_with_the_same_key() -> None:
    sent: list[tuple[str, str | None]] = []
    router = _router({d: ["busy"] for d in ("d1", "d2", "d3", "d4")}, sent)
    with pytest.raises(Busy) as info:
        _call(router)
    assert len(sent) == 3  # the first try and a retry budget of 2
    assert {idem for _, idem in sent} == {"k"}
    assert info.value.route is not None
    assert [a["outcome"] for a in info.value.route["attempts"]] == ["busy"] * 3
    assert router.statistics()["failovers"] == 2


def test_timeout_fails_over_only_for_idempotent_skills() -> None:
    sent: list[tuple[str, str | None]] = []
    reads = _router({"d1": ["timeout"], "d2": ["timeout"]}, sent)
    reads.hedge = False
    with pytest.raises(CallTimeout) as info:
        _call(reads)
    assert len(sent) == 2  # failed over to the other device (which timed out too)
    assert info.value.route is not None
    assert [a["outcome"] for a in info.value.route["attempts"]] == ["timeout", "timeout"]
    sent.clear()
    writes = _router({"w1": ["timeout"], "w2": ["timeout"]}, sent)
    with pytest.raises(CallTimeout):
        _call(writes)
    assert len(sent) == 1


def test_fan_out_gathers_results_and_errors_with_a_key_per_device() -> None:
    sent: list[tuple[str, str | None]] = []
    router = _router({"d1": [], "d2": ["internal"]}, sent)
    result = _call(router, mode="all")
    assert result.output == {
        "results": {"d1": "d1"},
        "errors": {"d2": {"code": "internal", "message": "d2 says internal"}},
    }
    assert sorted(sent) == [("d1", "k-d1"), ("d2", "k-d2")]
    assert result.route["decisions"][0]["method"] == "all"
    with pytest.raises(BadRequest, match="mode must be one or all"):
        _call(router, mode="some")


def test_the_client_runs_the_coordinators_routing_loop_with_its_own_errors() -> None:
    # One loop (issue 13): the refusals it makes are the client's typed errors, with the
    # coordinator's messages, and nothing is sent once the deadline has passed.
    sent: list[tuple[str, str | None]] = []
    router = _router({"d1": []}, sent)
    assert isinstance(router, RoutingLoop)
    assert issubclass(CallRouter, RoutingLoop)

    async def main() -> None:
        now = SYSTEM_CLOCK.monotonic()
        with pytest.raises(CallTimeout, match="deadline passed before 'echo' could be forwarded"):
            await router.call(
                "echo", b"{}", where={}, mode="one", deadline=now, idem="k", trace=None,
                explain=False,
            )  # fmt: skip
        with pytest.raises(NotFound, match="no device in the fleet has a skill 'nope'"):
            await router.call(
                "nope", b"{}", where={}, mode="all", deadline=now + 5, idem="k", trace=None,
                explain=False,
            )  # fmt: skip

    asyncio.run(main())
    assert sent == []


def test_a_device_gone_mid_call_fails_its_forward_and_abandons_the_request() -> None:
    cancelled: list[str] = []
    router = _router({}, [])

    def never(device: str, skill: str, payload: bytes, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: cancelled.append(device) if f.cancelled() else None)
        return future

    router.direct = DirectLauncher(never, router.registry, SYSTEM_CLOCK, router.limits)
    router.launcher = router.direct
    router.observe(Manifest(device="d1", fleet="f", skills=[], tags={}, max_payload=1,
                            agent_version="0"))  # fmt: skip

    async def main() -> None:
        fut = router.direct.launch("d1", "echo", b"{}", SYSTEM_CLOCK.monotonic() + 5, "k", None,
                                   trace := RouteTrace())  # fmt: skip
        await asyncio.sleep(0)
        router.device_gone("d1", "left the fleet")
        with pytest.raises(CallTimeout, match="device 'd1' left the fleet"):
            await fut
        for _ in range(2):  # the done callbacks: the record, then the released request
            await asyncio.sleep(0)
        assert [(a.device, a.outcome) for a in trace.attempts] == [("d1", "timeout")]
        assert cancelled == ["d1"]  # the client's pending request is released too

    asyncio.run(main())


@pytest.mark.broker
def test_cli_call_via_local_routes_without_a_coordinator(broker_url: str, fleet_name: str) -> None:
    from click.testing import CliRunner

    from edgeagent.cli import main as cli

    base = ["--broker", broker_url, "--fleet", fleet_name, "call"]

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, [*base, *args])

    async def main() -> None:
        async with (
            lamp(broker_url, fleet_name, "lamp-k", "kitchen"),
            lamp(broker_url, fleet_name, "lamp-h", "hall"),
        ):
            res = await asyncio.to_thread(
                invoke, "--skill", "set_brightness", "--where", "room=hall", "--via", "local",
                "--explain", '{"level": 12}',
            )  # fmt: skip
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout) == {"on": True, "brightness": 12}
            route = json.loads(res.stderr)["route"]
            assert route["decisions"][0]["chosen"] == "lamp-h"
            # No coordinator runs: the default route times out and says what is missing.
            res = await asyncio.to_thread(invoke, "--skill", "get_state", "--timeout", "0.3")
            assert res.exit_code == 2
            assert "is a coordinator running" in res.stderr
            res = await asyncio.to_thread(invoke, "lamp-h", "get_state", "--via", "local")
            assert res.exit_code == 2
            assert "--via go with --skill" in res.output

    asyncio.run(main())
