"""Binary inputs travel as raw bytes (application/octet-stream), not base64 in JSON."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent import AgentConfig, BadRequest, DeviceAgent, Fleet
from tests.agents import port_of

pytestmark = pytest.mark.broker


def doorbell(url: str, fleet: str, max_payload: int = 1 << 20) -> DeviceAgent:
    cfg = AgentConfig(
        device="door",
        fleet=fleet,
        broker={"url": url},
        skills=[{"module": "smarthome.doorbell:Doorbell"}],
        max_payload=max_payload,
    )
    return DeviceAgent(cfg)


def test_manifest_announces_the_binary_field(broker_url: str, fleet_name: str) -> None:
    agent = doorbell(broker_url, fleet_name)
    specs = {s.name: s for s in agent.manifest().skills}
    assert specs["snapshot_stats"].binary_input == "image"
    assert specs["press"].binary_input is None


def test_library_sends_raw_bytes_with_other_inputs(broker_url: str, fleet_name: str) -> None:
    image = os.urandom(300_000)

    async def main() -> None:
        async with doorbell(broker_url, fleet_name), Fleet(broker_url, fleet=fleet_name) as f:
            out = await f.call("door", "snapshot_stats", {"threshold": 200}, binary=image)
            assert out["size_bytes"] == len(image)
            assert out["mean"] == pytest.approx(sum(image) / len(image), abs=1e-3)
            assert out["dark"] is True  # random bytes average about 127.5 < 200
            dim = await f.call("door", "snapshot_stats", binary=bytes(1000))
            assert dim == {"size_bytes": 1000, "mean": 0.0, "dark": True}
            with pytest.raises(BadRequest, match="takes no binary input"):
                await f.call("door", "press", binary=b"\x00\x01")
            with pytest.raises(BadRequest, match="threshold"):
                await f.call("door", "snapshot_stats", {"threshold": "high"}, binary=b"x")
            with pytest.raises(BadRequest, match="JSON object"):
                await f.call("door", "snapshot_stats", [1, 2], binary=b"x")

    asyncio.run(main())


def test_binary_payload_over_the_limit_is_refused(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        agent = doorbell(broker_url, fleet_name, max_payload=4096)
        async with agent, Fleet(broker_url, fleet=fleet_name) as f:
            with pytest.raises(BadRequest, match="exceeds this device's limit of 4096"):
                await f.call("door", "snapshot_stats", binary=bytes(5000))
            ok = await f.call("door", "snapshot_stats", binary=bytes(4096))
            assert ok["size_bytes"] == 4096

    asyncio.run(main())


def test_plain_paho_client_follows_the_documented_binary_protocol(
    broker_url: str, fleet_name: str
) -> None:
    """Only what docs/protocol.md says: Content Type, `input` User Property, raw payload."""
    replies: list[dict[str, Any]] = []
    got = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        replies.append(json.loads(msg.payload))
        got.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port_of(broker_url))
    client.loop_start()

    async def main() -> None:
        async with doorbell(broker_url, fleet_name):
            client.subscribe(f"raw/{fleet_name}/reply", qos=1)
            await asyncio.sleep(0.2)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = f"raw/{fleet_name}/reply"
            props.CorrelationData = b"1"
            props.ContentType = "application/octet-stream"
            props.UserProperty = [("input", '{"threshold": 1}')]
            client.publish(
                f"edgeagent/{fleet_name}/dev/door/call/snapshot_stats",
                bytes([10]) * 2048,
                qos=1,
                properties=props,
            )
            assert await asyncio.to_thread(got.wait, 10)

    try:
        asyncio.run(main())
    finally:
        client.loop_stop()
        client.disconnect()
    assert replies == [{"type": "ok", "output": {"size_bytes": 2048, "mean": 10.0, "dark": False}}]
