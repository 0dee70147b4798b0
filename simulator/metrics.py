"""What a run records, and the report built from it.

:class:`Recorder` is fed by the workload (one :class:`CallRecord` per call), by a monitor that
watches retained state and health (online/offline periods, queue depth) and by the fault
scheduler (timeline entries). :func:`build_report` turns that into the report dict that
:mod:`edgeagent.simulator.render` writes as JSON, HTML and PNG: per skill, per device group and
fleet-wide totals, latency percentiles over time buckets, errors by type, failovers, the timeline
and the spec's assertions. Nothing in it reads a clock: times are simulated seconds from the start,
so the same run gives the same report.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .spec import Assertion, FleetSpec


class CallRecord(NamedTuple):
    t: float
    """When the call was made, simulated seconds."""
    workload: str
    skill: str
    group: str | None
    """The group of the device that answered (or last failed); None if none was reached."""
    ms: float
    outcome: str
    """``ok`` or the error code."""
    failovers: int


@dataclass(slots=True)
class Recorder:
    calls: list[CallRecord] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    offline_since: dict[str, float] = field(default_factory=dict)
    offline: list[tuple[str, float, float | None]] = field(default_factory=list)
    queue: dict[tuple[str, int], int] = field(default_factory=dict)
    """(group, bucket) -> largest queue depth a device of the group reported."""
    notes: list[str] = field(default_factory=list)
    rollout: dict[str, Any] | None = None
    """The report's rollout section (``simulator/rollout.py``), when the spec has a rollout."""

    def call(self, record: CallRecord) -> None:
        self.calls.append(record)

    def went_offline(self, device: str, t: float) -> None:
        self.offline_since.setdefault(device, t)

    def came_online(self, device: str, t: float) -> None:
        since = self.offline_since.pop(device, None)
        if since is not None:
            self.offline.append((device, since, t))

    def queue_depth(self, group: str, bucket: int, depth: int) -> None:
        key = (group, bucket)
        if depth > self.queue.get(key, 0):
            self.queue[key] = depth

    def fault(self, t: float, until: float | None, fault: str, name: str, targets: list[str],
              detail: str) -> None:  # fmt: skip
        self.timeline.append(
            {"t": round(t, 3), "until": None if until is None else round(until, 3),
             "kind": "fault", "fault": fault, "name": name, "targets": targets, "detail": detail}
        )  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None for none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


def _stats(records: Iterable[CallRecord]) -> dict[str, Any]:
    records = list(records)
    ok = [r.ms for r in records if r.outcome == "ok"]
    ok.sort()
    errors = Counter(r.outcome for r in records if r.outcome != "ok")
    calls = len(records)
    return {
        "calls": calls,
        "ok": len(ok),
        "success_rate": round(len(ok) / calls, 4) if calls else None,
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "failovers": sum(r.failovers for r in records),
        "errors": dict(sorted(errors.items())),
    }


def _series(records: list[CallRecord], bucket_s: float, buckets: int) -> list[dict[str, Any]]:
    by_bucket: dict[int, list[CallRecord]] = defaultdict(list)
    for r in records:
        by_bucket[min(int(r.t // bucket_s), buckets - 1)].append(r)
    out = []
    for b in range(buckets):
        s = _stats(by_bucket.get(b, ()))
        out.append(
            {"t": round(b * bucket_s, 3), "calls": s["calls"], "ok": s["ok"],
             "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "p99_ms": s["p99_ms"]}
        )  # fmt: skip
    return out


def _online_at(
    intervals: list[tuple[str, float, float | None]], devices: set[str], t: float
) -> int:
    down = {d for d, a, b in intervals if d in devices and a <= t and (b is None or t < b)}
    return len(devices) - len(down)


# The comparison of an assertion ("p99_ms < 300"): also the rollout checks' (rollout.py).
OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


def evaluate(a: Assertion, recorder: Recorder, spec: FleetSpec) -> dict[str, Any]:
    """Check one assertion against the calls in its scope (and in flight during its fault)."""
    if a.is_rollout:
        from .rollout import evaluate_rollout

        return evaluate_rollout(a, recorder.rollout)
    records = recorder.calls
    if a.skill is not None:
        records = [r for r in records if r.skill == a.skill]
    if a.group is not None:
        records = [r for r in records if r.group == a.group]
    if a.during is not None:
        windows = [
            (e["t"], e["until"] if e["until"] is not None else spec.duration_s)
            for e in recorder.timeline
            if e["kind"] == "fault" and e["name"] == a.during
        ]
        # A call counts if it was in flight at any time during the fault.
        records = [
            r for r in records if any(r.t < t1 and r.t + r.ms / 1000 >= t0 for t0, t1 in windows)
        ]
    metric, op, bound = a.parsed()
    stats = _stats(records)
    value = sum(stats["errors"].values()) if metric == "errors" else stats[metric]
    passed = value is not None and OPS[op](float(value), bound)
    return {"text": a.describe(), "passed": passed, "value": value, "calls": len(records)}


def build_report(
    spec: FleetSpec,
    recorder: Recorder,
    *,
    mode: str,
    spec_file: str,
    groups: dict[str, dict[str, Any]],
    calibration: dict[str, dict[str, Any]],
    memory: dict[str, dict[str, Any]],
    end_s: float,
) -> dict[str, Any]:
    """The report dict (layout: :mod:`edgeagent.simulator.render`)."""
    bucket_s = spec.bucket()
    buckets = max(1, math.ceil(spec.duration_s / bucket_s - 1e-9))
    for device, since in sorted(recorder.offline_since.items()):
        recorder.offline.append((device, since, None))
    recorder.offline_since.clear()
    calls = sorted(recorder.calls, key=lambda r: (r.t, r.workload, r.skill))
    skills: dict[str, Any] = {}
    for name in sorted({r.skill for r in calls}):
        mine = [r for r in calls if r.skill == name]
        skills[name] = {**_stats(mine), "series": _series(mine, bucket_s, buckets)}
    group_out: dict[str, Any] = {}
    for name, info in groups.items():
        mine = [r for r in calls if r.group == name]
        members = set(info["members"])
        series = _series(mine, bucket_s, buckets)
        for b, point in enumerate(series):
            point["online"] = _online_at(recorder.offline, members, min((b + 1) * bucket_s, end_s))
            point["queue_depth"] = recorder.queue.get((name, b), 0)
        offline_s = sum(
            (end_s if b is None else min(b, end_s)) - a
            for d, a, b in recorder.offline
            if d in members
        )
        group_out[name] = {
            "profile": info["profile"],
            "devices": len(members),
            **_stats(mine),
            "offline_s": round(offline_s, 3),
            "queue_depth_max": max((p["queue_depth"] for p in series), default=0),
            "series": series,
        }
    all_devices = {d for info in groups.values() for d in info["members"]}
    fleet_series = _series(calls, bucket_s, buckets)
    for b, point in enumerate(fleet_series):
        point["online"] = _online_at(recorder.offline, all_devices, min((b + 1) * bucket_s, end_s))
    timeline = list(recorder.timeline)
    for device, since, until in sorted(recorder.offline, key=lambda x: (x[1], x[0])):
        group = next((g for g, info in groups.items() if device in info["members"]), None)
        timeline.append(
            {"t": round(since, 3), "until": None if until is None else round(until, 3),
             "kind": "offline", "device": device, "group": group}
        )  # fmt: skip
    timeline.extend({"t": 0.0, "until": None, "kind": "note", "detail": n} for n in recorder.notes)
    timeline.sort(key=lambda e: (e["t"], e["kind"], str(e.get("name", e.get("device", "")))))
    return {
        "version": 1,
        "name": spec.name,
        "spec_file": spec_file,
        "mode": mode,
        "seed": spec.seed,
        "duration_s": spec.duration_s,
        "bucket_s": bucket_s,
        "devices": len(all_devices),
        "summary": _stats(calls),
        "workloads": {
            w: _stats(r for r in calls if r.workload == w)
            for w in sorted({r.workload for r in calls})
        },
        "skills": skills,
        "groups": group_out,
        "fleet_series": fleet_series,
        "timeline": timeline,
        **({"rollout": recorder.rollout} if recorder.rollout is not None else {}),
        "assertions": [evaluate(a, recorder, spec) for a in spec.assertions],
        "calibration": calibration,
        "memory": memory,
    }
