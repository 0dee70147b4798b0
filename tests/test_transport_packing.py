"""Our hand-packed PUBLISH properties decode, with paho's own decoder, to what was meant; our
PUBLISH decoder agrees with paho's on every packet it accepts and accepts none paho refuses."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.broker import BrokerConfig
from edgeagent.transport import mqtt
from edgeagent.transport.base import NO_PROPS, Inbound, Props
from edgeagent.transport.mqtt import MqttTransport
from edgeagent.transport.packing import (
    UnusualPacket,
    pack_properties,
    unpack_publish,
)

texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=300)


def _props_from_paho(p: Properties | None) -> Props:
    """paho's decoded properties as our Props (what the paho transport used to hand over)."""
    if p is None:
        return NO_PROPS
    d = p.__dict__
    user = d.get("UserProperty")
    return Props(
        response_topic=d.get("ResponseTopic"),
        correlation_data=d.get("CorrelationData"),
        message_expiry=d.get("MessageExpiryInterval"),
        content_type=d.get("ContentType"),
        user_properties=tuple(user) if user else (),
    )


def _paho_decode(packed: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _, consumed = props.unpack(packed)  # type: ignore[no-untyped-call]
    assert consumed == len(packed)
    return props


@given(
    expiry=st.none() | st.integers(0, 2**32 - 1),
    content_type=st.none() | texts,
    response_topic=st.none() | texts.filter(bool),
    corr=st.none() | st.binary(max_size=300),
    user=st.lists(st.tuples(texts, texts), max_size=4),
)
def test_packed_properties_decode_with_paho(
    expiry: int | None,
    content_type: str | None,
    response_topic: str | None,
    corr: bytes | None,
    user: list[tuple[str, str]],
) -> None:
    props = Props(
        response_topic=response_topic,
        correlation_data=corr,
        message_expiry=expiry,
        content_type=content_type,
        user_properties=tuple(user),
    )
    packed = pack_properties(props)
    decoded = _paho_decode(packed).__dict__
    assert decoded.get("MessageExpiryInterval") == expiry
    assert decoded.get("ContentType") == content_type
    assert decoded.get("ResponseTopic") == response_topic
    assert decoded.get("CorrelationData") == corr
    assert decoded.get("UserProperty", []) == user


def test_same_bytes_as_paho_for_a_typical_request() -> None:
    props = Props(
        response_topic="edgeagent/home/client/abc/reply",
        correlation_data=b"\x00" * 7 + b"\x05",
        message_expiry=10,
        user_properties=(("trace", "t-1"),),
    )
    paho = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    paho.MessageExpiryInterval = 10
    paho.ResponseTopic = "edgeagent/home/client/abc/reply"
    paho.CorrelationData = b"\x00" * 7 + b"\x05"
    paho.UserProperty = [("trace", "t-1")]
    assert pack_properties(props) == paho.pack()  # type: ignore[no-untyped-call]


def test_long_properties_use_multi_byte_lengths_and_refuse_overflow() -> None:
    long_topic = "t/" + "x" * 200  # properties section > 127 bytes: two-byte varint
    packed = pack_properties(Props(response_topic=long_topic))
    assert packed[0] & 0x80
    assert _paho_decode(packed).ResponseTopic == long_topic  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="65535"):
        pack_properties(Props(correlation_data=bytes(70_000)))


# Decoding: unpack_publish against paho's own PUBLISH decoder ----------------------------------


def _publish_body(topic: bytes, props_section: bytes, payload: bytes, qos: int, mid: int) -> bytes:
    """A PUBLISH packet after its fixed header, as paho hands it to _handle_publish."""
    packet_id = mid.to_bytes(2, "big") if qos else b""
    return len(topic).to_bytes(2, "big") + topic + packet_id + props_section + payload


def _paho_publish(header: int, body: bytes) -> tuple[str, int, Props, bytes]:
    result = decode_publish(header, bytearray(body), MQTTProtocolVersion.MQTTv5)
    props = _props_from_paho(result.properties)
    return result.topic.decode(), result.mid, props, bytes(result.payload)


def _paho_accepts(header: int, body: bytes) -> tuple[str, int, Props, bytes] | None:
    try:
        return _paho_publish(header, body)
    except (MQTTException, UnicodeDecodeError):  # MalformedPacket is an MQTTException
        return None


def _fast(header: int, body: bytes) -> tuple[str, int, Props, bytes] | None:
    try:
        return unpack_publish(header, bytearray(body))
    except (UnusualPacket, IndexError, UnicodeDecodeError):
        return None


_topics = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"),
    min_size=1,
    max_size=80,
)


@st.composite
def _paho_properties(draw: st.DrawFn) -> Properties:
    """Every property a PUBLISH may carry, in any order, set through paho's own class."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    names = draw(
        st.lists(
            st.sampled_from(
                [
                    "PayloadFormatIndicator",
                    "MessageExpiryInterval",
                    "ContentType",
                    "ResponseTopic",
                    "CorrelationData",
                    "SubscriptionIdentifier",
                    "TopicAlias",
                    "UserProperty",
                ]
            ),
            unique=True,
        )
    )
    values = {
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": texts,
        "ResponseTopic": _topics,
        "CorrelationData": st.binary(max_size=40),
        "SubscriptionIdentifier": st.integers(1, 268_435_455),
        "TopicAlias": st.integers(1, 65_535),
    }
    for name in names:
        if name == "UserProperty":
            for pair in draw(st.lists(st.tuples(texts, texts), min_size=1, max_size=3)):
                props.UserProperty = pair
        else:
            setattr(props, name, draw(values[name]))
    return props


@given(
    topic=_topics,
    props=_paho_properties(),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 1),
    retain=st.booleans(),
    mid=st.integers(1, 65_535),
)
def test_unpack_publish_matches_paho_for_every_publish_property(
    topic: str, props: Properties, payload: bytes, qos: int, retain: bool, mid: int
) -> None:
    header = 0x30 | (qos << 1) | int(retain)
    section = props.pack()  # type: ignore[no-untyped-call]
    body = _publish_body(topic.encode(), section, payload, qos, mid)
    fast = unpack_publish(header, bytearray(body))
    assert fast == _paho_publish(header, body)
    assert fast[1] == (mid if qos else 0)


@given(
    response_topic=st.none() | _topics,
    corr=st.none() | st.binary(max_size=64),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    content_type=st.none() | texts,
    user=st.lists(st.tuples(texts, texts), max_size=4),
)
def test_pack_then_unpack_round_trips(
    response_topic: str | None,
    corr: bytes | None,
    expiry: int | None,
    content_type: str | None,
    user: list[tuple[str, str]],
) -> None:
    props = Props(response_topic, corr, expiry, content_type, tuple(user))
    body = _publish_body(b"a/b", pack_properties(props), b"{}", 1, 7)
    assert unpack_publish(0x32, body) == ("a/b", 7, props, b"{}")


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    props = draw(_paho_properties())
    section = props.pack()  # type: ignore[no-untyped-call]
    body = bytearray(_publish_body(b"t/x", section, draw(st.binary(max_size=20)), 1, 3))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.integers(0, 255))
    return bytes(body[: draw(st.integers(0, len(body)))])


@given(body=_damaged())
def test_unpack_publish_never_accepts_what_paho_refuses(body: bytes) -> None:
    """Damaged packets: whatever the fast decoder accepts, paho decodes to the same thing."""
    fast = _fast(0x32, body)
    if fast is not None:
        assert fast == _paho_accepts(0x32, body)


@pytest.mark.parametrize(
    "section",
    [
        b"\x03\x11\x00\x00",  # Session Expiry Interval: not a PUBLISH property
        b"\x02\x1f\x00",  # Reason String: not a PUBLISH property
        b"\x02\x01\x02",  # Payload Format Indicator 2
        b"\x03\x23\x00\x00",  # Topic Alias 0
        b"\x02\x0b\x00",  # Subscription Identifier 0
        b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02",  # Message Expiry twice
        b"\x05\x03\x00\x02a\x00",  # NUL in a string
        b"\x06\x03\x00\x03\xef\xbb\xbf",  # U+FEFF in a string
        b"\x06\x03\x00\x03\xed\xa0\x80",  # an encoded surrogate (D800)
        b"\x05\x03\x00\x09ab",  # a string longer than the properties
        b"\x03\x02\x00\x00",  # a four-byte integer cut short
        b"\x80\x80\x80\x80\x01",  # a five-byte variable byte integer
        b"\x09",  # properties longer than the packet
    ],
)
def test_unusual_properties_are_left_to_paho_which_refuses_them(section: bytes) -> None:
    body = _publish_body(b"t", section, b"", 0, 0)
    assert _fast(0x30, body) is None
    assert _paho_accepts(0x30, body) is None


def test_the_transport_overrides_nothing_of_paho() -> None:
    """The transport is our codec and session on asyncio: no paho class to override, so a paho
    release cannot silently break it (it once replaced paho's private `_handle_publish`)."""
    assert all(cls.__module__.startswith("edgeagent.") for cls in MqttTransport.__mro__[:-1])
    assert not any(
        getattr(value, "__module__", "").startswith("paho") for value in vars(mqtt).values()
    )


@pytest.mark.broker
def test_transport_delivers_through_the_fast_path(broker_url: str, fleet_name: str) -> None:
    async def main() -> tuple[list[Inbound], int]:
        got: list[Inbound] = []
        done = asyncio.Event()
        transport = MqttTransport(BrokerConfig.from_url(broker_url))

        def on_message(msg: Inbound) -> None:
            got.append(msg)
            if len(got) == 2:
                done.set()

        await transport.subscribe(f"{fleet_name}/#", on_message, qos=1)
        await transport.connect()
        try:
            props = Props(
                response_topic=f"{fleet_name}/reply",
                correlation_data=b"\x01\x02",
                message_expiry=30,
                content_type="application/json",
                user_properties=(("idem", "k-1"), ("trace", "t")),
            )
            await transport.publish(f"{fleet_name}/a", b"one", qos=1, props=props)
            transport.publish_nowait(f"{fleet_name}/b", b"two")
            async with asyncio.timeout(5):
                await done.wait()
            return got, transport.statistics().messages_in
        finally:
            await transport.close()

    got, fast = asyncio.run(main())
    assert fast == 2
    first, second = sorted(got, key=lambda m: m.topic)
    assert (first.payload, first.qos) == (b"one", 1)
    assert first.props.user_properties == (("idem", "k-1"), ("trace", "t"))
    assert first.props.correlation_data == b"\x01\x02"
    assert first.props.response_topic == f"{fleet_name}/reply"
    assert first.props.content_type == "application/json"
    assert 0 < (first.props.message_expiry or 0) <= 30
    assert (second.payload, second.qos, second.props) == (b"two", 0, Props())


@pytest.mark.broker
def test_transport_delivers_qos2_both_ways(broker_url: str, fleet_name: str) -> None:
    async def main() -> list[Inbound]:
        got: list[Inbound] = []
        arrived = asyncio.Event()

        def on_message(msg: Inbound) -> None:
            got.append(msg)
            arrived.set()

        transport = MqttTransport(BrokerConfig.from_url(broker_url))
        await transport.subscribe(f"{fleet_name}/two", on_message, qos=2)
        await transport.connect()
        try:
            await transport.publish(f"{fleet_name}/two", b"exactly once", qos=2)
            async with asyncio.timeout(5):
                await arrived.wait()
            await asyncio.sleep(0.1)  # a duplicate would arrive now
            return got
        finally:
            await transport.close()

    (msg,) = asyncio.run(main())
    assert (msg.payload, msg.qos) == (b"exactly once", 2)
