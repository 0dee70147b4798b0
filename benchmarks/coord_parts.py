"""Parts of ``bench_coord`` (the coordinator's overhead and failover benchmark): its fleet and
targets, the requesters of part 1 (raw paho, the paho relay, ``Fleet.call``, ``call_skill``
through the coordinator and routed by the library) and the processes it starts (an echo agent, a
coordinator) and waits for. Apart from the script so that each module stays one concept: these are
the measured things, ``bench_coord`` the order of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks import _common as common
from benchmarks import bench_rr

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import (  # type: ignore[import-not-found, unused-ignore]
    CallError,
    Fleet,
)

REPO = common.REPO
Meter = common.CpuMeter
Sample = common.Sample
Summary = common.Summary
summarize = common.summarize
ECHO_DIR = REPO / "examples" / "smart-home"
FLEET = "home"
DEVICE = "echo-1"
SKILL = "echo"
FO_DEVICES = ("echo-a", "echo-b", "echo-c")
FO_VICTIM = "echo-b"
TARGET_ROUTED_P50_RATIO = 2.5
FLOOR_ROUTED_P50_RATIO = 2.0
#: Targets for the library-routed requester against raw paho.
TARGET_LIBRARY_P50_RATIO = 1.1
TARGET_LIBRARY_THROUGHPUT_RATIO = 1.0
CALL_TIMEOUT_S = 10.0


# Measurements of part 1 ------------------------------------------------------------------------


def measure_raw(
    port: int,
    payload: bytes,
    args: argparse.Namespace,
    meter: Meter,
    requester_class: type[bench_rr.RawRequester] = bench_rr.RawRequester,
) -> Sample:
    requester = requester_class("127.0.0.1", port, payload)
    try:
        return common.measure_requester(requester, common.Load.from_args(args), meter)
    finally:
        requester.close()


# The paho relay: the least an extra hop can cost (for information) ------------------------------


RELAY_TOPIC = "bench/relay/req"
INNER_TOPIC = "bench/relay/inner"


def run_relay(host: str, port: int) -> None:
    """Forward each request on RELAY_TOPIC to INNER_TOPIC and relay the reply, forever.

    What a router does at the least: one subscription, a new Correlation Data per forward, a map
    back to the caller's Response Topic and Correlation Data. No parsing, no routing decision.
    """
    client_id = f"bench-relay-{os.getpid()}"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    back = f"bench/relay/back/{client_id}"
    pending: dict[bytes, tuple[str, bytes | None]] = {}
    counter = 0

    def on_connect(c: mqtt.Client, _ud: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        c.subscribe([(RELAY_TOPIC, 0), (back, 0)])

    def on_subscribe(_c: mqtt.Client, _ud: Any, _mid: int, _codes: Any, _props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal counter
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        corr: bytes | None = getattr(msg.properties, "CorrelationData", None)
        if msg.topic == back:
            entry = pending.pop(corr, None) if corr is not None else None
            if entry is None:
                return
            if entry[1] is not None:
                props.CorrelationData = entry[1]
            c.publish(entry[0], msg.payload, qos=0, properties=props)
            return
        reply_to: str | None = getattr(msg.properties, "ResponseTopic", None)
        if not reply_to:
            return
        counter += 1
        mine = counter.to_bytes(8, "big")
        pending[mine] = (reply_to, corr)
        props.ResponseTopic = back
        props.CorrelationData = mine
        c.publish(INNER_TOPIC, msg.payload, qos=0, properties=props)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_forever()


class RelayRequester(bench_rr.RawRequester):
    """bench_rr's raw requester, sending to the relay's topic instead of the responder's."""

    request_topic = RELAY_TOPIC


async def _measure_async(
    call: Callable[[], Awaitable[None]], args: argparse.Namespace, meter: Meter
) -> Sample:
    return await common.measure_calls(call, common.Load.from_args(args), meter)


async def measure_direct(
    url: str, payload: bytes, args: argparse.Namespace, meter: Meter
) -> Sample:
    expected = json.loads(payload)["data"]
    async with Fleet(url, fleet=FLEET) as fleet:

        async def call() -> None:
            await fleet.call(DEVICE, SKILL, payload, timeout=CALL_TIMEOUT_S)

        if await fleet.call(DEVICE, SKILL, payload, timeout=CALL_TIMEOUT_S) != expected:
            raise RuntimeError("echo skill replied with a different string")
        return await _measure_async(call, args, meter)


async def measure_routed(
    url: str, payload: bytes, args: argparse.Namespace, meter: Meter
) -> Sample:
    expected = json.loads(payload)["data"]
    async with Fleet(url, fleet=FLEET) as fleet:

        async def call() -> None:
            await fleet.call_skill(SKILL, payload, timeout=CALL_TIMEOUT_S)

        if await fleet.call_skill(SKILL, payload, timeout=CALL_TIMEOUT_S) != expected:
            raise RuntimeError("the routed echo replied with a different string")
        return await _measure_async(call, args, meter)


async def measure_library(
    url: str, payload: bytes, args: argparse.Namespace, meter: Meter
) -> Sample:
    expected = json.loads(payload)["data"]
    async with Fleet(url, fleet=FLEET, route="local") as fleet:

        async def call() -> None:
            await fleet.call_skill(SKILL, payload, timeout=CALL_TIMEOUT_S)

        if await fleet.call_skill(SKILL, payload, timeout=CALL_TIMEOUT_S) != expected:
            raise RuntimeError("the library-routed echo replied with a different string")
        return await _measure_async(call, args, meter)


# Processes -------------------------------------------------------------------------------------


spawn = common.spawn
wait_online = common.wait_online


def agent_cmd(url: str, fleet: str, config: Path) -> list[str]:
    return common.agent_command(url, config, fleet=fleet)


def coordinator_cmd(url: str, fleet: str, hedge: bool = True) -> list[str]:
    cmd = [*common.edgeagent_command(), "--broker", url, "--fleet", fleet]
    cmd += ["--log-level", "info", "coordinator", "run"]
    return cmd if hedge else [*cmd, "--no-hedge"]


def wait_log(log: Path, text: str, timeout: float = 30) -> None:
    deadline = common.CLOCK.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if common.CLOCK.monotonic() > deadline:
            raise TimeoutError(f"{log.name}: no {text!r}")
        time.sleep(0.05)


async def wait_coordinator(url: str, fleet: str, timeout: float = 30) -> None:
    """Until a routed call succeeds."""
    async with common.CLOCK.timeout(timeout), Fleet(url, fleet=fleet) as f:
        while True:
            try:
                await f.call_skill(SKILL, {"data": "ping"}, timeout=1.0)
                return
            except CallError:
                await common.CLOCK.sleep(0.1)


def check_alive(procs: Mapping[str, subprocess.Popen[bytes]], logs: Mapping[str, Path]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            tail = logs[name].read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{tail}")
