"""The text report of ``bench_coord``: per-round progress lines, the overhead table (requesters'
latency, throughput and CPU per call, their ratios against the targets) and each failover run's
summary. Apart from the script so that measuring and printing stay separate: the JSON report is
the same dict these functions read.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from benchmarks import _common as common
from benchmarks.coord_parts import (
    FO_VICTIM,
    Sample,
)


def progress(args: argparse.Namespace, line: str) -> None:
    common.progress(args.quiet, line)


def fmt_sample(s: Sample) -> str:
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
