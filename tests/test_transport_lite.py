"""LiteTransport against the tests' private mosquitto (and a scripted fake broker for the
failures a real one will not produce on demand): properties, QoS 1, retained messages, shared
subscriptions, the will, reconnects, paho interop, a DeviceAgent on it, and memory per client."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import shutil
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeagent import DeviceAgent, Fleet
from edgeagent.broker import BrokerConfig
from edgeagent.clock import LoopClock
from edgeagent.config import AgentConfig
from edgeagent.errors import TransportError
from edgeagent.transport.base import Inbound, Props, Transport, Will
from edgeagent.transport.lite import LITE_BACKOFF, MAX_PACKET, LiteTransport
from edgeagent.transport.lite_conn import READ_BUFFER_SIZE, Connection, read_buffer
from edgeagent.transport.mqtt import MqttTransport
from tests.broker.mosquitto import Mosquitto, free_port

pytestmark = pytest.mark.broker

PROPS = Props(
    response_topic="reply/here",
    correlation_data=b"\x00\xffcorr\x01",
    message_expiry=60,
    content_type="application/json",
    user_properties=(("b", "2"), ("a", "1"), ("b", "3"), ("ünï", "cödé")),
)


def lite(url: str, name: str = "c", **options: Any) -> LiteTransport:
    broker = BrokerConfig(url=url)
    return LiteTransport(broker, client_id=f"lite-{name}-{uuid.uuid4().hex[:8]}", **options)


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await main()

    asyncio.run(bounded())


def assert_props(got: Props) -> None:
    assert got.response_topic == PROPS.response_topic
    assert got.correlation_data == PROPS.correlation_data
    assert got.content_type == PROPS.content_type
    assert got.user_properties == PROPS.user_properties  # order and repeats kept
    assert got.message_expiry is not None
    assert 0 < got.message_expiry <= 60


# --------------------------------------------------------------------------------------------
# Against mosquitto


def test_round_trip_keeps_every_property(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        pub, sub = lite(broker_url, "pub"), lite(broker_url, "sub")
        assert isinstance(pub, Transport)
        got: list[Inbound] = []
        await sub.subscribe(f"{fleet_name}/+/x", got.append, qos=1)
        await sub.connect()
        await pub.connect()
        await pub.publish(f"{fleet_name}/a/x", b"\x00binary\xff", qos=1, props=PROPS)
        pub.publish_nowait(f"{fleet_name}/b/x", b"plain")
        pub.publish_nowait(f"{fleet_name}/b/y", b"not matching")
        await until(lambda: len(got) == 2, what="two messages")
        first, second = got
        assert (first.topic, first.payload, first.qos, first.retain) == (
            f"{fleet_name}/a/x",
            b"\x00binary\xff",
            1,
            False,
        )
        assert_props(first.props)
        assert (second.topic, second.payload, second.qos) == (f"{fleet_name}/b/x", b"plain", 0)
        assert second.props == Props()
        big = bytes(range(256)) * 3000  # 768 KB: arrives in many reads, reassembled
        await pub.publish(f"{fleet_name}/c/x", big, qos=1, props=PROPS)
        await until(lambda: len(got) == 3, what="the big message")
        assert got[2].payload == big
        assert_props(got[2].props)
        assert pub.statistics().messages_out == 4
        assert sub.statistics().messages_in == 3
        await pub.close()
        await sub.close()
        assert not sub.connected
        assert sub.statistics().disconnects == 1

    run(main)


def test_qos1_publish_waits_for_the_puback_and_fails_if_the_connection_drops(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        t = lite(broker_url, reconnect=False)
        await t.connect()
        assert t._proto is not None
        assert t._proto.transport is not None
        t._proto.transport.pause_reading()  # the PUBACK stays in the socket
        task = asyncio.create_task(t.publish(f"{fleet_name}/q", b"1", qos=1))
        await asyncio.sleep(0.2)
        assert not task.done()
        t._proto.transport.resume_reading()
        await asyncio.wait_for(task, 2)
        assert t._acks is None  # nothing left in flight: no dict kept around

        t._proto.transport.pause_reading()
        task = asyncio.create_task(t.publish(f"{fleet_name}/q", b"2", qos=1))
        await asyncio.sleep(0.1)
        t.kill()
        with pytest.raises(TransportError, match="lost"):
            await task
        assert not t.connected
        with pytest.raises(TransportError, match="not connected"):
            await t.publish(f"{fleet_name}/q", b"3", qos=1)
        t.publish_nowait(f"{fleet_name}/q", b"4")  # dropped with a log line, no error
        await t.close()

    run(main)


def test_many_qos1_in_flight_respect_the_brokers_receive_maximum() -> None:
    async def main(url: str) -> None:
        t = lite(url)
        got: list[Inbound] = []
        await t.subscribe("flow/#", got.append, qos=1)
        await t.connect()
        assert t._session.receive_maximum == 5
        await asyncio.gather(*(t.publish("flow/x", b"%d" % i, qos=1) for i in range(300)))
        for _ in range(20):
            t.publish_nowait("flow/y", b"n", qos=1)  # beyond the limit: queued, then sent
        await until(lambda: len(got) == 320, what="every message")
        assert t.statistics().disconnects == 0
        await t.close()

    with Mosquitto(extra_config="\nmax_inflight_messages 5\n") as broker:
        run(lambda: main(broker.url))


def test_publish_nowait_beyond_the_receive_maximum_waits_and_goes_out_at_qos1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main(url: str) -> None:
        t = lite(url)
        got: list[Inbound] = []
        await t.subscribe("flow/#", got.append, qos=1)
        await t.connect()
        assert t._session.receive_maximum == 5
        t._session.max_queued = 20
        with caplog.at_level(logging.WARNING, logger="edgeagent.transport.lite"):
            for i in range(30):  # back to back: 5 in flight, 20 queued, 5 dropped
                t.publish_nowait("flow/n", b"%d" % i, qos=1)
        assert t._session.queued_messages == 20
        assert caplog.text.count("dropped message to flow/n") == 5
        await until(lambda: len(got) == 25, what="every message sent")
        assert [m.payload for m in got] == [b"%d" % i for i in range(25)]  # in order
        assert {m.qos for m in got} == {1}  # none downgraded to QoS 0
        assert t._session.queued_messages == 0
        await t.close()

    with Mosquitto(extra_config="\nmax_inflight_messages 5\n") as broker:
        run(lambda: main(broker.url))


def test_retained_message_is_replayed_on_subscribe(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        pub, sub = lite(broker_url, "pub"), lite(broker_url, "sub")
        await pub.connect()
        await pub.publish(f"{fleet_name}/state", b"on", qos=1, retain=True, props=PROPS)
        await sub.connect()
        got: list[Inbound] = []
        await sub.subscribe(f"{fleet_name}/#", got.append)
        await until(lambda: len(got) == 1, what="the retained message")
        assert (got[0].payload, got[0].retain) == (b"on", True)
        assert_props(got[0].props)
        await pub.publish(f"{fleet_name}/state", b"", qos=1, retain=True)  # deletes it
        await until(lambda: len(got) == 2, what="the delete, delivered live")
        await sub.unsubscribe(f"{fleet_name}/#")
        await pub.publish(f"{fleet_name}/state", b"after", qos=1)
        await asyncio.sleep(0.1)
        assert [m.payload for m in got] == [b"on", b""]  # nothing after the unsubscribe
        await pub.close()
        await sub.close()

    run(main)


def test_shared_subscription_splits_messages_between_two_clients(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        a, b, pub = lite(broker_url, "a"), lite(broker_url, "b"), lite(broker_url, "pub")
        got_a: list[Inbound] = []
        got_b: list[Inbound] = []
        for t, got in ((a, got_a), (b, got_b)):
            await t.connect()
            await t.subscribe(f"$share/g/{fleet_name}/jobs/+", got.append, qos=1)
        await pub.connect()
        for i in range(20):
            await pub.publish(f"{fleet_name}/jobs/{i}", b"%d" % i, qos=1)
        await until(lambda: len(got_a) + len(got_b) == 20, what="all jobs")
        await asyncio.sleep(0.05)
        payloads = sorted((m.payload for m in got_a + got_b), key=int)
        assert payloads == [b"%d" % i for i in range(20)]  # each job exactly once
        assert got_a, "the group never chose a"
        assert got_b, "the group never chose b"
        for t in (a, b, pub):
            await t.close()

    run(main)


def test_will_is_published_on_a_lost_socket_and_not_after_close(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        watcher = lite(broker_url, "watch")
        wills: list[Inbound] = []
        await watcher.subscribe(f"{fleet_name}/will/+", wills.append)
        await watcher.connect()
        polite = lite(broker_url, "polite", will=Will(f"{fleet_name}/will/polite", b"x", 1, False))
        await polite.connect()
        await polite.close()
        victim = lite(broker_url, will=Will(f"{fleet_name}/will/victim", b"gone", qos=1))
        await victim.connect()
        assert victim._proto is not None
        assert victim._proto.transport is not None
        victim._proto.transport.abort()  # the socket dies, no DISCONNECT
        await until(lambda: bool(wills), what="the will")
        await asyncio.sleep(0.2)
        assert [(m.topic, m.payload, m.retain) for m in wills] == [
            (f"{fleet_name}/will/victim", b"gone", False)  # retain as published: not on a live sub
        ]
        await until(lambda: victim.connected, what="the victim reconnecting")
        assert victim.statistics().connects == 2
        for t in (victim, watcher):
            await t.close()

    run(main)


def test_reconnect_restores_subscriptions_and_reruns_on_connect(
    restartable_broker: Mosquitto,
) -> None:
    async def main() -> None:
        url = restartable_broker.url
        t = lite(url)
        got: list[bytes] = []
        calls: list[bool] = []

        async def announce() -> None:
            calls.append(t.connected)
            await t.publish("lite/hello", b"hi", qos=1)

        async def broken() -> None:
            raise RuntimeError("a failing callback is logged, not fatal")

        t.on_connect(announce)
        t.on_connect(broken)
        await t.subscribe("lite/a/#", lambda m: got.append(m.payload), qos=1)
        await t.subscribe("lite/b", lambda m: got.append(m.payload))
        await t.connect()
        assert calls == [True]
        await asyncio.to_thread(restartable_broker.restart)
        await until(lambda: len(calls) == 2, timeout=10, what="on_connect after the restart")
        stats = t.statistics()
        assert (stats.connected, stats.connects, stats.disconnects) == (True, 2, 1)
        pub = lite(url, "pub")
        await pub.connect()
        await pub.publish("lite/a/1", b"a", qos=1)
        await pub.publish("lite/b", b"b", qos=1)
        await until(lambda: sorted(got) == [b"a", b"b"], what="both subscriptions")
        await pub.close()
        await t.close()

    run(main)


def test_interoperates_with_the_paho_transport(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        paho = MqttTransport(BrokerConfig(url=broker_url))
        mine = lite(broker_url)
        to_paho: list[Inbound] = []
        to_lite: list[Inbound] = []
        await paho.subscribe(f"{fleet_name}/to-paho", to_paho.append, qos=1)
        await mine.subscribe(f"{fleet_name}/to-lite", to_lite.append, qos=1)
        await paho.connect()
        await mine.connect()
        await mine.publish(f"{fleet_name}/to-paho", b"from lite", qos=1, props=PROPS)
        await paho.publish(f"{fleet_name}/to-lite", b"from paho", qos=1, props=PROPS)
        await until(lambda: bool(to_paho and to_lite), what="both directions")
        for got, payload in ((to_paho, b"from lite"), (to_lite, b"from paho")):
            assert (got[0].payload, got[0].qos) == (payload, 1)
            assert_props(got[0].props)
        await paho.close()
        await mine.close()

    run(main)


def test_device_agent_on_lite_serves_a_fleet_and_dies_with_its_will(
    broker_url: str, fleet_name: str
) -> None:
    async def main() -> None:
        cfg = AgentConfig(
            device=f"echo-{fleet_name}",
            fleet=fleet_name,
            broker={"url": broker_url},
            skills=[{"module": "smarthome.echo"}],
            grace_s=0,
        )
        agent = DeviceAgent(cfg, transport=LiteTransport(cfg.broker, client_id=cfg.device))
        assert agent.transport.will is not None  # the agent handed its will to the transport
        client = Fleet(fleet=fleet_name, transport=lite(broker_url, "fleet"))
        async with agent, client, Fleet(broker_url, fleet=fleet_name) as paho_client:
            assert await client.call(cfg.device, "echo", {"data": "via lite"}) == "via lite"
            assert await paho_client.call(cfg.device, "echo", {"data": "via paho"}) == "via paho"
            info = await paho_client.device(cfg.device)
            assert info is not None
            assert info.status == "online"
            assert isinstance(agent.transport, LiteTransport)
            agent.transport.kill()  # as if the device lost power

            async def offline() -> bool:
                info = await paho_client.device(cfg.device)
                return info is not None and info.status == "offline"

            deadline = time.monotonic() + 5
            while not await offline():
                assert time.monotonic() < deadline, "the will never arrived"
                await asyncio.sleep(0.02)

    run(main)


def test_connect_errors_are_transport_errors(broker_url: str) -> None:
    async def main() -> None:
        with Mosquitto() as stopped:
            url = stopped.url
        t = lite(url)
        with pytest.raises(TransportError, match="cannot connect to MQTT broker at mqtt://"):
            await t.connect()
        assert not t.connected
        ok = lite(broker_url)
        await ok.connect()
        with pytest.raises(RuntimeError, match="twice"):
            await ok.connect()
        await ok.close()

    run(main)


def test_idle_clients_cost_little_memory(broker_url: str, fleet_name: str) -> None:
    """500 idle clients, each with a will and a subscription like a simulated device."""
    n = 500
    broker = BrokerConfig(url=broker_url)

    def device(i: int) -> LiteTransport:
        will = Will(f"{fleet_name}/dev/d{i}/state", b'{"status":"offline"}')
        return LiteTransport(broker, client_id=f"{fleet_name}-d{i}", will=will)

    async def main() -> None:
        warm = device(-1)
        await warm.connect()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = [device(i) for i in range(n)]
            for batch in range(0, n, 100):
                await asyncio.gather(*(c.connect() for c in clients[batch : batch + 100]))
            for c in clients:
                await c.subscribe(f"{fleet_name}/dev/{c.client_id}/call/+", lambda m: None, qos=1)
            await asyncio.sleep(0.2)
            gc.collect()
            per_client = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        print(f"\nLiteTransport: {per_client:.0f} bytes of Python heap per idle client")
        assert all(c.connected for c in clients)
        assert per_client < 10_000
        await asyncio.gather(*(c.close() for c in [warm, *clients]))

    run(main)


def test_tls_round_trip_and_verification_failure(tmp_path: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl is not installed")
    key, crt = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    # As root, mosquitto reads the key after dropping to its own user: keep it root.
    extra = f"\nuser root\nlistener {port} 127.0.0.1\ncertfile {crt}\nkeyfile {key}\n"

    async def main() -> None:
        broker = BrokerConfig(url=f"mqtts://localhost:{port}", tls={"ca_file": crt})
        t = LiteTransport(broker, client_id="tls", host="127.0.0.1")  # verified as localhost
        got: list[Inbound] = []
        await t.subscribe("tls/x", got.append, qos=1)
        await t.connect()
        await t.publish("tls/x", b"secret", qos=1, props=PROPS)
        await until(lambda: bool(got), what="the message over TLS")
        assert_props(got[0].props)
        await t.close()
        untrusted = LiteTransport(BrokerConfig(url=f"mqtts://127.0.0.1:{port}"), client_id="x")
        with pytest.raises(TransportError, match="certificate verify failed"):
            await untrusted.connect()

    with Mosquitto(extra_config=extra):
        run(main)


# --------------------------------------------------------------------------------------------
# Against a scripted broker


@asynccontextmanager
async def fake_broker(
    connack: bytes, then: bytes = b"", answer_pings: bool = True
) -> AsyncIterator[tuple[str, list[tuple[int, bytes]]]]:
    """A TCP server that answers CONNECT with ``connack`` then sends ``then``; yields its URL and
    the packets it received as ``(type, body)``."""
    seen: list[tuple[int, bytes]] = []
    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                size = shift = 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    size |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                body = await reader.readexactly(size)
                seen.append((first >> 4, body))
                if first >> 4 == 1 and connack:
                    writer.write(connack + then)
                elif first >> 4 == 12 and answer_pings:
                    writer.write(b"\xd0\x00")
                elif first >> 4 == 8:  # SUBSCRIBE: refuse filters under closed/
                    codes, pos = bytearray(), 3
                    while pos < len(body):
                        n = int.from_bytes(body[pos : pos + 2], "big")
                        refused = body[pos + 2 : pos + 2 + n].startswith(b"closed/")
                        codes.append(0x87 if refused else body[pos + 2 + n])
                        pos += 3 + n
                    writer.write(bytes((0x90, 3 + len(codes))) + body[:2] + b"\x00" + codes)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}", seen
    finally:
        server.close()
        for w in writers:
            w.close()
        if handlers:
            await asyncio.wait(handlers, timeout=2)  # each sees its socket close and returns
        await server.wait_closed()


def test_connect_packet_carries_credentials_will_and_keepalive() -> None:
    async def main() -> None:
        async with fake_broker(b"\x20\x03\x00\x00\x00") as (url, seen):
            broker = BrokerConfig(url=url, username="user", password="pw", keepalive_s=42)
            will = Will("dev/will", b"bye", qos=1, retain=True)
            t = LiteTransport(broker, client_id="dev-1", will=will)
            await t.connect()
            await t.close()
            await until(lambda: seen[-1][0] == 14, what="the DISCONNECT")
        kind, body = seen[0]
        assert kind == 1
        assert body[:7] == b"\x00\x04MQTT\x05"
        # username, password, will retain, will QoS 1, will, clean start
        assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
        assert body[8:10] == (42).to_bytes(2, "big")
        props = b"\x05\x27" + MAX_PACKET.to_bytes(4, "big")  # only Maximum Packet Size
        assert body[10:] == (
            props
            + b"\x00\x05dev-1"
            + b"\x00\x00\x08dev/will\x00\x03bye"  # no will properties
            + b"\x00\x04user\x00\x02pw"
        )
        assert seen[-1] == (14, b"")  # DISCONNECT, reason 0

    run(main)


def test_refusal_reason_and_connect_timeout() -> None:
    async def main() -> None:
        async with fake_broker(b"\x20\x03\x00\x87\x00") as (url, _):
            with pytest.raises(TransportError, match="refused the connection: Not authorized"):
                await lite(url).connect()
        async with fake_broker(b"") as (url, _):  # never answers CONNECT
            t = LiteTransport(
                BrokerConfig(url=url, connect_timeout_s=0.3), client_id="slow", reconnect=False
            )
            with pytest.raises(TransportError, match="timed out connecting"):
                await t.connect()

    run(main)


class RecordingClock(LoopClock):
    """The loop's clock, remembering every timer armed through it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        self.delays.append(delay)
        return super().call_later(delay, callback, *args)


def test_timers_run_on_the_injected_clock_and_jitter_on_the_injected_rng() -> None:
    async def main() -> None:
        async with fake_broker(b"\x20\x03\x00\x00\x00") as (url, seen):
            clock = RecordingClock()
            t = LiteTransport(
                BrokerConfig(url=url), client_id="c", clock=clock, rng=random.Random(42)
            )
            await t.connect()
            assert clock.delays  # the keepalive wheel of this loop ticks on the clock
            del clock.delays[:]
            t.kill(reconnect=True)  # lost: the retry is armed with seeded jitter
            await until(lambda: bool(clock.delays), what="the reconnect timer")
            assert clock.delays[0] == LITE_BACKOFF.delay(0, random.Random(42))
            await until(lambda: t.connected, what="the reconnect")
            assert [kind for kind, _ in seen].count(1) == 2  # two CONNECTs
            await t.close()

    run(main)


def test_keepalive_pings_and_gives_up_on_a_silent_broker() -> None:
    server_keepalive_1s = b"\x20\x06\x00\x00\x03\x13\x00\x01"

    async def main() -> None:
        async with fake_broker(server_keepalive_1s) as (url, seen):
            t = lite(url, reconnect=False)
            await t.connect()
            assert t._session.keepalive == 1
            await asyncio.sleep(2.5)
            assert [kind for kind, _ in seen].count(12) >= 2  # PINGREQs, answered
            assert t.connected
            await t.close()
        async with fake_broker(server_keepalive_1s, answer_pings=False) as (url, seen):
            t = lite(url, reconnect=False)
            await t.connect()
            started = time.monotonic()
            await until(lambda: not t.connected, timeout=4, what="the keepalive timeout")
            assert 1.4 < time.monotonic() - started < 3.5
            assert (12, b"") in seen
            await t.close()

    run(main)


@pytest.mark.parametrize(
    ("packet", "logged"),
    [
        (b"\x30" + bytes((0x80, 0x80, 0x80, 0x01)), "2097152-byte packet refused"),  # 2 MiB
        (b"\x30\x05\x00\x01x\x01\xff", "unknown property 0xFF"),
        (b"\x30\x04\x00\x05ab", "malformed packet"),  # the topic runs past the end
    ],
    ids=["too-large", "unknown-property", "truncated"],
)
def test_bad_packets_disconnect_with_a_log_line(
    caplog: pytest.LogCaptureFixture, packet: bytes, logged: str
) -> None:
    assert MAX_PACKET < 2 << 20

    async def main() -> None:
        async with fake_broker(b"\x20\x03\x00\x00\x00", then=packet) as (url, _):
            t = lite(url, reconnect=False)
            with caplog.at_level(logging.ERROR, logger="edgeagent.transport.lite"):
                await t.connect()
                await until(lambda: not t.connected, what="the disconnect")
            assert logged in caplog.text
            assert t.statistics().messages_in == 0
            await t.close()

    run(main)


def test_refused_subscriptions_raise_or_are_dropped_on_restore(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with fake_broker(b"\x20\x03\x00\x00\x00") as (url, _):
            t = lite(url, reconnect=False)
            await t.subscribe("open/a", lambda m: None, qos=1)
            await t.subscribe("closed/early", lambda m: None)
            with caplog.at_level(logging.ERROR, logger="edgeagent.transport.lite"):
                await t.connect()
            assert "dropping subscription 'closed/early': Not authorized" in caplog.text
            await t.subscribe("open/b", lambda m: None)
            with pytest.raises(TransportError, match="refused subscription 'closed/x'"):
                await t.subscribe("closed/x", lambda m: None)
            assert list(t._subs) == ["open/a", "open/b"]
            with pytest.raises(ValueError, match="QoS 0 or 1"):
                await t.subscribe("open/c", lambda m: None, qos=2)
            await t.close()

    run(main)


def test_connections_of_one_loop_share_one_read_buffer_and_keep_their_bytes(
    broker_url: str, fleet_name: str
) -> None:
    """Every connection of a loop receives into the same buffer (no 256 KiB allocation per
    read): two subscribers on one loop, fed interleaved small and large messages (larger than
    the buffer), each get exactly what was sent to them."""

    async def main() -> None:
        a, b, pub = lite(broker_url, "a"), lite(broker_url, "b"), lite(broker_url, "p")
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        await a.subscribe(f"{fleet_name}/a", lambda m: got["a"].append(m.payload))
        await b.subscribe(f"{fleet_name}/b", lambda m: got["b"].append(m.payload))
        for t in (a, b, pub):
            await t.connect()
        assert a._proto is not None
        assert b._proto is not None
        shared = read_buffer(asyncio.get_running_loop())
        assert a._proto.get_buffer(-1) is shared
        assert b._proto.get_buffer(-1) is shared
        big = bytes(range(256)) * (READ_BUFFER_SIZE // 256 + 300)  # more than one read
        sent: dict[str, list[bytes]] = {"a": [], "b": []}
        for i in range(40):
            for name in ("a", "b"):
                payload = big + bytes([i]) if i % 10 == 3 else f"{name}{i}".encode() * 40
                sent[name].append(payload)
                pub.publish_nowait(f"{fleet_name}/{name}", payload)
        await until(lambda: len(got["a"]) == len(got["b"]) == 40, what="80 messages")
        assert got == sent
        for t in (a, b, pub):
            await t.close()

    run(main)


def test_buffer_updated_hands_the_session_a_copy_of_the_bytes_read() -> None:
    """The shared buffer is overwritten by the next read: a packet cut across two reads is
    still whole (nothing keeps a view of the buffer past the callback)."""

    async def main() -> None:
        t = lite("mqtt://127.0.0.1:1", reconnect=False)
        got: list[Inbound] = []
        await t.subscribe("x/#", got.append)
        conn = Connection(t, t._session, LoopClock(), asyncio.get_running_loop())
        t._proto = conn
        t._session.connect(0.0)
        connack = b"\x20\x03\x00\x00\x00"
        publish = b"\x30\x08\x00\x03x/y\x00hi"
        data = connack + publish
        buf = conn.get_buffer(-1)
        buf[: len(data)] = data
        conn.buffer_updated(len(connack) + 3)  # CONNACK and the start of the PUBLISH
        buf[: len(data)] = b"\xff" * len(data)  # the next read overwrites the buffer
        buf[: len(publish) - 3] = publish[3:]
        conn.buffer_updated(len(publish) - 3)
        assert [(m.topic, m.payload) for m in got] == [("x/y", b"hi")]
        conn.owner = None
        t._proto = None

    run(main)
