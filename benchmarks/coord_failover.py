"""Part 2 of ``bench_coord``: the failover load (calls kept in flight while one of three echo
agents is killed or stopped, the agents' health counting every forward), its analysis (latency
before, at and after the kill, errors by code, extra forwards: the hedge rate) and the run of one
mode (hedge, no-hedge, library) with its broker, agents and coordinator. Apart from the script
because it is the one measurement that drives a kill.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from benchmarks.coord_parts import (
    ECHO_DIR,
    FO_DEVICES,
    FO_VICTIM,
    SKILL,
    agent_cmd,
    check_alive,
    coordinator_cmd,
    spawn,
    wait_coordinator,
    wait_log,
    wait_online,
)

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
            check_alive(procs, logs)
            raise SystemExit("the echo agents or the coordinator did not come up") from None
        victim = procs[FO_VICTIM]
        route: RouteVia = "local" if library else "coordinator"
        res = asyncio.run(failover_load(broker.url, fleet, victim, args, route))
        survivors = {n: p for n, p in procs.items() if n != FO_VICTIM}
        check_alive(survivors, logs)
        coord_log = "" if library else logs["coordinator"].read_text(errors="replace")
    out = analyse(res, args.window, args.steady_seconds, coord_log)
    out["mode"] = mode
    out["signal"] = signal.Signals(args.kill_signal).name
    return out
