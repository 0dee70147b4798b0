"""The request/response protocol (agent/rpc.py) and the one clock (agent/clock.py), no broker.

Timers run on the simulator's virtual-time loop, so a 30 s deadline takes no real time and the
test shows that reads and timers move together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from edgeagent.clock import SYSTEM_CLOCK, Clock, ManualClock
from edgeagent.errors import Busy, CallTimeout, Unavailable
from edgeagent.protocol import JSON_CONTENT_TYPE, TRACE_PROPERTY
from edgeagent.rpc import (
    CORRELATION_BYTES,
    PendingCalls,
    expiry_seconds,
    new_correlation,
    reply_props,
    request_props,
)
from edgeagent.simulator.vclock import VirtualClock, VirtualTimeLoop
from edgeagent.transport.base import Props

T = TypeVar("T")


def run_virtual(main: Callable[[Clock], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(VirtualClock(loop)))
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, 1), (0.001, 1), (1.0, 1), (1.0001, 2), (9.5, 10), (10.0, 10), (-3.0, 1)],
)
def test_expiry_rounds_up_to_whole_seconds_at_least_one(seconds: float, expected: int) -> None:
    assert expiry_seconds(seconds) == expected


def test_correlation_is_random_and_sized() -> None:
    seen = {new_correlation() for _ in range(1000)}
    assert len(seen) == 1000
    assert {len(c) for c in seen} == {CORRELATION_BYTES}


def test_request_and_reply_properties() -> None:
    corr = new_correlation()
    req = request_props(
        "r/ea-1/reply",
        corr,
        2.2,
        content_type="application/octet-stream",
        user_properties=((TRACE_PROPERTY, "t-9"), ("idem", "k")),
    )
    assert req == Props(
        response_topic="r/ea-1/reply",
        correlation_data=corr,
        message_expiry=3,
        content_type="application/octet-stream",
        user_properties=((TRACE_PROPERTY, "t-9"), ("idem", "k")),
    )
    rep = reply_props(req)
    # Only the correlation and the trace travel back; the reply is always JSON.
    assert rep == Props(
        correlation_data=corr,
        content_type=JSON_CONTENT_TYPE,
        user_properties=((TRACE_PROPERTY, "t-9"),),
    )
    assert reply_props(Props(correlation_data=b"x")).user_properties == ()


def test_pending_resolves_by_correlation_and_forgets_settled_calls() -> None:
    async def main(clock: Clock) -> tuple[Any, ...]:
        calls: PendingCalls[str] = PendingCalls(clock)
        corr, fut = calls.open(5.0)
        other, fut2 = calls.open(5.0)
        assert corr != other
        assert len(calls) == 2
        assert corr in calls
        assert not calls.resolve(b"unknown", "x")
        assert not calls.resolve(None, "x")
        assert calls.resolve(corr, "first")
        assert not calls.resolve(corr, "again")  # late duplicate reply
        value = await fut
        fut2.cancel()
        await asyncio.sleep(0)
        return value, len(calls), calls.get(corr), calls.get(other)

    assert run_virtual(main) == ("first", 0, None, None)


def test_pending_times_out_on_the_clock_not_the_wall() -> None:
    async def main(clock: Clock) -> tuple[float, str, int]:
        calls: PendingCalls[bytes] = PendingCalls(clock)
        start = clock.monotonic()
        _, fut = calls.open(30.0, lambda: "no reply from lamp/set within 30 s")
        with pytest.raises(CallTimeout) as info:
            await fut
        return clock.monotonic() - start, info.value.message, len(calls)

    wall = time.monotonic()
    waited, message, left = run_virtual(main)
    assert waited == pytest.approx(30.0)
    assert time.monotonic() - wall < 5  # virtual: 30 s of the clock, not of the wall
    assert message == "no reply from lamp/set within 30 s"
    assert left == 0


def test_pending_fail_and_fail_all() -> None:
    async def main(clock: Clock) -> tuple[str, int, str]:
        calls: PendingCalls[bytes] = PendingCalls(clock)
        a, fa = calls.open()
        _, fb = calls.open()
        _, fc = calls.open(None)
        assert calls.fail(a, Busy("full"))
        with pytest.raises(Busy) as busy:
            await fa
        n = calls.fail_all()
        with pytest.raises(Unavailable) as closed:
            await fb
        with pytest.raises(Unavailable):
            await fc
        return busy.value.message, n, closed.value.message

    assert run_virtual(main) == ("full", 2, "client closed")


def test_pending_is_bounded() -> None:
    async def main(clock: Clock) -> str:
        calls: PendingCalls[bytes] = PendingCalls(clock, limit=3)
        futures = [calls.open()[1] for _ in range(3)]
        with pytest.raises(Busy) as info:
            calls.open()
        futures[0].cancel()
        await asyncio.sleep(0)
        calls.open()  # room again once one settled
        calls.fail_all()
        for f in futures[1:]:
            with pytest.raises(Unavailable):
                await f
        return str(info.value)

    assert "3 calls already wait" in run_virtual(main)
    with pytest.raises(ValueError, match="at least 1"):
        PendingCalls(SYSTEM_CLOCK, limit=0)


def test_virtual_clock_reads_and_timers_share_one_base() -> None:
    async def main(clock: Clock) -> list[float]:
        fired: list[float] = []
        start = clock.monotonic()
        clock.call_later(2.5, lambda: fired.append(clock.monotonic() - start))
        with pytest.raises(TimeoutError):
            async with clock.timeout(1.0):
                await clock.sleep(100)
        fired.append(clock.monotonic() - start)
        await clock.sleep(2)
        return fired

    assert run_virtual(main) == pytest.approx([1.0, 2.5])


def test_system_clock_is_the_loops_time() -> None:
    async def main() -> tuple[float, float]:
        return SYSTEM_CLOCK.monotonic(), asyncio.get_running_loop().time()

    ours, loops = asyncio.run(main())
    assert abs(ours - loops) < 0.05
    assert abs(SYSTEM_CLOCK.monotonic() - time.monotonic()) < 0.05  # outside a loop too


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=10.0, epoch=100.0)
    assert (clock.monotonic(), clock.time()) == (10.0, 110.0)
    clock.advance(2.5)
    asyncio.run(clock.sleep(1.5))
    assert clock.monotonic() == 14.0
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)
    with pytest.raises(RuntimeError, match="no timers"):
        clock.call_later(1, print)
    with pytest.raises(RuntimeError, match="no timers"):
        clock.timeout(1)
