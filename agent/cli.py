"""The ``edgeagent`` command: a thin click layer over the library.

This module holds the main group (global options: broker, fleet, topic root, log level) and
``demo``; every other command lives in a ``cli_*.py`` module of its own group and is registered
here. The commands that used to be defined here are re-exported, so ``edgeagent.cli:main`` (the
console script) and ``from edgeagent.cli import call`` keep working.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__
from .broker import BROKER_ENV, DEFAULT_BROKER_URL
from .cli_bridge import bridge
from .cli_call import ask, call
from .cli_common import Ctx, load_broker_file
from .cli_dashboard import dashboard
from .cli_data import data
from .cli_deploy import bundle, deploy, keys
from .cli_devices import devices
from .cli_fleet import broker, fleet_commands
from .cli_fleet_view import fleet, fleet_ls, fleet_show, fleet_watch
from .cli_image import image
from .cli_mcp import mcp
from .cli_models import models
from .cli_rollout import rollout
from .cli_services import agent, agent_run, coordinator, coordinator_run
from .cli_sim import sim
from .errors import EdgeAgentError
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT

__all__ = [
    "Ctx", "agent", "agent_run", "ask", "call", "coordinator", "coordinator_run", "demo", "fleet",
    "fleet_ls", "fleet_show", "fleet_watch", "main",
]  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeagent")
@click.option(
    "--broker",
    envvar=BROKER_ENV,
    default=None,
    metavar="URL",
    help=f"MQTT broker URL, mqtt://host:port or mqtts://… [env {BROKER_ENV}; "
    f"default {DEFAULT_BROKER_URL}]",
)
@click.option(
    "--broker-config",
    "broker_file",
    envvar="EDGEAGENT_BROKER_CONFIG",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML with the broker settings (TLS certificates, credentials), e.g. the broker.yaml "
    "`fleet enroll` writes for an identity [env EDGEAGENT_BROKER_CONFIG].",
)
@click.option("--fleet", default=DEFAULT_FLEET, show_default=True, help="Fleet name.")
@click.option("--root", default=DEFAULT_ROOT, show_default=True, help="Topic root.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Log verbosity (agents log at info unless told otherwise).",
)
@click.pass_context
def main(
    ctx: click.Context,
    broker: str | None,
    broker_file: Path | None,
    fleet: str,
    root: str,
    log_level: str,
) -> None:
    """edgeagent: intelligent objects on small computers.

    Devices run an agent that exposes typed skills over MQTT 5; this command runs agents, calls
    skills and watches the fleet. Any MQTT 5 client can call skills too: see docs/protocol.md.
    """
    if ctx.get_parameter_source("log_level") is click.core.ParameterSource.DEFAULT and (
        ctx.invoked_subcommand in ("agent", "demo")
    ):
        log_level = "info"
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        loaded = load_broker_file(broker_file) if broker_file is not None else None
    except EdgeAgentError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.obj = Ctx(broker, fleet, root, loaded)


@main.command()
@click.option(
    "--examples",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the smart-home example (default: ./examples/smart-home).",
)
@click.option("--keep", is_flag=True, help="Keep the fleet running after the tour (Ctrl-C ends).")
@click.option(
    "--secure",
    is_flag=True,
    help="On a private broker that requires TLS client certificates and enforces the fleet's "
    "ACL: each agent, the coordinator and the tour use their own enrolled identity.",
)
@click.pass_obj
def demo(obj: Ctx, examples: Path | None, keep: bool, secure: bool) -> None:
    """Run a small smart-home fleet locally and call its skills.

    Starts a private mosquitto on a free port (unless --broker is given), the seven example
    agents of examples/smart-home as real processes (two lamps, a thermostat, a doorbell, and
    three with tiny models: a meter, a pump, a speaker) and a coordinator with the example rules,
    then lists the fleet, calls skills, shows an event, a rule, routing by tags, a plain-language
    request and a typed error, and stops everything cleanly. With --keep it prints ready-to-paste
    commands for the running fleet; SIGTERM or Ctrl-C stops it all.
    """
    from .demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    try:
        run_demo(obj.broker, examples, keep, click.echo, secure=secure)
    except (EdgeAgentError, RuntimeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


for _command in (agent, ask, call, coordinator, fleet, bundle, deploy, keys, devices, models, sim,
                 broker, image, rollout, bridge, mcp, dashboard, data):  # fmt: skip
    main.add_command(_command)
for _command in fleet_commands:
    fleet.add_command(_command)


if __name__ == "__main__":  # pragma: no cover - `python -m edgeagent.cli`
    main()
