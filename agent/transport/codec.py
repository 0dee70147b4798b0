"""The MQTT 5 wire format, with no I/O: packets as frozen dataclasses, :func:`encode`, and an
incremental :class:`Decoder` (bytes in, complete packets out).

Every transport speaks through this module: :mod:`~edgeagent.transport.session` (the client
state machine) builds on it, the asyncio adapters only move its bytes. Properties are described
once, by identifier, in :data:`PROPERTY_KINDS` (MQTT 5.0 §2.2.2.2). Generic packets carry them as
a ``{identifier: value}`` mapping (User Properties: a tuple of pairs); PUBLISH carries the five
edgeagent uses as :class:`~edgeagent.transport.base.Props`, because PUBLISH is the hot path:
:func:`pack_properties` and :func:`unpack_publish` are written out by hand (a few µs each, where
paho's ``Properties`` class costs 25-70 µs). ``tests/test_transport_packing.py`` checks both
against paho's own code. The other properties a PUBLISH may carry (payload format, topic alias,
subscription identifiers) are checked and dropped.

Malformed input raises :class:`MalformedPacket` naming what is wrong (a subclass of
:class:`~edgeagent.errors.TransportError`; ``reason_code`` is the MQTT reason to DISCONNECT
with); a packet over the decoder's maximum size raises :class:`PacketTooLarge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import TransportError
from .base import NO_PROPS, Props, Will

MAX_VARINT = 268_435_455
"""The largest variable byte integer (four bytes), also the largest Remaining Length."""

PropValue = int | str | bytes | tuple[tuple[str, str], ...]
PropMap = Mapping[int, PropValue]

PROPERTY_KINDS: dict[int, str] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), "byte"),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), "u16"),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), "u32"),
    **dict.fromkeys((0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F), "str"),
    0x0B: "varint", 0x09: "bin", 0x16: "bin", 0x26: "pair",
}  # fmt: skip
"""Every MQTT 5 property identifier and how its value is encoded."""
_WIDTH = {"byte": 1, "u16": 2, "u32": 4}


class MalformedPacket(TransportError):
    """Bytes that are not a valid MQTT 5 packet; the message names what is wrong.

    ``packets`` holds what the same call decoded before the fault (and ``events``, from the
    session, their events): a stream is handled up to its first bad byte."""

    reason_code = 0x81  # Malformed Packet

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames: list[tuple[int, bytes]] = []
        self.packets: list[Packet] = []
        self.events: list[object] = []


class PacketTooLarge(MalformedPacket):
    """A packet longer than the receiver's Maximum Packet Size."""

    reason_code = 0x95


# Primitives ---------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    if not 0 <= n <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """``(value, next position)``; IndexError if ``buf`` ends inside it."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than 4 bytes")


def encode_blob(data: bytes) -> bytes:
    """Binary data or an encoded string: a two-byte length, then the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT string or binary property longer than 65535 bytes ({len(data)})")
    return len(data).to_bytes(2, "big") + data


def encode_str(s: str) -> bytes:
    return encode_blob(s.encode())


def _text(buf: bytes, start: int, end: int) -> str:
    """The string at ``buf[start:end]``; the caller checked that ``end`` is inside ``buf``."""
    text = buf[start:end].decode()  # strict UTF-8: also refuses encoded surrogates
    if "\x00" in text or "\ufeff" in text:
        raise MalformedPacket("NUL or U+FEFF in a string")  # [MQTT-1.5.4]
    return text


def _read_blob(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise MalformedPacket("binary data longer than the packet")
    return buf[pos + 2 : end], end


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise MalformedPacket("string longer than the packet")
    return _text(buf, pos + 2, end), end


def frame(first: int, body: bytes) -> bytes:
    """A packet: fixed header byte, Remaining Length, body."""
    return bytes((first,)) + encode_varint(len(body)) + body


# Properties ---------------------------------------------------------------------------------


def encode_properties(props: PropMap) -> bytes:
    """A properties section (its varint length first) from ``{identifier: value}``."""
    body = bytearray()
    for pid, value in props.items():
        kind = PROPERTY_KINDS.get(pid)
        if kind is None:
            raise ValueError(f"unknown property 0x{pid:02X}")
        if kind == "pair":
            assert isinstance(value, tuple)
            for k, v in value:
                body += b"\x26" + encode_str(k) + encode_str(v)
            continue
        body.append(pid)
        if isinstance(value, int) and kind in _WIDTH:
            body += value.to_bytes(_WIDTH[kind], "big")
        elif isinstance(value, int) and kind == "varint":
            body += encode_varint(value)
        elif isinstance(value, str) and kind == "str":
            body += encode_str(value)
        elif isinstance(value, bytes) and kind == "bin":
            body += encode_blob(value)
        else:
            raise ValueError(f"property 0x{pid:02X} is {kind}, not {type(value).__name__}")
    return encode_varint(len(body)) + bytes(body)


def read_properties(buf: bytes, pos: int) -> tuple[dict[int, PropValue], int]:
    """A properties section as ``{identifier: value}`` and the position after it."""
    size, pos = read_varint(buf, pos)
    end = pos + size
    if end > len(buf):
        raise MalformedPacket("properties longer than the packet")
    out: dict[int, PropValue] = {}
    pairs: list[tuple[str, str]] = []
    while pos < end:
        pid = buf[pos]
        kind = PROPERTY_KINDS.get(pid)
        if kind is None:
            raise MalformedPacket(f"unknown property 0x{pid:02X}")
        pos += 1
        value: PropValue
        if kind == "pair":
            key, pos = _read_str(buf, pos)
            val, pos = _read_str(buf, pos)
            pairs.append((key, val))
            continue
        if pid in out:
            raise MalformedPacket(f"property 0x{pid:02X} twice")
        if kind in _WIDTH:
            width = _WIDTH[kind]
            if pos + width > end:
                raise MalformedPacket(f"property 0x{pid:02X} cut short")
            value, pos = int.from_bytes(buf[pos : pos + width], "big"), pos + width
        elif kind == "varint":
            value, pos = read_varint(buf, pos)
        elif kind == "str":
            value, pos = _read_str(buf, pos)
        else:
            value, pos = _read_blob(buf, pos)
        out[pid] = value
    if pos != end:
        raise MalformedPacket("property past the properties")
    if pairs:
        out[0x26] = tuple(pairs)
    return out, end


def pack_properties(props: Props) -> bytes:
    """The properties section of a PUBLISH packet: a varint length, then the properties."""
    body = bytearray()
    if props.message_expiry is not None:
        body += b"\x02" + props.message_expiry.to_bytes(4, "big")
    if props.content_type is not None:
        body += b"\x03" + encode_blob(props.content_type.encode())
    if props.response_topic is not None:
        body += b"\x08" + encode_blob(props.response_topic.encode())
    if props.correlation_data is not None:
        body += b"\x09" + encode_blob(props.correlation_data)
    for key, value in props.user_properties:
        body += b"\x26" + encode_blob(key.encode()) + encode_blob(value.encode())
    return encode_varint(len(body)) + bytes(body)


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, props: Props, dup: bool
) -> bytes:
    """A whole PUBLISH packet (the fast path of :class:`Publish`'s encoding)."""
    head = encode_str(topic)
    if qos:
        head += packet_id.to_bytes(2, "big")
    packed = b"\x00" if props is NO_PROPS else pack_properties(props)
    return frame(0x30 | dup << 3 | qos << 1 | retain, head + packed + payload)


def unpack_publish(header: int, packet: bytes | bytearray) -> tuple[str, int, Props, bytes]:
    """Decode a PUBLISH packet body (everything after the fixed header):
    ``(topic, packet id, properties, payload)``.

    Raises :class:`MalformedPacket`, or :class:`IndexError` or :class:`UnicodeDecodeError` when
    the packet is cut short or not UTF-8 (the :class:`Decoder` turns those into
    :class:`MalformedPacket`; here they cost nothing on the fast path).
    """
    buf = bytes(packet)
    n = len(buf)
    pos = 2 + ((buf[0] << 8) | buf[1])
    if pos > n:
        raise MalformedPacket("topic longer than the packet")
    topic = buf[2:pos].decode()
    mid = 0
    if header & 0x06:
        mid = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
    length, pos = read_varint(buf, pos)  # Property Length
    end = pos + length
    if end > n:
        raise MalformedPacket("properties longer than the packet")
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None
    content_type: str | None = None
    user: list[tuple[str, str]] = []
    seen = 0
    while pos < end:
        ident = buf[pos]
        pos += 1
        if ident == 0x26:  # User Property: a string pair, may repeat
            klen = (buf[pos] << 8) | buf[pos + 1]
            kend = pos + 2 + klen
            vlen = (buf[kend] << 8) | buf[kend + 1]
            vend = kend + 2 + vlen
            if vend > end:
                raise MalformedPacket("user property past the properties")
            user.append((_text(buf, pos + 2, kend), _text(buf, kend + 2, vend)))
            pos = vend
            continue
        if ident == 0x0B:  # Subscription Identifier: a variable byte integer, may repeat
            value, pos = read_varint(buf, pos)
            if value == 0:
                raise MalformedPacket("subscription identifier 0")
            continue
        bit = 1 << ident
        if seen & bit:
            raise MalformedPacket(f"property {ident} twice")
        seen |= bit
        if ident == 0x08 or ident == 0x09 or ident == 0x03:  # strings and binary data
            vend = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if vend > end:
                raise MalformedPacket("property past the properties")
            if ident == 0x09:
                correlation_data = buf[pos + 2 : vend]
            elif ident == 0x08:
                response_topic = _text(buf, pos + 2, vend)
            else:
                content_type = _text(buf, pos + 2, vend)
            pos = vend
        elif ident == 0x02:  # Message Expiry Interval
            message_expiry = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif ident == 0x01:  # Payload Format Indicator
            if buf[pos] > 1:
                raise MalformedPacket("payload format indicator not 0 or 1")
            pos += 1
        elif ident == 0x23:  # Topic Alias
            if not (buf[pos] or buf[pos + 1]):
                raise MalformedPacket("topic alias 0")
            pos += 2
        else:
            raise MalformedPacket(f"unknown property 0x{ident:02X} in a PUBLISH")
    if pos != end:
        raise MalformedPacket("property past the properties")
    props = (
        Props(response_topic, correlation_data, message_expiry, content_type, tuple(user))
        if seen or user
        else NO_PROPS
    )
    return topic, mid, props, buf[end:]


# Packets ------------------------------------------------------------------------------------


class Packet:
    """Base of every packet class: ``kind`` is the packet type, ``flags`` its fixed flags."""

    __slots__ = ()
    kind: ClassVar[int]
    flags: ClassVar[int] = 0

    def body(self) -> bytes:
        """Everything after the fixed header."""
        raise NotImplementedError

    def first_byte(self) -> int:
        return self.kind << 4 | self.flags

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Packet:
        raise NotImplementedError


def _props_out(props: PropMap) -> bytes:
    return encode_properties(props) if props else b"\x00"


@dataclass(frozen=True, slots=True)
class Connect(Packet):
    kind: ClassVar[int] = 1
    client_id: str
    keepalive: int = 60
    clean_start: bool = True
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    will_properties: PropMap = field(default_factory=dict)
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        will = self.will
        if will is None and self.will_properties:
            raise ValueError("CONNECT with will properties but no will")
        flags = (0x02 if self.clean_start else 0) | (0x80 if self.username is not None else 0)
        flags |= 0x40 if self.password is not None else 0
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        out = b"\x00\x04MQTT\x05" + bytes((flags,)) + self.keepalive.to_bytes(2, "big")
        out += _props_out(self.properties) + encode_str(self.client_id)
        if will is not None:
            out += _props_out(self.will_properties) + encode_str(will.topic)
            out += encode_blob(will.payload)
        if self.username is not None:
            out += encode_str(self.username)
        if self.password is not None:
            out += encode_blob(self.password)
        return out

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Connect:
        if body[:7] != b"\x00\x04MQTT\x05":
            raise MalformedPacket("CONNECT is not MQTT 5 (protocol name or level)")
        bits = body[7]
        if bits & 0x01 or (bits & 0x18) == 0x18 or (not bits & 0x04 and bits & 0x38):
            raise MalformedPacket("CONNECT flags invalid")
        keepalive = int.from_bytes(body[8:10], "big")
        props, pos = read_properties(body, 10)
        client_id, pos = _read_str(body, pos)
        will: Will | None = None
        will_props: dict[int, PropValue] = {}
        if bits & 0x04:
            will_props, pos = read_properties(body, pos)
            topic, pos = _read_str(body, pos)
            payload, pos = _read_blob(body, pos)
            will = Will(topic, payload, (bits >> 3) & 3, bool(bits & 0x20))
        username = password = None
        if bits & 0x80:
            username, pos = _read_str(body, pos)
        if bits & 0x40:
            password, pos = _read_blob(body, pos)
        _end(body, pos)
        return cls(client_id, keepalive, bool(bits & 0x02), username, password, will, will_props,
                   props)  # fmt: skip


def _end(body: bytes, pos: int) -> None:
    if pos != len(body):
        raise MalformedPacket(f"{len(body) - pos} bytes after the end of the packet")


@dataclass(frozen=True, slots=True)
class ConnAck(Packet):
    kind: ClassVar[int] = 2
    session_present: bool = False
    reason_code: int = 0
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        return bytes((self.session_present, self.reason_code)) + _props_out(self.properties)

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> ConnAck:
        if body[0] > 1:
            raise MalformedPacket("CONNACK flags invalid")
        props, pos = read_properties(body, 2)
        _end(body, pos)
        return cls(bool(body[0]), body[1], props)


@dataclass(frozen=True, slots=True)
class Publish(Packet):
    kind: ClassVar[int] = 3
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    props: Props = NO_PROPS

    def first_byte(self) -> int:
        return 0x30 | self.dup << 3 | self.qos << 1 | self.retain

    def body(self) -> bytes:
        head = encode_str(self.topic)
        if self.qos:
            head += self.packet_id.to_bytes(2, "big")
        packed = b"\x00" if self.props is NO_PROPS else pack_properties(self.props)
        return head + packed + self.payload

    def encode(self) -> bytes:
        return encode_publish(
            self.topic, self.payload, self.qos, self.retain, self.packet_id, self.props, self.dup
        )

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Publish:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        topic, mid, props, payload = unpack_publish(flags, body)
        if qos and not mid:
            raise MalformedPacket("PUBLISH with QoS > 0 and packet identifier 0")
        return cls(topic, payload, qos, bool(flags & 1), bool(flags & 8), mid, props)


@dataclass(frozen=True, slots=True)
class _Ack(Packet):
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet identifier, a reason code, properties."""

    packet_id: int
    reason_code: int = 0
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        pid = self.packet_id.to_bytes(2, "big")
        if self.properties:
            return pid + bytes((self.reason_code,)) + encode_properties(self.properties)
        return pid + bytes((self.reason_code,)) if self.reason_code else pid

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> _Ack:
        if len(body) < 2:
            raise MalformedPacket(f"{cls.__name__.upper()} shorter than 2 bytes")
        pid = int.from_bytes(body[:2], "big")
        if len(body) == 2:
            return cls(pid)
        props: dict[int, PropValue] = {}
        if len(body) > 3:
            props, pos = read_properties(body, 3)
            _end(body, pos)
        return cls(pid, body[2], props)


@dataclass(frozen=True, slots=True)
class PubAck(_Ack):
    kind: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class PubRec(_Ack):
    kind: ClassVar[int] = 5


@dataclass(frozen=True, slots=True)
class PubRel(_Ack):
    kind: ClassVar[int] = 6
    flags: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class PubComp(_Ack):
    kind: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE and its options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def options(self) -> int:
        return (
            self.qos
            | self.no_local << 2
            | self.retain_as_published << 3
            | self.retain_handling << 4
        )


def _pid_props(body: bytes) -> tuple[int, dict[int, PropValue], int]:
    props, pos = read_properties(body, 2)
    return int.from_bytes(body[:2], "big"), props, pos


@dataclass(frozen=True, slots=True)
class Subscribe(Packet):
    kind: ClassVar[int] = 8
    flags: ClassVar[int] = 2
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        subs = b"".join(
            encode_str(s.topic_filter) + bytes((s.options(),)) for s in self.subscriptions
        )
        return self.packet_id.to_bytes(2, "big") + _props_out(self.properties) + subs

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Subscribe:
        pid, props, pos = _pid_props(body)
        subs = []
        while pos < len(body):
            topic_filter, pos = _read_str(body, pos)
            opt = body[pos]
            pos += 1
            if opt & 0xC0 or opt & 3 == 3 or opt >> 4 & 3 == 3:
                raise MalformedPacket(f"subscription options 0x{opt:02X} invalid")
            subs.append(Subscription(topic_filter, opt & 3, bool(opt & 4), bool(opt & 8), opt >> 4))
        if not subs:
            raise MalformedPacket("SUBSCRIBE without a topic filter")
        return cls(pid, tuple(subs), props)


@dataclass(frozen=True, slots=True)
class SubAck(Packet):
    kind: ClassVar[int] = 9
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        head = self.packet_id.to_bytes(2, "big") + _props_out(self.properties)
        return head + bytes(self.reason_codes)

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> SubAck:
        pid, props, pos = _pid_props(body)
        return cls(pid, tuple(body[pos:]), props)


@dataclass(frozen=True, slots=True)
class Unsubscribe(Packet):
    kind: ClassVar[int] = 10
    flags: ClassVar[int] = 2
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        filters = b"".join(encode_str(f) for f in self.topic_filters)
        return self.packet_id.to_bytes(2, "big") + _props_out(self.properties) + filters

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Unsubscribe:
        pid, props, pos = _pid_props(body)
        filters = []
        while pos < len(body):
            topic_filter, pos = _read_str(body, pos)
            filters.append(topic_filter)
        if not filters:
            raise MalformedPacket("UNSUBSCRIBE without a topic filter")
        return cls(pid, tuple(filters), props)


@dataclass(frozen=True, slots=True)
class UnsubAck(SubAck):
    kind: ClassVar[int] = 11


@dataclass(frozen=True, slots=True)
class PingReq(Packet):
    kind: ClassVar[int] = 12

    def body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Packet:
        _end(body, 0)
        return cls()


@dataclass(frozen=True, slots=True)
class PingResp(PingReq):
    kind: ClassVar[int] = 13


@dataclass(frozen=True, slots=True)
class Disconnect(Packet):
    kind: ClassVar[int] = 14
    reason_code: int = 0
    properties: PropMap = field(default_factory=dict)

    def body(self) -> bytes:
        if self.properties:
            return bytes((self.reason_code,)) + encode_properties(self.properties)
        return bytes((self.reason_code,)) if self.reason_code else b""

    @classmethod
    def decode_body(cls, flags: int, body: bytes) -> Packet:
        if not body:
            return cls()
        props: dict[int, PropValue] = {}
        if len(body) > 1:
            props, pos = read_properties(body, 1)
            _end(body, pos)
        return cls(body[0], props)


@dataclass(frozen=True, slots=True)
class Auth(Disconnect):
    kind: ClassVar[int] = 15


PACKET_TYPES: dict[int, type[Packet]] = {
    cls.kind: cls
    for cls in (Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck,
                Unsubscribe, UnsubAck, PingReq, PingResp, Disconnect, Auth)
}  # fmt: skip
"""Packet type number -> class, for decoding."""


def encode(packet: Packet) -> bytes:
    """The packet's bytes on the wire."""
    if isinstance(packet, Publish):
        return packet.encode()
    return frame(packet.first_byte(), packet.body())


def decode(first: int, body: bytes) -> Packet:
    """One packet from its fixed header byte and body; :class:`MalformedPacket` if invalid."""
    cls = PACKET_TYPES.get(first >> 4)
    if cls is None:
        raise MalformedPacket(f"reserved packet type {first >> 4}")
    if cls is not Publish and first & 0x0F != cls.flags:
        raise MalformedPacket(f"{cls.__name__.upper()} with fixed header flags {first & 0x0F}")
    try:
        return cls.decode_body(first & 0x0F, body)
    except MalformedPacket:
        raise
    except IndexError as exc:
        raise MalformedPacket(f"{cls.__name__.upper()} cut short") from exc
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"{cls.__name__.upper()}: a string is not UTF-8") from exc


Frame = tuple[int, bytes]
"""A packet not yet decoded: its fixed header byte and its body."""


class Decoder:
    """Bytes in, complete packets out. Holds a buffer only while a packet is incomplete.

    :meth:`frames` only cuts the stream into packets (the session decodes PUBLISH straight
    into an :class:`~edgeagent.transport.base.Inbound`); :meth:`feed` decodes them too.
    """

    __slots__ = ("buf", "max_packet_size")

    def __init__(self, max_packet_size: int = MAX_VARINT + 5) -> None:
        self.max_packet_size = max_packet_size
        """Largest packet accepted (fixed header included), bytes."""
        self.buf: bytearray | None = None

    def feed(self, data: bytes) -> list[Packet]:
        """The packets ``data`` completes. Raises :class:`MalformedPacket` (then the connection
        must close: the stream cannot be resynchronised)."""
        error: MalformedPacket | None = None
        try:
            frames = self.frames(data)
        except MalformedPacket as exc:
            frames, error = exc.frames, exc
        out: list[Packet] = []
        for first, body in frames:
            try:
                out.append(decode(first, body))
            except MalformedPacket as exc:
                self.buf, error = None, exc
                break
        if error is not None:
            error.packets = out
            raise error
        return out

    def frames(self, data: bytes) -> list[Frame]:
        """The packets ``data`` completes, not decoded. Raises :class:`MalformedPacket` for a
        bad Remaining Length or a packet over the maximum size (``frames``: those before)."""
        buf: bytes | bytearray = data
        if self.buf is not None:
            self.buf += data
            buf = self.buf
        out: list[Frame] = []
        pos, n = 0, len(buf)
        while n - pos >= 2:
            try:
                size, start = read_varint(buf, pos + 1)
            except IndexError:
                break  # even the Remaining Length is cut short: wait for more bytes
            except MalformedPacket as exc:
                self.buf, exc.frames = None, out
                raise
            if start - pos + size > self.max_packet_size:
                self.buf = None
                too_large = PacketTooLarge(
                    f"{size}-byte packet refused (limit {self.max_packet_size})"
                )
                too_large.frames = out
                raise too_large
            if start + size > n:
                break
            out.append((buf[pos], bytes(buf[start : start + size])))
            pos = start + size
        self.buf = bytearray(buf[pos:]) if pos < n else None
        return out
