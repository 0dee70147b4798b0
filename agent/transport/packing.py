"""Fast MQTT 5 PUBLISH properties encoding and decoding for the paho transport.

paho's ``Properties`` object rebuilds lookup tables on creation and checks every attribute it is
given: about 25-50 µs per publish, more than the rest of a round trip's Python work, and about as
much again to decode a received PUBLISH. We know the five properties we use, so we pack them
directly (MQTT 5.0 spec §2.2.2, §3.3.2.3) and hand paho an object whose ``pack()`` returns the
bytes; and :func:`unpack_publish` decodes a received PUBLISH straight into :class:`Props`,
checking everything paho checks and leaving anything unusual (malformed, or a property a PUBLISH
may not carry) to paho. ``tests/test_transport_packing.py`` checks both against paho's own code.
"""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .base import NO_PROPS, Props

_MESSAGE_EXPIRY = b"\x02"
_CONTENT_TYPE = b"\x03"
_RESPONSE_TOPIC = b"\x08"
_CORRELATION_DATA = b"\x09"
_USER_PROPERTY = b"\x26"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _blob(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT string or binary property longer than 65535 bytes ({len(data)})")
    return len(data).to_bytes(2, "big") + data


def pack_properties(props: Props) -> bytes:
    """The properties section of a PUBLISH packet: a varint length, then the properties."""
    body = bytearray()
    if props.message_expiry is not None:
        body += _MESSAGE_EXPIRY + props.message_expiry.to_bytes(4, "big")
    if props.content_type is not None:
        body += _CONTENT_TYPE + _blob(props.content_type.encode())
    if props.response_topic is not None:
        body += _RESPONSE_TOPIC + _blob(props.response_topic.encode())
    if props.correlation_data is not None:
        body += _CORRELATION_DATA + _blob(props.correlation_data)
    for key, value in props.user_properties:
        body += _USER_PROPERTY + _blob(key.encode()) + _blob(value.encode())
    return _varint(len(body)) + bytes(body)


class PackedProperties(Properties):
    """A paho ``Properties`` stand-in that only knows how to ``pack()`` pre-packed bytes."""

    _packed: bytes

    def __init__(self, props: Props) -> None:
        # No super().__init__ (that is the slow part) and no Properties.__setattr__ (it checks
        # names against tables that super().__init__ would have built).
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", pack_properties(props))

    def pack(self) -> bytes:
        return self._packed

    def __repr__(self) -> str:
        return f"PackedProperties({self._packed!r})"

    __str__ = __repr__


class UnusualPacket(Exception):
    """A PUBLISH the fast decoder leaves to paho: malformed, or with something we do not model."""


def _str(buf: bytes, start: int, end: int) -> str:
    text = buf[start:end].decode()  # strict UTF-8: also refuses encoded surrogates
    if "\x00" in text or "\ufeff" in text:
        raise UnusualPacket("NUL or U+FEFF in a string")  # paho refuses these [MQTT-1.5.4]
    return text


def unpack_publish(header: int, packet: bytes | bytearray) -> tuple[str, int, Props, bytes]:
    """Decode a PUBLISH packet body (everything after the fixed header) of a MQTT 5 session:
    ``(topic, packet id, properties, payload)``.

    Raises :class:`UnusualPacket`, :class:`IndexError` or :class:`UnicodeDecodeError` for anything
    that is not a plain well-formed PUBLISH (paho then decodes it and reports the error).
    """
    buf = bytes(packet)
    n = len(buf)
    pos = 2 + ((buf[0] << 8) | buf[1])
    if pos > n:
        raise UnusualPacket("topic longer than the packet")
    topic = buf[2:pos].decode()
    mid = 0
    if header & 0x06:
        mid = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
    # Property Length, a variable byte integer (at most 4 bytes).
    length = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise UnusualPacket("variable byte integer longer than 4 bytes")
    end = pos + length
    if end > n:
        raise UnusualPacket("properties longer than the packet")
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
                raise UnusualPacket("user property past the properties")
            user.append((_str(buf, pos + 2, kend), _str(buf, kend + 2, vend)))
            pos = vend
            continue
        if ident == 0x0B:  # Subscription Identifier: a variable byte integer, may repeat
            value = shift = 0
            while True:
                byte = buf[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise UnusualPacket("variable byte integer longer than 4 bytes")
            if value == 0:
                raise UnusualPacket("subscription identifier 0")
            continue
        bit = 1 << ident
        if seen & bit:
            raise UnusualPacket(f"property {ident} twice")
        seen |= bit
        if ident == 0x08 or ident == 0x09 or ident == 0x03:  # strings and binary data
            vend = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if vend > end:
                raise UnusualPacket("property past the properties")
            if ident == 0x09:
                correlation_data = buf[pos + 2 : vend]
            elif ident == 0x08:
                response_topic = _str(buf, pos + 2, vend)
            else:
                content_type = _str(buf, pos + 2, vend)
            pos = vend
        elif ident == 0x02:  # Message Expiry Interval
            message_expiry = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif ident == 0x01:  # Payload Format Indicator
            if buf[pos] > 1:
                raise UnusualPacket("payload format indicator not 0 or 1")
            pos += 1
        elif ident == 0x23:  # Topic Alias
            if not (buf[pos] or buf[pos + 1]):
                raise UnusualPacket("topic alias 0")
            pos += 2
        else:
            raise UnusualPacket(f"unknown property 0x{ident:02X} in a PUBLISH")
    if pos != end:
        raise UnusualPacket("property past the properties")
    props = (
        Props(response_topic, correlation_data, message_expiry, content_type, tuple(user))
        if seen or user
        else NO_PROPS
    )
    return topic, mid, props, buf[end:]
