"""The bridges (issue 14): what a call through MCP or Home Assistant costs against the same call
made directly, and what Prometheus metrics cost, each against a baseline in the same run.

One private mosquitto; in this process, on one event loop: ``--lamps`` lamp agents
(``DeviceAgent`` with ``smarthome.lamp:Lamp``, one per room), a ``Coordinator`` serving its
``/metrics``, a direct caller (a ``Fleet``) and one bridge ``Fleet`` shared by the MCP bridge,
the Home Assistant bridge and ``FleetMetrics`` (``benchmarks/bridges_rig.py``). Measured:

1. **MCP**: the tool call ``get_state`` with ``where={"room": "kitchen"}`` through
   ``McpBridge``, driven by the MCP SDK's own in-process client (``mcp.client.Client`` on the
   server object: JSON-RPC over memory streams, no HTTP), against the baseline
   ``Fleet.call_skill("get_state", where=..., explain=True)``, the call the bridge makes.
   Sequential; p50/p95 per call and the ratio MCP/direct. For information, the same tool call
   over streamable HTTP (``McpBridge.serve_http`` on a free port, the SDK's ``Client(url)``:
   what a remote agent pays), ``--http-calls`` calls.
2. **Home Assistant**: a brightness command published on the light's command topic, as Home
   Assistant does (JSON, QoS 0, from a separate MQTT client that read the retained discovery),
   timed until the bridge publishes the new brightness on the light's state topic, against the
   baseline ``Fleet.call("lamp-kitchen", "set_brightness", {"level": n})``. Levels alternate so
   every command changes the state (the HA path uses 1-50, the direct one 51-100).
3. **Metrics**: one scrape (a raw HTTP GET on a new connection, as Prometheus does) of the
   coordinator's ``/metrics`` and of ``FleetMetrics``' ``/metrics``, with the fleet of step 1;
   and the coordinator's routed call (``call_skill("get_state", where=...)``) with no scraper
   (the baseline) and with a scraper process hitting the coordinator's ``/metrics`` every
   ``--scrape-interval`` seconds (0.1) during the calls (the scrapes it made are counted by the
   server).

Every measurement runs once per round after its warm-up, the nine interleaved in an order that
rotates every round; the report gives the median over ``--rounds`` rounds of each metric (p50,
p95, p99, CPU µs per call of this whole process, which holds every agent, the coordinator, the
bridges and the clients, and of the broker). Every call's answer is checked (a wrong state or a
tool error stops the run), and the HA bridge must have taken every command, with none refused,
failed or dropped.

    python -m benchmarks.bench_bridges [--quick] [--json] [--rounds 5] [--calls 2000]
        [--http-calls 200] [--routed-calls 10000] [--warmup 100] [--scrapes 200] [--lamps 4]
        [--scrape-interval 0.1] [--seed 1] [--quiet]

A full run takes about 2 minutes on 2 vCPUs, ``--quick`` under 20 s. mosquitto must be
installed; the script starts its own broker (never the system broker) and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcp.client.client import Client

from benchmarks import _common as common
from benchmarks.bridges_report import fmt_sample, print_report, ratios
from benchmarks.bridges_rig import (
    TARGET,
    WHERE,
    Rig,
    http_get,
    rig,
    run_scraper,
    scraper,
)

SCRIPT = str(Path(__file__).resolve())
CODE_PATHS = ("agent", "bridges", "examples", "benchmarks")
PACKAGES = ("paho-mqtt", "edgeagent", "mcp", "prometheus-client")
NAMES = (
    "mcp",
    "mcp_http",
    "mcp_direct",
    "ha",
    "ha_direct",
    "routed",
    "routed_scraped",
    "scrape_coordinator",
    "scrape_fleet",
)
Call = Callable[[], Awaitable[object]]


def latency_stats(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)
    return {
        "p50_ms": common.percentile(ordered, 50) * 1e3,
        "p95_ms": common.percentile(ordered, 95) * 1e3,
        "p99_ms": common.percentile(ordered, 99) * 1e3,
        "mean_ms": sum(ordered) / len(ordered) * 1e3,
    }


async def measure_calls(
    call: Call,
    calls: int,
    args: argparse.Namespace,
    meter: common.CpuMeter,
    warmup: int | None = None,
) -> dict[str, float]:
    """Warm up (``args.warmup`` calls unless ``warmup``), then ``calls`` sequential calls:
    latency and CPU µs per call."""
    await common.sequential_calls(call, args.warmup if warmup is None else warmup)
    gc.collect()
    before = meter.snapshot()
    latencies = await common.sequential_calls(call, calls)
    cpu = meter.per_call(before, calls)
    return latency_stats(latencies) | {
        "cpu_us_process": cpu["requester"],
        "cpu_us_broker": cpu["broker"],
    }


async def measure_scrapes(url: str, args: argparse.Namespace) -> dict[str, float]:
    """``args.scrapes`` sequential scrapes of ``url``: latency, body size and series."""
    body = b""

    async def scrape() -> None:
        nonlocal body
        body = await http_get(url)

    await common.sequential_calls(scrape, max(1, args.warmup // 10))
    gc.collect()
    latencies = await common.sequential_calls(scrape, args.scrapes)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return latency_stats(latencies) | {"body_bytes": float(len(body)), "series": float(series)}


async def measure_scraped(
    r: Rig, call: Call, args: argparse.Namespace, meter: common.CpuMeter
) -> dict[str, float]:
    """:func:`measure_calls` while a scraper process hits the coordinator's /metrics."""
    async with scraper(SCRIPT, r.coord_metrics.url, args.scrape_interval):
        before = r.coord_metrics.scrapes
        t0 = time.perf_counter()
        sample = await measure_calls(call, args.routed_calls, args, meter)
        window = time.perf_counter() - t0
        sample["scrapes_per_s"] = (r.coord_metrics.scrapes - before) / window
    return sample


async def measure_ha(
    r: Rig, call: Call, args: argparse.Namespace, meter: common.CpuMeter
) -> dict[str, float]:
    """:func:`measure_calls` of Home Assistant commands; RuntimeError unless the bridge took
    every one of them as a command and none failed, was refused or dropped."""
    before = r.ha_stats()
    sample = await measure_calls(call, args.calls, args, meter)
    after = r.ha_stats()
    commands = after.commands - before.commands
    failed = {
        "command_errors": after.command_errors - before.command_errors,
        "call_errors": after.call_errors - before.call_errors,
        "dropped": after.dropped - before.dropped,
    }
    if commands != args.warmup + args.calls or any(failed.values()):
        raise RuntimeError(f"HA bridge: {commands} commands, {failed}")
    return sample


async def mcp_get_state(client: Client) -> None:
    result = await client.call_tool("get_state", {"where": WHERE})
    if result.is_error or "brightness" not in (result.structured_content or {}):
        raise RuntimeError(f"MCP get_state failed: {result.content}")


def measures(
    r: Rig, args: argparse.Namespace, meter: common.CpuMeter
) -> dict[str, Callable[[], Awaitable[dict[str, float]]]]:
    """The eight measurements, each a coroutine function giving one round's sample."""
    ha_levels = itertools.cycle(range(1, 51))  # consecutive levels differ: every state changes
    direct_levels = itertools.cycle(range(51, 101))

    async def mcp() -> None:
        await mcp_get_state(r.mcp)

    async def mcp_http() -> None:
        await mcp_get_state(r.mcp_http)

    async def mcp_direct() -> None:
        result = await r.direct.call_skill("get_state", where=WHERE, explain=True)
        if "brightness" not in result.output:
            raise RuntimeError(f"get_state answered {result.output!r}")

    async def ha() -> None:
        await r.ha.set_brightness(next(ha_levels))

    async def ha_direct() -> None:
        level = next(direct_levels)
        out = await r.direct.call(TARGET, "set_brightness", {"level": level})
        if out.get("brightness") != level:
            raise RuntimeError(f"set_brightness answered {out!r}")

    async def routed() -> None:
        await r.direct.call_skill("get_state", where=WHERE)

    return {
        "mcp": lambda: measure_calls(mcp, args.calls, args, meter),
        "mcp_http": lambda: measure_calls(
            mcp_http, args.http_calls, args, meter, warmup=max(5, args.http_calls // 10)
        ),
        "mcp_direct": lambda: measure_calls(mcp_direct, args.calls, args, meter),
        "ha": lambda: measure_ha(r, ha, args, meter),
        "ha_direct": lambda: measure_calls(ha_direct, args.calls, args, meter),
        "routed": lambda: measure_calls(routed, args.routed_calls, args, meter),
        "routed_scraped": lambda: measure_scraped(r, routed, args, meter),
        "scrape_coordinator": lambda: measure_scrapes(r.coord_metrics.url, args),
        "scrape_fleet": lambda: measure_scrapes(r.fleet_metrics_url, args),
    }


async def run_all(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in NAMES}
    with common.private_broker() as broker:
        assert broker.proc is not None
        meter = common.CpuMeter({"broker": broker.proc.pid})
        async with rig(broker.url, args.lamps, args.seed) as r:
            todo = measures(r, args, meter)
            for i in range(args.rounds):
                for name in common.rotation(NAMES, i):
                    sample = await todo[name]()
                    rounds[name].append(sample)
                    line = f"round {i + 1}/{args.rounds} {name:<18} {fmt_sample(sample)}"
                    common.progress(args.quiet, line)
                r.check_alive()
    return rounds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer rounds and calls (under 30 s)")
    p.add_argument("--rounds", type=int, help="rounds; the median is reported (5; quick 2)")
    p.add_argument("--calls", type=int, help="MCP/HA calls per measurement (2000; quick 300)")
    p.add_argument(
        "--routed-calls", type=int,
        help="routed calls per measurement, with and without the scraper (10000; quick 2000)",
    )  # fmt: skip
    p.add_argument(
        "--http-calls", type=int, help="MCP calls over HTTP per measurement (200; quick 50)"
    )
    p.add_argument("--warmup", type=int, help="warm-up calls per measurement (100; quick 30)")
    p.add_argument("--scrapes", type=int, help="scrapes per scrape measurement (200; quick 50)")
    p.add_argument("--lamps", type=int, default=4, help="lamp agents, one per room (1-8)")
    p.add_argument("--scrape-interval", type=float, default=0.1, help="scraper period, s")
    p.add_argument("--seed", type=int, default=1, help="the coordinator's random seed")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    p.add_argument("--scrape", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    counts = ("rounds", "calls", "http_calls", "routed_calls", "warmup", "scrapes")
    defaults = (2, 300, 50, 2000, 30, 50) if args.quick else (5, 2000, 200, 10_000, 100, 200)
    for name, default in zip(counts, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if min(getattr(args, name) for name in counts) < 1:
        p.error("counts must be positive")
    if not 1 <= args.lamps <= 8:
        p.error("--lamps: 1 to 8")
    if args.scrape_interval <= 0:
        p.error("--scrape-interval must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.scrape:
        asyncio.run(run_scraper(args.scrape, args.scrape_interval))
        return
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": common.machine_info(PACKAGES),
        "code": common.code_state(CODE_PATHS),
        "config": {k: getattr(args, k) for k in
                   ("rounds", "calls", "http_calls", "routed_calls", "warmup", "scrapes", "lamps",
                    "scrape_interval", "seed")},
    }  # fmt: skip
    rounds = asyncio.run(run_all(args))
    report["results"] = {name: common.median_by_key(samples) for name, samples in rounds.items()}
    report["ratios"] = ratios(report["results"])
    report["rounds"] = rounds
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    if common.code_state(CODE_PATHS) != report["code"]:
        report["code_changed_during_run"] = common.code_state(CODE_PATHS)
    if args.json:
        common.print_json(report)
    else:
        print_report(report)


if __name__ == "__main__":
    main()
