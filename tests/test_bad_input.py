"""Bad input against a real (private) mosquitto: every bad call gets a typed answer, or is dropped
and counted when no answer is possible, and the agent keeps serving the next good call."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent import DeviceAgent, Fleet
from edgeagent.broker import BrokerConfig
from edgeagent.config import AgentConfig
from edgeagent.errors import (
    BadRequest,
    Busy,
    CallError,
    CallTimeout,
    InternalError,
    NotFound,
    Unavailable,
)
from edgeagent.protocol import JSON_CONTENT_TYPE, ErrorReply, Ok, Topics, decode, decode_reply
from edgeagent.skills import build_skill, skill
from edgeagent.transport.base import NO_PROPS, Inbound, Props, Transport
from edgeagent.transport.memory import MemoryBroker, MemoryTransport
from edgeagent.transport.mqtt import MqttTransport

# See tests/test_protocol.py: keep libcst's import-time DeprecationWarning from turning a
# hypothesis failure report into an INTERNALERROR under `-W error`.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("libcst")  # optional: by name, so mypy needs no stubs for it

pytestmark = pytest.mark.broker

# --------------------------------------------------------------------------------------------
# Skills


@skill
async def echo(data: str) -> str:
    return data


@skill
async def add(a: int, b: int = 0) -> int:
    return a + b


@skill
async def boom(kind: str = "value") -> int:
    if kind == "busy":
        raise Busy("a CallError raised by a skill keeps its code", details={"retry_after_s": 1})
    raise ValueError(f"boom: {kind}")


@skill(timeout_s=0.3)
async def hang() -> str:
    await asyncio.sleep(30)
    return "never"


@skill
def block(seconds: float) -> float:
    """A synchronous skill that blocks its worker thread."""
    time.sleep(seconds)
    return seconds


@skill
async def bad_output(kind: str) -> int:
    if kind == "none":
        return None  # type: ignore[return-value]  # a forgotten `return` does this
    return "not an int"  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Helpers


def run(main: Callable[[], Awaitable[None]], limit: float = 30.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await main()

    asyncio.run(bounded())


def make_agent(
    broker_url: str,
    fleet: str,
    *skills: Callable[..., Any],
    transport: Transport | None = None,
    **options: Any,
) -> DeviceAgent:
    """An in-process agent serving ``echo`` plus ``skills``."""
    cfg = AgentConfig(
        device=f"dev-{fleet}",
        fleet=fleet,
        broker={"url": broker_url},
        skills=[{"module": "smarthome.echo"}],
        health_interval_s=0.2,
        **options,
    )
    return DeviceAgent(cfg, transport=transport, skills=[build_skill(f) for f in (echo, *skills)])


async def until(
    cond: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``cond`` (sync or async) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


async def status_of(fleet: Fleet, device: str) -> str | None:
    info = await fleet.device(device)
    return info.status if info is not None else None


async def is_status(fleet: Fleet, device: str, status: str) -> bool:
    return await status_of(fleet, device) == status


async def assert_serves(fleet: Fleet, agent: DeviceAgent, text: str = "still here") -> None:
    """The agent answers a good call after whatever came before."""
    assert await fleet.call(agent.device_id, "echo", {"data": text}, timeout=5) == text


class Raw:
    """A bare MQTT 5 requester for inputs the Fleet client would never send."""

    def __init__(self, broker_url: str, fleet: str) -> None:
        self.topics = Topics(fleet=fleet)
        self.transport = MqttTransport(BrokerConfig.from_url(broker_url))
        self.reply_topic = f"{self.topics.base}/client/{self.transport.client_id}/raw"
        self._pending: dict[bytes, asyncio.Future[Inbound]] = {}
        self._next = 0

    async def __aenter__(self) -> Raw:
        await self.transport.subscribe(self.reply_topic, self._on_reply, qos=1)
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    def _on_reply(self, msg: Inbound) -> None:
        corr = msg.props.correlation_data
        fut = self._pending.pop(corr, None) if corr is not None else None
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def send(self, topic: str, payload: bytes, props: Props = NO_PROPS) -> None:
        await self.transport.publish(topic, payload, qos=1, props=props)

    async def request(
        self,
        device: str,
        skill_name: str,
        payload: bytes,
        *,
        timeout: float = 5.0,
        expiry: int | None = None,
    ) -> tuple[Ok | ErrorReply, Inbound]:
        self._next += 1
        corr = b"raw-%d" % self._next
        fut: asyncio.Future[Inbound] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        props = Props(response_topic=self.reply_topic, correlation_data=corr, message_expiry=expiry)
        await self.send(self.topics.call(device, skill_name), payload, props)
        async with asyncio.timeout(timeout):
            msg = await fut
        assert msg.props.correlation_data == corr
        assert msg.props.content_type == JSON_CONTENT_TYPE
        return decode_reply(msg.payload), msg


# --------------------------------------------------------------------------------------------
# Malformed, mistyped, unknown, oversized


def test_malformed_json_is_bad_request(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            for payload in (b"{not json", b'{"a": 1', b"\xff\xfe\x00", b'{"a": 1} trailing'):
                with pytest.raises(BadRequest, match=r"invalid input.*Invalid JSON"):
                    await fleet.call(dev, "add", payload, timeout=5)
                await assert_serves(fleet, agent)
            assert agent.statistics().failed == 4
            assert agent.statistics().served == 4

    run(main)


def test_wrong_schema_is_bad_request_naming_the_field(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            cases = [
                ({"a": "one"}, "a: Input should be a valid integer"),
                ({"b": 2}, "a: Field required"),
                ({"a": 1, "c": 3}, "c: Extra inputs are not permitted"),
                ([1, 2], "(body)"),
                ("null", "(body)"),
            ]
            for payload, expected in cases:
                with pytest.raises(BadRequest) as err:
                    await fleet.call(dev, "add", payload, timeout=5)
                assert err.value.code == "bad_request"
                assert expected in err.value.message, err.value.message
                await assert_serves(fleet, agent)
            assert await fleet.call(dev, "add", {"a": 2, "b": 3}, timeout=5) == 5
            assert await fleet.call(dev, "add", {"a": 2}, timeout=5) == 2

    run(main)


def test_unknown_skill_is_not_found(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            with pytest.raises(NotFound) as err:
                await fleet.call(agent.device_id, "dance", {}, timeout=5)
            assert "no skill 'dance'" in err.value.message
            assert "(skills: add, echo)" in err.value.message
            await assert_serves(fleet, agent)

    run(main)


def test_oversized_payload_is_bad_request(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        cfg = AgentConfig(
            device=f"dev-{fleet_name}",
            fleet=fleet_name,
            broker={"url": broker_url},
            skills=[{"module": "smarthome.echo"}],  # loaded from the config this time
            health_interval_s=0.2,
            max_payload=64,
        )
        agent = DeviceAgent(cfg, skills=None)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            assert agent.manifest().max_payload == 64
            fits = json.dumps({"data": "x" * (64 - 12)}).encode()
            assert len(fits) == 64
            assert await fleet.call(dev, "echo", fits, timeout=5) == "x" * 52
            too_big = json.dumps({"data": "x" * (64 - 11)}).encode()
            with pytest.raises(BadRequest, match=r"payload of 65 bytes exceeds .* limit of 64"):
                await fleet.call(dev, "echo", too_big, timeout=5)
            with pytest.raises(BadRequest, match="exceeds"):
                await fleet.call(dev, "echo", b"[" * 100_000, timeout=5)
            await assert_serves(fleet, agent)

    run(main)


def test_missing_response_topic_is_dropped_counted_and_logged(
    broker_url: str, fleet_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeagent.device")

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with (
            agent,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url, fleet_name) as raw,
        ):
            topic = agent.topics.call(agent.device_id, "add")
            assert agent.statistics().dropped == 0
            await raw.send(topic, b'{"a": 1}')  # no properties at all
            await raw.send(topic, b'{"a": 2}', Props(correlation_data=b"c1"))
            await until(lambda: agent.statistics().dropped == 2, what="two drops")
            await assert_serves(fleet, agent)
            stats = agent.statistics()
            assert (stats.dropped, stats.served, stats.failed) == (2, 1, 0)
            assert agent.health().calls_dropped == 2

    run(main)
    dropped = [r for r in caplog.records if "without a response topic" in r.getMessage()]
    assert len(dropped) == 2
    assert all(r.levelno == logging.WARNING and "'add'" in r.getMessage() for r in dropped)


@pytest.mark.parametrize("response_topic", ["x/+/reply", "x/#"])
def test_wildcard_response_topic_cannot_crash_the_agent(
    broker_url: str, fleet_name: str, response_topic: str
) -> None:
    """MQTT 5 forbids wildcards in a Response Topic, but mosquitto forwards them anyway: no reply
    can be published there, and the agent must shrug that off like a missing response topic."""

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with (
            agent,
            Fleet(broker_url, fleet=fleet_name) as fleet,
            Raw(broker_url, fleet_name) as raw,
        ):
            topic = agent.topics.call(agent.device_id, "add")
            props = Props(response_topic=response_topic, correlation_data=b"c")
            await raw.send(topic, b'{"a": 1}', props)  # valid: the skill runs, then replies
            await raw.send(topic, b"not json", props)  # invalid: refused at once
            await raw.send(topic, b'{"a": 1}', Props(correlation_data=b"marker"))
            await until(lambda: agent.statistics().dropped >= 1, what="marker dropped")
            await asyncio.sleep(0.05)
            await assert_serves(fleet, agent)
            assert await fleet.call(agent.device_id, "add", {"a": 2, "b": 2}, timeout=5) == 4

    run(main)


def test_replies_echo_correlation_and_trace(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with agent, Raw(broker_url, fleet_name) as raw:
            got: list[Inbound] = []
            reply_topic = raw.reply_topic + "/traced"
            await raw.transport.subscribe(reply_topic, got.append)
            props = Props(
                response_topic=reply_topic,
                correlation_data=b"\x00\x01binary",
                user_properties=(("trace", "tr-42"),),
            )
            topic = agent.topics.call(agent.device_id, "add")
            await raw.send(topic, b'{"a": 40, "b": 2}', props)
            await raw.send(topic, b"garbage", props)
            await until(lambda: len(got) == 2, what="two replies")
            for msg in got:
                assert msg.props.correlation_data == b"\x00\x01binary"
                assert msg.props.user_property("trace") == "tr-42"
                assert msg.props.content_type == JSON_CONTENT_TYPE
            assert decode(got[0].payload) == Ok(output=42)
            bad = decode(got[1].payload)
            assert isinstance(bad, ErrorReply)
            assert bad.code == "bad_request"

    run(main)


# --------------------------------------------------------------------------------------------
# Skills that fail, hang or block


def test_skill_that_raises_is_internal(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, boom)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            with pytest.raises(InternalError) as err:
                await fleet.call(dev, "boom", {}, timeout=5)
            assert err.value.message == "skill 'boom' failed: ValueError: boom: value"
            await assert_serves(fleet, agent)
            with pytest.raises(Busy, match="keeps its code") as busy:
                await fleet.call(dev, "boom", {"kind": "busy"}, timeout=5)
            assert busy.value.details == {"retry_after_s": 1}
            await assert_serves(fleet, agent)
            health = agent.health().skills["boom"]
            assert (health.calls, health.errors) == (2, 2)

    run(main)


def test_skill_returning_output_off_its_schema_is_internal(
    broker_url: str, fleet_name: str
) -> None:
    """``-> int`` returning a str must not reach the caller as an ok reply.

    Warnings are not errors on a device, so run the agent as it runs in production.
    """

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, bad_output)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            outcomes = {}
            for kind in ("str", "none"):
                try:
                    outcomes[kind] = await fleet.call(
                        agent.device_id, "bad_output", {"kind": kind}, timeout=5
                    )
                except InternalError as exc:
                    outcomes[kind] = exc.message
                await assert_serves(fleet, agent)
            expected = "skill 'bad_output' returned output not matching its schema"
            assert outcomes == {"str": expected, "none": expected}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run(main)


def test_hanging_skill_times_out_and_others_are_served(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, hang)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            started = time.monotonic()
            hung = asyncio.create_task(fleet.call(dev, "hang", {}, timeout=5))
            await until(lambda: agent.statistics().in_flight == 1, what="hang running")
            await assert_serves(fleet, agent, "while hanging")
            assert not hung.done()
            with pytest.raises(CallTimeout) as err:
                await hung
            elapsed = time.monotonic() - started
            # The device's answer (not the client's own 5 s timeout).
            assert err.value.message == "skill 'hang' did not finish within 0.3 s"
            assert 0.25 <= elapsed < 2.0
            assert agent.statistics().in_flight == 0
            await assert_serves(fleet, agent)

    run(main)


def test_blocking_sync_skill_does_not_block_the_event_loop(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, block)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            blocked = asyncio.create_task(fleet.call(dev, "block", {"seconds": 1.0}, timeout=5))
            await until(lambda: agent.statistics().in_flight == 1, what="block running")
            started = time.monotonic()
            assert await fleet.call(dev, "echo", {"data": "meanwhile"}, timeout=5) == "meanwhile"
            assert time.monotonic() - started < 0.5
            assert not blocked.done()
            assert await blocked == 1.0

    run(main)


def test_sync_skill_past_its_timeout_keeps_its_slot_until_the_thread_returns(
    broker_url: str, fleet_name: str
) -> None:
    release = threading.Event()

    @skill(timeout_s=0.3, max_concurrency=1, max_queue=0)
    def stuck() -> str:
        release.wait(10)
        return "released"

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, stuck)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            with pytest.raises(CallTimeout, match=r"did not finish within 0\.3 s"):
                await fleet.call(dev, "stuck", {}, timeout=5)
            # The thread still runs: its slot is taken, so the next call is refused at once.
            with pytest.raises(Busy):
                await fleet.call(dev, "stuck", {}, timeout=5)
            await assert_serves(fleet, agent)
            release.set()
            await until(lambda: agent.statistics().in_flight == 0, what="thread returned")
            assert await fleet.call(dev, "stuck", {}, timeout=5) == "released"

    try:
        run(main)
    finally:
        release.set()


# --------------------------------------------------------------------------------------------
# Admission: busy, expiry


def test_second_concurrent_call_gets_busy_at_once(broker_url: str, fleet_name: str) -> None:
    @skill(max_concurrency=1, max_queue=0)
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, slow)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            first = asyncio.create_task(fleet.call(dev, "slow", {"seconds": 0.6}, timeout=5))
            await until(lambda: agent.statistics().in_flight == 1, what="first running")
            started = time.monotonic()
            with pytest.raises(Busy, match=r"at capacity \(1 running, 0 queued\)"):
                await fleet.call(dev, "slow", {"seconds": 0}, timeout=5)
            assert time.monotonic() - started < 0.3
            assert await first == 0.6
            assert await fleet.call(dev, "slow", {"seconds": 0}, timeout=5) == 0
            health = agent.health().skills["slow"]
            assert (health.calls, health.rejected, health.in_flight) == (2, 1, 0)

    run(main)


@pytest.mark.parametrize("transport", ["mosquitto", "memory"])
def test_burst_of_calls_admits_only_max_concurrency_plus_max_queue(
    broker_url: str, fleet_name: str, transport: str
) -> None:
    """Calls delivered together must be admitted one by one: with max_concurrency=1 and
    max_queue=0 exactly one of a burst runs. The in-memory broker delivers a burst in one loop
    iteration, before any admitted call has started, so it pins the admission bookkeeping down
    deterministically; paho hands the agent one packet per socket read."""
    runs: list[int] = []

    @skill(max_concurrency=1, max_queue=0)
    async def slow(n: int) -> int:
        runs.append(n)
        await asyncio.sleep(0.2)
        return n

    async def main() -> None:
        if transport == "memory":
            broker = MemoryBroker()
            agent = make_agent(broker_url, fleet_name, slow, transport=MemoryTransport(broker))
            fleet = Fleet(fleet=fleet_name, transport=MemoryTransport(broker))
        else:
            agent = make_agent(broker_url, fleet_name, slow)
            fleet = Fleet(broker_url, fleet=fleet_name)
        async with agent, fleet:
            dev = agent.device_id
            results = await asyncio.gather(
                *(fleet.call(dev, "slow", {"n": i}, timeout=5) for i in range(4)),
                return_exceptions=True,
            )
            busy = [r for r in results if isinstance(r, Busy)]
            assert len(runs) == 1, (runs, results)
            assert len(busy) == 3, results
            assert [r for r in results if not isinstance(r, Busy)] == runs
            health = agent.health().skills["slow"]
            assert (health.calls, health.rejected, health.queued) == (1, 3, 0)

    run(main)


def test_expired_request_is_dropped_not_run(broker_url: str, fleet_name: str) -> None:
    runs: list[str] = []

    @skill(max_concurrency=1, max_queue=4)
    async def slow(tag: str, seconds: float = 0) -> str:
        runs.append(tag)
        await asyncio.sleep(seconds)
        return tag

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, slow)
        async with agent, Fleet(broker_url, fleet=fleet_name) as fleet:
            dev = agent.device_id
            first = asyncio.create_task(
                fleet.call(dev, "slow", {"tag": "first", "seconds": 1.4}, timeout=5)
            )
            await until(lambda: runs == ["first"], what="first running")
            # Message Expiry Interval 1 s; the slot stays busy for longer than that.
            with pytest.raises(CallTimeout, match="no reply"):
                await fleet.call(dev, "slow", {"tag": "expired"}, timeout=1)
            assert agent.statistics().queued == 1
            assert await first == "first"
            await until(lambda: agent.statistics().dropped == 1, what="expired call dropped")
            assert await fleet.call(dev, "slow", {"tag": "after"}, timeout=5) == "after"
            assert runs == ["first", "after"]
            stats = agent.statistics()
            assert (stats.dropped, stats.queued, stats.in_flight) == (1, 0, 0)

    run(main)


def test_deadline_cuts_a_running_call_short(broker_url: str, fleet_name: str) -> None:
    """A request's Message Expiry Interval bounds the run, even below the skill's timeout_s."""

    @skill(timeout_s=10)
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, nap)
        async with agent, Raw(broker_url, fleet_name) as raw:
            dev = agent.device_id
            started = time.monotonic()
            reply, _ = await raw.request(dev, "nap", b'{"seconds": 3}', expiry=1)
            elapsed = time.monotonic() - started
            assert isinstance(reply, ErrorReply)
            assert reply.code == "timeout"
            assert reply.message.startswith("skill 'nap' did not finish within")
            assert 0.8 < elapsed < 2.0
            reply, _ = await raw.request(dev, "nap", b'{"seconds": 0.05}', expiry=5)
            assert reply == Ok(output=0.05)

    run(main)


# --------------------------------------------------------------------------------------------
# Random bytes


def test_random_payloads_always_get_a_typed_reply(broker_url: str, fleet_name: str) -> None:
    """Hypothesis throws bytes at ``add`` over one connection; every one gets an answer."""
    payloads = st.binary(max_size=300).map(lambda b: (b, None)) | st.tuples(
        st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40)
    ).map(lambda ab: (json.dumps({"a": ab[0], "b": ab[1]}).encode(), ab[0] + ab[1]))
    seen: dict[str, int] = {"ok": 0, "bad_request": 0}

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, add)
        async with agent, Raw(broker_url, fleet_name) as raw:
            loop = asyncio.get_running_loop()
            dev = agent.device_id

            @settings(
                max_examples=100,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(payloads)
            def throw(case: tuple[bytes, int | None]) -> None:
                payload, expected = case
                fut = asyncio.run_coroutine_threadsafe(raw.request(dev, "add", payload), loop)
                reply, _ = fut.result(timeout=10)
                if isinstance(reply, Ok):
                    assert isinstance(reply.output, int)
                    if expected is not None:
                        assert reply.output == expected
                    seen["ok"] += 1
                else:
                    assert reply.code == "bad_request", (payload, reply)
                    assert expected is None
                    seen["bad_request"] += 1

            await asyncio.to_thread(throw)
            reply, _ = await raw.request(dev, "add", b'{"a": 20, "b": 22}')
            assert reply == Ok(output=42)
            stats = agent.statistics()
            assert stats.failed == seen["bad_request"]
            assert stats.served == seen["ok"] + 1
            assert stats.dropped == 0

    run(main, limit=60)
    assert seen["ok"] > 0
    assert seen["bad_request"] > 0


# --------------------------------------------------------------------------------------------
# Draining


def test_stop_drains_in_flight_calls_and_refuses_new_ones(broker_url: str, fleet_name: str) -> None:
    @skill
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, slow)
        dev = agent.device_id
        await agent.start()
        try:
            async with Fleet(broker_url, fleet=fleet_name) as fleet:
                assert await status_of(fleet, dev) == "online"
                in_flight = asyncio.create_task(
                    fleet.call(dev, "slow", {"seconds": 0.8}, timeout=5)
                )
                await until(lambda: agent.statistics().in_flight == 1, what="slow running")
                started = time.monotonic()
                stopping = asyncio.create_task(agent.stop(grace_s=2))
                await until(lambda: is_status(fleet, dev, "draining"), what="draining state")
                with pytest.raises(Unavailable, match="shutting down"):
                    await fleet.call(dev, "echo", {"data": "late"}, timeout=5)
                assert await in_flight == "done"
                await stopping
                assert time.monotonic() - started < 1.9  # returned when idle, not after grace
                await until(lambda: is_status(fleet, dev, "offline"), what="offline state")
        finally:
            await agent.stop(grace_s=0)
        async with Fleet(broker_url, fleet=fleet_name) as fresh:
            info = await fresh.device(dev)
            assert info is not None
            assert info.status == "offline"  # retained
            assert agent.statistics().served == 1
            assert agent.statistics().failed == 1

    run(main)


def test_stop_gives_up_after_grace_and_still_goes_offline(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = make_agent(broker_url, fleet_name, hang)
        dev = agent.device_id
        await agent.start()
        async with Fleet(broker_url, fleet=fleet_name) as fleet:
            call = asyncio.create_task(fleet.call(dev, "hang", {}, timeout=5))
            await until(lambda: agent.statistics().in_flight == 1, what="hang running")
            started = time.monotonic()
            await agent.stop(grace_s=0.1)
            assert time.monotonic() - started < 1.0
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, CallError):
                await call
        async with Fleet(broker_url, fleet=fleet_name) as fresh:
            info = await fresh.device(dev)
            assert info is not None
            assert info.status == "offline"

    run(main)
