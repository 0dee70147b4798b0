"""The in-memory broker and transport keep the semantics documented in transport/base.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from edgeagent.errors import TransportError
from edgeagent.transport.base import Inbound, Props, Transport, Will
from edgeagent.transport.memory import MemoryBroker, MemoryTransport


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(400):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached within 2 s")


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Inbound] = []

    def __call__(self, msg: Inbound) -> None:
        self.messages.append(msg)

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


async def client(broker: MemoryBroker, cid: str | None = None, **kw: Any) -> MemoryTransport:
    t = MemoryTransport(broker, cid, **kw)
    await t.connect()
    return t


def test_implements_transport_protocol() -> None:
    assert isinstance(MemoryTransport(MemoryBroker(), "x"), Transport)


def test_wildcards_and_dollar_topics() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        sub, pub = await client(broker), await client(broker)
        plus, hash_, dollar, exact = Inbox(), Inbox(), Inbox(), Inbox()
        await sub.subscribe("a/+/c", plus)
        await sub.subscribe("a/#", hash_)
        await sub.subscribe("$SYS/#", dollar)
        await sub.subscribe("a/b", exact)
        hash_all, plus_first = Inbox(), Inbox()
        await pub.subscribe("#", hash_all)
        await pub.subscribe("+/x", plus_first)
        for topic in ("a/b/c", "a/x/c", "a/b/c/d", "a", "a/b", "$SYS/x", "b/x"):
            pub.publish_nowait(topic, topic.encode())
        assert plus.topics == []  # never re-entrant: nothing delivered before the loop runs
        await settle()
        assert plus.topics == ["a/b/c", "a/x/c"]
        assert hash_.topics == ["a/b/c", "a/x/c", "a/b/c/d", "a", "a/b"]
        assert exact.topics == ["a/b"]
        assert dollar.topics == ["$SYS/x"]
        assert hash_all.topics == ["a/b/c", "a/x/c", "a/b/c/d", "a", "a/b", "b/x"]
        assert plus_first.topics == ["b/x"]
        assert sub.statistics().messages_in == 2 + 5 + 1 + 1
        assert pub.statistics().messages_out == 7
        with pytest.raises(ValueError, match="invalid publish topic"):
            pub.publish_nowait("a/+", b"")
        with pytest.raises(ValueError, match="'#'"):
            await sub.subscribe("a/#/b", Inbox())

    run(main)


def test_retained_replay_and_delete() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        pub = await client(broker)
        live = Inbox()
        await pub.subscribe("s/#", live)
        await pub.publish("s/1", b"one", retain=True, qos=1)
        await pub.publish("s/2", b"two", retain=True)
        await pub.publish("s", b"root", retain=True)
        await pub.publish("$s/1", b"hidden", retain=True)
        await settle()
        assert [m.retain for m in live.messages] == [False, False, False]
        assert broker.statistics().retained == 4

        late, one, plus = Inbox(), Inbox(), Inbox()
        sub = await client(broker)
        await sub.subscribe("s/#", late)
        await sub.subscribe("s/1", one, qos=1)
        await sub.subscribe("+/1", plus)
        await settle()
        assert sorted(late.payloads) == [b"one", b"root", b"two"]
        assert all(m.retain for m in late.messages)
        assert [(m.payload, m.qos, m.retain) for m in one.messages] == [(b"one", 1, True)]
        assert plus.payloads == [b"one"]  # not $s/1

        await pub.publish("s/1", b"", retain=True)  # delete
        await settle()
        assert one.messages[-1].payload == b""  # the empty publish itself is still delivered
        assert broker.statistics().retained == 3
        again = Inbox()
        await sub.subscribe("s/+", again)
        await settle()
        assert again.payloads == [b"two"]

    run(main)


def test_shared_subscription_round_robin_without_retained() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        pub = await client(broker)
        await pub.publish("jobs/old", b"r", retain=True)
        workers = [await client(broker) for _ in range(3)]
        inboxes = [Inbox() for _ in workers]
        for w, box in zip(workers, inboxes, strict=True):
            await w.subscribe("$share/g/jobs/+", box)
        plain = Inbox()
        await workers[0].subscribe("jobs/+", plain)
        await settle()
        assert [box.payloads for box in inboxes] == [[], [], []]
        assert plain.payloads == [b"r"]
        for i in range(7):
            pub.publish_nowait(f"jobs/{i}", str(i).encode())
        await settle()
        assert [box.payloads for box in inboxes] == [
            [b"0", b"3", b"6"],
            [b"1", b"4"],
            [b"2", b"5"],
        ]
        assert len(plain.payloads) == 8
        await workers[1].unsubscribe("$share/g/jobs/+")
        pub.publish_nowait("jobs/x", b"x")
        pub.publish_nowait("jobs/y", b"y")
        await settle()
        assert inboxes[1].payloads[-1] == b"4"
        assert inboxes[0].payloads[-1:] + inboxes[2].payloads[-1:] in ([b"x", b"y"], [b"y", b"x"])

    run(main)


def test_properties_round_trip() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        t = await client(broker)
        box = Inbox()
        await t.subscribe("p", box, qos=1)
        props = Props(
            response_topic="r/1",
            correlation_data=b"\x00\x01",
            message_expiry=30,
            content_type="application/json",
            user_properties=(("k", "v"), ("k2", "v2")),
        )
        await t.publish("p", b"{}", qos=2, props=props)
        await settle()
        (msg,) = box.messages
        assert msg.props == props
        assert msg.qos == 1  # min(publish, subscription)
        assert msg.props.user_property("k2") == "v2"

    run(main)


def test_message_expiry_with_fake_clock() -> None:
    async def main() -> None:
        now = [1000.0]
        broker = MemoryBroker(clock=lambda: now[0])
        t = await client(broker)
        box = Inbox()
        await t.subscribe("e/#", box)
        t.publish_nowait("e/live", b"1", props=Props(message_expiry=10))
        now[0] += 10.5  # passes before the loop delivers it
        await settle()
        assert box.messages == []
        assert broker.statistics().expired == 1

        t.publish_nowait("e/r", b"2", retain=True, props=Props(message_expiry=10))
        await settle()
        assert box.messages[-1].props.message_expiry == 10
        now[0] += 3.5
        late = Inbox()
        await t.subscribe("e/r", late)
        await settle()
        assert [m.props.message_expiry for m in late.messages] == [7]  # whole seconds left
        now[0] += 7
        later = Inbox()
        await t.subscribe("e/+", later)
        await settle()
        assert later.messages == []
        assert broker.statistics().retained == 0

    run(main)


def test_last_will_on_kill_not_on_close() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        watcher = await client(broker)
        wills = Inbox()
        await watcher.subscribe("status/+", wills, qos=1)
        a = await client(broker, "a", will=Will("status/a", b"offline", qos=1, retain=True))
        b = await client(broker, "b", will=Will("status/b", b"offline", retain=False))
        await a.subscribe("status/+", Inbox())
        a.kill()
        assert not a.connected
        await b.close()
        assert not b.connected
        await settle()
        assert [(m.topic, m.payload, m.qos) for m in wills.messages] == [
            ("status/a", b"offline", 1)
        ]
        assert broker.statistics().clients == 1
        assert broker.statistics().subscriptions == 1  # a's subscription is gone
        assert broker.statistics().retained == 1  # the will was retained
        with pytest.raises(TransportError):
            await a.publish("x", b"")
        await asyncio.sleep(0.1)
        assert not a.connected  # a crash does not reconnect

    run(main)


def test_broker_restart_reconnects_and_restores() -> None:
    async def main() -> None:
        broker = MemoryBroker(reconnect_delay_s=0.01)
        t = await client(broker, "dev", will=Will("status/dev", b"offline"))
        box = Inbox()
        await t.subscribe("cmd/#", box)
        calls: list[bool] = []

        async def announce() -> None:
            calls.append(t.connected)
            await t.publish("status/dev", b"online", retain=True)

        t.on_connect(announce)
        await t.publish("keep", b"k", retain=True)
        broker.disconnect_all()
        assert not t.connected
        assert broker.statistics().clients == 0
        assert broker.statistics().subscriptions == 0
        with pytest.raises(TransportError):
            await MemoryTransport(broker).connect()  # down until restart()
        await asyncio.sleep(0.05)
        assert not t.connected

        broker.restart()
        await until(lambda: len(calls) == 1)
        assert calls == [True]
        assert t.statistics().connects == 2
        assert t.statistics().disconnects == 1
        stats = broker.statistics()
        assert (stats.clients, stats.subscriptions, stats.retained) == (1, 1, 2)
        other = await client(broker)
        other.publish_nowait("cmd/go", b"go")
        await settle()
        assert box.payloads == [b"go"]

        seen = Inbox()
        await other.subscribe("status/dev", seen)
        await settle()
        assert seen.payloads == [b"online"]
        broker.restart()  # a blip: down and straight back up
        assert not t.connected
        await until(lambda: len(calls) == 2)
        await until(lambda: other.connected)
        await settle()
        # other saw nothing live while down; on resubscribe the retained value is replayed
        assert seen.payloads[-1] == b"online"

    run(main)


def test_kill_with_reconnect() -> None:
    async def main() -> None:
        broker = MemoryBroker(reconnect_delay_s=0.01)
        t = await client(broker)
        box = Inbox()
        await t.subscribe("x", box)
        t.kill(reconnect=True)
        assert not t.connected
        await until(lambda: t.connected)
        t.publish_nowait("x", b"1")
        await settle()
        assert box.payloads == [b"1"]

    run(main)


def test_duplicate_client_id_takes_over() -> None:
    async def main() -> None:
        broker = MemoryBroker(reconnect_delay_s=0.01)
        watcher = await client(broker)
        wills = Inbox()
        await watcher.subscribe("status/#", wills)
        old = await client(broker, "same", will=Will("status/same", b"gone", retain=False))
        old_box = Inbox()
        await old.subscribe("t", old_box)
        new = await client(broker, "same")
        assert not old.connected
        assert new.connected
        new_box = Inbox()
        await new.subscribe("t", new_box)
        watcher.publish_nowait("t", b"m")
        await asyncio.sleep(0.05)  # the old one does not come back and steal the id
        assert wills.payloads == [b"gone"]
        assert (old_box.payloads, new_box.payloads) == ([], [b"m"])
        assert (old.connected, new.connected) == (False, True)
        assert broker.statistics().clients == 2

    run(main)


def test_handler_exception_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        t = await client(broker)
        box = Inbox()

        def bad(msg: Inbound) -> None:
            raise RuntimeError(f"boom {msg.payload!r}")

        await t.subscribe("h/#", bad)  # matched before h/+ within one delivery batch
        await t.subscribe("h/+", box)
        for i in range(3):
            t.publish_nowait(f"h/{i}", str(i).encode())
        await settle()
        assert box.payloads == [b"0", b"1", b"2"]

    with caplog.at_level(logging.ERROR, logger="edgeagent.transport.memory"):
        run(main)
    failures = [
        r
        for r in caplog.records
        if r.name == "edgeagent.transport.memory" and r.exc_info and "h/#" in r.getMessage()
    ]
    assert len(failures) == 3


def test_publish_while_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        t = MemoryTransport(broker, "idle")
        with pytest.raises(TransportError, match="not connected"):
            await t.publish("x", b"")
        with caplog.at_level(logging.WARNING, logger="edgeagent.transport.memory"):
            t.publish_nowait("x", b"")
        assert any("dropped message to x" in r.getMessage() for r in caplog.records)
        await t.connect()
        await t.publish("x", b"")
        await t.close()
        with pytest.raises(TransportError):
            await t.publish("x", b"")
        assert t.statistics().messages_out == 1
        assert broker.statistics().messages_routed == 1

    run(main)


def test_on_connect_runs_after_subscriptions_are_live() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        pub = await client(broker)
        await pub.publish("cfg", b"v1", retain=True)
        t = MemoryTransport(broker)
        box = Inbox()
        await t.subscribe("cfg", box)  # before connect: registered, applied on connect
        got: list[int] = []

        async def cb() -> None:
            await settle()
            got.append(len(box.messages))

        t.on_connect(cb)
        await t.connect()
        assert got == [1]

    run(main)
