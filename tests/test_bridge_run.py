"""`edgeagent bridge run --ha --mcp --metrics`: the three bridges as one process on one connection
(a real mosquitto, a real lamp agent, the command as a subprocess, each bridge checked by its own
kind of client: the broker's retained discovery, the MCP SDK over HTTP, a Prometheus scrape)."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.agents import Retained, running_agent
from tests.broker.mosquitto import Mosquitto
from tests.test_bridge_mcp import cli, env_with_examples, stop

pytestmark = pytest.mark.broker


class Lines:
    """A process's stdout, line by line, read in a thread (so waiting has a deadline)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout

        def read() -> None:
            for line in out:
                self._q.put(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        """After the process ended: the reader has met end of file; the pipe is closed."""
        stop(self.proc)  # type: ignore[arg-type]
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def wait(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first line so far or to come (in any order) that matches ``pattern``."""
        for line in self.seen:
            m = re.search(pattern, line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r}; output so far: {self.seen}")


def bridge(url: str, fleet: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli(url, fleet, "bridge", "run", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env_with_examples(),
    )


@pytest.fixture
def lamp(mosquitto: Mosquitto) -> Iterator[tuple[str, str]]:
    fleet = f"b{uuid.uuid4().hex[:10]}"
    with running_agent("lamp-kitchen.yaml", mosquitto.url, fleet, "lamp-kitchen"):
        yield mosquitto.url, fleet


def scrape(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def tool_names(url: str) -> set[str]:
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return {t.name for t in (await session.list_tools()).tools}


def test_three_bridges_in_one_process(lamp: tuple[str, str]) -> None:
    url, fleet = lamp
    discovery = Retained(url, "homeassistant/device/+/config")
    proc = bridge(url, fleet, "--ha", "--mcp", "--metrics", "--mcp-port", "0",
                  "--metrics-port", "0")  # fmt: skip
    out = Lines(proc)
    try:
        mcp_url = out.wait(r"MCP server on (http://\S+/mcp)").group(1)
        metrics_url = out.wait(r"metrics on (http://\S+/metrics)").group(1)
        out.wait(r"lamp-kitchen: .*light")  # the HA bridge mapped the lamp

        topic = f"homeassistant/device/edgeagent_{fleet}_lamp-kitchen/config"
        deadline = time.monotonic() + 15
        while topic not in discovery.latest:
            assert time.monotonic() < deadline, "no retained discovery for the lamp"
            time.sleep(0.05)
        assert json.loads(discovery.latest[topic])["dev"]["name"] == "lamp-kitchen"

        assert {"set_brightness", "get_state", "fleet_devices", "ask"} <= asyncio.run(
            tool_names(mcp_url)
        )

        deadline = time.monotonic() + 15
        while True:  # the fleet snapshot fills from retained messages as they arrive
            samples = scrape(metrics_url)
            up = samples.get('edgeagent_fleet_device_up{"device": "lamp-kitchen"}')
            if up == 1.0 and samples.get("edgeagent_ha_devices{}") == 1.0:
                break
            assert time.monotonic() < deadline, f"metrics never showed the lamp: {samples}"
            time.sleep(0.1)
        assert samples["edgeagent_ha_entities{}"] >= 1
        assert samples["edgeagent_ha_published_total{}"] >= 1  # at least the discovery

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        out.wait(r"HA bridge stopped: 0 commands, \d+ published")
    finally:
        out.close()
        discovery.close()


@pytest.mark.parametrize(
    ("flag", "name"), [("metrics", "metrics"), ("mcp", "MCP server")], ids=["metrics", "mcp"]
)
def test_a_bridge_that_cannot_start_stops_the_others_with_the_reason(
    lamp: tuple[str, str], flag: str, name: str
) -> None:
    url, fleet = lamp
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = bridge(url, fleet, "--ha", f"--{flag}", f"--{flag}-port", str(port))
        out = Lines(proc)
        try:
            out.wait(rf"error: {name} stopped: .*{port}")
            assert proc.wait(15) == 1
        finally:
            out.close()
