"""Rollout planner: a whole rollout to 10,000 and 100,000 simulated devices, against a naive one.

The operator side of ``edgeagent rollout`` without I/O: ``deploy.rollout_plan.Rollout`` fed a
seeded fleet in virtual time (no broker, no devices: this measures the operator's decisions, the
issue's "CPU per device update ≤ 1 ms" and "memory ≤ 2 KB per device"). The fleet: 90 % lamps
(the rollout's ``--where kind=lamp``), 2 % of them already on the target, 3 % offline at the
start (two in three return within 15 min), and per update: a progress report, a restart
(offline, then online on the new release), then ``healthy``; 0.4 % fail their self-check and
roll back by themselves, 0.3 % go silent (the 120 s deadline fails them). What happens to a
device is drawn from a generator seeded by (seed, device), so both planners see the same fleet
whatever order they start devices in. ``--canary 5 --waves 1%,10%,50%,100% --max-failures 5%
--parallel`` 5 % of the fleet. The operator loop: reports are fed as they come, ``tick`` runs
every virtual second.

**Baseline** (same run, same fleet, same decisions): a naive planner as a first version would
be written: one dict per device, and every tick recomputes everything by scanning the fleet
(deadlines, counts, the failure check, the wave gate, who starts next). The device order is
computed once with the same hash. It has no pause/abort/serialised state, which the run does
not use.

Measured: time spent inside the planner (``new``, ``observe``, ``tick``) per device updated,
the median of ``--rounds`` runs (interleaved with the baseline's); the time of ``to_json``
(the retained state an operator publishes) and ``status()`` (``rollout status --json``) half-way;
memory (tracemalloc) per selected device: the peak while building the rollout from the device
list (the list included: the operator holds it then), what the planner holds after ``new``, and
what it holds half-way (rebuilt from a snapshot taken when half the devices had been started:
``from_json`` for the planner, ``copy.deepcopy`` for the baseline); the serialised state's size.

With these rates a canary fails in about 3 % of seeds (the rollout then halts within 2 virtual
minutes, as it should); the default seed is one where both sizes run to the end.

    python -m benchmarks.bench_rollout_plan [--devices 10000,100000] [--seed 2] [--json]
"""

from __future__ import annotations

import argparse
import copy
import heapq
import itertools
import random
import statistics
import time
import tracemalloc
from collections import Counter
from typing import Any

from benchmarks import _common as common
from edgeagent.deploy.rollout_plan import Rollout
from edgeagent.deploy.rollout_state import (
    Action,
    DeviceOffline,
    DeviceOnline,
    DeviceView,
    Done,
    Event,
    Halted,
    RollBack,
    RolloutSpec,
    StartUpdate,
    State,
    UpdateFailed,
    UpdateHealthy,
    UpdateProgress,
    UpdateRolledBack,
    WaveStarted,
    select,
    wave_ends,
)

OLD, NEW = "1.0", "2.0"
SEQ = itertools.count()  # ties in the event queue: first scheduled, first delivered


def make_spec(n: int) -> RolloutSpec:
    return RolloutSpec(
        id="bench", version=NEW, bundle_hash="b" * 64, where={"kind": "lamp"}, canary=5,
        waves=(0.01, 0.1, 0.5, 1.0), max_failures="5%", parallel=max(1, n // 20), deadline=120,
    )  # fmt: skip


def make_fleet(n: int, seed: int) -> tuple[list[DeviceView], dict[str, float]]:
    """The device list the operator reads, and when each offline device comes back."""
    rng = random.Random(seed)
    views, returns = [], {}
    for i in range(n):
        d = f"dev-{i:06d}"
        kind = "lamp" if rng.random() < 0.9 else "plug"
        release = NEW if rng.random() < 0.02 else OLD
        online = rng.random() >= 0.03
        if not online and rng.random() < 2 / 3:
            returns[d] = rng.uniform(60, 900)
        views.append(DeviceView(d, release, online, {"kind": kind, "room": f"r{i % 50}"}))
    return views, returns


class Naive:
    """The baseline planner (see the module docstring): dicts, and a full scan per tick."""

    def __init__(self, spec: RolloutSpec, views: list[DeviceView], now: float) -> None:
        go, left, self.unmatched = select(spec, views)
        ends = wave_ends(len(go), spec.canary, spec.waves)
        self.spec, self.nwaves, self.wave, self.phase = spec, len(ends), 0, "running"
        self.devices: dict[str, dict[str, Any]] = {}
        for k, v in enumerate(go):
            wave = next(w for w, e in enumerate(ends) if k < e) + 1
            self.devices[v.id] = {"state": "pending", "release": v.release, "online": v.online,
                                  "last": 0.0, "reason": "", "rb": False, "wave": wave,
                                  "canary": spec.canary > 0 and wave == 1}  # fmt: skip
        for v, st, why in left:
            self.devices[v.id] = {"state": st.label, "release": v.release, "online": v.online,
                                  "last": 0.0, "reason": why, "rb": False, "wave": 0,
                                  "canary": False}  # fmt: skip

    def observe(self, ev: Event, now: float) -> None:
        d = self.devices.get(ev.device)
        if d is None:
            return
        s = d["state"]
        if isinstance(ev, DeviceOnline):
            d["online"], d["release"] = True, ev.release
            if s == "updating":
                d["last"] = now
        elif isinstance(ev, DeviceOffline):
            d["online"] = False
        elif isinstance(ev, UpdateProgress) and s == "updating":
            d["last"] = now
        elif isinstance(ev, UpdateHealthy) and s == "updating":
            d["state"], d["release"] = "healthy", ev.version
        elif isinstance(ev, UpdateFailed) and s in ("updating", "healthy"):
            d["state"], d["reason"] = "failed", ev.reason
        elif isinstance(ev, UpdateRolledBack) and s in ("updating", "healthy", "failed"):
            d["state"], d["release"] = "rolled_back", ev.release

    @property
    def finished(self) -> bool:
        return self.phase != "running" and not any(
            d["state"] == "updating" for d in self.devices.values()
        )

    def counts(self) -> dict[str, int]:
        c = Counter(d["state"] for d in self.devices.values())
        return {s.label: c.get(s.label, 0) for s in State}

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for d in self.devices.values():
            if d["state"] == "updating" and d["last"] + self.spec.deadline <= now:
                d["state"], d["reason"] = "failed", "no report"
        self._check_failures(actions)
        if self.phase == "halted":
            for name, d in self.devices.items():
                if d["state"] == "failed" and not d["rb"]:
                    d["rb"] = True
                    actions.append(RollBack(name))
        while self.phase == "running":
            self._start(now, actions)
            if not self._next_wave(actions):
                break
        return actions

    def _check_failures(self, actions: list[Action]) -> None:
        """Halt on a failed canary or too many failures (a full count, every tick)."""
        c = self.counts()
        failures = c["failed"] + c["rolled_back"]
        attempted = failures + c["updating"] + c["healthy"]
        canary_bad = self.wave == 1 and any(
            d["canary"] and d["state"] in ("failed", "rolled_back") for d in self.devices.values()
        )
        if self.phase == "running" and (
            canary_bad or failures > self.spec.allowed_failures(attempted)
        ):
            self.phase = "halted"
            actions.append(Halted("threshold"))
            for d in self.devices.values():
                if d["state"] == "offline":
                    d["state"] = "pending"

    def _start(self, now: float, actions: list[Action]) -> None:
        """Start the current waves' pending devices, up to ``parallel`` updating (a full scan)."""
        updating = sum(d["state"] == "updating" for d in self.devices.values())
        for name, d in self.devices.items():
            if updating >= self.spec.parallel:
                break
            if not 0 < d["wave"] <= self.wave:
                continue
            if d["state"] == "pending" or (d["state"] == "offline" and d["online"]):
                if d["release"] == self.spec.version:
                    d["state"] = "skipped"
                elif d["online"]:
                    d["state"], d["last"] = "updating", now
                    updating += 1
                    actions.append(StartUpdate(name))
                else:
                    d["state"] = "offline"

    def _next_wave(self, actions: list[Action]) -> bool:
        """Open the next wave when this one is over (True: start devices again), or finish."""
        busy = any(
            0 < d["wave"] <= self.wave and d["state"] in ("pending", "updating")
            for d in self.devices.values()
        )
        if busy:
            return False
        if self.wave == self.nwaves:
            self.phase = "done"
            for d in self.devices.values():
                if d["state"] == "offline":
                    d["state"] = "pending"
            c = self.counts()
            actions.append(Done(c["healthy"], c["failed"] + c["rolled_back"], c["pending"]))
            return False
        if self.wave == 1 and not any(
            d["canary"] and d["state"] in ("healthy", "skipped") for d in self.devices.values()
        ):
            return False
        self.wave += 1
        for d in self.devices.values():
            if d["wave"] == self.wave and not d["online"] and d["release"] != NEW:
                d["state"] = "offline"
        actions.append(WaveStarted(self.wave, self.nwaves, 0, False))
        return True


def schedule(queue: list[tuple[float, int, Event]], seed: int, a: Action, t: float) -> None:
    """What the device does after an action; drawn from (seed, device) only."""
    if not isinstance(a, StartUpdate | RollBack):
        return
    d = a.device

    def at(dt: float, ev: Event) -> None:
        heapq.heappush(queue, (t + dt, next(SEQ), ev))

    rng = random.Random(f"{seed}/{d}/{type(a).__name__}")
    if isinstance(a, RollBack):
        at(rng.uniform(5, 20), UpdateRolledBack(d, OLD))
        return
    fate = rng.random()
    at(rng.uniform(1, 5), UpdateProgress(d))
    if fate < 0.003:  # hangs: silent, the deadline decides
        return
    down = rng.uniform(10, 30)
    up = down + rng.uniform(3, 10)
    at(down, DeviceOffline(d))
    at(up, DeviceOnline(d, NEW))
    if fate < 0.007:  # its self-check fails: it says so and switches back by itself
        at(up + rng.uniform(2, 5), UpdateFailed(d, "self-test call failed"))
        at(up + 8, UpdateRolledBack(d, OLD))
        at(up + 8, DeviceOnline(d, OLD))
    else:
        at(up + rng.uniform(2, 5), UpdateHealthy(d, NEW))


def counts_of(p: Rollout | Naive) -> dict[str, int]:
    return p.counts() if isinstance(p, Naive) else dict(p.status(devices=False)["counts"])


def run(kind: str, n: int, seed: int) -> dict[str, Any]:
    views, returns = make_fleet(n, seed)
    spec = make_spec(n)
    queue: list[tuple[float, int, Event]] = []
    for d, t in returns.items():
        heapq.heappush(queue, (t, next(SEQ), DeviceOnline(d, OLD)))
    spent = 0.0
    t0 = time.perf_counter()
    planner: Rollout | Naive = (
        Rollout.new(spec, views, 0.0) if kind == "planner" else Naive(spec, views, 0.0)
    )
    spent += time.perf_counter() - t0
    selected = len(planner.ids) if isinstance(planner, Rollout) else len(planner.devices)
    del views
    started = events = ticks = 0
    outcome = "running"
    snapshot: Any = None
    extra: dict[str, float] = {}
    now = 0.0
    wall = time.perf_counter()
    while not planner.finished and now < 24 * 3600:
        while queue and queue[0][0] <= now:
            te, _, ev = heapq.heappop(queue)
            t1 = time.perf_counter()
            planner.observe(ev, te)
            spent += time.perf_counter() - t1
            events += 1
        t1 = time.perf_counter()
        actions = planner.tick(now)
        spent += time.perf_counter() - t1
        ticks += 1
        for a in actions:
            if isinstance(a, StartUpdate):
                started += 1
            elif isinstance(a, Done | Halted):
                outcome = type(a).__name__.lower()
            schedule(queue, seed, a, now)
        if snapshot is None and started >= selected // 2:  # outside the timed calls
            if isinstance(planner, Rollout):
                t1 = time.perf_counter()
                snapshot = planner.to_json()
                t2 = time.perf_counter()
                planner.status(devices=True)
                extra = {"to_json_ms": round((t2 - t1) * 1e3, 1),
                         "status_ms": round((time.perf_counter() - t2) * 1e3, 1)}  # fmt: skip
            else:
                snapshot = copy.deepcopy(planner)
        now += 1.0
    wall = time.perf_counter() - wall
    if snapshot is None:  # halted early (a canary failed): measure the end state instead
        snapshot = planner.to_json() if isinstance(planner, Rollout) else copy.deepcopy(planner)
    return {
        "planner": kind, "devices": n, "selected": selected, "started": started,
        "events": events, "ticks": ticks, "virtual_s": now, "outcome": outcome,
        "planner_s": round(spent, 3), "loop_wall_s": round(wall, 2),
        "us_per_update": round(spent / max(started, 1) * 1e6, 1),
        "counts": counts_of(planner), "snapshot": snapshot, **extra,
    }  # fmt: skip


def memory(kind: str, n: int, seed: int, snapshot: Any) -> dict[str, Any]:
    """Bytes per selected device: peak while building (device list included), held after new,
    held half-way (rebuilt from the snapshot)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    views, _ = make_fleet(n, seed)
    spec = make_spec(n)
    planner: Rollout | Naive = (
        Rollout.new(spec, views, 0.0) if kind == "planner" else Naive(spec, views, 0.0)
    )
    peak = tracemalloc.get_traced_memory()[1] - base
    selected = len(planner.ids) if isinstance(planner, Rollout) else len(planner.devices)
    del views
    held_new = tracemalloc.get_traced_memory()[0] - base
    del planner
    base = tracemalloc.get_traced_memory()[0]
    mid = Rollout.from_json(snapshot) if kind == "planner" else copy.deepcopy(snapshot)
    held_mid = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del mid
    out: dict[str, float] = {
        "peak_new_B_per_device": round(peak / selected),
        "held_new_B_per_device": round(held_new / selected),
        "held_midway_B_per_device": round(held_mid / selected),
    }
    if kind == "planner":
        out["json_B_per_device"] = round(len(snapshot) / selected, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="10000,100000")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="Timed runs of the planner per size.")
    ap.add_argument("--naive-rounds", type=int, default=3,
                    help="Timed runs of the baseline per size (1 above 10,000).")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.devices.split(",")):
        runs: dict[str, list[dict[str, Any]]] = {"planner": [], "naive": []}
        naive_rounds = args.naive_rounds if n <= 10_000 else 1
        for k in range(max(args.rounds, naive_rounds)):  # interleaved: a busy spell hits both
            for kind, rounds in (("planner", args.rounds), ("naive", naive_rounds)):
                if k < rounds:
                    runs[kind].append(run(kind, n, args.seed))
        for kind, done in runs.items():
            times = sorted(x["planner_s"] for x in done)
            row: dict[str, Any] = done[0] | {
                "rounds": len(done),
                "planner_s": statistics.median(times),
                "planner_s_min": times[0],
            }
            row["us_per_update"] = round(row["planner_s"] / row["started"] * 1e6, 1)
            row.update(memory(kind, n, args.seed, row.pop("snapshot")))
            rows.append(row)
        a, b = rows[-2], rows[-1]
        a["same_outcome_as_naive"] = a["counts"] == b["counts"] and a["outcome"] == b["outcome"]
        a["naive_over_planner_cpu"] = round(b["planner_s"] / max(a["planner_s"], 1e-9), 1)
    if args.json:
        report = {"machine": common.machine_info(), "code": common.code_state(), "rows": rows}
        common.print_json(report)
        return
    print(f"{'planner':8} {'devices':>8} {'started':>8} {'virtual':>8} {'µs/update':>10} "
          f"{'peak B/dev':>10} {'held B/dev':>10} {'mid B/dev':>10} outcome / counts")  # fmt: skip
    for r in rows:
        print(
            f"{r['planner']:8} {r['devices']:>8} {r['started']:>8} {r['virtual_s']:>8.0f} "
            f"{r['us_per_update']:>10} {r['peak_new_B_per_device']:>10} "
            f"{r['held_new_B_per_device']:>10} {r['held_midway_B_per_device']:>10} "
            f"{r['outcome']} {r['counts']}"
        )
    for r in rows:
        if r["planner"] == "planner":
            print(f"{r['devices']} devices: naive/planner CPU {r['naive_over_planner_cpu']}×, "
                  f"same outcome {r['same_outcome_as_naive']}, JSON {r['json_B_per_device']} "
                  "B/device")  # fmt: skip


if __name__ == "__main__":
    main()
