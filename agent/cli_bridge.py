"""``edgeagent bridge run``: the fleet projected into other ecosystems (issue 14).

A thin click layer over :mod:`edgeagent.bridges`: one connection to the fleet, and each bridge
asked for a task of one TaskGroup until SIGTERM or Ctrl-C: ``--ha``
(:class:`~edgeagent.bridges.ha.HaBridge`, docs/home-assistant.md), ``--mcp`` (the MCP server
over streamable HTTP, docs/mcp.md) and ``--metrics`` (:class:`~edgeagent.bridges.metrics_fleet.
FleetMetrics`, with the Home Assistant bridge's counters when both run; docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from .cli_common import Ctx, StopSignals, run

if TYPE_CHECKING:
    from edgeagent.bridges.ha import HaBridge
    from edgeagent.bridges.ha_model import DeviceMap
    from edgeagent.client import Fleet


@click.group("bridge")
def bridge() -> None:
    """Project the fleet into other ecosystems, derived live from the devices' manifests.

    \b
    --ha       Home Assistant MQTT discovery: every device becomes a Home Assistant device
               (lamps -> light, thermostats -> climate, numeric read skills -> sensors,
               no-input actuate skills -> buttons, events -> event entities); Home
               Assistant's commands become skill calls. See docs/home-assistant.md.
    --mcp      the fleet's skills as MCP tools for LLM agents, over streamable HTTP on
               http://MCP_HOST:MCP_PORT/mcp (`edgeagent mcp` serves stdio). See docs/mcp.md.
    --metrics  a Prometheus /metrics endpoint on METRICS_HOST:METRICS_PORT: the fleet as its
               retained state, manifests and health say (no port open on any device), plus
               the Home Assistant bridge's counters. See docs/metrics.md.

    The broker, fleet and topic root are the global options (edgeagent --broker URL --fleet
    NAME bridge run --ha).
    """


def _print_map(dm: DeviceMap, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"type": "ha_device", **dm.summary(), "payload": dm.payload}))
        return
    entities = ", ".join(f"{k} ({v})" for k, v in dm.summary()["entities"].items()) or "none"
    click.echo(f"{dm.device}: {entities}")
    for u in dm.unmapped:
        click.echo(f"  unmapped {u.skill}: {u.reason}")


@bridge.command("run")
@click.option("--ha", "ha", is_flag=True, help="Run the Home Assistant bridge (the default).")
@click.option("--mcp", "mcp", is_flag=True, help="Run the MCP server (streamable HTTP).")
@click.option("--metrics", "metrics", is_flag=True, help="Serve Prometheus metrics.")
@click.option("--mcp-host", default="127.0.0.1", show_default=True, help="MCP server address.")
@click.option(
    "--mcp-port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="MCP server port (0: a free one, printed).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Metrics server address."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9108,
    show_default=True,
    help="Metrics server port (0: a free one, printed).",
)
@click.option(
    "--ha-prefix",
    default="homeassistant",
    show_default=True,
    help="Home Assistant's discovery prefix.",
)
@click.option(
    "--ha-poll",
    "poll_s",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds between polls of the read skills feeding state.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the discovery payloads and unmapped skills of the devices now in the "
    "fleet, publish nothing, exit.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def bridge_run(
    obj: Ctx,
    ha: bool,
    mcp: bool,
    metrics: bool,
    mcp_host: str,
    mcp_port: int,
    metrics_host: str,
    metrics_port: int,
    ha_prefix: str,
    poll_s: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Run the bridges until SIGTERM or Ctrl-C (with no flag: --ha).

    With --ha, each device's manifest becomes a retained Home Assistant discovery message on
    PREFIX/device/{root}_{fleet}_{device}/config; Home Assistant's commands arrive on
    {root}/ha/{fleet}/{device}/{entity}/set and become direct skill calls; state is published
    retained on {root}/ha/{fleet}/{device}/{entity}/state. Skills that map to nothing are
    printed with the reason. --dry-run shows all of it without publishing.

    The bridges share one connection to the broker; if one of them fails (a port in use, say)
    the others stop too and the command exits 1 with the reason.
    """
    if dry_run:
        run(_dry_run(obj, ha_prefix, as_json))
        return
    if mcp and importlib.util.find_spec("mcp") is None:
        raise click.UsageError("--mcp needs the MCP SDK: pip install 'edgeagent[mcp]'")
    plan = _Plan(
        ha=ha or not (mcp or metrics),
        mcp=(mcp_host, mcp_port) if mcp else None,
        metrics=(metrics_host, metrics_port) if metrics else None,
        prefix=ha_prefix,
        poll_s=poll_s,
        as_json=as_json,
    )
    run(_serve(obj, plan))


@dataclass(frozen=True, slots=True)
class _Plan:
    """Which bridges run, and where."""

    ha: bool
    mcp: tuple[str, int] | None
    metrics: tuple[str, int] | None
    prefix: str
    poll_s: float
    as_json: bool


async def _dry_run(obj: Ctx, prefix: str, as_json: bool) -> None:
    from edgeagent.bridges.ha import plan

    async with obj.make_fleet() as fleet:
        maps = await plan(fleet, prefix=prefix)
    for dm in maps:
        if as_json:
            _print_map(dm, True)
        else:
            _print_map(dm, False)
            if dm.payload is not None:
                click.echo(f"  {dm.config_topic} (retained):")
                click.echo("    " + json.dumps(dm.payload, indent=2).replace("\n", "\n    "))
    if not maps and not as_json:
        click.echo("no device has a manifest in this fleet")


def _say(plan: _Plan, text: str) -> None:
    click.echo(text, err=plan.as_json)


def _bridges(
    fleet: Fleet, plan: _Plan, ha: HaBridge | None
) -> dict[str, Coroutine[Any, Any, None]]:
    """The coroutine of each bridge asked for (named for the error message)."""
    jobs: dict[str, Coroutine[Any, Any, None]] = {}
    if ha is not None:
        jobs["HA bridge"] = ha.run()
    if plan.mcp is not None:
        from edgeagent.bridges import mcp_server

        host, port = plan.mcp
        jobs["MCP server"] = mcp_server.run(
            fleet,
            transport="http",
            host=host,
            port=port,
            ready=lambda p: _say(plan, f"MCP server on http://{host}:{p}/mcp"),
        )
    if plan.metrics is not None:
        from edgeagent.bridges.metrics_fleet import FleetMetrics

        host, port = plan.metrics
        fm = FleetMetrics(fleet, host=host, port=port)
        if ha is not None:
            from edgeagent.bridges.metrics_bridge import HaCollector

            fm.registry.register(HaCollector(ha.stats))
        jobs["metrics"] = _announced(
            fm.run(), fm.ready, lambda: _say(plan, f"metrics on http://{host}:{fm.port}/metrics")
        )
    return jobs


def _reason(exc: BaseException | None) -> str:
    """What went wrong, in words: the first real error inside task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if exc is None:
        return "it returned"
    return str(exc) or type(exc).__name__


async def _announced(
    job: Coroutine[Any, Any, None], ready: asyncio.Event, say: Callable[[], None]
) -> None:
    """Run ``job``; call ``say()`` once ``ready`` is set."""

    async def tell() -> None:
        await ready.wait()
        say()

    teller = asyncio.create_task(tell())
    try:
        await job
    finally:
        teller.cancel()


async def _serve(obj: Ctx, plan: _Plan) -> None:
    from edgeagent.bridges.ha import HaBridge

    signals = StopSignals()
    try:
        fleet = obj.make_fleet()
        await fleet.__aenter__()
    except asyncio.CancelledError:
        if signals.abandoned():
            return
        raise
    try:
        ha = None
        if plan.ha:
            ha = HaBridge(
                fleet,
                prefix=plan.prefix,
                poll_s=plan.poll_s,
                on_map=lambda dm: _print_map(dm, plan.as_json),
            )
        jobs = _bridges(fleet, plan, ha)
        signals.serving()
        _say(plan, f"bridges online ({', '.join(jobs)}): fleet {obj.fleet!r}")
        tasks = {asyncio.create_task(job, name=name): name for name, job in jobs.items()}
        stop: asyncio.Task[Any] = asyncio.create_task(signals.stop.wait())
        done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        for t in (*tasks, stop):
            t.cancel()
        await asyncio.gather(*tasks, stop, return_exceptions=True)
        failed = [(n, t.exception()) for t, n in tasks.items() if t in done and not t.cancelled()]
        for name, exc in failed:
            click.echo(f"error: {name} stopped: {_reason(exc)}", err=True)
        if ha is not None:
            s = ha.stats()
            _say(plan, f"HA bridge stopped: {s.commands} commands, {s.published} published")
        if failed:
            sys.exit(1)
    finally:
        await fleet.close()
