"""The information part of ``bench_models``: the end-to-end ``Fleet.call`` of ``read_digit``
through a private mosquitto to an ``edgeagent agent run`` subprocess serving DigitReader, timed
against the bare dispatch. Apart from the comparisons because it is the one part with a broker
and a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from benchmarks import _common as common
from benchmarks.models_parts import (
    CALL_TIMEOUT_S,
    EXAMPLES,
    MQTT_DEVICE,
    say,
)

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import Fleet  # type: ignore[import-not-found, unused-ignore]
from edgeagent.devices.profile import (  # type: ignore[import-not-found, unused-ignore]
    DeviceProfile,
)

# 3b. End to end over MQTT (information) ---------------------------------------------------------


@contextlib.contextmanager
def meter_agent(
    url: str, model: Path, profile: str, work: Path, log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgeagent agent run`` serving DigitReader on ``model`` (a subprocess we stop)."""
    config = work / "meter-bench.yaml"
    config.write_text(
        json.dumps(
            {
                "device": MQTT_DEVICE,
                "fleet": "home",
                "broker": url,
                "profile": profile,
                "skills": [
                    {
                        "module": "smarthome.meter:DigitReader",
                        "options": {"model": str(model), "profile": profile},
                    }
                ],
            }
        )
    )
    cmd = common.agent_command(url, config)
    with common.spawn(cmd, log, common.with_pythonpath(EXAMPLES)) as proc:
        yield proc


async def _mqtt_rounds(
    url: str, pixels: list[float], bare: Callable[[], object], args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Per round: p50 of sequential ``Fleet.call``s, and the bare dispatch's time per call."""
    calls = max(100, args.runs // 2)
    body = {"pixels": pixels}
    mqtt_p50: list[float] = []
    bare_us: list[float] = []
    await common.wait_online(url, "home", (MQTT_DEVICE,), timeout=60)
    async with Fleet(url, fleet="home") as fleet:
        for _ in range(100):
            await fleet.call(MQTT_DEVICE, "read_digit", body, timeout=CALL_TIMEOUT_S)
        for _ in range(args.rounds):
            gc.collect()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                await fleet.call(MQTT_DEVICE, "read_digit", body, timeout=CALL_TIMEOUT_S)
                times.append((time.perf_counter_ns() - t0) / 1000)
            mqtt_p50.append(statistics.median(times))
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                bare()
            bare_us.append((time.perf_counter_ns() - t0) / calls / 1000)
    return mqtt_p50, bare_us


def mqtt_end_to_end(
    src: Path, profile: DeviceProfile, info: Mapping[str, Any], work: Path, args: argparse.Namespace
) -> dict[str, Any] | None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        say(args, "mosquitto is not installed: skipping the MQTT end-to-end call")
        return None
    say(args, "MQTT: Fleet.call → private mosquitto → edgeagent agent run (DigitReader)")
    with (
        tempfile.TemporaryFile() as agent_log,
        common.private_broker() as broker,
        meter_agent(broker.url, src, profile.name, work, agent_log) as agent,
    ):
        try:
            mqtt_p50, bare_us = asyncio.run(
                _mqtt_rounds(broker.url, info["pixels"], info["bare_dispatch"], args)
            )
        except TimeoutError:
            agent_log.seek(0)
            sys.stderr.write(agent_log.read().decode(errors="replace"))
            raise SystemExit("the meter agent did not come online") from None
        if agent.poll() is not None:
            raise SystemExit(f"the meter agent exited with {agent.returncode}")
    m, b = common.median(mqtt_p50), common.median(bare_us)
    return {
        "calls_per_round": max(100, args.runs // 2),
        "fleet_call_p50_us": round(m, 1),
        "bare_dispatch_us": round(b, 2),
        "ratio": round(m / b, 1),
        "rounds_p50_us": [round(x, 1) for x in mqtt_p50],
    }
