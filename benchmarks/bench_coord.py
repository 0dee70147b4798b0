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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from benchmarks import bench_rr
from benchmarks.coord_failover import (
    LoadResult,
    Record,
    analyse,
    failover_load,
    run_failover,
)
from benchmarks.coord_parts import (
    CALL_TIMEOUT_S,
    DEVICE,
    ECHO_DIR,
    FLEET,
    FLOOR_ROUTED_P50_RATIO,
    FO_DEVICES,
    FO_VICTIM,
    INNER_TOPIC,
    RELAY_TOPIC,
    REPO,
    SKILL,
    TARGET_LIBRARY_P50_RATIO,
    TARGET_LIBRARY_THROUGHPUT_RATIO,
    TARGET_ROUTED_P50_RATIO,
    Meter,
    RelayRequester,
    Sample,
    Summary,
    agent_cmd,
    check_alive,
    coordinator_cmd,
    measure_direct,
    measure_library,
    measure_raw,
    measure_routed,
    run_relay,
    spawn,
    summarize,
    wait_coordinator,
    wait_log,
    wait_online,
)
from benchmarks.coord_report import (
    LABELS,
    fmt_sample,
    print_failover,
    print_overhead,
    progress,
)

__all__ = [
    "CALL_TIMEOUT_S",
    "DEVICE",
    "ECHO_DIR",
    "FLEET",
    "FLOOR_ROUTED_P50_RATIO",
    "FO_DEVICES",
    "FO_VICTIM",
    "INNER_TOPIC",
    "LABELS",
    "RELAY_TOPIC",
    "REPO",
    "SKILL",
    "TARGET_LIBRARY_P50_RATIO",
    "TARGET_LIBRARY_THROUGHPUT_RATIO",
    "TARGET_ROUTED_P50_RATIO",
    "LoadResult",
    "Meter",
    "Record",
    "RelayRequester",
    "Sample",
    "Summary",
    "agent_cmd",
    "analyse",
    "coordinator_cmd",
    "failover_load",
    "helper_process",
    "main",
    "measure_direct",
    "measure_library",
    "measure_raw",
    "measure_routed",
    "parse_args",
    "print_failover",
    "print_overhead",
    "run_failover",
    "run_overhead",
    "run_relay",
    "spawn",
    "summarize",
    "wait_coordinator",
    "wait_log",
    "wait_online",
]


def helper_process(*args: str) -> AbstractContextManager[subprocess.Popen[str]]:
    """This script run as ``--responder``/``--relay``; waits for its ``ready``."""
    return common.script_process(__file__, *args)


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
            check_alive(procs, logs)
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
                progress(args, f"round {r + 1}/{args.rounds} {name:<10} {fmt_sample(sample)}")
            check_alive(procs, logs)
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
            progress(args, f"failover run, mode {mode} …")
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
