"""Our hand-packed PUBLISH properties decode, with paho's own decoder, to what was meant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.transport.base import Props
from edgeagent.transport.packing import PackedProperties, pack_properties

texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300
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
    assert PackedProperties(props).pack() == packed


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
    assert _paho_decode(packed).ResponseTopic == long_topic
    with pytest.raises(ValueError, match="65535"):
        pack_properties(Props(correlation_data=bytes(70_000)))
