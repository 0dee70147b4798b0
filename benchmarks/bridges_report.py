"""The report of ``bench_bridges``: ratios to the baselines, Markdown tables, the text report."""

from __future__ import annotations

from typing import Any

from benchmarks import _common as common

COMPARED = (  # (measured, baseline, label, what is timed)
    ("mcp", "mcp_direct", "MCP tool call", "`get_state` through McpBridge (SDK client)"),
    ("mcp_http", "mcp_direct", "MCP over HTTP", "the same, streamable HTTP (SDK client)"),
    ("mcp_direct", "mcp_direct", "direct", "`call_skill(..., explain=True)`"),
    ("ha", "ha_direct", "Home Assistant command", "command topic -> new state on state topic"),
    ("ha_direct", "ha_direct", "direct", "`Fleet.call(lamp, 'set_brightness')`"),
    ("routed_scraped", "routed", "routed, /metrics scraped", "`call_skill` with a scraper"),
    ("routed", "routed", "routed", "`call_skill`, no scraper"),
)


def fmt_sample(sample: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in sample.items())


def ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for measured, baseline, _, _ in COMPARED:
        if measured != baseline:
            a, b = results[measured], results[baseline]
            out[f"{measured}/{baseline}"] = {
                "p50": round(a["p50_ms"] / b["p50_ms"], 3),
                "p95": round(a["p95_ms"] / b["p95_ms"], 3),
                "cpu_process": round(a["cpu_us_process"] / b["cpu_us_process"], 3),
            }
    return out


def tables(report: dict[str, Any]) -> str:
    res, rat = report["results"], report["ratios"]
    rows: list[list[object]] = []
    for measured, baseline, label, what in COMPARED:
        s = res[measured]
        ratio = rat.get(f"{measured}/{baseline}")
        rows.append([
            label, what, f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['p99_ms']:.2f}",
            f"{ratio['p50']:.2f}" if ratio else "1 (baseline)",
            f"{ratio['p95']:.2f}" if ratio else "1 (baseline)",
            f"{s['cpu_us_process']:.0f}", f"{s['cpu_us_broker']:.0f}",
        ])  # fmt: skip
    calls = common.markdown_table(
        ["path", "timed", "p50 ms", "p95 ms", "p99 ms", "× base p50", "× base p95",
         "CPU µs/call (process)", "CPU µs/call (broker)"],
        rows, "llrrrrrrr",
    )  # fmt: skip
    scrapes = common.markdown_table(
        ["/metrics of", "p50 ms", "p95 ms", "body bytes", "series"],
        [
            [label, f"{res[k]['p50_ms']:.2f}", f"{res[k]['p95_ms']:.2f}",
             f"{res[k]['body_bytes']:.0f}", f"{res[k]['series']:.0f}"]
            for k, label in (("scrape_coordinator", "coordinator"),
                             ("scrape_fleet", "fleet (FleetMetrics)"))
        ],
        "lrrrr",
    )  # fmt: skip
    rate = res["routed_scraped"]["scrapes_per_s"]
    return f"{calls}\n\n(scraper: {rate:.1f} scrapes/s during the calls)\n\n{scrapes}"


def print_report(report: dict[str, Any]) -> None:
    m, code, cfg = report["machine"], report["code"], report["config"]
    print(
        f"{m['cpus']} × {m['cpu_model']}, Python {m['python']}, mosquitto {m['mosquitto']}, "
        f"mcp {m['mcp']}, prometheus-client {m['prometheus_client']}, load {m['loadavg']}"
    )
    changed = " (CHANGED DURING THE RUN)" if "code_changed_during_run" in report else ""
    print(
        f"code: commit {code['commit']}, uncommitted changes in "
        f"{code['modified'] + code['untracked'] or 'none'}{changed}"
    )
    print(
        f"{cfg['lamps']} lamps; {cfg['rounds']} rounds of {cfg['calls']} MCP/HA calls, "
        f"{cfg['http_calls']} over MCP HTTP, {cfg['routed_calls']} routed calls "
        f"({cfg['warmup']} warm-up each), "
        f"{cfg['scrapes']} scrapes; medians over rounds\n"
    )
    print(tables(report))
    print(f"\n(whole run {report['elapsed_s']} s)")
