"""MQTT 5 properties (§2.2.2.2), described once, by identifier, in :data:`PROPERTY_KINDS`.

Generic packets carry properties as a ``{identifier: value}`` mapping (User Properties: one
tuple of pairs, in order, repeats kept). PUBLISH carries the five edgeagent uses as
:class:`~edgeagent.transport.base.Props`, packed by hand in :func:`pack_properties`: it runs
for every message sent, and a table-driven loop costs several times more.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Props
from .codec_wire import (
    MalformedPacket,
    encode_blob,
    encode_str,
    encode_varint,
    read_blob,
    read_str,
    read_varint,
)

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
        if kind == "pair":
            key, pos = read_str(buf, pos + 1)
            val, pos = read_str(buf, pos)
            pairs.append((key, val))
            continue
        if pid in out:
            raise MalformedPacket(f"property 0x{pid:02X} twice")
        out[pid], pos = _read_value(kind, buf, pos + 1, end)
    if pos != end:
        raise MalformedPacket("property past the properties")
    if pairs:
        out[0x26] = tuple(pairs)
    return out, end


def _read_value(kind: str, buf: bytes, pos: int, end: int) -> tuple[PropValue, int]:
    """One property value of ``kind`` (not a pair) at ``pos``, inside a section ending at
    ``end``."""
    width = _WIDTH.get(kind)
    if width is not None:
        if pos + width > end:
            raise MalformedPacket(f"property 0x{buf[pos - 1]:02X} cut short")
        return int.from_bytes(buf[pos : pos + width], "big"), pos + width
    if kind == "varint":
        return read_varint(buf, pos)
    if kind == "str":
        return read_str(buf, pos)
    return read_blob(buf, pos)


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
