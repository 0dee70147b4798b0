"""Rollout at fleet scale: the real operator (``deploy.rollout_driver.Driver`` + planner) updating
10,000 simulated devices on virtual time and 1,000 over a private mosquitto in real time.

Every device runs the real agent with the simulator's system skills (``simulator/sysskills.py``:
fetch the changed bytes at the link's bandwidth, switch, restart, self-test through the broker,
commit); the operator is the same Driver ``edgeagent rollout start`` runs, over its own MQTT
connection. Phases, each a ``simulate()`` run in a fresh process:

* **embedded, one-file change**: N devices (default 10,000; pi4 profile, 10 Mbit/s links,
  ``smarthome.echo`` skills, health every 600 s), a 30 MB release of which 300 kB changed,
  canary 10, waves 1%,10%,50%,100%, ``parallel`` 5 % of the fleet;
* **embedded, baseline**: the same fleet and duration with no rollout: what the simulation
  costs by itself;
* **embedded, full release**: a tenth of the devices (at least 100), the whole 30 MB missing;
* **broker**: M devices (default 1,000, 100 with ``--quick``; x86-64 profile, 0.3 s restart,
  90 s, 15 s with ``--quick``) on a private mosquitto
  (``agent/localbroker.py``), the same one-file change, in real time; and its baseline, the same
  fleet without a rollout.

How the operator is measured, in the one process that also runs the devices:

* **CPU**: the thread CPU time (``time.thread_time``) of every event-loop callback that belongs
  to the operator: the steps of its tasks (the operator's task and every task started from it:
  the Driver's watcher and call tasks, the Fleet's) and its connection's message handlers
  (``Fleet`` and ``Driver._on_update``), nested ones counted once. Not counted: the broker's
  routing of what it receives (embedded: the in-process broker; broker mode: mosquitto's
  process, and the socket reads of its connection, done in asyncio's transport callbacks).
  Divided by the updates the planner started. When the operator starts, the fleet's objects
  are frozen out of the garbage collector (``gc.freeze``): collections the operator's
  allocations trigger then do not walk thousands of simulated agents a separate operator
  process would not hold. The time taken to measure memory is not counted. Each phase runs in
  a fresh process.
  Also reported: the CPU inside ``Driver._report_changes``, ``Driver._publish`` and
  ``Fleet._on_fleet_message`` (decoding state and manifest messages into the device table).
* **Memory**, at the moment the planner reports done (or halted), two ways: (1) in every run,
  the deep size (``sys.getsizeof`` over ``gc.get_referents``) of the planner, then of what the
  Driver holds besides, then of the Fleet (its device table, with every device's manifest),
  stopping at the connection, the clock and the reporter; (2) in a separate, smaller run (a
  twentieth of the devices: tracemalloc slows the whole process tenfold and more), tracemalloc
  started when the operator starts (8 frames): the live allocations with a frame in the
  operator's code (``deploy/rollout_*.py``, ``deploy/transfer_mqtt.py``, ``agent/client.py``,
  ``simulator/rollout.py``). Both divided by the devices selected.

    python -m benchmarks.bench_rollout_scale [--quick] [--devices 10000] [--broker-devices 1000]
                                             [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from edgeagent.deploy.rollout_driver import Driver
from edgeagent.fleet_view import FleetView
from edgeagent.simulator import simulate
from edgeagent.simulator.rollout import RolloutOperator
from edgeagent.simulator.spec import FleetSpec, parse_spec
from edgeagent.transport.base import Inbound
from edgeagent.transport.lite import LiteTransport
from edgeagent.transport.memory import MemoryTransport

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"
OPERATOR_FILES = ("deploy/rollout_", "deploy/transfer_mqtt.py", "agent/client.py",
                  "simulator/rollout.py", "edgeagent/client.py", "fleet_view.py")  # fmt: skip

#: Frames kept per allocation: enough to reach the operator's frame from the decoders it calls.
FRAMES = 8

SPEC = """\
name: rollout-scale
fleet: {fleet}
seed: 4
duration_s: {duration}
link: {{latency_ms: 5, jitter_ms: 2, bandwidth_mbps: 10}}
groups:
  - name: dev
    count: {n}
    profile: {profile}
    tags: {{kind: dev}}
    skills: [{{module: smarthome.echo}}]
    health_interval_s: 600
"""
ROLLOUT = """\
rollout:
  release: "2.0.0"
  start_s: {start}
  canary: 10
  waves: "1%,10%,50%,100%"
  max_failures: "5%"
  parallel: {parallel}
  size_bytes: 30000000
  changed_bytes: {changed}
  restart_s: {restart}
  confirm_within_s: 60
"""


def make_spec(
    n: int,
    *,
    rollout: bool,
    duration: float,
    changed: int,
    profile: str = "pi4",
    restart: float = 3.0,
    start: float = 20.0,
    fleet: str = "scale",
    parallel: int | None = None,
) -> FleetSpec:
    text = SPEC.format(fleet=fleet, duration=duration, n=n, profile=profile)
    if rollout:
        parallel = parallel or max(10, n // 20)
        text += ROLLOUT.format(start=start, parallel=parallel, changed=changed, restart=restart)
    return parse_spec(text, source="bench.yaml", base_dir=EXAMPLES)


class OperatorMeter:
    """CPU time of the operator's callbacks (see the module docstring)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.depth = 0
        self.driver: Any = None
        self.memory: dict[str, Any] | None = None
        self.trace = False
        self.parts: dict[str, float] = {}
        self.excluded = 0.0
        """CPU inside some operator functions (included in ``cpu``)."""

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        handle_run = asyncio.events.Handle._run
        op_run = RolloutOperator.run
        subs = {cls: cls.subscribe for cls in (MemoryTransport, LiteTransport)}
        # Report key: (class, method). The Fleet's device table is kept by its FleetView now;
        # its key stays the one of the method that did it before.
        parts: dict[str, tuple[type, str]] = {
            "_report_changes": (Driver, "_report_changes"),
            "_publish": (Driver, "_publish"),
            "_on_fleet_message": (FleetView, "on_message"),
        }
        originals = {key: getattr(owner, attr) for key, (owner, attr) in parts.items()}
        asyncio.events.Handle._run = self._timed_run(handle_run)  # type: ignore[method-assign]
        RolloutOperator.run = self._operator_run(op_run)  # type: ignore[method-assign, assignment]
        for transport, orig in subs.items():
            transport.subscribe = self._timed_subscribe(orig)  # type: ignore[method-assign]
        for key, (owner, attr) in parts.items():
            setattr(owner, attr, self._timed_part(key, originals[key]))
        try:
            yield
        finally:
            for key, (owner, attr) in parts.items():
                setattr(owner, attr, originals[key])
            asyncio.events.Handle._run = handle_run  # type: ignore[method-assign]
            RolloutOperator.run = op_run  # type: ignore[method-assign]
            for cls, orig in subs.items():
                cls.subscribe = orig  # type: ignore[method-assign]

    def _timed_part(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` with its CPU time added to ``parts[name]``."""
        meter = self

        def timed_part(*a: Any, **kw: Any) -> Any:
            t0 = time.thread_time()
            try:
                return func(*a, **kw)
            finally:
                meter.parts[name] = meter.parts.get(name, 0.0) + time.thread_time() - t0

        return timed_part

    def _timed_run(self, handle_run: Callable[[asyncio.Handle], None]) -> Callable[..., None]:
        """asyncio's ``Handle._run``, timing the steps of the operator's tasks (outermost)."""
        meter = self

        def timed_run(handle: asyncio.Handle) -> None:
            owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
            if meter.depth or owner is None or owner not in meter.tasks:
                handle_run(handle)
                return
            meter.depth += 1
            t0 = time.thread_time()
            try:
                handle_run(handle)
            finally:
                meter.cpu += time.thread_time() - t0
                meter.depth -= 1

        return timed_run

    def _operator_run(
        self, op_run: Callable[[RolloutOperator], Awaitable[None]]
    ) -> Callable[[RolloutOperator], Awaitable[None]]:
        """``RolloutOperator.run`` that marks its task (and those it starts) as the operator's,
        freezes the fleet out of the collector, and measures memory when the planner is done."""
        meter = self

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kw)
            parent = asyncio.current_task(loop)
            if parent is not None and parent in meter.tasks:
                meter.tasks.add(task)
            return task

        async def run(op: RolloutOperator) -> None:
            task = asyncio.current_task()
            assert task is not None
            meter.tasks.add(task)
            asyncio.get_running_loop().set_task_factory(factory)
            gc.collect()
            gc.freeze()  # the fleet, up: collections triggered by the operator do not walk it
            if meter.trace:
                tracemalloc.start(FRAMES)
            op.on_driver = self._on_driver
            try:
                await op_run(op)
            finally:
                gc.unfreeze()
                if meter.trace:
                    tracemalloc.stop()

        return run

    def _on_driver(self, o: RolloutOperator) -> None:
        """Keep the Driver; measure memory when the reporter first says done or halted."""
        meter = self
        self.driver = o.driver

        def noted(text: str) -> None:
            if meter.memory is None and text.startswith(("done", "halted")):
                t0 = time.thread_time()  # measuring is not the operator's work
                meter.memory = _operator_memory() if meter.trace else {}
                meter.memory["deep"] = deep_sizes(o)
                meter.excluded += time.thread_time() - t0

        o.reporter.listener = noted

    def _timed_subscribe(self, orig: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
        """A transport's ``subscribe`` that times the operator connection's handlers."""
        meter = self

        async def subscribe(self: Any, topic_filter: str, handler: Any, **kw: Any) -> None:
            if not str(self.client_id).endswith("sim-operator"):
                return await orig(self, topic_filter, handler, **kw)

            def timed(msg: Inbound) -> None:
                if meter.depth:
                    handler(msg)
                    return
                meter.depth += 1
                t0 = time.thread_time()
                try:
                    handler(msg)
                finally:
                    meter.cpu += time.thread_time() - t0
                    meter.depth -= 1

            return await orig(self, topic_filter, timed, **kw)

        return subscribe


def _operator_memory() -> dict[str, Any]:
    snap = tracemalloc.take_snapshot()
    names: dict[str, bool] = {}
    total = ours = 0
    for trace in snap.traces:
        total += trace.size
        for frame in trace.traceback:
            hit = names.get(frame.filename)
            if hit is None:
                hit = names[frame.filename] = any(f in frame.filename for f in OPERATOR_FILES)
            if hit:
                ours += trace.size
                break
    return {"operator_bytes": ours, "traced_bytes": total}


def deep_size(root: object, seen: set[int], stop: set[int]) -> int:
    """Bytes of ``root`` and everything it reaches (``sys.getsizeof`` over
    ``gc.get_referents``), not counting what ``seen`` or ``stop`` hold, nor classes, modules,
    functions and code."""
    total, todo = 0, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return total


_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
         types.MethodType, asyncio.AbstractEventLoop)  # fmt: skip


def deep_sizes(op: RolloutOperator) -> dict[str, int]:
    """What the operator holds when the planner is done: the planner, then the Driver's own
    tables, then the Fleet's (device table with every manifest, pending calls); each stops at
    the connection, the clock, the reporter and what an earlier one counted."""
    d = op.driver
    assert d is not None
    assert op.rollout is not None
    fleet = d.fleet
    stop = {id(x) for x in (fleet.transport, fleet.clock, d.reporter, d.release, op, d.wake)}
    seen: set[int] = set()
    planner = deep_size(op.rollout, seen, stop)
    driver = sum(deep_size(v, seen, stop) for k, v in vars_of(d).items() if k != "fleet")
    fleet_b = deep_size(fleet, seen, stop)
    return {"planner": planner, "driver": driver, "fleet": fleet_b}


def vars_of(obj: object) -> dict[str, Any]:
    out = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                out[name] = getattr(obj, name)
    return out


def phase(
    name: str, spec: FleetSpec, *, broker: str | None = None, trace: bool = False
) -> dict[str, Any]:
    meter = OperatorMeter()
    meter.trace = trace
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    with meter.installed():
        result = simulate(spec, broker=broker)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    report = result.report
    out: dict[str, Any] = {
        "phase": name,
        "devices": spec.devices,
        "wall_s": round(wall, 2),
        "process_cpu_s": round(cpu, 2),
        "simulated_s": spec.duration_s,
    }
    r = report.get("rollout")
    meter.cpu -= meter.excluded
    if r is not None:
        started = r["counts"]["healthy"] + r["failures"] + r["counts"]["updating"]
        out.update(
            phase_outcome=r["phase"], halted=r["halted"], rollout_s=r["duration_s"],
            healthy=r["counts"]["healthy"], failures=r["failures"], selected=r["selected"],
            without_release=r["without_release"], waves=len(r["waves"]),
            bytes_total=r["bytes"]["total"], bytes_per_device=r["bytes"]["per_device_mean"],
            updates=started, operator_cpu_s=round(meter.cpu, 3),
            operator_cpu_ms_per_update=round(meter.cpu * 1e3 / max(1, started), 4),
            operator_ms_per_update_in={k: round(v * 1e3 / max(1, started), 4)
                                       for k, v in sorted(meter.parts.items())},
        )  # fmt: skip
        mem = meter.memory or {}
        sel = max(1, r["selected"])
        if "operator_bytes" in mem:
            out["tracemalloc_B_per_device"] = round(mem["operator_bytes"] / sel, 1)
            out["traced_bytes"] = mem["traced_bytes"]
        if "deep" in mem:
            out["deep_B_per_device"] = {k: round(v / sel, 1) for k, v in mem["deep"].items()}
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


PHASES = ("embedded", "baseline", "full", "memory", "broker", "broker-baseline")


def run_phase(which: str, n: int, m: int) -> dict[str, Any]:
    duration = 1800.0
    one_file = make_spec(n, rollout=True, duration=duration, changed=300_000)
    if which == "embedded":
        return phase("embedded one-file change", one_file)
    if which == "baseline":
        no_rollout = make_spec(n, rollout=False, duration=duration, changed=0)
        return phase("embedded baseline (no rollout)", no_rollout)
    if which == "full":
        k = max(100, n // 10)
        full = make_spec(k, rollout=True, duration=duration, changed=30_000_000)
        return phase(f"embedded full release ({k} devices)", full)
    if which == "memory":
        k = max(100, n // 20)
        few = make_spec(k, rollout=True, duration=duration, changed=300_000)
        return phase(f"embedded one-file change, tracemalloc ({k} devices)", few, trace=True)
    fleet = f"scale{int(time.time())}"
    small = m < 500  # --quick
    kw: dict[str, Any] = {
        "duration": 15.0 if small else 90.0,
        "changed": 300_000,
        "profile": "x86-64",
        "restart": 0.3,
        "start": 3.0 if small else 5.0,
        "fleet": fleet,
        "parallel": max(10, m // 4) if small else None,
    }
    if which == "broker":
        return phase("broker one-file change", make_spec(m, rollout=True, **kw), broker="local")
    no_rollout = make_spec(m, rollout=False, **kw)
    return phase("broker baseline (no rollout)", no_rollout, broker="local")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1,000 / 100 devices, no tracemalloc phase: about a minute")  # fmt: skip
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--broker-devices", type=int, default=None)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--one", choices=PHASES, help=argparse.SUPPRESS)  # a phase, in this process
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.devices or (1000 if args.quick else 10_000)
    m = args.broker_devices or (100 if args.quick else 1000)
    if args.quick and args.phases == ",".join(PHASES):
        args.phases = ",".join(p for p in PHASES if p != "memory")  # tracemalloc is slow
    if args.one:
        print(json.dumps(run_phase(args.one, n, m)))
        return
    rows: list[dict[str, Any]] = []
    for which in args.phases.split(","):
        # Each phase in a fresh process: one phase's heap does not slow the next one's GC.
        cmd = [sys.executable, "-m", "benchmarks.bench_rollout_scale", "--one", which,
               "--devices", str(n), "--broker-devices", str(m)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)
    if args.json:
        common.print_json({"machine": common.machine_info(), "code": common.code_state(),
                           "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
