"""The Home Assistant bridge end to end, driven exactly as Home Assistant drives it.

A real mosquitto, real lamp and thermostat agent processes, the bridge in a thread of its own,
and on the other side plain MQTT clients doing what Home Assistant's MQTT integration does: read
the retained discovery, publish commands to the command topics it names, read the state topics,
evaluate the availability template (with Jinja2, Home Assistant's template engine).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import paho.mqtt.publish as paho_publish
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import MQTTProtocolVersion

from edgeagent import Fleet
from edgeagent.bridges.ha import HaBridge
from edgeagent.cli import main
from tests.agents import Retained, port_of, running_agent
from tests.broker.mosquitto import Mosquitto
from tests.test_bridge_ha import validate

pytestmark = pytest.mark.broker
T = TypeVar("T")
LAMP, THERMOSTAT = "lamp-hall", "thermostat-living"


class BridgeThread:
    """A Fleet and an HaBridge on an event loop in a thread of their own."""

    def __init__(self, url: str, fleet: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fleet: Fleet = self.run(self._connect(url, fleet))
        self.bridge = HaBridge(self.fleet, **options)
        self.task: asyncio.Task[None] = self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, url: str, fleet: str) -> Fleet:
        return await Fleet(url, fleet=fleet, timeout=5.0).__aenter__()

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.bridge.run())

    async def _stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.fleet.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def ha_fleet() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def agents(mosquitto: Mosquitto, ha_fleet: str) -> Iterator[None]:
    with ExitStack() as stack:
        for device in (LAMP, THERMOSTAT):
            stack.enter_context(running_agent(f"{device}.yaml", mosquitto.url, ha_fleet, device))
        yield


@pytest.fixture(scope="module")
def bridge(mosquitto: Mosquitto, ha_fleet: str, agents: None) -> Iterator[BridgeThread]:
    # Polls every 10 minutes: what changes state in these tests is a command or an event.
    b = BridgeThread(mosquitto.url, ha_fleet, poll_s=600.0, call_timeout_s=5.0)
    yield b
    b.close()


class _Both:
    """Two subscribers read as one (discovery and the bridge's state topics)."""

    def __init__(self, *subs: Any) -> None:
        self.subs = subs

    @property
    def latest(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for s in self.subs:
            out.update(s.latest)
        return out

    @property
    def history(self) -> list[tuple[str, bytes]]:
        return [h for s in self.subs for h in s.history]

    def close(self) -> None:
        for s in self.subs:
            s.close()


@pytest.fixture(scope="module")
def ha(mosquitto: Mosquitto, ha_fleet: str, bridge: BridgeThread) -> Iterator[_Both]:
    """Home Assistant's side: discovery and the bridge's topics, as it subscribes to them."""
    seen = Retained(mosquitto.url, "homeassistant/device/+/config")
    state = Retained(mosquitto.url, f"edgeagent/ha/{ha_fleet}/#")
    both = _Both(seen, state)
    yield both
    both.close()


def wait(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def discovery(ha: Any, fleet: str, device: str) -> dict[str, Any]:
    topic = f"homeassistant/device/edgeagent_{fleet}_{device}/config"
    raw = wait(lambda: ha.latest.get(topic), f"discovery of {device}")
    return json.loads(raw)  # type: ignore[no-any-return]


def state_of(ha: Any, topic: str) -> dict[str, Any] | None:
    raw = ha.latest.get(topic)
    return json.loads(raw) if raw else None


def publish(url: str, topic: str, payload: str | bytes) -> None:
    """Publish as Home Assistant does: QoS 0, not retained, MQTT 5."""
    paho_publish.single(
        topic, payload, hostname="127.0.0.1", port=port_of(url), protocol=MQTTProtocolVersion.MQTTv5
    )


def test_discovery_as_home_assistant_reads_it(ha: Any, ha_fleet: str) -> None:
    lamp = discovery(ha, ha_fleet, LAMP)
    thermostat = discovery(ha, ha_fleet, THERMOSTAT)
    for payload in (lamp, thermostat):
        validate(payload)
    assert lamp["cmps"]["light"]["p"] == "light"
    assert thermostat["cmps"]["climate"]["p"] == "climate"
    # State is there on start (the first poll), before any command.
    light = wait(lambda: state_of(ha, lamp["cmps"]["light"]["state_topic"]), "the light state")
    assert light["state"] in ("ON", "OFF")
    climate_topic = thermostat["cmps"]["climate"]["current_temperature_topic"]
    assert wait(lambda: state_of(ha, climate_topic), "the climate state")["target"] == 20.5


def test_brightness_command_like_home_assistant(
    ha: Any, ha_fleet: str, bridge: BridgeThread, mosquitto: Mosquitto
) -> None:
    light = discovery(ha, ha_fleet, LAMP)["cmps"]["light"]
    publish(mosquitto.url, light["command_topic"], json.dumps({"state": "ON", "brightness": 37}))
    got = wait(
        lambda: (s := state_of(ha, light["state_topic"])) and s.get("brightness") == 37 and s,
        "brightness 37 on the state topic",
    )
    assert got == {"state": "ON", "brightness": 37, "color_mode": "brightness"}
    real = bridge.run(bridge.fleet.call(LAMP, "get_state"))
    assert real == {"on": True, "brightness": 37}
    publish(mosquitto.url, light["command_topic"], '{"state": "OFF"}')
    wait(lambda: (state_of(ha, light["state_topic"]) or {}).get("state") == "OFF", "OFF")
    assert bridge.run(bridge.fleet.call(LAMP, "get_state"))["on"] is False


def test_climate_target_command(
    ha: Any, ha_fleet: str, bridge: BridgeThread, mosquitto: Mosquitto
) -> None:
    climate = discovery(ha, ha_fleet, THERMOSTAT)["cmps"]["climate"]
    publish(mosquitto.url, climate["temperature_command_topic"], "22.5")
    topic = climate["temperature_state_topic"]
    wait(lambda: (state_of(ha, topic) or {}).get("target") == 22.5, "target 22.5")
    assert bridge.run(bridge.fleet.call(THERMOSTAT, "read_temperature"))["target"] == 22.5


def test_state_follows_device_events(ha: Any, ha_fleet: str, bridge: BridgeThread) -> None:
    """A change made elsewhere (not from Home Assistant) reaches HA through the lamp's
    `changed` event, long before the next poll (10 minutes away)."""
    cmps = discovery(ha, ha_fleet, LAMP)["cmps"]
    polls = bridge.bridge.stats().polls
    bridge.run(bridge.fleet.call(LAMP, "set_brightness", {"level": 12}))
    topic = cmps["light"]["state_topic"]
    wait(lambda: (state_of(ha, topic) or {}).get("brightness") == 12, "brightness 12")
    event_topic = cmps["event_changed"]["state_topic"]
    events = [json.loads(p) for t, p in ha.history if t == event_topic]
    assert {"event_type": "changed", "on": True, "brightness": 12} in events
    assert bridge.bridge.stats().polls == polls  # the event carried the state: no call


def test_bad_commands_are_counted_and_the_bridge_keeps_serving(
    ha: Any, ha_fleet: str, bridge: BridgeThread, mosquitto: Mosquitto
) -> None:
    cmps = discovery(ha, ha_fleet, LAMP)["cmps"]
    climate = discovery(ha, ha_fleet, THERMOSTAT)["cmps"]["climate"]
    before = bridge.bridge.stats().command_errors
    publish(mosquitto.url, cmps["light"]["command_topic"], "{not json")
    publish(mosquitto.url, cmps["light"]["command_topic"], b"x" * 5000)
    publish(mosquitto.url, climate["temperature_command_topic"], "hot")
    publish(mosquitto.url, f"edgeagent/ha/{ha_fleet}/{LAMP}/nothing/set", "ON")
    wait(lambda: bridge.bridge.stats().command_errors >= before + 4, "4 refused commands")
    assert not bridge.task.done()
    publish(mosquitto.url, cmps["light"]["command_topic"], '{"state":"ON","brightness":64}')
    topic = cmps["light"]["state_topic"]
    wait(lambda: (state_of(ha, topic) or {}).get("brightness") == 64, "brightness 64")


def availability(ha: Any, payload: dict[str, Any]) -> str:
    """What Home Assistant makes of the availability topic: the template rendered by Jinja2."""
    jinja2 = pytest.importorskip("jinja2")
    avty = payload["avty"][0]
    raw = ha.latest.get(avty["t"])
    if raw is None:
        return "unknown"
    out = jinja2.Template(avty["val_tpl"]).render(value_json=json.loads(raw))
    return str(out).strip()


def test_offline_device_unavailable_then_removed(
    ha: Any, ha_fleet: str, bridge: BridgeThread, mosquitto: Mosquitto
) -> None:
    device = "doorbell-front"
    states = Retained(mosquitto.url, f"edgeagent/{ha_fleet}/dev/+/state")
    try:
        with running_agent(f"{device}.yaml", mosquitto.url, ha_fleet, device) as proc:
            payload = discovery(_Both(ha, states), ha_fleet, device)
            validate(payload)
            both = _Both(ha, states)
            wait(lambda: availability(both, payload) == "online", "available")
            proc.kill()  # no clean goodbye: the broker publishes the agent's will
            wait(lambda: availability(both, payload) == "offline", "unavailable")
        # Discovery stays while the manifest is retained (the device may come back) …
        config = f"homeassistant/device/edgeagent_{ha_fleet}_{device}/config"
        assert ha.latest[config]
        # … and goes when the device is removed from the fleet (its retained messages deleted).
        for kind in ("manifest", "state"):
            paho_publish.single(
                f"edgeagent/{ha_fleet}/dev/{device}/{kind}",
                b"",
                retain=True,
                hostname="127.0.0.1",
                port=port_of(mosquitto.url),
                protocol=MQTTProtocolVersion.MQTTv5,
            )
        wait(lambda: ha.latest.get(config) == b"", "discovery removed")
        assert device not in bridge.bridge.maps()
    finally:
        states.close()


def test_stale_discovery_of_this_fleet_is_cleared(
    ha: Any, ha_fleet: str, bridge: BridgeThread, mosquitto: Mosquitto
) -> None:
    """Discovery left by an earlier run for a device no longer in the fleet goes; another
    fleet's (or another tool's) discovery is left alone."""
    ours = f"homeassistant/device/edgeagent_{ha_fleet}_gone/config"
    theirs = "homeassistant/device/someone_else/config"
    avty = [{"t": f"edgeagent/{ha_fleet}/dev/gone/state"}]
    other = [{"t": "zigbee2mqtt/bridge/state"}]
    for topic, a in ((ours, avty), (theirs, other)):
        payload = json.dumps({"dev": {"ids": ["x"]}, "o": {"name": "x"}, "avty": a, "cmps": {}})
        paho_publish.single(
            topic,
            payload,
            retain=True,
            hostname="127.0.0.1",
            port=port_of(mosquitto.url),
            protocol=MQTTProtocolVersion.MQTTv5,
        )
    wait(lambda: ha.latest.get(ours) == b"", "the stale discovery cleared")
    assert json.loads(ha.latest[theirs])["avty"] == other
    paho_publish.single(
        theirs,
        b"",
        retain=True,
        hostname="127.0.0.1",
        port=port_of(mosquitto.url),
        protocol=MQTTProtocolVersion.MQTTv5,
    )


def test_polling_keeps_state_fresh(mosquitto: Mosquitto, ha_fleet: str, agents: None) -> None:
    """The thermostat's temperature drifts every second; with a 1 s poll its state follows."""
    b = BridgeThread(mosquitto.url, ha_fleet, prefix="ha-poll", poll_s=1.0)
    topic = f"edgeagent/ha/{ha_fleet}/{THERMOSTAT}/climate/state"
    sub = Retained(mosquitto.url, topic)
    try:
        first = wait(lambda: state_of(sub, topic), "a reading")["celsius"]
        wait(lambda: (state_of(sub, topic) or {}).get("celsius") != first, "a newer reading", 8)
        assert b.bridge.stats().polls >= 2
        assert b.bridge.stats().call_errors == 0
    finally:
        sub.close()
        b.close()


def test_cli_dry_run_and_usage(mosquitto: Mosquitto, ha_fleet: str, agents: None) -> None:
    args = ["--broker", mosquitto.url, "--fleet", ha_fleet, "bridge", "run"]
    res = CliRunner().invoke(main, [*args, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["device"]: r for r in map(json.loads, res.output.splitlines())}
    assert rows[LAMP]["entities"]["light"] == "light"
    assert rows[THERMOSTAT]["entities"]["climate"] == "climate"
    validate(rows[LAMP]["payload"])
    text = CliRunner().invoke(main, [*args, "--dry-run"])
    assert "homeassistant/device/" in text.output
    assert "light (light)" in text.output
    help_text = CliRunner().invoke(main, ["bridge", "--help"]).output
    assert "Home Assistant" in help_text
    assert "--mcp" in help_text


def test_discovery_comes_back_after_a_broker_restart(restartable_broker: Mosquitto) -> None:
    """A broker restarted without persistence forgets retained discovery: the bridge publishes
    it again when it reconnects."""
    fleet, url = f"t{uuid.uuid4().hex[:10]}", restartable_broker.url
    config = f"homeassistant/device/edgeagent_{fleet}_{LAMP}/config"
    with running_agent(f"{LAMP}.yaml", url, fleet, LAMP):
        b = BridgeThread(url, fleet, poll_s=600.0)
        try:
            before = Retained(url, config)
            wait(lambda: before.latest.get(config), "discovery")
            before.close()
            restartable_broker.restart(0.5)
            after = Retained(url, config)
            try:
                payload = wait(lambda: after.latest.get(config), "discovery again", 20)
                validate(json.loads(payload))
            finally:
                after.close()
        finally:
            b.close()
