"""The fifteen MQTT 5 packets as frozen dataclasses: each knows its body (:meth:`Packet.body`)
and decodes its own (:meth:`Packet.decode_body`); :data:`PACKET_TYPES` maps a packet type
number to its class. Framing and the stream decoder are in :mod:`~edgeagent.transport.codec`.

PUBLISH's properties are :class:`~edgeagent.transport.base.Props` (the hot path, see
:mod:`~edgeagent.transport.codec_publish`); every other packet carries a ``{identifier: value}``
mapping (:mod:`~edgeagent.transport.codec_props`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import NO_PROPS, Props, Will
from .codec_props import PropMap, PropValue, encode_properties, pack_properties, read_properties
from .codec_publish import encode_publish, unpack_publish
from .codec_wire import MalformedPacket, encode_blob, encode_str, expect_end, read_blob, read_str


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
        client_id, pos = read_str(body, pos)
        will: Will | None = None
        will_props: dict[int, PropValue] = {}
        if bits & 0x04:
            will_props, pos = read_properties(body, pos)
            topic, pos = read_str(body, pos)
            payload, pos = read_blob(body, pos)
            will = Will(topic, payload, (bits >> 3) & 3, bool(bits & 0x20))
        username = password = None
        if bits & 0x80:
            username, pos = read_str(body, pos)
        if bits & 0x40:
            password, pos = read_blob(body, pos)
        expect_end(body, pos)
        return cls(client_id, keepalive, bool(bits & 0x02), username, password, will, will_props,
                   props)  # fmt: skip


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
        expect_end(body, pos)
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
            expect_end(body, pos)
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
            topic_filter, pos = read_str(body, pos)
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
            topic_filter, pos = read_str(body, pos)
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
        expect_end(body, 0)
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
            expect_end(body, pos)
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
