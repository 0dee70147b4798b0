"""The client session back to back with a broker-side state machine: bytes go from one to the
other with no socket, time is a number."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from edgeagent.transport.backoff import Backoff
from edgeagent.transport.base import NO_PROPS, Inbound, Props, Will, topic_matches
from edgeagent.transport.codec import (
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    encode,
)
from edgeagent.transport.session import (
    BrokerDisconnected,
    ClientSession,
    Connected,
    ConnectionRefused,
    Event,
    Pong,
    PublishAcked,
    PublishQueueFull,
    ReceiveMaximumReached,
    SessionError,
    Subscribed,
    Unsubscribed,
)


@dataclass
class Broker:
    """One client's broker: grants subscriptions (refusing ``closed/…``), routes the client's
    own messages back to it, acknowledges QoS 1 and 2, answers pings."""

    receive_maximum: int | None = None
    keepalive: int | None = None
    refuse: int = 0
    hold_acks: bool = False
    decoder: Decoder = field(default_factory=Decoder)
    subs: dict[str, int] = field(default_factory=dict)
    received: list[Packet] = field(default_factory=list)
    held: list[Packet] = field(default_factory=list)
    next_pid: int = 0

    def receive(self, data: bytes) -> bytes:
        out: list[Packet] = []
        for packet in self.decoder.feed(data):
            self.received.append(packet)
            out.extend(self.answer(packet))
        return b"".join(encode(p) for p in out)

    def answer(self, packet: Packet) -> list[Packet]:
        """What the broker sends back for one packet from the client."""
        if isinstance(packet, Connect):
            props = {}
            if self.receive_maximum is not None:
                props[0x21] = self.receive_maximum
            if self.keepalive is not None:
                props[0x13] = self.keepalive
            return [ConnAck(False, self.refuse, props)]
        if isinstance(packet, Subscribe):
            return [self.grant(packet)]
        if isinstance(packet, Unsubscribe):
            codes = [
                0 if self.subs.pop(f, None) is not None else 0x11 for f in packet.topic_filters
            ]
            return [UnsubAck(packet.packet_id, tuple(codes))]
        if isinstance(packet, Publish):
            return self.published(packet)
        if isinstance(packet, PubRel):
            return [PubComp(packet.packet_id)]
        if isinstance(packet, PingReq):
            return [PingResp()]
        return []

    def grant(self, packet: Subscribe) -> SubAck:
        """Grant every filter but ``closed/…``, at the QoS asked."""
        codes = []
        for sub in packet.subscriptions:
            if sub.topic_filter.startswith("closed/"):
                codes.append(0x87)
            else:
                self.subs[sub.topic_filter] = sub.qos
                codes.append(sub.qos)
        return SubAck(packet.packet_id, tuple(codes))

    def published(self, packet: Publish) -> list[Packet]:
        """Its acknowledgement (held with ``hold_acks``), then the message routed back."""
        out: list[Packet] = []
        ack: Packet | None = None
        if packet.qos == 1:
            ack = PubAck(packet.packet_id)
        elif packet.qos == 2:
            ack = PubRec(packet.packet_id)
        if ack is not None and self.hold_acks:
            self.held.append(ack)
        elif ack is not None:
            out.append(ack)
        out.extend(self.route(packet))
        return out

    def route(self, msg: Publish) -> list[Publish]:
        for topic_filter, qos in self.subs.items():
            if topic_matches(topic_filter, msg.topic):
                return [self.publish(msg.topic, msg.payload, min(qos, msg.qos), msg.props)]
        return []

    def publish(self, topic: str, payload: bytes, qos: int, props: Props = NO_PROPS) -> Publish:
        pid = 0
        if qos:
            self.next_pid += 1
            pid = self.next_pid
        return Publish(topic, payload, qos, packet_id=pid, props=props)

    def release(self) -> bytes:
        held, self.held = self.held, []
        return b"".join(encode(p) for p in held)


def send(client: ClientSession, broker: Broker, data: bytes, now: float = 0.0) -> list[Event]:
    """Deliver ``data`` to the broker and every answer back, acks included, until quiet."""
    events: list[Event] = []
    while data:
        answer = broker.receive(data)
        events += client.receive_data(answer, now) if answer else []
        data = client.data_to_send()
    return events


def connected(broker: Broker, **kwargs: object) -> ClientSession:
    client = ClientSession("dev-1", keepalive=10, **kwargs)  # type: ignore[arg-type]
    events = send(client, broker, client.connect(0.0))
    assert isinstance(events[0], Connected)
    assert client.state == "connected"
    return client


def test_connect_carries_credentials_will_and_takes_the_brokers_settings() -> None:
    broker = Broker(receive_maximum=7, keepalive=3)
    client = ClientSession(
        "dev-1", keepalive=10, username="u", password="pw", will=Will("w/t", b"bye")
    )
    (event,) = send(client, broker, client.connect(0.0))
    assert event == Connected(False, 7, 3, {0x21: 7, 0x13: 3})
    assert (client.receive_maximum, client.keepalive) == (7, 3)
    (sent,) = broker.received
    assert isinstance(sent, Connect)
    assert (sent.client_id, sent.username, sent.password) == ("dev-1", "u", b"pw")
    assert sent.will == Will("w/t", b"bye")
    assert sent.keepalive == 10
    with pytest.raises(SessionError, match="connect"):
        client.connect(1.0)


def test_a_refused_connection_names_the_reason() -> None:
    client = ClientSession("dev-1")
    events = send(client, Broker(refuse=0x87), client.connect(0.0))
    assert events == [ConnectionRefused(0x87, "Not authorized")]
    assert client.state == "disconnected"
    with pytest.raises(SessionError, match="not connected"):
        client.publish("a", b"x")


def test_subscribe_unsubscribe_and_qos0_both_ways() -> None:
    broker = Broker()
    client = connected(broker)
    pid, data = client.subscribe([("a/#", 0), ("closed/x", 1)])
    assert send(client, broker, data) == [Subscribed(pid, (0, 0x87))]
    assert client.pending is None  # nothing awaited any more

    _, data = client.publish("a/b", b"hello", props=Props(content_type="text/plain"))
    (event,) = send(client, broker, data)
    assert event == Inbound("a/b", b"hello", 0, False, Props(content_type="text/plain"))

    pid, data = client.unsubscribe(["a/#"])
    assert send(client, broker, data) == [Unsubscribed(pid, (0,))]
    assert send(client, broker, client.publish("a/b", b"lost")[1]) == []


def test_qos1_both_ways_is_acknowledged() -> None:
    broker = Broker()
    client = connected(broker)
    send(client, broker, client.subscribe([("q/#", 1)])[1])
    props = Props(response_topic="r/1", correlation_data=b"\x01", message_expiry=5)
    pid, data = client.publish("q/1", b"one", qos=1, props=props)
    assert pid
    assert client.inflight == 1
    events = send(client, broker, data)
    assert PublishAcked(pid) in events
    (msg,) = [e for e in events if isinstance(e, Inbound)]
    assert (msg.qos, msg.props) == (1, props)
    assert PubAck(1) in broker.received  # the session acknowledged the broker's QoS 1 message
    assert client.inflight == 0


def test_qos2_both_ways_completes_the_handshakes() -> None:
    broker = Broker()
    client = connected(broker)
    send(client, broker, client.subscribe([("x/#", 2)])[1])
    pid, data = client.publish("x/1", b"two", qos=2)
    events = send(client, broker, data)
    assert PublishAcked(pid) in events
    assert [e.payload for e in events if isinstance(e, Inbound)] == [b"two"]
    kinds = [type(p).__name__ for p in broker.received[2:]]
    assert kinds == ["Publish", "PubRel", "PubRec"]  # ours; then our answer to its QoS 2
    assert client.data_to_send() == b""
    assert client.receive_data(encode(PubRel(1)), 0.0) == []
    assert client.data_to_send() == encode(PubComp(1))
    assert client.pending is None


def test_the_brokers_receive_maximum_bounds_messages_in_flight() -> None:
    broker = Broker(receive_maximum=2, hold_acks=True)
    client = connected(broker)
    ids = [client.publish("m", b"%d" % i, qos=1) for i in range(2)]
    for _, data in ids:
        send(client, broker, data)
    assert client.send_quota == 0
    with pytest.raises(ReceiveMaximumReached):
        client.publish("m", b"3", qos=1)
    client.publish("m", b"qos 0 still goes")  # QoS 0 is not counted
    events = client.receive_data(broker.release(), 1.0)
    assert events == [PublishAcked(ids[0][0]), PublishAcked(ids[1][0])]
    assert client.send_quota == 2


def _published(broker: Broker) -> list[tuple[bytes, int]]:
    return [(p.payload, p.qos) for p in broker.received if isinstance(p, Publish)]


def test_messages_beyond_the_receive_maximum_wait_and_go_out_at_qos1_as_acks_free_slots() -> None:
    broker = Broker(receive_maximum=2, hold_acks=True)
    client = connected(broker)
    for i in range(5):
        pid, data = client.publish_or_queue("m", b"%d" % i, qos=1)
        assert bool(pid) == bool(data) == (i < 2)  # two now, three held
        send(client, broker, data)
    assert client.queued_messages == 3
    assert client.inflight == len(broker.held) == 2  # the broker never sees more than 2
    acked: list[Event] = []
    while broker.held:
        acked += client.receive_data(broker.release(), 1.0)  # acks free slots...
        send(client, broker, client.data_to_send())  # ...which the held messages take
        assert client.inflight == len(broker.held) <= 2
    assert [type(e) for e in acked] == [PublishAcked] * 5
    assert _published(broker) == [(b"%d" % i, 1) for i in range(5)]  # in order, all at QoS 1
    assert (client.queued_messages, client.queued, client.pending) == (0, None, None)


def test_the_receive_maximum_queue_is_bounded_and_qos0_does_not_wait() -> None:
    broker = Broker(receive_maximum=1, hold_acks=True)
    client = connected(broker, max_queued=3)
    send(client, broker, client.publish_or_queue("m", b"in flight", qos=1)[1])
    for i in range(3):
        assert client.publish_or_queue("m", b"%d" % i, qos=1) == (0, b"")
    with pytest.raises(PublishQueueFull):
        client.publish_or_queue("m", b"one too many", qos=1)
    pid, data = client.publish_or_queue("m", b"qos 0", qos=0)
    assert pid == 0
    assert data == encode(Publish("m", b"qos 0"))
    assert client.queued_messages == 3
    assert client.connection_lost() == (1,)  # the queue goes with the connection
    assert client.queued_messages == 0


def test_a_message_sent_now_does_not_overtake_one_released_from_the_queue() -> None:
    broker = Broker(receive_maximum=2, hold_acks=True)
    client = connected(broker)
    for payload in (b"a", b"b", b"c"):
        send(client, broker, client.publish_or_queue("m", payload, qos=1)[1])
    assert client.queued_messages == 1
    client.receive_data(broker.release(), 1.0)  # both acks in one read: "c" goes to the outbox
    assert client.inflight == 1
    pid, data = client.publish_or_queue("m", b"d", qos=1)  # a free slot: sent at once...
    assert pid
    send(client, broker, data)  # ...after "c", which the outbox still held
    assert _published(broker) == [(b"a", 1), (b"b", 1), (b"c", 1), (b"d", 1)]


def test_packet_ids_skip_those_in_use_wrap_and_survive_a_reconnect() -> None:
    broker = Broker(hold_acks=True)
    client = connected(broker)
    client.next_pid = 65534
    first = client.publish("t", b"", qos=1)[0]
    second = client.publish("t", b"", qos=1)[0]
    third = client.subscribe([("t", 0)])[0]
    assert (first, second, third) == (65535, 1, 2)
    client.next_pid = 65534
    assert client.unsubscribe(["t"])[0] == 3  # 65535, 1 and 2 are taken
    assert client.connection_lost() == (65535, 1, 2, 3)
    assert (client.pending, client.inflight, client.state) == (None, 0, "disconnected")
    send(client, Broker(), client.connect(5.0))
    assert client.publish("t", b"", qos=1)[0] == 4
    # A late PUBACK of the earlier connection is ignored, not counted.
    assert client.receive_data(encode(PubAck(1)), 6.0) == []
    assert client.inflight == 1


def test_keepalive_pings_when_idle_and_reports_a_silent_broker() -> None:
    broker = Broker(keepalive=10)
    client = connected(broker)
    assert client.keepalive_due(9.0) is None
    assert client.keepalive_due(9.0, slack=1.0) == "ping"
    client.sent(8.0)  # traffic out alone does not postpone it: the broker may be gone
    assert client.keepalive_due(10.0) == "ping"
    assert client.next_keepalive() == 10.0
    assert send(client, broker, client.ping(), now=10.5) == [Pong()]
    assert not client.pinging
    assert client.keepalive_due(12.0) is None
    client.ping()
    assert client.next_keepalive() == 10.5 + 15
    assert client.keepalive_due(25.0) is None
    assert client.keepalive_due(25.5) == "overdue"


def test_disconnect_from_either_side() -> None:
    broker = Broker()
    client = connected(broker)
    assert client.disconnect() == b"\xe0\x00"
    assert client.state == "disconnected"
    with pytest.raises(SessionError):
        client.subscribe([("a", 0)])

    client = connected(broker)
    events = client.receive_data(encode(Disconnect(0x8B)), 1.0)
    assert events == [BrokerDisconnected(0x8B, "Server shutting down")]
    assert client.state == "disconnected"
    client = connected(broker)
    events = client.receive_data(encode(Disconnect(0x8B, {0x1F: "bye now"})), 1.0)
    assert events == [BrokerDisconnected(0x8B, "bye now")]


def test_unexpected_packets_are_protocol_errors() -> None:
    client = connected(Broker())
    with pytest.raises(SessionError, match="CONNACK while not connecting"):
        client.receive_data(encode(ConnAck()), 1.0)
    with pytest.raises(SessionError, match="unexpected SUBSCRIBE"):
        client.receive_data(encode(Subscribe(1, (Subscription("a"),))), 1.0)


def test_packets_before_a_malformed_one_still_count() -> None:
    broker = Broker()
    client = ClientSession("dev-1")
    connack = broker.receive(client.connect(0.0))
    bad = b"\x30\x04\x00\x05ab"  # the topic runs past the end
    with pytest.raises(MalformedPacket, match="topic longer than the packet") as err:
        client.receive_data(connack + encode(Publish("a", b"x", 1, packet_id=5)) + bad, 1.0)
    assert [type(e) for e in err.value.events] == [Connected, Inbound]
    assert client.data_to_send() == encode(PubAck(5))
    with pytest.raises(MalformedPacket, match="QoS 3"):
        client.receive_data(b"\x36\x04\x00\x01ab", 1.0)


def test_backoff_doubles_with_equal_jitter_up_to_its_ceiling() -> None:
    backoff = Backoff(0.5, 30.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30.0  # no overflow however long the broker is gone
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, map(backoff.ceiling, range(8)), strict=True))
    again = random.Random(7)
    assert [backoff.delay(n, again) for n in range(8)] == delays  # a seeded run replays
