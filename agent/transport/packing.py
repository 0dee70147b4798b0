"""Fast MQTT 5 PUBLISH properties encoding for the paho transport.

paho's ``Properties`` object rebuilds lookup tables on creation and checks every attribute it is
given: about 25-50 µs per publish, more than the rest of a round trip's Python work. We know the
five properties we send, so we pack them directly (MQTT 5.0 spec §2.2.2, §3.3.2.3) and hand paho
an object whose ``pack()`` returns the bytes. ``tests/test_transport_packing.py`` checks the
result against paho's own decoder.
"""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .base import Props

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
