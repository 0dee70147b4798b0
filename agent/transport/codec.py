"""The MQTT 5 wire format, with no I/O: :func:`encode`, :func:`decode` and the incremental
:class:`Decoder` (bytes in, complete packets out), over the packet classes and primitives of its
sibling modules, whose names it re-exports (import them from here):

* :mod:`~edgeagent.transport.codec_wire` - varints, strings, the fixed header, and the errors;
* :mod:`~edgeagent.transport.codec_props` - every property by identifier
  (:data:`PROPERTY_KINDS`), and PUBLISH's :func:`pack_properties`;
* :mod:`~edgeagent.transport.codec_publish` - the PUBLISH hot path (:func:`encode_publish`,
  :func:`unpack_publish`: a few µs each, where paho's ``Properties`` class costs 25-70 µs);
* :mod:`~edgeagent.transport.codec_packets` - the fifteen packets as frozen dataclasses.

Every transport speaks through this module: :mod:`~edgeagent.transport.session` (the client
state machine) builds on it, the asyncio adapters only move its bytes.

Malformed input raises :class:`MalformedPacket` naming what is wrong (a subclass of
:class:`~edgeagent.errors.TransportError`; ``reason_code`` is the MQTT reason to DISCONNECT
with); a packet over the decoder's maximum size raises :class:`PacketTooLarge`::

    TransportError
    └── MalformedPacket        (0x81 Malformed Packet)
        └── PacketTooLarge     (0x95 Packet too large)
"""

from __future__ import annotations

from .codec_packets import (
    PACKET_TYPES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
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
)
from .codec_props import (
    PROPERTY_KINDS,
    PropMap,
    PropValue,
    encode_properties,
    pack_properties,
    read_properties,
)
from .codec_publish import encode_publish, unpack_publish
from .codec_wire import (
    MAX_VARINT,
    MalformedPacket,
    PacketTooLarge,
    encode_blob,
    encode_str,
    encode_varint,
    frame,
    read_varint,
)

__all__ = [
    "MAX_VARINT",
    "PACKET_TYPES",
    "PROPERTY_KINDS",
    "Auth",
    "ConnAck",
    "Connect",
    "Decoder",
    "Disconnect",
    "Frame",
    "MalformedPacket",
    "Packet",
    "PacketTooLarge",
    "PingReq",
    "PingResp",
    "PropMap",
    "PropValue",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "decode",
    "encode",
    "encode_blob",
    "encode_properties",
    "encode_publish",
    "encode_str",
    "encode_varint",
    "frame",
    "pack_properties",
    "read_properties",
    "read_varint",
    "unpack_publish",
]


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
