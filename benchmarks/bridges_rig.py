"""The fleet ``bench_bridges`` measures, in this process: lamps, a coordinator, the bridges.

:func:`rig` starts, on one private mosquitto and one event loop: ``--lamps`` ``DeviceAgent``
lamps (``smarthome.lamp:Lamp``, tags ``room``), a ``Coordinator`` with its ``/metrics``
server, a direct caller (a ``Fleet``: the baselines), one bridge ``Fleet`` shared by the
MCP bridge (``McpBridge``, its SDK in-process client), the Home Assistant bridge (``HaBridge``)
and ``FleetMetrics`` (as ``edgeagent bridge run --mcp --metrics`` composes them on one
connection), and Home Assistant's side (:class:`HaSide`: a separate MQTT client that reads the
discovery and publishes commands). Everything is stopped when the block ends.

Also the raw HTTP GET the scrapes are timed with (:func:`http_get`) and the scraper child
(:func:`run_scraper`: this benchmark's script with ``--scrape URL``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mcp.client.client import Client

from benchmarks import _common as common
from edgeagent import AgentConfig, BrokerConfig, Coordinator, DeviceAgent, Fleet
from edgeagent.bridges.ha import HaBridge, HaStats
from edgeagent.bridges.mcp_server import McpBridge
from edgeagent.bridges.metrics import FleetMetrics, MetricsServer, serve_coordinator_metrics
from edgeagent.transport.base import Inbound
from edgeagent.transport.mqtt import MqttTransport

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smart-home"
FLEET = "benchbridges"
ROOMS = ("kitchen", "hall", "bedroom", "office", "garage", "attic", "porch", "cellar")
TARGET_ROOM = "kitchen"
TARGET = f"lamp-{TARGET_ROOM}"
WHERE = {"room": TARGET_ROOM}
WAIT_S = 20.0
"""Longest wait for something to come up (agents, routes, discovery)."""
REPLY_S = 5.0
"""Longest wait for one measured call or state (a stuck path is an error, not a number)."""
HEALTH_S = 2.0
"""The lamps' health period (FleetMetrics' per-device series come from health messages)."""
MAX_BODY = 4 << 20
"""Largest /metrics body read (the bridges' metrics are label-capped far below this)."""


class HaSide:
    """Home Assistant's side of the bridge: a separate MQTT client reading the retained
    discovery of the target lamp and driving its light as Home Assistant does (a JSON command
    on the light's ``command_topic``, QoS 0, not retained; the state on its ``state_topic``)."""

    def __init__(self, url: str) -> None:
        self.transport = MqttTransport(BrokerConfig(url=url), client_id="bench-ha-side")
        self.discovery: dict[str, Any] | None = None
        self.command_topic = ""
        self.state_topic = ""
        self._want: int | None = None
        self._arrived: asyncio.Future[None] | None = None

    def _on_config(self, msg: Inbound) -> None:
        if msg.payload:
            self.discovery = json.loads(msg.payload)

    def _on_state(self, msg: Inbound) -> None:
        if self._arrived is None or self._arrived.done():
            return
        try:
            state = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(state, dict) and state.get("brightness") == self._want:
            self._arrived.set_result(None)

    async def start(self) -> None:
        config = f"homeassistant/device/edgeagent_{FLEET}_{TARGET}/config"
        await self.transport.subscribe(config, self._on_config)
        await self.transport.connect()
        async with common.CLOCK.timeout(WAIT_S):
            while self.discovery is None:
                await common.CLOCK.sleep(0.05)
        light = self.discovery["cmps"]["light"]
        self.command_topic, self.state_topic = light["command_topic"], light["state_topic"]
        await self.transport.subscribe(self.state_topic, self._on_state)

    async def set_brightness(self, level: int) -> None:
        """Publish the command; return when the state topic shows ``level``."""
        self._want = level
        self._arrived = asyncio.get_running_loop().create_future()
        payload = json.dumps({"state": "ON", "brightness": level}).encode()
        await self.transport.publish(self.command_topic, payload, qos=0)
        async with common.CLOCK.timeout(REPLY_S):
            await self._arrived


@dataclass
class Rig:
    """What the measurements use (see the module docstring)."""

    direct: Fleet
    mcp: Client
    mcp_http: Client
    ha: HaSide
    ha_stats: Callable[[], HaStats]
    coord_metrics: MetricsServer
    fleet_metrics_url: str
    services: list[asyncio.Task[None]]

    def check_alive(self) -> None:
        """RuntimeError if a bridge's task ended (it should serve until cancelled)."""
        for task in self.services:
            if task.done():
                exc = None if task.cancelled() else task.exception()
                raise RuntimeError(f"{task.get_name()} stopped: {exc!r}")


def lamp(url: str, room: str) -> DeviceAgent:
    config = AgentConfig(
        device=f"lamp-{room}",
        fleet=FLEET,
        broker=BrokerConfig(url=url),
        tags={"room": room},
        skills=[{"module": "smarthome.lamp:Lamp"}],
        health_interval_s=HEALTH_S,
    )
    return DeviceAgent(config)


async def until_routed(direct: Fleet) -> None:
    """Until the coordinator routes ``get_state`` to the target lamp."""
    async with common.CLOCK.timeout(WAIT_S):
        while True:
            try:
                await direct.call_skill("get_state", where=WHERE, timeout=1.0)
                return
            except Exception:  # not routed yet (the coordinator is still learning the fleet)
                await common.CLOCK.sleep(0.1)


async def until_tool(bridge: McpBridge, name: str) -> None:
    async with common.CLOCK.timeout(WAIT_S):
        while bridge.tools.get(name) is None:
            await bridge.refresh()
            await common.CLOCK.sleep(0.1)


async def until_health(url: str, lamps: int) -> None:
    """Until FleetMetrics shows every lamp's health (so every round scrapes the same series)."""
    served = b"edgeagent_fleet_device_calls_served_total{"
    async with common.CLOCK.timeout(WAIT_S):
        while sum(line.startswith(served) for line in (await http_get(url)).splitlines()) < lamps:
            await common.CLOCK.sleep(0.2)


def service(stack: AsyncExitStack, coro: Any, name: str) -> asyncio.Task[None]:
    """A task serving until the stack unwinds (then cancelled and awaited)."""
    task: asyncio.Task[None] = asyncio.create_task(coro, name=name)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return task


async def serve_mcp_http(stack: AsyncExitStack, bridge: McpBridge) -> str:
    """The bridge's streamable HTTP server on a free port, serving until the stack unwinds;
    its URL."""
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    service(stack, bridge.serve_http(port=0, ready=port.set_result), "mcp-http")
    async with common.CLOCK.timeout(WAIT_S):
        return f"http://127.0.0.1:{await port}/mcp"


@asynccontextmanager
async def rig(url: str, lamps: int, seed: int) -> AsyncIterator[Rig]:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    async with AsyncExitStack() as stack:
        for room in ROOMS[:lamps]:
            await stack.enter_async_context(lamp(url, room))
        coord_transport = MqttTransport(BrokerConfig(url=url), client_id="bench-coordinator")
        coordinator = Coordinator(
            coord_transport, root="edgeagent", fleet=FLEET, rng=random.Random(seed)
        )
        await stack.enter_async_context(coordinator)
        coord_metrics = await serve_coordinator_metrics(coordinator)
        stack.push_async_callback(coord_metrics.close)
        direct = await stack.enter_async_context(Fleet(url, fleet=FLEET))
        await until_routed(direct)
        bridges = await stack.enter_async_context(Fleet(url, fleet=FLEET))
        fleet_metrics = FleetMetrics(bridges, port=0)
        ha_bridge = HaBridge(bridges, poll_s=600.0, call_timeout_s=REPLY_S)
        services = [
            service(stack, fleet_metrics.run(), "fleet-metrics"),
            service(stack, ha_bridge.run(), "ha-bridge"),
        ]
        mcp_bridge = McpBridge(bridges, call_timeout=REPLY_S)
        await stack.enter_async_context(mcp_bridge.following())
        await until_tool(mcp_bridge, "get_state")
        client = await stack.enter_async_context(Client(mcp_bridge.server))
        http_client = await stack.enter_async_context(
            Client(await serve_mcp_http(stack, mcp_bridge))
        )
        ha = HaSide(url)
        stack.push_async_callback(ha.transport.close)
        await ha.start()
        async with common.CLOCK.timeout(WAIT_S):
            await fleet_metrics.ready.wait()
        fleet_url = f"http://127.0.0.1:{fleet_metrics.port}/metrics"
        await until_health(fleet_url, lamps)
        yield Rig(
            direct=direct,
            mcp=client,
            mcp_http=http_client,
            ha=ha,
            ha_stats=ha_bridge.stats,
            coord_metrics=coord_metrics,
            fleet_metrics_url=fleet_url,
            services=services,
        )


# HTTP ------------------------------------------------------------------------------------------


async def http_get(url: str) -> bytes:
    """One GET of ``url`` on a new connection (as Prometheus scrapes); the body of a 200."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            .encode("ascii")
        )  # fmt: skip
        await writer.drain()
        data = await reader.read(MAX_BODY)
        while chunk := await reader.read(MAX_BODY):
            data += chunk
            if len(data) > MAX_BODY:
                raise RuntimeError(f"{url}: more than {MAX_BODY} bytes")
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n", 1)[0]
        raise RuntimeError(f"{url}: {status!r}")
    return body


async def run_scraper(url: str, interval_s: float) -> None:
    """GET ``url`` every ``interval_s`` seconds (on a fixed schedule) until killed; prints
    ``ready`` after the first scrape."""
    await http_get(url)
    print("ready", flush=True)
    due = common.CLOCK.monotonic()
    while True:
        due += interval_s
        await common.CLOCK.sleep(max(0.0, due - common.CLOCK.monotonic()))
        await http_get(url)


@asynccontextmanager
async def scraper(script: str, url: str, interval_s: float) -> AsyncIterator[None]:
    """``script --scrape URL --scrape-interval S`` as a child process, running while the block
    runs (waits for its ``ready``; terminated after)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, "--scrape", url, "--scrape-interval", str(interval_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with common.CLOCK.timeout(WAIT_S):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the scraper did not start (exit {await proc.wait()})")
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
