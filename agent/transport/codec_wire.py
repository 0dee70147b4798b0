"""The MQTT 5 primitive encodings (variable byte integers, strings, binary data, the fixed
header) and the codec's errors: what every packet and property of
:mod:`~edgeagent.transport.codec` is built from.

Readers take ``(buf, pos)`` and return ``(value, next position)``; they raise
:class:`MalformedPacket` for a value that runs past the packet, and let :class:`IndexError` out
when ``buf`` simply ends (the callers turn that into "cut short" once, off the hot path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TransportError

if TYPE_CHECKING:
    from .codec_packets import Packet

MAX_VARINT = 268_435_455
"""The largest variable byte integer (four bytes), also the largest Remaining Length."""


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


def decode_text(buf: bytes, start: int, end: int) -> str:
    """The string at ``buf[start:end]``; the caller checked that ``end`` is inside ``buf``."""
    text = buf[start:end].decode()  # strict UTF-8: also refuses encoded surrogates
    if "\x00" in text or "\ufeff" in text:
        raise MalformedPacket("NUL or U+FEFF in a string")  # [MQTT-1.5.4]
    return text


def read_blob(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise MalformedPacket("binary data longer than the packet")
    return buf[pos + 2 : end], end


def read_str(buf: bytes, pos: int) -> tuple[str, int]:
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise MalformedPacket("string longer than the packet")
    return decode_text(buf, pos + 2, end), end


def expect_end(body: bytes, pos: int) -> None:
    """Refuse bytes after the last field of a packet."""
    if pos != len(body):
        raise MalformedPacket(f"{len(body) - pos} bytes after the end of the packet")


def frame(first: int, body: bytes) -> bytes:
    """A packet: fixed header byte, Remaining Length, body."""
    return bytes((first,)) + encode_varint(len(body)) + body
