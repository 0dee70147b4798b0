"""``edgeagent agent run`` and ``edgeagent coordinator run``: the long-running services.

Both start against a broker that may not be there yet (they retry), stop on SIGTERM or Ctrl-C
(:class:`~edgeagent.cli_common.StopSignals`: abandoned at once while starting, drained once
serving) and print one line when online. Registered on the main command in ``cli.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .broker import BrokerConfig
from .cli_common import Ctx, StopSignals, run
from .config import load_config
from .errors import EdgeAgentError
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT

if TYPE_CHECKING:
    from .config import AgentConfig
    from .device import DeviceAgent


@click.group()
def agent() -> None:
    """Run a device agent."""


def device_agent(cfg: AgentConfig) -> DeviceAgent:
    """The agent for ``agent run``: on a deployed device (``edgeagent deploy``'s layout), with
    the system skills (docs/rollouts.md) beside the config's."""
    from .config import load_skills
    from .device import DeviceAgent
    from .skills import collect_skills
    from .system import SystemSkills, device_root

    root = device_root() if cfg.system_skills else None
    if root is None:
        return DeviceAgent(cfg)
    skills, sets, events = load_skills(cfg)
    system = SystemSkills(root, cfg.release)
    return DeviceAgent(cfg, skills=[*skills, *collect_skills(system)], skill_sets=[*sets, system],
                       events=events, updating=system.verifying())  # fmt: skip


@agent.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def agent_run(obj: Ctx, config: Path) -> None:
    """Run the device agent described by CONFIG (YAML) until SIGTERM or Ctrl-C.

    --broker and --fleet, when given, override the config file. On SIGTERM the agent stops
    taking calls, lets in-flight calls finish within grace_s, publishes offline and disconnects.
    """

    try:
        cfg = load_config(config)
        updates: dict[str, Any] = {}
        if obj.broker_file is not None:
            updates["broker"] = obj.broker_config()
        elif obj.broker:
            BrokerConfig.from_url(obj.broker)  # validates, with a clear error
            updates["broker"] = cfg.broker.model_copy(update={"url": obj.broker})
        if obj.fleet != DEFAULT_FLEET:
            updates["fleet"] = obj.fleet
        if obj.root != DEFAULT_ROOT:
            updates["root"] = obj.root
        if os.environ.get("EDGEAGENT_RELEASE"):
            updates["release"] = os.environ["EDGEAGENT_RELEASE"]
        cfg = cfg.model_copy(update=updates)
        device = device_agent(cfg)
    except (EdgeAgentError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    async def serve() -> None:
        signals = StopSignals()
        try:
            await device.start()  # retries until the broker answers
        except asyncio.CancelledError:
            if not signals.abandoned():
                raise
            await device.stop(grace_s=0)  # releases what the start had set up
            assert signals.signal is not None
            click.echo(
                f"{cfg.device}: {signals.signal.name} before the broker at "
                f"{cfg.broker.display()} answered; stopped",
                err=True,
            )
            return
        signals.serving()
        try:
            click.echo(
                f"{cfg.device}: online at {cfg.broker.display()} (fleet {cfg.fleet}), "
                f"skills: {', '.join(s.name for s in device.manifest().skills)}",
                err=True,
            )
            if device.metrics is not None:
                click.echo(f"{cfg.device}: metrics at {device.metrics.url}", err=True)
            await signals.stop.wait()
            click.echo(f"{cfg.device}: stopping (grace {cfg.grace_s:g} s)", err=True)
        finally:
            await device.stop()

    run(serve())


@click.group()
def coordinator() -> None:
    """Route calls between devices by skill and tags."""


@coordinator.command("run")
@click.option("--group", default="edgeagent-coord", show_default=True,
              help="Shared-subscription group: replicas in one group share the calls.")  # fmt: skip
@click.option("--retry-budget", default=2, show_default=True, help="Failovers per call.")
@click.option("--no-hedge", is_flag=True, help="Do not hedge slow read calls.")
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Automations (YAML): when an event happens, call a skill. See examples/smart-home.",
)
@click.option(
    "--limit",
    "limit_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a bound (repeatable), e.g. --limit max_devices=500. The bounds and their "
    "defaults: docs/coordinator.md.",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (off by default; "
              "0: a free port). Names: docs/metrics.md.")  # fmt: skip
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics server listens on.")  # fmt: skip
@click.pass_obj
def coordinator_run(
    obj: Ctx,
    group: str,
    retry_budget: int,
    no_hedge: bool,
    rules_file: Path | None,
    limit_pairs: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a coordinator until SIGTERM or Ctrl-C. Run several for scale-out and failover.

    Any MQTT 5 client can then call {root}/{fleet}/coord/call/SKILL with the skill's input, a
    Response Topic, and User Properties where=room=kitchen, mode=one|all, explain=1.
    """
    from .coordinator import Coordinator
    from .limits import parse_limits
    from .rules import load_rules
    from .transport.mqtt import MqttTransport

    try:
        rules = load_rules(rules_file) if rules_file is not None else None
        limits = parse_limits(limit_pairs)
    except EdgeAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    async def serve() -> None:
        signals = StopSignals()
        broker = obj.broker_config()
        transport = MqttTransport(broker, retry_first_connect=True)
        coord = Coordinator(
            transport, root=obj.root, fleet=obj.fleet, group=group,
            retry_budget=retry_budget, hedge=not no_hedge, rules=rules, limits=limits,
        )  # fmt: skip
        try:
            await coord.start()  # retries until the broker answers
        except asyncio.CancelledError:
            if not signals.abandoned():
                raise
            await coord.stop()
            assert signals.signal is not None
            click.echo(
                f"coordinator: {signals.signal.name} before the broker at {broker.display()} "
                "answered; stopped",
                err=True,
            )
            return
        signals.serving()
        metrics = None
        try:
            if metrics_port is not None:
                from .bridges.metrics import serve_coordinator_metrics

                metrics = await serve_coordinator_metrics(coord, host=metrics_host,
                                                          port=metrics_port)  # fmt: skip
                click.echo(f"coordinator: metrics at {metrics.url}", err=True)
            if rules is not None:
                click.echo(f"coordinator: {len(rules)} rules from {rules_file}", err=True)
                for warning in rules.check(coord.registry.skills()):
                    click.echo(f"warning: {warning}", err=True)
            devices = len(coord.registry.devices)
            click.echo(
                f"coordinator: routing for fleet {obj.fleet} at {broker.display()} "
                f"({devices} devices known, group {group})",
                err=True,
            )
            await signals.stop.wait()
        finally:
            if metrics is not None:
                await metrics.close()
            await coord.stop()

    run(serve())
