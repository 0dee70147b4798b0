"""The coordinator: a routed call against a direct call and bare paho, and failover under load.

Part 1, **overhead**, in one run through one private mosquitto with one payload (``--payload``
bytes, default 128), requesters of the same echo:

1. **raw paho** (the baseline): ``bench_rr``'s paho responder process and single-threaded paho
   requester (MQTT 5 Response Topic + Correlation Data).
2. **direct**: ``Fleet.call("echo-1", "echo", …)`` to a real ``edgeagent agent run`` process.
3. **routed**: ``Fleet.call_skill("echo", …)`` to a real ``edgeagent coordinator run`` process,
   which forwards it to the same agent. A routed call crosses the broker four times instead of
   two, so about 2 × the direct latency is the floor.
4. **library-routed**: ``Fleet(route="local").call_skill("echo", …)``: the client routes with
   the coordinator's rules (registry, power-of-two choices, failover, hedging:
   ``edgeagent.local_routing``) and calls the agent directly, two broker crossings like a direct
   call. Target: p50 ≤ 1.1 × raw paho, throughput ≥ 1.0 × raw paho.
5. **paho relay** (for information, ``--no-relay`` to skip): the raw paho requester through a bare
   paho relay process (new Correlation Data per forward, a map back; no parsing, no routing) to a
   second paho responder: what one extra hop costs at the least on this machine and broker.

Sequential p50/p99 of ``--calls`` calls after a warm-up, and calls/s with ``--inflight`` calls
outstanding (a closed loop). Each measurement is repeated ``--rounds`` times, interleaved and in
rotating order; the median of each metric over the rounds is reported, with CPU time per call of
this process, the broker, the responding process and the router (from ``/proc``).

Part 2, **failover**: three echo agents (``echo-a``, ``echo-b``, ``echo-c``, the same skill) and
one coordinator, on a fresh broker. After a warm-up and a steady phase (``--steady-seconds``, no
kill: its forwards, counted exactly from the agents' health, give the hedge rate), this process
keeps ``--fo-inflight`` calls in flight with ``call_skill`` for ``--fo-seconds``; at ``--kill-at``
seconds it SIGKILLs ``echo-b`` (the broker sends its last will at once), or with
``--kill-signal STOP`` freezes it (a hung device: its connection stays up, no will).
Reported: success rate, p50/p99 overall, before the kill and for the calls in flight during the
``--window`` seconds after it, the errors and when the last one ended, when the victim's last-will
``offline`` state arrived, the coordinator's ``failover`` log lines, and the forwards per device
(from the agents' health messages, every second). It runs once per ``--fo-modes`` entry: ``hedge``
(the coordinator's default), ``no-hedge`` (``coordinator run --no-hedge``) and ``library`` (no
coordinator: ``Fleet(route="local")`` routes and fails over itself; the router's own failover and
hedge counts stand in for the coordinator's log lines).

    python benchmarks/bench_coord.py [--calls 3000] [--inflight 64] [--rounds 5] [--json]
                                     [--fo-seconds 10] [--kill-at 3] [--fo-inflight 32]
                                     [--fo-modes hedge,no-hedge,library]
                                     [--kill-signal KILL|STOP]
                                     [--skip-overhead] [--no-relay] [--logs DIR]

The whole default run takes about 2 minutes on 2 vCPUs. mosquitto must be installed; the script
starts its own broker(s), agents and coordinators (never the system broker) and stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import (  # type: ignore[import-not-found, unused-ignore]
    CallError,
    Fleet,
    RouteVia,
)
from edgeagent.protocol import (  # type: ignore[import-not-found, unused-ignore]
    Health,
    StateMessage,
)

try:
    from benchmarks import _common as common
    from benchmarks import bench_rr
except ModuleNotFoundError:  # run as a script: benchmarks/ is on sys.path, the repo is not
    import _common as common  # type: ignore[import-not-found, no-redef, unused-ignore]
    import bench_rr  # type: ignore[import-not-found, no-redef, unused-ignore]

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


def helper_process(*args: str) -> AbstractContextManager[subprocess.Popen[str]]:
    """This script run as ``--responder``/``--relay``; waits for its ``ready``."""
    return common.script_process(__file__, *args)


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


def _check_alive(procs: Mapping[str, subprocess.Popen[bytes]], logs: Mapping[str, Path]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            tail = logs[name].read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{tail}")


def run_overhead(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    payload = common.echo_payload(args.payload)
    names = ["raw_paho", "direct", "routed", "library"]
    names += [] if args.no_relay else ["paho_relay"]
    rounds: dict[str, list[Sample]] = {name: [] for name in names}
    logs = {"agent": tmp / "agent.log", "coordinator": tmp / "coordinator.log"}
    with ExitStack() as stack:
        broker = stack.enter_context(common.private_broker())
        hostport = f"127.0.0.1:{broker.port}"
        responder = stack.enter_context(bench_rr.responder_process("127.0.0.1", broker.port))
        agent_command = agent_cmd(broker.url, FLEET, ECHO_DIR / "echo.yaml")
        agent = stack.enter_context(spawn(agent_command, logs["agent"]))
        coord = stack.enter_context(spawn(coordinator_cmd(broker.url, FLEET), logs["coordinator"]))
        assert broker.proc is not None
        bpid = broker.proc.pid
        meters = {
            "raw_paho": Meter({"broker": bpid, "server": responder.pid}),
            "direct": Meter({"broker": bpid, "server": agent.pid}),
            "routed": Meter({"broker": bpid, "server": agent.pid, "router": coord.pid}),
            "library": Meter({"broker": bpid, "server": agent.pid}),
        }
        if not args.no_relay:
            inner = stack.enter_context(helper_process("--responder", f"{hostport}:{INNER_TOPIC}"))
            relay = stack.enter_context(helper_process("--relay", hostport))
            meters["paho_relay"] = Meter({"broker": bpid, "server": inner.pid, "router": relay.pid})
        procs = {"agent": agent, "coordinator": coord}
        try:
            asyncio.run(wait_online(broker.url, FLEET, (DEVICE,)))
            wait_log(logs["coordinator"], "coordinator: routing")
            asyncio.run(wait_coordinator(broker.url, FLEET))
        except TimeoutError:
            _check_alive(procs, logs)
            raise SystemExit("the echo agent or the coordinator did not come up") from None
        measures: dict[str, Callable[[], Sample]] = {
            "raw_paho": lambda: measure_raw(broker.port, payload, args, meters["raw_paho"]),
            "direct": lambda: asyncio.run(
                measure_direct(broker.url, payload, args, meters["direct"])
            ),
            "routed": lambda: asyncio.run(
                measure_routed(broker.url, payload, args, meters["routed"])
            ),
            "library": lambda: asyncio.run(
                measure_library(broker.url, payload, args, meters["library"])
            ),
            "paho_relay": lambda: measure_raw(
                broker.port, payload, args, meters["paho_relay"], RelayRequester
            ),
        }
        for r in range(args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                sample = measures[name]()
                rounds[name].append(sample)
                _progress(args, f"round {r + 1}/{args.rounds} {name:<10} {_fmt_sample(sample)}")
            _check_alive(procs, logs)
        coord_log = logs["coordinator"].read_text(errors="replace")
    results = {name: summarize(samples) for name, samples in rounds.items()}

    def ratio(a: Summary, b: Summary) -> dict[str, float]:
        return {
            "p50": round(a.p50_us / b.p50_us, 3),
            "p99": round(a.p99_us / b.p99_us, 3),
            "throughput": round(a.calls_per_s / b.calls_per_s, 3),
        }

    raw, direct, routed = results["raw_paho"], results["direct"], results["routed"]
    ratios = {
        "direct/raw": ratio(direct, raw),
        "routed/raw": ratio(routed, raw),
        "routed/direct": ratio(routed, direct),
        "library/raw": ratio(results["library"], raw),
        "library/direct": ratio(results["library"], direct),
    }
    if "paho_relay" in results:
        ratios["paho_relay/raw"] = ratio(results["paho_relay"], raw)
        ratios["routed/paho_relay"] = ratio(routed, results["paho_relay"])
    p50_ratio = ratios["routed/raw"]["p50"]
    library = ratios["library/raw"]
    return {
        "config": {
            "calls": args.calls,
            "warmup": args.warmup,
            "inflight": args.inflight,
            "payload_bytes": args.payload,
            "rounds": args.rounds,
        },
        "results": {name: asdict(s) for name, s in results.items()},
        "ratios": ratios,
        "target": {
            "routed_p50_over_raw_max": TARGET_ROUTED_P50_RATIO,
            "floor": FLOOR_ROUTED_P50_RATIO,
            "met": p50_ratio <= TARGET_ROUTED_P50_RATIO,
            "library_p50_over_raw_max": TARGET_LIBRARY_P50_RATIO,
            "library_throughput_over_raw_min": TARGET_LIBRARY_THROUGHPUT_RATIO,
            "library_met": library["p50"] <= TARGET_LIBRARY_P50_RATIO
            and library["throughput"] >= TARGET_LIBRARY_THROUGHPUT_RATIO,
        },
        "coordinator_error_lines": coord_log.count(" -> "),
        "coordinator_failover_lines": coord_log.count("failover"),
    }


# Part 2: failover ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    start: float
    end: float
    error: str | None  # None: ok; else the error code

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class LoadResult:
    records: list[Record]
    t0: float
    killed_at: float
    ended: float
    offline_seen: float | None
    health_before: dict[str, int]
    health_after: dict[str, int]
    victim_health_age_s: float
    """How old the victim's last health message (its call count) was at the kill."""
    steady_calls: int
    steady_errors: int
    steady_forwards: int
    router: dict[str, int] | None = None
    """The library router's own counts (failovers, hedges), when the client routed."""


def _echo_calls(h: Health) -> int:
    s = h.skills.get(SKILL)
    return int(s.calls) if s is not None else 0


async def failover_load(
    url: str,
    fleet: str,
    victim: subprocess.Popen[bytes],
    args: argparse.Namespace,
    route: RouteVia = "coordinator",
) -> LoadResult:
    payload = common.echo_payload(args.payload)
    records: list[Record] = []
    health: dict[str, int] = {}
    health_at: dict[str, float] = {}
    killed_at = math.nan
    offline_seen: float | None = None
    async with Fleet(url, fleet=fleet, route=route) as f:

        async def watch() -> None:
            nonlocal offline_seen
            async for m in f.watch():
                now = time.perf_counter()
                if isinstance(m, Health):
                    health[m.device] = _echo_calls(m)
                    health_at[m.device] = now
                elif (
                    isinstance(m, StateMessage)
                    and m.device == FO_VICTIM
                    and m.status != "online"
                    and not math.isnan(killed_at)
                    and offline_seen is None
                ):
                    offline_seen = now

        watcher = asyncio.create_task(watch())

        async def one() -> str | None:
            try:
                await f.call_skill(SKILL, payload, timeout=args.call_timeout)
            except CallError as exc:
                return str(exc.code)
            return None

        async def load_for(seconds: float) -> tuple[int, int]:
            """Keep ``fo_inflight`` calls in flight; returns (calls, errors)."""
            until = time.perf_counter() + seconds
            counts = [0, 0]

            async def loop() -> None:
                while time.perf_counter() < until:
                    error = await one()
                    counts[0] += 1
                    counts[1] += error is not None

            await asyncio.gather(*(loop() for _ in range(args.fo_inflight)))
            return counts[0], counts[1]

        async def quiet_health() -> dict[str, int]:
            """After a quiet 1.3 s every agent's last health (1 s period) counts every call."""
            await asyncio.sleep(1.3)
            return dict(health)

        # Warm-up (the coordinator measures every device: hedging needs a p95), then a steady
        # phase whose forwards are counted exactly from the agents' health: the hedge rate.
        await load_for(1.0)
        steady_before = await quiet_health()
        steady_calls, steady_errors = await load_for(args.steady_seconds)
        before = await quiet_health()
        steady_forwards = sum(before.get(d, 0) - steady_before.get(d, 0) for d in FO_DEVICES)

        t0 = time.perf_counter()
        stop_at = t0 + args.fo_seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                error = await one()
                records.append(Record(start, time.perf_counter(), error))

        async def killer() -> None:
            nonlocal killed_at
            await asyncio.sleep(args.kill_at)
            killed_at = time.perf_counter()
            os.kill(victim.pid, args.kill_signal)

        kill = asyncio.create_task(killer())
        await asyncio.gather(*(worker() for _ in range(args.fo_inflight)))
        ended = time.perf_counter()
        await kill
        await asyncio.sleep(1.3)  # the survivors' next health counts every call
        after = dict(health)
        if args.kill_signal != signal.SIGKILL:
            os.kill(victim.pid, signal.SIGKILL)  # a stopped agent would not exit on SIGTERM
        victim_health_age = killed_at - health_at.get(FO_VICTIM, math.nan)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        router = (await f.local_router()).statistics() if route == "local" else None
    return LoadResult(
        records=records,
        t0=t0,
        killed_at=killed_at,
        ended=ended,
        offline_seen=offline_seen,
        health_before=before,
        health_after=after,
        victim_health_age_s=victim_health_age,
        steady_calls=steady_calls,
        steady_errors=steady_errors,
        steady_forwards=steady_forwards,
        router=router,
    )


def _pcts_ms(records: list[Record]) -> dict[str, float | int | None]:
    ordered = sorted(r.latency_s for r in records)
    if not ordered:
        return {"calls": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "ok_pct": None}
    ok = sum(1 for r in records if r.error is None)
    return {
        "calls": len(ordered),
        "p50_ms": round(common.percentile(ordered, 50) * 1000, 2),
        "p99_ms": round(common.percentile(ordered, 99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "ok_pct": round(100 * ok / len(ordered), 3),
    }


def analyse(res: LoadResult, window_s: float, steady_s: float, coord_log: str) -> dict[str, Any]:
    recs, k = res.records, res.killed_at
    errors = [r for r in recs if r.error is not None]
    codes: dict[str, int] = {}
    for r in errors:
        codes[r.error or "?"] = codes.get(r.error or "?", 0) + 1
    in_window = [r for r in recs if r.start < k + window_s and r.end > k]
    at_kill = [r for r in recs if r.start <= k < r.end]
    before = [r for r in recs if r.end <= k]
    after_window = [r for r in recs if r.start >= k + window_s]
    elapsed = res.ended - res.t0
    forwards = {d: res.health_after.get(d, 0) - res.health_before.get(d, 0) for d in FO_DEVICES}
    # Per half second: calls completed and errors, relative to the kill.
    timeline: list[dict[str, float | int]] = []
    step = 0.5
    n = math.ceil(elapsed / step)
    for i in range(n):
        lo = res.t0 + i * step
        done = [r for r in recs if lo <= r.end < lo + step]
        timeline.append(
            {
                "t_rel_kill_s": round(lo - k, 2),
                "calls_per_s": round(len(done) / step),
                "errors": sum(1 for r in done if r.error is not None),
            }
        )
    return {
        "calls": len(recs),
        "ok": len(recs) - len(errors),
        "success_pct": round(100 * (len(recs) - len(errors)) / len(recs), 3) if recs else None,
        "errors_by_code": codes,
        "calls_per_s": round(len(recs) / elapsed),
        "overall": _pcts_ms(recs),
        "before_kill": _pcts_ms(before),
        "window_after_kill": _pcts_ms(in_window),
        "in_flight_at_kill": _pcts_ms(at_kill),
        "after_window": _pcts_ms(after_window),
        "last_error_after_kill_ms": (
            round((max(r.end for r in errors) - k) * 1000, 1) if errors else None
        ),
        "offline_seen_after_kill_ms": (
            round((res.offline_seen - k) * 1000, 1) if res.offline_seen is not None else None
        ),
        "kill_at_s": round(k - res.t0, 3),
        "forwards_per_device": forwards,
        "victim_count_age_ms": round(res.victim_health_age_s * 1000),
        "extra_forwards_at_least": sum(forwards.values()) - len(recs),
        "steady": {
            "seconds": steady_s,
            "calls": res.steady_calls,
            "errors": res.steady_errors,
            "calls_per_s": round(res.steady_calls / steady_s),
            "forwards": res.steady_forwards,
            "extra_forwards_pct": round(
                100 * (res.steady_forwards - res.steady_calls) / max(1, res.steady_calls), 2
            ),
        },
        "coordinator_failover_lines": coord_log.count("failover:"),
        "coordinator_failover_codes": dict(
            Counter(re.findall(r"failover: \S+ answered (\w+)", coord_log))
        ),
        "coordinator_error_lines": coord_log.count("coordinator call "),
        "router": res.router,
        "timeline": timeline,
    }


def run_failover(args: argparse.Namespace, tmp: Path, mode: str) -> dict[str, Any]:
    fleet = f"fo-{mode}"
    configs: dict[str, Path] = {}
    for device in FO_DEVICES:
        configs[device] = tmp / f"{mode}-{device}.yaml"
        configs[device].write_text(
            f"device: {device}\nfleet: {fleet}\nprofile: x86-64\ntags: {{kind: test}}\n"
            "health_interval_s: 1\nskills:\n  - module: smarthome.echo\n"
        )
    paths = [str(ECHO_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths)}  # the configs are not next to smarthome/
    logs = {d: tmp / f"{mode}-{d}.log" for d in FO_DEVICES}
    logs["coordinator"] = tmp / f"{mode}-coordinator.log"
    with common.private_broker() as broker, ExitStack() as stack:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for device in FO_DEVICES:
            cmd = agent_cmd(broker.url, fleet, configs[device])
            procs[device] = stack.enter_context(spawn(cmd, logs[device], env))
        library = mode == "library"  # no coordinator: the client routes
        if not library:
            cmd = coordinator_cmd(broker.url, fleet, hedge=(mode == "hedge"))
            procs["coordinator"] = stack.enter_context(spawn(cmd, logs["coordinator"]))
        try:
            asyncio.run(wait_online(broker.url, fleet, FO_DEVICES))
            if not library:
                wait_log(logs["coordinator"], "coordinator: routing")
                asyncio.run(wait_coordinator(broker.url, fleet))
        except TimeoutError:
            _check_alive(procs, logs)
            raise SystemExit("the echo agents or the coordinator did not come up") from None
        victim = procs[FO_VICTIM]
        route: RouteVia = "local" if library else "coordinator"
        res = asyncio.run(failover_load(broker.url, fleet, victim, args, route))
        survivors = {n: p for n, p in procs.items() if n != FO_VICTIM}
        _check_alive(survivors, logs)
        coord_log = "" if library else logs["coordinator"].read_text(errors="replace")
    out = analyse(res, args.window, args.steady_seconds, coord_log)
    out["mode"] = mode
    out["signal"] = signal.Signals(args.kill_signal).name
    return out


# Report ----------------------------------------------------------------------------------------


def _progress(args: argparse.Namespace, line: str) -> None:
    common.progress(args.quiet, line)


def _fmt_sample(s: Sample) -> str:
    c = s.cpu_pipelined
    cpu = "+".join(f"{v:.0f}" for v in c.values())
    return (
        f"p50 {s.p50_us:6.0f} µs  p99 {s.p99_us:6.0f} µs  {s.calls_per_s:6.0f} calls/s  "
        f"cpu/call {cpu} µs"
    )


def _fmt_cpu(c: dict[str, float]) -> str:
    return " + ".join(f"{c[k]:.0f}" for k in ("requester", "broker", "server", "router") if k in c)


LABELS = {
    "raw_paho": "raw paho ↔ paho (baseline)",
    "direct": "Fleet.call ↔ agent",
    "routed": "call_skill → coord → agent",
    "library": "call_skill(local) → agent",
    "paho_relay": "raw paho → paho relay → paho",
}


def print_overhead(rep: dict[str, Any]) -> None:
    cfg = rep["config"]
    print(
        f"{cfg['calls']} calls per measurement ({cfg['warmup']} warm-up), "
        f"{cfg['payload_bytes']}-byte payload, {cfg['inflight']} in flight, "
        f"median of {cfg['rounds']} rounds"
    )
    print()
    print(
        f"{'requester':<28} {'p50 µs':>7} {'p99 µs':>7} {'mean µs':>7} {'calls/s':>8}  "
        "CPU µs/call seq | pipelined (req + broker + server [+ router])"
    )
    for name, res in rep["results"].items():
        print(
            f"{LABELS[name]:<28} {res['p50_us']:7.0f} {res['p99_us']:7.0f} {res['mean_us']:7.0f} "
            f"{res['calls_per_s']:8.0f}  {_fmt_cpu(res['cpu_sequential'])} | "
            f"{_fmt_cpu(res['cpu_pipelined'])}"
        )
    print()
    print("per round (p50 µs / calls/s):")
    for name, res in rep["results"].items():
        cells = "  ".join(f"{r['p50_us']:5.0f} / {r['calls_per_s']:5.0f}" for r in res["rounds"])
        print(f"  {name:<9} {cells}")
    print()
    for name, r in rep["ratios"].items():
        print(
            f"{name:<14} p50 ×{r['p50']:.2f}  p99 ×{r['p99']:.2f}  "
            f"throughput ×{r['throughput']:.2f}"
        )
    t = rep["target"]
    print(
        f"routed p50 / raw p50 = {rep['ratios']['routed/raw']['p50']:.2f} "
        f"(target ≤ {t['routed_p50_over_raw_max']}, floor ≈ {t['floor']}): "
        f"{'met' if t['met'] else 'MISSED'}"
    )
    lib = rep["ratios"]["library/raw"]
    print(
        f"library-routed / raw: p50 ×{lib['p50']:.2f} (target ≤ {t['library_p50_over_raw_max']}), "
        f"throughput ×{lib['throughput']:.2f} (target ≥ {t['library_throughput_over_raw_min']}): "
        f"{'met' if t['library_met'] else 'MISSED'}"
    )


def _fmt_pcts(p: dict[str, Any]) -> str:
    if not p["calls"]:
        return "no calls"
    return (
        f"{p['calls']:6d} calls  ok {p['ok_pct']:7.3f} %  p50 {p['p50_ms']:7.2f} ms  "
        f"p99 {p['p99_ms']:7.2f} ms  max {p['max_ms']:7.2f} ms"
    )


def print_failover(fo: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"failover, mode {fo['mode']}: {args.fo_inflight} in flight for "
        f"{args.fo_seconds} s, {FO_VICTIM} sent {signal.Signals(args.kill_signal).name} at "
        f"{fo['kill_at_s']:.2f} s, "
        f"call timeout {args.call_timeout} s"
    )
    print(
        f"  success {fo['ok']}/{fo['calls']} = {fo['success_pct']} %   "
        f"errors {fo['errors_by_code'] or 'none'}   {fo['calls_per_s']} calls/s"
    )
    for key, label in (
        ("overall", "overall"),
        ("before_kill", "before the kill"),
        ("window_after_kill", f"in flight in kill + {args.window:g} s"),
        ("in_flight_at_kill", "in flight at the kill"),
        ("after_window", "after that window"),
    ):
        print(f"  {label:<26} {_fmt_pcts(fo[key])}")
    print(
        f"  last error ended {fo['last_error_after_kill_ms']} ms after the kill; "
        f"victim offline (last will) seen {fo['offline_seen_after_kill_ms']} ms after the kill"
    )
    if fo["router"] is not None:
        print(f"  library router: {fo['router']}")
    else:
        print(
            f"  coordinator log: {fo['coordinator_failover_lines']} failover lines "
            f"{fo['coordinator_failover_codes'] or ''}, "
            f"{fo['coordinator_error_lines']} error replies"
        )
    print(
        f"  forwards per device (agents' health) {fo['forwards_per_device']} "
        f"({FO_VICTIM}'s count {fo['victim_count_age_ms']} ms old at the kill), "
        f"forwards − calls ≥ {fo['extra_forwards_at_least']}"
    )
    st = fo["steady"]
    print(
        f"  steady phase before ({st['seconds']:g} s, no kill): {st['calls']} calls, "
        f"{st['errors']} errors, {st['calls_per_s']} calls/s, {st['forwards']} forwards: "
        f"{st['extra_forwards_pct']} % extra (hedges)"
    )
    cells = " ".join(
        f"{t['t_rel_kill_s']:+.1f}:{t['calls_per_s']}" + (f"/E{t['errors']}" if t["errors"] else "")
        for t in fo["timeline"]
    )
    print(f"  calls/s per 0.5 s (t from kill: rate[/Eerrors]): {cells}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=3000, help="calls per measurement")
    p.add_argument("--warmup", type=int, default=300, help="warm-up calls per measurement")
    p.add_argument("--inflight", type=int, default=64, help="outstanding calls, pipelined")
    p.add_argument("--payload", type=int, default=128, help="request payload size, bytes")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--fo-seconds", type=float, default=10.0, help="failover run length, s")
    p.add_argument("--kill-at", type=float, default=3.0, help="SIGKILL the victim after, s")
    p.add_argument("--fo-inflight", type=int, default=32, help="outstanding calls, failover")
    p.add_argument("--call-timeout", type=float, default=2.0, help="failover call timeout, s")
    p.add_argument("--steady-seconds", type=float, default=2.0, help="steady phase, s")
    p.add_argument(
        "--kill-signal",
        choices=["KILL", "STOP"],
        default="KILL",
        help="KILL: the broker sends the agent's last will at once; STOP: a hung agent, "
        "its connection stays up (no will within the run)",
    )
    p.add_argument("--window", type=float, default=2.0, help="window after the kill, s")
    p.add_argument(
        "--fo-modes",
        default="hedge,no-hedge,library",
        help="failover runs: coordinator hedge / no-hedge, library (the client routes)",
    )
    p.add_argument("--skip-overhead", action="store_true", help="only the failover runs")
    p.add_argument("--logs", metavar="DIR", help="keep the agents' and coordinators' logs here")
    p.add_argument("--no-relay", action="store_true", help="skip the paho relay requester")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    p.add_argument("--responder", metavar="HOST:PORT:TOPIC", help=argparse.SUPPRESS)
    p.add_argument("--relay", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.calls, args.warmup, args.inflight, args.rounds, args.fo_inflight) < 1:
        p.error("counts must be positive")
    if not 0 < args.kill_at < args.fo_seconds:
        p.error("--kill-at must be within the failover run")
    args.kill_signal = getattr(signal, f"SIG{args.kill_signal}")
    args.fo_modes = [m for m in args.fo_modes.split(",") if m]
    if any(m not in ("hedge", "no-hedge", "library") for m in args.fo_modes):
        p.error("--fo-modes: hedge, no-hedge and/or library")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.responder:
        host, port, topic = args.responder.split(":", 2)
        bench_rr.run_responder(host, int(port), topic)
        return
    if args.relay:
        host, _, port = args.relay.rpartition(":")
        run_relay(host, int(port))
        return
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": common.machine_info(), "code": common.code_state()}
    with tempfile.TemporaryDirectory(prefix="bench-coord-") as tmpdir:
        tmp = Path(args.logs or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        if not args.skip_overhead:
            report["overhead"] = run_overhead(args, tmp)
        report["failover"] = []
        for mode in args.fo_modes:
            _progress(args, f"failover run, mode {mode} …")
            report["failover"].append(run_failover(args, tmp, mode))
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    if common.code_state() != report["code"]:
        report["code_changed_during_run"] = common.code_state()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    m = report["machine"]
    print(
        f"{m['cpus']} × {m['cpu_model']}, Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"mosquitto {m['mosquitto']}"
    )
    code = report["code"]
    print(
        f"code: commit {code['commit']}, uncommitted changes in {code['modified'] or 'none'}"
        + (" (CHANGED DURING THE RUN)" if "code_changed_during_run" in report else "")
    )
    if "overhead" in report:
        print()
        print_overhead(report["overhead"])
    for fo in report["failover"]:
        print()
        print_failover(fo, args)
    print(f"\n(whole run {report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
