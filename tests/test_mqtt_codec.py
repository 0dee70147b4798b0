"""The MQTT 5 codec: every packet type round-trips (found by itself, so a new packet class cannot
ship untested), variable byte integer limits, the maximum packet size, malformed and truncated
input (one typed error naming what is wrong), and byte-at-a-time feeding."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import TransportError
from edgeagent.transport import codec
from edgeagent.transport.base import Props, Will
from edgeagent.transport.codec import (
    MAX_VARINT,
    PROPERTY_KINDS,
    Decoder,
    MalformedPacket,
    Packet,
    PacketTooLarge,
    Publish,
    Subscription,
    encode,
    encode_varint,
    read_varint,
)

_texts = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00\ufeff"), max_size=40
)
_values: dict[str, st.SearchStrategy[Any]] = {
    "byte": st.integers(0, 255),
    "u16": st.integers(0, 0xFFFF),
    "u32": st.integers(0, 0xFFFF_FFFF),
    "varint": st.integers(0, MAX_VARINT),
    "str": _texts,
    "bin": st.binary(max_size=40),
}


@st.composite
def _property_maps(draw: st.DrawFn) -> dict[int, Any]:
    """Any properties from the table, each with a value of its kind; User Properties as pairs."""
    singles = [pid for pid, kind in PROPERTY_KINDS.items() if kind != "pair"]
    chosen = draw(st.lists(st.sampled_from(singles), unique=True, max_size=5))
    out: dict[int, Any] = {pid: draw(_values[PROPERTY_KINDS[pid]]) for pid in chosen}
    pairs = draw(st.lists(st.tuples(_texts, _texts), max_size=3))
    if pairs:
        out[0x26] = tuple(pairs)
    return out


_props = st.builds(
    Props,
    response_topic=st.none() | _texts,
    correlation_data=st.none() | st.binary(max_size=30),
    message_expiry=st.none() | st.integers(0, 0xFFFF_FFFF),
    content_type=st.none() | _texts,
    user_properties=st.lists(st.tuples(_texts, _texts), max_size=3).map(tuple),
)
_filters = _texts.filter(bool)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "client_id": _texts,
    "keepalive": st.integers(0, 0xFFFF),
    "clean_start": st.booleans(),
    "username": st.none() | _texts,
    "password": st.none() | st.binary(max_size=20),
    "will": st.none()
    | st.builds(Will, topic=_filters, payload=st.binary(max_size=20), qos=st.integers(0, 2)),
    "will_properties": _property_maps(),
    "properties": _property_maps(),
    "session_present": st.booleans(),
    "reason_code": st.integers(0, 255),
    "topic": _filters,
    "payload": st.binary(max_size=200),
    "qos": st.integers(0, 2),
    "retain": st.booleans(),
    "dup": st.booleans(),
    "packet_id": st.integers(1, 0xFFFF),
    "props": _props,
    "subscriptions": st.lists(
        st.builds(
            Subscription,
            topic_filter=_filters,
            qos=st.integers(0, 2),
            no_local=st.booleans(),
            retain_as_published=st.booleans(),
            retain_handling=st.integers(0, 2),
        ),
        min_size=1,
        max_size=4,
    ).map(tuple),
    "reason_codes": st.lists(st.integers(0, 255), max_size=5).map(tuple),
    "topic_filters": st.lists(_filters, min_size=1, max_size=4).map(tuple),
}
"""A strategy per field name: a packet class with a field not listed here fails the test."""


def _packet_classes() -> list[type[Packet]]:
    found: list[type[Packet]] = []
    todo = list(Packet.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        # dataclass(slots=True) replaces a class by a copy: the original lingers, unslotted
        if "kind" in vars(cls) and "__slots__" in vars(cls) and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda c: c.kind)


PACKET_CLASSES = _packet_classes()


def _consistent(packet: Packet) -> Packet:
    """What the wire can carry: QoS 0 has no packet identifier, will properties need a will."""
    if isinstance(packet, Publish) and not packet.qos:
        return dataclasses.replace(packet, packet_id=0)
    if isinstance(packet, codec.Connect) and packet.will is None:
        return dataclasses.replace(packet, will_properties={})
    return packet


def _instances(cls: type[Packet]) -> st.SearchStrategy[Packet]:
    fields = {f.name: FIELDS[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields).map(_consistent)


def test_every_packet_type_of_mqtt5_has_a_class() -> None:
    assert [cls.kind for cls in PACKET_CLASSES] == list(range(1, 16))
    assert set(PACKET_CLASSES) == set(codec.PACKET_TYPES.values())


@pytest.mark.parametrize("cls", PACKET_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_every_packet_round_trips(cls: type[Packet], data: st.DataObject) -> None:
    packet = data.draw(_instances(cls))
    wire = encode(packet)
    assert wire[0] >> 4 == cls.kind
    assert Decoder().feed(wire) == [packet]


@settings(max_examples=30)
@given(packets=st.lists(st.sampled_from(PACKET_CLASSES).flatmap(_instances), max_size=6))
def test_a_stream_fed_one_byte_at_a_time_gives_the_same_packets(packets: list[Packet]) -> None:
    wire = b"".join(encode(p) for p in packets)
    decoder = Decoder()
    got = [p for i in range(len(wire)) for p in decoder.feed(wire[i : i + 1])]
    assert got == packets
    assert decoder.buf is None  # nothing held between packets
    assert Decoder().feed(wire) == packets


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (MAX_VARINT, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integer_limits(value: int, wire: bytes) -> None:
    assert encode_varint(value) == wire
    assert read_varint(wire, 0) == (value, len(wire))


def test_variable_byte_integers_out_of_range_are_refused() -> None:
    for bad in (-1, MAX_VARINT + 1):
        with pytest.raises(ValueError, match="out of range"):
            encode_varint(bad)
    with pytest.raises(MalformedPacket, match="longer than 4 bytes"):
        read_varint(b"\x80\x80\x80\x80\x01", 0)
    with pytest.raises(MalformedPacket, match="longer than 4 bytes"):
        Decoder().feed(b"\x30\xff\xff\xff\xff\x01")


def test_maximum_packet_size_counts_the_whole_packet() -> None:
    packet = encode(Publish("t", b"x" * 5))  # 1 + 1 + 2 + 1 + 1 + 5 = 11 bytes
    assert len(packet) == 11
    assert Decoder(max_packet_size=11).feed(packet) == [Publish("t", b"x" * 5)]
    with pytest.raises(PacketTooLarge, match="9-byte packet refused") as err:
        Decoder(max_packet_size=10).feed(packet[:2])  # refused from the header alone
    assert err.value.reason_code == 0x95


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (b"\x00\x00", "reserved packet type 0"),
        (b"\x36\x03\x00\x01t", "QoS 3"),
        (b"\x32\x04\x00\x01t\x00", "cut short"),  # QoS 1 without a whole packet identifier
        (b"\x32\x06\x00\x01t\x00\x00\x00", "packet identifier 0"),
        (b"\x30\x04\x00\x05ab", "topic longer than the packet"),
        (b"\x30\x05\x00\x02\xff\xfe\x00", "not UTF-8"),
        (b"\x30\x05\x00\x01x\x01\xff", "unknown property 0xFF"),
        (b"\x10\x03\x00\x04M", "not MQTT 5"),
        (b"\x20\x03\x02\x00\x00", "CONNACK flags"),
        (b"\x20\x05\x00\x00\x02\x27\x01", "property 0x27 cut short"),
        (b"\x20\x04\x00\x00\x01\x99", "unknown property 0x99"),
        (b"\x20\x09\x00\x00\x06\x21\x00\x01\x21\x00\x01", "property 0x21 twice"),
        (b"\x40\x01\x00", "PUBACK shorter than 2 bytes"),
        (b"\x41\x02\x00\x01", "fixed header flags 1"),
        (b"\x80\x06\x00\x01\x00\x00\x01a", "fixed header flags 0"),  # SUBSCRIBE needs 2
        (b"\x82\x07\x00\x01\x00\x00\x01a\x03", "subscription options 0x03"),
        (b"\x82\x03\x00\x01\x00", "SUBSCRIBE without a topic filter"),
        (b"\xa2\x03\x00\x01\x00", "UNSUBSCRIBE without a topic filter"),
        (b"\xc0\x01\x00", "1 bytes after the end"),
        (b"\xe0\x03\x00\x00\x00", "1 bytes after the end"),
    ],
)
def test_malformed_input_raises_one_typed_error_naming_the_fault(wire: bytes, what: str) -> None:
    with pytest.raises(MalformedPacket, match=what) as err:
        Decoder().feed(wire)
    assert isinstance(err.value, TransportError)
    assert err.value.reason_code in (0x81, 0x95)


def test_truncated_input_waits_for_more_bytes_and_a_bad_stream_is_dropped() -> None:
    decoder = Decoder()
    wire = encode(Publish("a/b", b"payload", 1, packet_id=9))
    assert decoder.feed(wire[:-1]) == []
    assert decoder.buf is not None
    assert decoder.feed(wire[-1:]) == [Publish("a/b", b"payload", 1, packet_id=9)]
    assert decoder.buf is None
    with pytest.raises(MalformedPacket):
        decoder.feed(b"\x00\x00" + wire)
    assert decoder.buf is None  # the rest of a broken stream is not kept
