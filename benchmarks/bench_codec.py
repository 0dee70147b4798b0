"""MQTT 5 PUBLISH encode/decode: edgeagent's codec against paho-mqtt, ``mqtt5`` and ``mqttproto``.

The packet is a typical edgeagent request: a 40-byte topic, 128-byte payload, QoS 1, and the
properties a call carries (Response Topic, 8 bytes of Correlation Data, Message Expiry, one User
Property). For each library:

* **decode**: bytes of one packet -> topic, properties and payload as Python objects: "body" is
  the packet after its fixed header, "stream" the whole packet through an incremental decoder
  (for ``mqtt5`` including the move into our ``Publish``/``Props``, which a transport needs);
* **encode**: those values -> the bytes of the whole packet.

paho is the baseline (``Properties`` and its packet functions, what the paho transport paid);
``mqtt5`` (Rust, the codec aiomqtt v3 builds on) and ``mqttproto`` (pure Python, sans-IO) are
measured when installed and skipped otherwise; they are not edgeagent dependencies:

    python benchmarks/bench_codec.py [--number 20000] [--repeat 5] [--json]

Each figure is the best of ``--repeat`` runs of ``--number`` operations, in µs per operation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from edgeagent.transport.base import Props
from edgeagent.transport.codec import Decoder, Publish, encode, encode_publish, unpack_publish

TOPIC = "edgeagent/home/dev/lamp-kitchen/call/echo"
PAYLOAD = bytes(range(128))
PROPS = Props(
    response_topic="edgeagent/home/client/abc123/reply",
    correlation_data=b"\x00" * 7 + b"\x05",
    message_expiry=10,
    user_properties=(("trace", "t-1"),),
)
PID = 7


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def ours() -> dict[str, Callable[[], object]]:
    wire = encode(Publish(TOPIC, PAYLOAD, 1, packet_id=PID, props=PROPS))
    body = wire[3:]  # after the fixed header (1 byte) and a 2-byte Remaining Length
    decoder = Decoder()
    return {
        "decode (body)": lambda: unpack_publish(0x32, body),
        "decode (stream)": lambda: decoder.feed(wire),
        "encode": lambda: encode_publish(TOPIC, PAYLOAD, 1, False, PID, PROPS, False),
    }


def paho() -> dict[str, Callable[[], object]]:
    from paho.mqtt import _packet as paho_packet  # what paho's own client calls
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def props() -> Any:
        p: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.ResponseTopic = PROPS.response_topic
        p.CorrelationData = PROPS.correlation_data
        p.MessageExpiryInterval = PROPS.message_expiry
        p.UserProperty = PROPS.user_properties[0]
        return p

    wire = encode(Publish(TOPIC, PAYLOAD, 1, packet_id=PID, props=PROPS))
    body = bytearray(wire[3:])
    v5 = MQTTProtocolVersion.MQTTv5

    def encode_paho() -> bytes:
        head = len(TOPIC).to_bytes(2, "big") + TOPIC.encode() + PID.to_bytes(2, "big")
        packed: bytes = props().pack()
        body = head + packed + PAYLOAD
        return bytes((0x32,)) + len(body).to_bytes(2, "big") + body  # (2-byte length known)

    return {
        "decode (body)": lambda: paho_packet.decode_publish(0x32, body, v5),
        "encode": encode_paho,
    }


def mqtt5(mod: ModuleType) -> dict[str, Callable[[], object]]:
    packet = mod.PublishPacket(
        TOPIC,
        PAYLOAD,
        qos=mod.QoS.AT_LEAST_ONCE,
        packet_id=PID,
        message_expiry_interval=PROPS.message_expiry,
        response_topic=PROPS.response_topic,
        correlation_data=PROPS.correlation_data,
        user_properties=list(PROPS.user_properties),
    )
    wire = memoryview(packet.write())

    def encode_mqtt5() -> bytes:
        return bytes(
            mod.PublishPacket(
                TOPIC,
                PAYLOAD,
                qos=mod.QoS.AT_LEAST_ONCE,
                packet_id=PID,
                message_expiry_interval=PROPS.message_expiry,
                response_topic=PROPS.response_topic,
                correlation_data=PROPS.correlation_data,
                user_properties=list(PROPS.user_properties),
            ).write()
        )

    def decode_mqtt5() -> Publish:
        p, _ = mod.read(wire)
        user = p.user_properties
        props = Props(
            p.response_topic,
            p.correlation_data,
            p.message_expiry_interval,
            p.content_type,
            tuple(user) if user else (),
        )
        return Publish(p.topic, p.payload, int(p.qos), p.retain, p.duplicate, p.packet_id, props)

    return {"decode (stream)": decode_mqtt5, "encode": encode_mqtt5}


def mqttproto(mod: ModuleType) -> dict[str, Callable[[], object]]:
    types = importlib.import_module("mqttproto._types")
    ptype = types.PropertyType

    def build() -> Any:
        return types.MQTTPublishPacket(
            topic=TOPIC,
            payload=PAYLOAD,
            qos=types.QoS.AT_LEAST_ONCE,
            packet_id=PID,
            properties={
                ptype.RESPONSE_TOPIC: PROPS.response_topic,
                ptype.CORRELATION_DATA: PROPS.correlation_data,
                ptype.MESSAGE_EXPIRY_INTERVAL: PROPS.message_expiry,
            },
            user_properties=dict(PROPS.user_properties),  # a dict: repeats and order are lost
        )

    def encode_mqttproto() -> bytes:
        buf = bytearray()
        build().encode(buf)
        return bytes(buf)

    wire = memoryview(encode_mqttproto())
    return {
        "decode (stream)": lambda: types.decode_packet(wire),
        "encode": encode_mqttproto,
    }


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / number / 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    subjects: dict[str, dict[str, Callable[[], object]]] = {"edgeagent": ours(), "paho": paho()}
    for name, factory in (("mqtt5", mqtt5), ("mqttproto", mqttproto)):
        mod = _optional(name)
        if mod is not None:
            subjects[name] = factory(mod)
    results = {
        lib: {op: best_us(fn, args.number, args.repeat) for op, fn in ops.items()}
        for lib, ops in subjects.items()
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"best of {args.repeat} × {args.number} operations, µs per PUBLISH")
    ops = ("decode (body)", "decode (stream)", "encode")
    print(f"{'library':12}" + "".join(f"{op:>18}" for op in ops))
    for lib, row in results.items():
        cells = "".join(f"{row[op]:>18.2f}" if op in row else f"{'-':>18}" for op in ops)
        print(f"{lib:12}{cells}")
    for name in ("mqtt5", "mqttproto"):
        if name not in subjects:
            print(f"({name} not installed: skipped)")


if __name__ == "__main__":
    main()
