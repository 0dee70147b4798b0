"""Simulator scale: how many idle simulated devices one process holds, how fast they connect,
and how many heartbeats they get through, against bare aiomqtt clients doing nothing.

Three phases, each in a fresh subprocess (so one phase's heap, sockets and threads do not
pollute the next) that prints one JSON line; this process collects them and prints a table:

1. **baseline**: ``--baseline-clients`` bare aiomqtt 2 clients (MQTT 5, keepalive 60 s) connect
   one after another to a private mosquitto and then do nothing. Memory per client is the RSS
   after all connected (and ``gc.collect()``) minus the RSS before the first one (after the
   imports), divided by the clients; the connect rate is clients / seconds from the first
   connect to the last CONNACK. Then, for information, the same clients publish a heartbeat of
   the simulator's size at the simulator's rate (every client every ``--health-interval``
   seconds, paced by one task), so the heartbeat CPU cost has a reference.
2. **broker**: ``edgeagent.simulator.simulate`` with ``--broker-devices`` idle devices (one
   group, the ``smarthome.echo`` skills, no coordinator, no workload) against a private mosquitto;
   every device is a ``LiteTransport`` connection. Memory per device is the RSS when the
   progress callback reports ``starting`` 1.0 (after ``gc.collect()``) minus the RSS before the
   fleet is built (after the imports), divided by the devices; it covers everything the
   simulator keeps per device (spec, configs, skills, agent, transport, asyncio transport).
   The connect rate is devices / ``RunStats.start_wall_s`` (monitor connect to fleet ready;
   every device connects, subscribes and publishes its retained manifest and state).
   Heartbeat throughput is counted, not computed: a separate subscriber process (paho, on
   ``edgeagent/<fleet>/dev/+/health``) timestamps every health message, and the messages that
   arrived between ``starting`` 1.0 and ``running`` 1.0 are divided by that window; it is shown
   next to the expected ``devices / health_interval_s``. CPU per heartbeat is this process's
   CPU time over the window divided by those messages (the simulator's monitor also receives
   and decodes every heartbeat, so the simulator pays for a publish and a receive).
3. **embedded**: the same spec with ``--embedded-devices`` devices on virtual time
   (``broker=None``). Memory per device as above; the start rate is devices /
   ``start_wall_s``; heartbeats simulated per wall second are the health messages the
   simulator's monitor received during the run (counted by wrapping ``Simulation._on_health``),
   divided by the wall time between ``starting`` 1.0 and ``running`` 1.0. The expected count is
   ``devices × (ceil(duration_s / health_interval_s) - 1)``: the devices start at virtual time
   about 0 and publish at every multiple of the interval (plus 1 ms of link latency), so the
   heartbeats due strictly before the end; a match shows nothing was dropped or late.

"CPU busy" is this process's CPU time over the heartbeat window divided by the window (1.0 is
one core): in broker mode it includes the idle clients' own costs (aiomqtt wakes every client
once a second; ``LiteTransport`` has one keepalive timer per loop), so "CPU µs/hb" is the whole
process's CPU per heartbeat, not the publish alone.

Each broker phase starts its own mosquitto (``max_connections -1``) on a fresh port and stops it
after, so connections of an earlier phase lingering in TIME_WAIT do not matter. One process can
hold about 19,000 connections here (the open-file limit is 20,000), so the broker phases are
limited to that. ``devices per GB`` is 2**30 / bytes per device. ``--trace`` adds tracemalloc's
top allocation sites per device to the simulator phases (slower; RSS then includes
tracemalloc's own bookkeeping, so use it for where memory goes, not for how much).

    python benchmarks/bench_sim_scale.py [--broker-devices 10000] [--embedded-devices 100000]
        [--baseline-clients N] [--health-interval 5] [--broker-duration 30]
        [--embedded-duration 32.5] [--phases baseline,broker,embedded] [--quick] [--trace] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "smart-home"
GIB = 2**30
TARGET_BROKER_DEVICES = 10_000
TARGET_BROKER_BYTES = 20 * 1024
TARGET_EMBEDDED_DEVICES = 100_000
MOSQUITTO_EXTRA = "\nmax_connections -1\n"
PHASE_TIMEOUT_S = 1800.0

SPEC = """\
name: scale
fleet: {fleet}
duration_s: {duration}
groups:
  - name: node
    count: {count}
    profile: pi-zero-2w
    health_interval_s: {interval}
    skills: [{{module: smarthome.echo}}]
coordinator: {{replicas: 0}}
"""


def _emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def _mosquitto() -> common.Broker:
    return common.private_broker(MOSQUITTO_EXTRA).start()


def _broker_rss(broker: common.Broker) -> int:
    return common.pid_rss(broker.proc.pid) if broker.proc is not None else 0


# The heartbeat counter (a separate process) -----------------------------------------------------


def run_counter(port: int, topic: str) -> None:
    """Timestamp every message on ``topic``; on stdin ``T0 T1`` print the count in [T0, T1)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    stamps: list[float] = []
    sizes = [0]
    subscribed = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-counter-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )

    def on_connect(c: mqtt.Client, _ud: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        c.subscribe(topic, qos=0)

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        stamps.append(time.time())
        sizes[0] += len(msg.payload)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(20):
        raise SystemExit("counter: not subscribed")
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    t0, t1 = (float(line[0]), float(line[1])) if len(line) == 2 else (0.0, time.time())
    time.sleep(0.5)  # messages published just before T1 are still on their way
    client.loop_stop()
    got = list(stamps)
    print(
        json.dumps(
            {
                "in_window": sum(1 for t in got if t0 <= t < t1),
                "total": len(got),
                "mean_payload_bytes": round(sizes[0] / len(got), 1) if got else 0,
            }
        ),
        flush=True,
    )


class Counter:
    """The counter process, seen from a phase."""

    def __init__(self, port: int, topic: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--counter", f"{port}", topic],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the heartbeat counter did not start")

    def count(self, t0: float, t1: float) -> dict[str, Any]:
        out, _ = self.proc.communicate(f"{t0} {t1}\n", timeout=60)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# Phase 1: bare aiomqtt clients ------------------------------------------------------------------


def phase_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import aiomqtt

    n = args.n
    tag = f"base{os.getpid()}"
    broker = _mosquitto()
    counter = Counter(broker.port, f"edgeagent/{tag}/dev/+/health")
    payload = b'{"x":"' + b"x" * max(0, args.payload - 8) + b'"}'
    try:

        async def main() -> dict[str, Any]:
            clients: list[aiomqtt.Client] = []
            before = common.settled_rss()
            t0 = time.perf_counter()
            for i in range(n):
                client = aiomqtt.Client(
                    "127.0.0.1",
                    broker.port,
                    identifier=f"{tag}-{i}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    keepalive=60,
                )
                await client.__aenter__()
                clients.append(client)
            connect_s = time.perf_counter() - t0
            await asyncio.sleep(1.0)
            after = common.settled_rss()
            # For information: the simulator's heartbeat rate, paced by one task.
            interval, window = args.interval, args.duration
            topics = [f"edgeagent/{tag}/dev/{tag}-{i}/health" for i in range(n)]
            w0, c0 = time.time(), time.process_time()
            sent = 0
            while True:
                due = min(int((time.time() - w0) / interval * n), int(window / interval * n))
                while sent < due:
                    await clients[sent % n].publish(topics[sent % n], payload)
                    sent += 1
                if sent >= int(window / interval * n):
                    break
                await asyncio.sleep(0.005)
            w1, c1 = time.time(), time.process_time()
            await asyncio.sleep(0.5)
            seen = counter.count(w0, w1 + 0.5)
            return {
                "phase": "baseline",
                "devices": n,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_device": (after - before) / n,
                "connect_s": connect_s,
                "connect_per_s": n / connect_s,
                "broker_rss": _broker_rss(broker),
                "heartbeat_window_s": w1 - w0,
                "heartbeats_sent": sent,
                "heartbeats_seen": seen["in_window"],
                "heartbeats_expected": n * (w1 - w0) / interval,
                "heartbeat_per_s": seen["in_window"] / (w1 - w0),
                "cpu_us_per_heartbeat": (c1 - c0) / max(1, sent) * 1e6,
                "cpu_busy": (c1 - c0) / (w1 - w0),
                "payload_bytes": seen["mean_payload_bytes"],
            }

        return asyncio.run(main())
    finally:
        counter.close()
        broker.close()


# Phases 2 and 3: the simulator -------------------------------------------------------------------


class Watch:
    """The simulator's progress callback: RSS and times when all devices started, and the end."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.rss_started = 0
        self.t_started = self.t_ran = 0.0
        self.cpu_started = self.cpu_ran = 0.0
        self.snapshot: tracemalloc.Snapshot | None = None

    def __call__(self, phase: str, fraction: float) -> None:
        if phase == "starting" and fraction >= 1.0 and not self.t_started:
            self.rss_started = common.settled_rss()
            if self.trace:
                self.snapshot = tracemalloc.take_snapshot()
            self.t_started, self.cpu_started = time.time(), time.process_time()
        elif phase == "running" and fraction >= 1.0 and not self.t_ran:
            self.t_ran, self.cpu_ran = time.time(), time.process_time()


def _top_sites(
    before: tracemalloc.Snapshot | None, after: tracemalloc.Snapshot | None, devices: int
) -> list[dict[str, Any]]:
    if before is None or after is None:
        return []
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    out = []
    for stat in diff[:15]:
        frame = stat.traceback[0]
        where = frame.filename
        for marker in ("/site-packages/", "/lib/python3", str(REPO) + "/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        out.append(
            {"where": f"{where}:{frame.lineno}", "bytes_per_device": stat.size_diff / devices}
        )
    return out


def phase_sim(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(EXAMPLE))
    import smarthome.echo  # type: ignore[import-not-found, unused-ignore]  # noqa: F401

    from edgeagent.simulator import simulate  # type: ignore[import-not-found, unused-ignore]
    from edgeagent.simulator.spec import parse_spec  # type: ignore[import-not-found, unused-ignore]

    embedded = args.phase == "embedded"
    n = args.n
    fleet = f"scale{os.getpid()}"
    text = SPEC.format(fleet=fleet, duration=args.duration, count=n, interval=args.interval)
    spec = parse_spec(text, source="bench", base_dir=EXAMPLE)
    watch = Watch(args.trace)
    broker = counter = None
    if not embedded:
        broker = _mosquitto()
        counter = Counter(broker.port, f"edgeagent/{fleet}/dev/+/health")
    try:
        if args.trace:
            tracemalloc.start()
        before = common.settled_rss()
        snap0 = tracemalloc.take_snapshot() if args.trace else None
        t0 = time.perf_counter()
        result = simulate(spec, broker=None if broker is None else broker.url, progress=watch)
        total_s = time.perf_counter() - t0
        stats = result.stats
        window = watch.t_ran - watch.t_started
        out: dict[str, Any] = {
            "phase": args.phase,
            "devices": stats.devices,
            "rss_before": before,
            "rss_after": watch.rss_started,
            "bytes_per_device": (watch.rss_started - before) / n,
            "connect_s": stats.start_wall_s,
            "connect_per_s": n / stats.start_wall_s,
            "wall_s": stats.wall_s,
            "total_s": round(total_s, 3),
            "heartbeat_window_s": window,
            "cpu_us_per_heartbeat": 0.0,
            "cpu_busy": (watch.cpu_ran - watch.cpu_started) / window,
            "duration_s": args.duration,
            "health_interval_s": args.interval,
            "trace": _top_sites(snap0, watch.snapshot, n),
        }
        if embedded:
            # Devices start at virtual time ~0 and publish at k × interval (k ≥ 1), plus the
            # link latency: those due strictly before the end are counted.
            expected = n * (math.ceil(args.duration / args.interval) - 1)
            seen = stats.heartbeats
            out.update(
                heartbeats_seen=seen,
                heartbeats_expected=expected,
                heartbeat_per_s=seen / window,
                cpu_us_per_heartbeat=(watch.cpu_ran - watch.cpu_started) / max(1, seen) * 1e6,
            )
        else:
            assert counter is not None
            assert broker is not None
            got = counter.count(watch.t_started, watch.t_ran)
            out.update(
                heartbeats_seen=got["in_window"],
                heartbeats_expected=n * window / args.interval,
                heartbeat_per_s=got["in_window"] / window,
                cpu_us_per_heartbeat=(watch.cpu_ran - watch.cpu_started)
                / max(1, got["in_window"])
                * 1e6,
                payload_bytes=got["mean_payload_bytes"],
                broker_rss=_broker_rss(broker),
            )
        return out
    finally:
        if counter is not None:
            counter.close()
        if broker is not None:
            broker.close()


# Orchestration -----------------------------------------------------------------------------------


def run_phase(phase: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        phase,
        "--n",
        str(n),
        "--health-interval",
        str(args.health_interval),
        "--payload",
        str(args.payload),
        "--duration",
        str(args.embedded_duration if phase == "embedded" else args.broker_duration),
    ]
    if args.trace:
        cmd.append("--trace")
    _progress(args, f"{phase}: {n} devices …")
    t0 = common.CLOCK.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S, cwd=REPO, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        _progress(args, f"{phase}: failed (exit {proc.returncode})\n{tail}")
        return {"phase": phase, "devices": n, "error": tail or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["phase_s"] = round(common.CLOCK.monotonic() - t0, 1)
    _progress(args, f"{phase}: {_fmt(result)}")
    return result


def _progress(args: argparse.Namespace, line: str) -> None:
    common.progress(args.quiet, line)


def _fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['bytes_per_device'] / 1024:.1f} KB/device, {r['connect_per_s']:.0f} connects/s, "
        f"{r['heartbeat_per_s']:.0f} heartbeats/s ({r['heartbeats_seen']} of "
        f"{r['heartbeats_expected']:.0f} expected), {r['phase_s']} s"
    )


def targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    broker = results.get("broker")
    if broker is not None and "error" not in broker:
        out["broker"] = {
            "devices": broker["devices"],
            "kb_per_device": round(broker["bytes_per_device"] / 1024, 2),
            "met": broker["devices"] >= TARGET_BROKER_DEVICES
            and broker["bytes_per_device"] <= TARGET_BROKER_BYTES,
        }
    embedded = results.get("embedded")
    if embedded is not None and "error" not in embedded:
        out["embedded"] = {
            "devices": embedded["devices"],
            "met": embedded["devices"] >= TARGET_EMBEDDED_DEVICES,
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = {
        "baseline": args.baseline_clients,
        "broker": args.broker_devices,
        "embedded": args.embedded_devices,
    }
    started = common.CLOCK.monotonic()
    results = {phase: run_phase(phase, sizes[phase], args) for phase in args.phases}
    return {
        "machine": common.machine_info(),
        "code": common.code_state(),
        "config": {
            "sizes": {p: sizes[p] for p in args.phases},
            "health_interval_s": args.health_interval,
            "broker_duration_s": args.broker_duration,
            "embedded_duration_s": args.embedded_duration,
        },
        "results": results,
        "targets": targets(results),
        "elapsed_s": round(common.CLOCK.monotonic() - started, 1),
    }


LABELS = {
    "baseline": "bare aiomqtt clients (baseline)",
    "broker": "simulator, broker mode",
    "embedded": "simulator, embedded mode",
}


def _verdict(met: bool, devices: int, target: int) -> str:
    if met:
        return "MET"
    return "MISSED" if devices >= target else "not tested (fewer devices than the target)"


def print_table(report: dict[str, Any]) -> None:
    m, cfg = report["machine"], report["config"]
    print(
        f"{m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB, Python {m['python']}, "
        f"aiomqtt {m['aiomqtt']}, mosquitto {m['mosquitto']}"
    )
    print(
        f"health every {cfg['health_interval_s']:g} s; broker runs {cfg['broker_duration_s']:g} s, "
        f"embedded runs {cfg['embedded_duration_s']:g} simulated s"
    )
    print()
    header = (
        f"{'':<32} {'devices':>8} {'KB/device':>9} {'devices/GB':>10} {'connects/s':>10} "
        f"{'heartbeats/s':>12} {'seen/expected':>13} {'CPU µs/hb':>9} {'CPU busy':>8}"
    )
    print(header)
    print("-" * len(header))
    for phase, r in report["results"].items():
        if "error" in r:
            print(f"{LABELS[phase]:<32} {r['devices']:>8}  FAILED: {r['error'].splitlines()[-1]}")
            continue
        ratio = r["heartbeats_seen"] / r["heartbeats_expected"] if r["heartbeats_expected"] else 0
        print(
            f"{LABELS[phase]:<32} {r['devices']:>8} {r['bytes_per_device'] / 1024:>9.1f} "
            f"{GIB / r['bytes_per_device']:>10,.0f} {r['connect_per_s']:>10,.0f} "
            f"{r['heartbeat_per_s']:>12,.0f} {ratio:>13.3f} "
            f"{r['cpu_us_per_heartbeat']:>9.0f} {r['cpu_busy']:>8.0%}"
        )
    for phase, r in report["results"].items():
        for site in r.get("trace", []):
            print(f"  {phase} {site['bytes_per_device']:8.0f} B/device  {site['where']}")
    t = report["targets"]
    print()
    if "broker" in t:
        b = t["broker"]
        print(
            f"broker: {b['devices']} devices at {b['kb_per_device']} KB/device "
            f"(target ≥ {TARGET_BROKER_DEVICES} at ≤ {TARGET_BROKER_BYTES // 1024} KB): "
            f"{_verdict(b['met'], b['devices'], TARGET_BROKER_DEVICES)}"
        )
    if "embedded" in t:
        e = t["embedded"]
        print(
            f"embedded: {e['devices']} devices (target ≥ {TARGET_EMBEDDED_DEVICES}): "
            f"{_verdict(e['met'], e['devices'], TARGET_EMBEDDED_DEVICES)}"
        )
    print(f"(whole run {report['elapsed_s']} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker-devices", type=int, default=None, help="default 10000")
    parser.add_argument("--embedded-devices", type=int, default=None, help="default 100000")
    parser.add_argument("--baseline-clients", type=int, default=None, help="default: broker's")
    parser.add_argument("--health-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--broker-duration", type=float, default=30.0, help="broker run, s")
    parser.add_argument("--embedded-duration", type=float, default=32.5, help="simulated s")
    parser.add_argument("--payload", type=int, default=340, help="baseline heartbeat bytes")
    parser.add_argument("--phases", default="baseline,broker,embedded", help="which, in order")
    parser.add_argument("--quick", action="store_true", help="1,000 broker / 10,000 embedded")
    parser.add_argument("--trace", action="store_true", help="tracemalloc top sites (slower)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--counter", nargs=2, metavar=("PORT", "TOPIC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.broker_devices is None:
        args.broker_devices = 1_000 if args.quick else 10_000
    if args.embedded_devices is None:
        args.embedded_devices = 10_000 if args.quick else 100_000
    if args.baseline_clients is None:
        args.baseline_clients = args.broker_devices
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if any(p not in LABELS for p in args.phases):
        parser.error(f"--phases: choose from {', '.join(LABELS)}")
    if min(args.broker_devices, args.embedded_devices, args.baseline_clients) < 1:
        parser.error("device counts must be positive")
    if args.phase is None and max(args.broker_devices, args.baseline_clients) > 19_000:
        parser.error("one process holds about 19,000 connections here (20,000 open files)")
    args.interval = args.health_interval
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.counter:
        run_counter(int(args.counter[0]), args.counter[1])
        return
    if args.phase is not None:
        _emit(phase_baseline(args) if args.phase == "baseline" else phase_sim(args))
        return
    report = run(args)
    if args.json:
        common.print_json(report)
    else:
        print_table(report)


if __name__ == "__main__":
    main()
