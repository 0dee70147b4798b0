"""The MQTT 5 client session as a state machine with no I/O (in the manner of h11, or
mqttproto's client state machine): methods return the bytes to send, :meth:`receive_data`
returns events, and time comes in as ``now``. Bytes after a malformed packet raise
:class:`~edgeagent.transport.codec.MalformedPacket`, whose ``events`` are those of the packets
before it (handle them, then close the connection).

The asyncio adapters (:mod:`~edgeagent.transport.lite`, :mod:`~edgeagent.transport.mqtt`) own
sockets, TLS, timers and reconnects; everything the protocol decides lives here: packet
identifier allocation, the broker's Receive Maximum (with a bounded queue of messages waiting
for it: :meth:`ClientSession.publish_or_queue`, :data:`MAX_QUEUED`), acknowledgements owed to
the broker (queued in an outbox: :meth:`ClientSession.data_to_send`), QoS 2 handshakes, and
keepalive (:meth:`ClientSession.keepalive_due`: when to ping, when the broker is overdue).
``tests/test_mqtt_session.py`` runs it back to back against a broker-side state machine.

Errors: :class:`~edgeagent.transport.codec.MalformedPacket` for bytes that are not MQTT 5,
:class:`SessionError` (and its subclasses, drawn in :mod:`~edgeagent.transport.session_events`)
for a packet or call the current state does not allow. The events and errors live in
:mod:`~edgeagent.transport.session_events` and are re-exported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

from .base import NO_PROPS, Inbound, Props, Will
from .codec import (
    MAX_VARINT,
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Packet,
    PingResp,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    decode,
    encode,
    encode_publish,
    unpack_publish,
)
from .session_events import (
    REASONS,
    BrokerDisconnected,
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
    reason_text,
)

__all__ = [
    "MAX_QUEUED",
    "REASONS",
    "BrokerDisconnected",
    "ClientSession",
    "Connected",
    "ConnectionRefused",
    "Event",
    "Pong",
    "PublishAcked",
    "PublishQueueFull",
    "ReceiveMaximumReached",
    "SessionError",
    "State",
    "Subscribed",
    "Unsubscribed",
    "reason_text",
]

State = Literal["disconnected", "connecting", "connected"]

MAX_QUEUED = 1000
"""QoS 1/2 messages :meth:`ClientSession.publish_or_queue` holds, at most, while the broker's
Receive Maximum is in flight; past it the message is refused (:class:`PublishQueueFull`)."""

_PUBLISH, _PUBREL, _SUBSCRIBE, _UNSUBSCRIBE = 3, 6, 8, 10  # what a pending identifier awaits
_Queued = tuple[str, bytes, int, bool, Props]  # topic, payload, qos, retain, props
_Handler = Callable[["ClientSession", Any, list[Event]], None]


class ClientSession:
    """One client's protocol state across connections (identifiers continue after a reconnect).

    Per connection: :meth:`connect` (CONNACK arrives as :class:`Connected` or
    :class:`ConnectionRefused`), then publish/subscribe/unsubscribe/ping, then
    :meth:`disconnect` or :meth:`connection_lost`. Small and slotted, with no container kept
    while idle, because the simulator runs ten thousand of them.
    """

    __slots__ = (
        "clean_start", "client_id", "decoder", "inflight", "keepalive", "last_in", "last_out",
        "max_packet_size", "max_queued", "next_pid", "outbox", "password", "pending", "pinging",
        "queued", "receive_maximum", "state", "username", "will",
    )  # fmt: skip

    def __init__(
        self,
        client_id: str,
        *,
        keepalive: int = 60,
        clean_start: bool = True,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        max_packet_size: int = MAX_VARINT + 5,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.client_id = client_id
        self.keepalive = keepalive
        """Seconds; the broker's Server Keep Alive replaces it when it sends one."""
        self.clean_start = clean_start
        self.username = username
        self.password = password
        self.will = will
        self.max_packet_size = max_packet_size
        self.state: State = "disconnected"
        self.decoder = Decoder(max_packet_size)
        self.pending: dict[int, int] | None = None  # packet id -> awaited packet type
        self.outbox: bytearray | None = None
        self.queued: deque[_Queued] | None = None  # publish_or_queue() at the Receive Maximum
        self.max_queued = max_queued
        self.next_pid = self.inflight = 0
        self.receive_maximum = 65535
        self.last_in = self.last_out = 0.0
        self.pinging = False

    # Outgoing -----------------------------------------------------------------------------------

    def connect(self, now: float) -> bytes:
        if self.state != "disconnected":
            raise SessionError(f"connect() while {self.state}")
        self.state = "connecting"
        self.decoder = Decoder(self.max_packet_size)
        self.last_in = self.last_out = now
        self.pinging = False
        password = None if self.password is None else self.password.encode()
        props = {0x27: self.max_packet_size} if self.max_packet_size <= MAX_VARINT else {}
        return encode(
            Connect(self.client_id, self.keepalive, self.clean_start, self.username, password,
                    self.will, {}, props)
        )  # fmt: skip

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> tuple[int, bytes]:
        """``(packet id, bytes)``; the id is 0 at QoS 0, else awaits a :class:`PublishAcked`."""
        if self.state != "connected":
            raise SessionError("publish() while not connected")
        pid = 0
        if qos:
            if self.inflight >= self.receive_maximum:
                raise ReceiveMaximumReached(f"{self.inflight} QoS {qos} messages in flight")
            pid = self._allocate(_PUBLISH)
            self.inflight += 1
        return pid, encode_publish(topic, payload, qos, retain, pid, props, False)

    def publish_or_queue(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> tuple[int, bytes]:
        """As :meth:`publish`, but a QoS 1/2 message beyond the broker's Receive Maximum waits
        (in order, at most ``max_queued``, else :class:`PublishQueueFull`) and goes out at its
        QoS when an ack frees a slot, through :meth:`data_to_send`. ``(0, b"")`` when queued.

        The bytes returned start with whatever :meth:`data_to_send` held (acks, messages
        released from the queue), so a message sent now never overtakes one queued before it.
        """
        if qos and (self.queued or self.inflight >= self.receive_maximum):
            if self.state != "connected":
                raise SessionError("publish() while not connected")
            queued = self.queued
            if queued is None:
                queued = self.queued = deque()
            elif len(queued) >= self.max_queued:
                raise PublishQueueFull(
                    f"{len(queued)} QoS {qos} messages already wait for the Receive Maximum"
                )
            queued.append((topic, payload, qos, retain, props))
            return 0, b""
        pid, data = self.publish(topic, payload, qos, retain, props)
        if self.outbox:
            return pid, self.data_to_send() + data
        return pid, data

    @property
    def queued_messages(self) -> int:
        """How many messages :meth:`publish_or_queue` holds for the Receive Maximum."""
        return len(self.queued) if self.queued else 0

    @property
    def send_quota(self) -> int:
        """How many more QoS 1/2 messages the broker's Receive Maximum allows now."""
        return self.receive_maximum - self.inflight

    def subscribe(self, filters: Iterable[tuple[str, int]]) -> tuple[int, bytes]:
        subs = tuple(Subscription(f, qos) for f, qos in filters)
        pid = self._allocate(_SUBSCRIBE)
        return pid, encode(Subscribe(pid, subs))

    def unsubscribe(self, filters: Iterable[str]) -> tuple[int, bytes]:
        pid = self._allocate(_UNSUBSCRIBE)
        return pid, encode(Unsubscribe(pid, tuple(filters)))

    def ping(self) -> bytes:
        self.pinging = True
        return b"\xc0\x00"

    def disconnect(self, reason_code: int = 0) -> bytes:
        """DISCONNECT (reason 0: the broker drops the will); the connection is then over."""
        self.connection_lost()
        return encode(Disconnect(reason_code))

    def connection_lost(self) -> tuple[int, ...]:
        """The connection is gone: the packet ids that will never be acknowledged. Messages
        still queued for the Receive Maximum are dropped (read :attr:`queued_messages` first):
        unacknowledged QoS 1/2 messages are not resent after a reconnect either."""
        lost = tuple(self.pending or ())
        self.state = "disconnected"
        self.pending = self.outbox = self.queued = None
        self.inflight = 0
        self.decoder = Decoder(self.max_packet_size)
        return lost

    def data_to_send(self) -> bytes:
        """Acknowledgements owed to the broker (PUBACK, PUBREC, PUBREL, PUBCOMP)."""
        out, self.outbox = self.outbox, None
        return bytes(out) if out else b""

    def sent(self, now: float) -> None:
        """The adapter wrote bytes at ``now`` (keepalive counts idle time in both directions)."""
        self.last_out = now

    def _allocate(self, awaits: int) -> int:
        if self.state != "connected":
            raise SessionError("not connected")
        pending = self.pending
        if pending is None:
            pending = self.pending = {}
        elif len(pending) >= 65535:
            raise SessionError("every packet identifier is in use")
        pid = self.next_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in pending:
                self.next_pid = pid
                pending[pid] = awaits
                return pid

    def _settle(self, pid: int, awaits: int) -> bool:
        pending = self.pending
        if pending is None or pending.get(pid) != awaits:
            return False  # not ours (a late ack after a reconnect): ignore it
        del pending[pid]
        if not pending:
            self.pending = None
        return True

    def _owe(self, data: bytes) -> None:
        if self.outbox is None:
            self.outbox = bytearray()
        self.outbox += data

    def _acked(self, pid: int, reason_code: int, events: list[Event]) -> None:
        """An outgoing QoS 1/2 message is over: its slot goes to the next queued message."""
        self.inflight -= 1
        events.append(PublishAcked(pid, reason_code))
        queued = self.queued
        if queued:
            topic, payload, qos, retain, props = queued.popleft()
            if not queued:
                self.queued = None
            pid, data = self.publish(topic, payload, qos, retain, props)
            self._owe(data)

    # Keepalive ----------------------------------------------------------------------------------

    def keepalive_due(self, now: float, slack: float = 0.0) -> Literal["ping", "overdue"] | None:
        """``"ping"`` once ``keepalive - slack`` seconds passed with nothing sent or received;
        ``"overdue"`` when a ping has gone unanswered for 1.5 times the keepalive."""
        ka = self.keepalive
        if self.state != "connected" or not ka:
            return None
        if self.pinging:
            return "overdue" if now - self.last_in >= 1.5 * ka else None
        return "ping" if now >= self.next_keepalive(slack) else None

    def next_keepalive(self, slack: float = 0.0) -> float:
        """When :meth:`keepalive_due` can next say something."""
        ka = self.keepalive
        if not ka:
            return float("inf")
        if self.pinging:
            return self.last_in + 1.5 * ka
        return min(self.last_in, self.last_out) + max(ka - slack, 0.0)

    # Incoming -----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Events for the packets ``data`` completes; acks owed go to :meth:`data_to_send`."""
        self.last_in = now
        self.pinging = False
        error: MalformedPacket | None = None
        try:
            frames = self.decoder.frames(data)
        except MalformedPacket as exc:
            frames, error = exc.frames, exc
        events: list[Event] = []
        for first, body in frames:
            try:
                if first >> 4 == 3:  # PUBLISH: the hot path, straight into an Inbound
                    self._publish(first, body, events)
                else:
                    self._packet(decode(first, body), events)
            except MalformedPacket as exc:
                error = exc
                break
            except (IndexError, UnicodeDecodeError) as exc:
                error = MalformedPacket(f"PUBLISH: {type(exc).__name__}: {exc}")
                break
        if error is not None:
            self.decoder.buf = None
            error.events = list(events)
            raise error
        return events

    def _publish(self, first: int, body: bytes, events: list[Event]) -> None:
        qos = (first >> 1) & 3
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        topic, pid, props, payload = unpack_publish(first, body)
        events.append(Inbound(topic, payload, qos, bool(first & 1), props))
        if qos:
            if not pid:
                raise MalformedPacket("PUBLISH with QoS > 0 and packet identifier 0")
            # PUBACK, or PUBREC for QoS 2
            self._owe((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid.to_bytes(2, "big"))

    def _packet(self, packet: Packet, events: list[Event]) -> None:
        handler = self._handlers.get(type(packet))
        if handler is None:
            raise SessionError(f"unexpected {type(packet).__name__.upper()} from the broker")
        handler(self, packet, events)

    def _on_puback(self, packet: PubAck, events: list[Event]) -> None:
        if self._settle(packet.packet_id, _PUBLISH):
            self._acked(packet.packet_id, packet.reason_code, events)

    def _on_pubcomp(self, packet: PubComp, events: list[Event]) -> None:
        if self._settle(packet.packet_id, _PUBREL):
            self._acked(packet.packet_id, packet.reason_code, events)

    def _on_pubrec(self, packet: PubRec, events: list[Event]) -> None:
        pending = self.pending
        if pending is None or pending.get(packet.packet_id) != _PUBLISH:
            return
        if packet.reason_code >= 0x80:  # refused: the exchange ends here
            self._settle(packet.packet_id, _PUBLISH)
            self._acked(packet.packet_id, packet.reason_code, events)
        else:
            pending[packet.packet_id] = _PUBREL
            self._owe(encode(PubRel(packet.packet_id)))

    def _on_pubrel(self, packet: PubRel, events: list[Event]) -> None:
        self._owe(b"\x70\x02" + packet.packet_id.to_bytes(2, "big"))

    def _on_suback(self, packet: SubAck, events: list[Event]) -> None:
        if isinstance(packet, UnsubAck):
            if self._settle(packet.packet_id, _UNSUBSCRIBE):
                events.append(Unsubscribed(packet.packet_id, packet.reason_codes))
        elif self._settle(packet.packet_id, _SUBSCRIBE):
            events.append(Subscribed(packet.packet_id, packet.reason_codes))

    def _on_pingresp(self, packet: PingResp, events: list[Event]) -> None:
        events.append(Pong())

    def _on_connack(self, packet: ConnAck, events: list[Event]) -> None:
        events.append(self._connack(packet))

    def _on_disconnect(self, packet: Disconnect, events: list[Event]) -> None:
        self.connection_lost()
        text = packet.properties.get(0x1F)
        reason = text if isinstance(text, str) else reason_text(packet.reason_code)
        if not packet.reason_code and text is None:
            reason = "Normal disconnection"
        events.append(BrokerDisconnected(packet.reason_code, reason))

    _handlers: ClassVar[Mapping[type[Packet], _Handler]] = {
        PubAck: _on_puback, PubComp: _on_pubcomp, PubRec: _on_pubrec, PubRel: _on_pubrel,
        SubAck: _on_suback, UnsubAck: _on_suback, PingResp: _on_pingresp, ConnAck: _on_connack,
        Disconnect: _on_disconnect,
    }  # fmt: skip
    """What the session does with each packet type from the broker, by exact type (AUTH, a
    subclass of DISCONNECT, is unexpected like any type missing here)."""

    def _connack(self, packet: ConnAck) -> Connected | ConnectionRefused:
        if self.state != "connecting":
            raise SessionError("CONNACK while not connecting")
        props = packet.properties
        if packet.reason_code >= 0x80:
            self.state = "disconnected"
            text = props.get(0x1F)
            reason = text if isinstance(text, str) else reason_text(packet.reason_code)
            return ConnectionRefused(packet.reason_code, reason)
        self.state = "connected"
        recv_max, keepalive = props.get(0x21, 65535), props.get(0x13, self.keepalive)
        assert isinstance(recv_max, int)
        assert isinstance(keepalive, int)
        self.receive_maximum, self.keepalive = recv_max, keepalive
        return Connected(packet.session_present, recv_max, keepalive, props)
