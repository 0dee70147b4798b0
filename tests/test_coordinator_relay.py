"""The coordinator's hot path: ok replies are relayed as the device sent them (unless explained),
forwards are plain futures, and odd device replies are still handled."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from edgeagent import BrokerConfig, Fleet, InternalError
from edgeagent.coordinator import Coordinator
from edgeagent.protocol import JSON_CONTENT_TYPE, Manifest, SkillSpec, StateMessage, Topics, encode
from edgeagent.transport.base import Inbound, Props
from edgeagent.transport.mqtt import MqttTransport

pytestmark = pytest.mark.broker

Answer = Callable[[bytes], bytes | None]


class FakeDevice:
    """A device made of a bare transport: announces one read skill and answers each forward
    with whatever ``answer`` returns for the request payload (None: no answer)."""

    def __init__(self, url: str, fleet: str, device: str, answer: Answer) -> None:
        self.topics = Topics(fleet=fleet)
        self.device = device
        self.answer = answer
        self.delay_s = 0.0
        self.transport = MqttTransport(BrokerConfig(url=url))
        self.requests: list[Inbound] = []

    async def __aenter__(self) -> FakeDevice:
        await self.transport.subscribe(f"{self.topics.device(self.device)}/call/+", self._on_call)
        await self.transport.connect()
        spec = SkillSpec(
            name="echo",
            side_effect="read",
            idempotent=True,
            input_schema={},
            output_schema={},
            max_concurrency=8,
            max_queue=8,
            timeout_s=5,
        )
        manifest = Manifest(
            device=self.device,
            fleet=self.topics.fleet,
            skills=[spec],
            max_payload=65536,
            agent_version="fake",
        )
        base = self.topics.device(self.device)
        await self.transport.publish(f"{base}/manifest", encode(manifest), qos=1, retain=True)
        state = StateMessage(device=self.device, status="online")
        await self.transport.publish(f"{base}/state", encode(state), qos=1, retain=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        base = self.topics.device(self.device)
        for what in ("state", "manifest"):
            await self.transport.publish(f"{base}/{what}", b"", qos=1, retain=True)
        await self.transport.close()

    def _on_call(self, msg: Inbound) -> None:
        self.requests.append(msg)
        reply = self.answer(msg.payload)
        if reply is not None and msg.props.response_topic:
            send = functools.partial(
                self.transport.publish_nowait,
                msg.props.response_topic,
                reply,
                props=Props(correlation_data=msg.props.correlation_data),
            )
            if self.delay_s:
                asyncio.get_running_loop().call_later(self.delay_s, send)
            else:
                send()


def coordinator(url: str, fleet: str, **kw: Any) -> Coordinator:
    return Coordinator(MqttTransport(BrokerConfig(url=url)), root="edgeagent", fleet=fleet, **kw)


def test_ok_replies_are_relayed_byte_for_byte(broker_url: str, fleet_name: str) -> None:
    # Not what an edgeagent agent sends (an extra field, odd spacing): it must arrive unchanged.
    sent = b'{"type":"ok","output": {"n": 1, "s": "\\u00e9"},"extra":[1, 2]}'

    async def main() -> None:
        async with (
            FakeDevice(broker_url, fleet_name, "fake-1", lambda _: sent) as device,
            coordinator(broker_url, fleet_name, hedge=False),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            got: asyncio.Future[Inbound] = asyncio.get_running_loop().create_future()
            reply_topic = f"edgeagent/{fleet_name}/client/raw-test/reply"

            def on_reply(msg: Inbound) -> None:
                if not got.done():
                    got.set_result(msg)

            await fleet.transport.subscribe(reply_topic, on_reply)
            await fleet.transport.publish(
                Topics(fleet=fleet_name).coord_call("echo"),
                b'{"data":"x"}',
                props=Props(
                    response_topic=reply_topic,
                    correlation_data=b"caller-corr",
                    message_expiry=5,
                    user_properties=(("trace", "t-42"), ("idem", "key-1")),
                ),
            )
            async with asyncio.timeout(5):
                msg = await got
            assert msg.payload == sent
            assert msg.props.correlation_data == b"caller-corr"
            assert msg.props.content_type == JSON_CONTENT_TYPE
            assert msg.props.user_property("trace") == "t-42"

            (forward,) = device.requests
            assert forward.payload == b'{"data":"x"}'
            assert forward.props.user_property("idem") == "key-1"
            assert forward.props.user_property("trace") == "t-42"
            assert forward.props.correlation_data != b"caller-corr"
            assert 0 < (forward.props.message_expiry or 0) <= 5

            # The client library reads the relayed reply; explain parses and re-encodes it.
            assert await fleet.call_skill("echo", {"data": "y"}) == {"n": 1, "s": "é"}
            out, route = await fleet.call_skill("echo", {"data": "z"}, explain=True)
            assert out == {"n": 1, "s": "é"}
            assert route["attempts"][0]["outcome"] == "ok"
            # Fan-out parses each device's output.
            both = await fleet.call_skill("echo", {"data": "w"}, mode="all")
            assert both == {"results": {"fake-1": {"n": 1, "s": "é"}}, "errors": {}}

    asyncio.run(main())


def test_odd_device_replies(broker_url: str, fleet_name: str) -> None:
    replies = {
        "reordered": b'{"output":7,"type":"ok"}',  # decoded, then relayed
        "truncated": b'{"type":"ok","output":',  # malformed: internal error
        "garbage": b"\xff not json",
        "error": json.dumps({"type": "error", "code": "busy", "message": "full"}).encode(),
    }

    def answer(payload: bytes) -> bytes:
        return replies[json.loads(payload)["data"]]

    async def main() -> None:
        async with (
            FakeDevice(broker_url, fleet_name, "fake-2", answer),
            coordinator(broker_url, fleet_name, hedge=False) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            assert await fleet.call_skill("echo", {"data": "reordered"}) == 7
            for name in ("truncated", "garbage"):
                with pytest.raises(InternalError, match="malformed reply"):
                    await fleet.call_skill("echo", {"data": name}, timeout=5)
            # busy fails over; with one device the last answer stands.
            with pytest.raises(Exception, match="full") as caught:
                await fleet.call_skill("echo", {"data": "error"}, timeout=5)
            assert getattr(caught.value, "code", None) == "busy"
            load = coord.registry.devices["fake-2"].loads["echo"]
            assert load.outstanding == 0
            assert coord.forwarder.in_flight == 0
            assert coord.forwarder.waiting_on("fake-2") == 0

    asyncio.run(main())


def test_unanswered_forward_times_out_and_is_cleaned_up(broker_url: str, fleet_name: str) -> None:
    async def main() -> None:
        async with (
            FakeDevice(broker_url, fleet_name, "fake-3", lambda _: None) as device,
            coordinator(broker_url, fleet_name, hedge=False) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            with pytest.raises(Exception, match="no reply from fake-3/echo") as caught:
                await fleet.call_skill("echo", {"data": "x"}, timeout=3)
            assert getattr(caught.value, "code", None) == "timeout"
            assert len(device.requests) == 1
            assert coord.forwarder.in_flight == 0
            assert coord.registry.devices["fake-3"].loads["echo"].outstanding == 0

    asyncio.run(main())


def test_a_hedged_call_is_answered_once(broker_url: str, fleet_name: str) -> None:
    """Both devices answer ok (the first late): the caller gets one reply, from the faster."""

    async def main() -> None:
        async with (
            FakeDevice(
                broker_url, fleet_name, "fake-a", lambda _: b'{"type":"ok","output":"a"}'
            ) as a,
            FakeDevice(
                broker_url, fleet_name, "fake-b", lambda _: b'{"type":"ok","output":"b"}'
            ) as b,
            coordinator(broker_url, fleet_name) as coord,
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            for _ in range(20):  # both measured: hedging needs a p95
                await fleet.call_skill("echo", {"data": "warm"})
            assert {"fake-a", "fake-b"} <= set(coord.registry.devices)
            a.delay_s, b.delay_s = 0.3, 0.1
            got: list[Inbound] = []
            reply_topic = f"edgeagent/{fleet_name}/client/raw-hedge/reply"
            await fleet.transport.subscribe(reply_topic, got.append)
            hedges = coord.hedges
            for i in range(4):
                await fleet.transport.publish(
                    Topics(fleet=fleet_name).coord_call("echo"),
                    b'{"data":"x"}',
                    props=Props(response_topic=reply_topic, correlation_data=b"c%d" % i),
                )
                await asyncio.sleep(0.5)  # both devices have answered by now
            assert coord.hedges >= hedges + 4
            assert sorted(m.props.correlation_data or b"" for m in got) == [
                b"c0",
                b"c1",
                b"c2",
                b"c3",
            ]
            assert {m.payload for m in got} == {b'{"type":"ok","output":"b"}'}
            assert coord.forwarder.in_flight == 0

    asyncio.run(main())
