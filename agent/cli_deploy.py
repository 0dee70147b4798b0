"""``edgeagent deploy``: ship signed releases to devices over SSH (``deploy run``, the default).

Thin click layers over ``edgeagent.deploy``; ``deploy status|history|rollback|prune`` live in
``cli_deploy_device.py`` and are added to the group here. ``keys``, ``bundle`` and
``default_key`` are re-exported from their modules, where ``cli.py`` and ``cli_image_build.py``
import them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_bundle import bundle, keys
from .cli_deploy_common import arun, default_key, fail, guard, ssh_flags, ssh_options
from .cli_deploy_device import deploy_history, deploy_prune, deploy_rollback, deploy_status
from .clock import SYSTEM_CLOCK

__all__ = ["bundle", "default_key", "deploy", "deploy_run", "keys"]


class _DefaultGroup(click.Group):
    """``edgeagent deploy …`` runs ``deploy run …`` unless a subcommand is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup)
def deploy() -> None:
    """Ship signed releases to devices over SSH, with health checks and automatic rollback.

    `edgeagent deploy --device pi --host pi@lamp.local lamp.yaml` builds the bundle for the
    device's exact profile (read from its hardware), sends only the files the device lacks,
    switches atomically, restarts the agent's systemd unit and checks over MQTT that the new
    release is online and answers; if not, the previous release is put back.
    """


@deploy.command("run")
@click.argument(
    "config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--device",
    "device",
    required=True,
    help="Device profile (pi4, generic-arm64…) or family (pi): checked against the "
    "device's hardware.",
)
@click.option("--host", "hosts", multiple=True, help="[USER@]HOST[:PORT] (repeatable).")
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML list of hosts: [{host, config?, device?}] for many devices at once.",
)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Deploy this built bundle instead of building one from CONFIG.",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Signing key (default ~/.config/edgeagent/keys/edgeagent.key).",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public keys the device should trust (default: the signing key's .pub).",
)
@ssh_flags
@click.option(
    "--health-timeout",
    default=60.0,
    show_default=True,
    help="Seconds the new release has to become healthy.",
)
@click.option(
    "--check",
    "check",
    default=None,
    help='Smoke-test call after the restart: \'SKILL {"json": "input"}\'.',
)
@click.option("--keep", default=3, show_default=True, help="Releases kept on the device.")
@click.option("--python", default=None, help="Device Python (default: the profile's).")
@click.option("--parallel", default=4, show_default=True, help="Devices deployed at once.")
@click.option(
    "--watch",
    is_flag=True,
    help="Stay running: redeploy on every saved change to CONFIG or its skill modules.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines.")
@click.pass_context
def deploy_run(
    ctx: click.Context,
    config: Path | None,
    device: str,
    hosts: tuple[str, ...],
    inventory: Path | None,
    bundle_dir: Path | None,
    key: Path | None,
    trust: tuple[Path, ...],
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    health_timeout: float,
    check: str | None,
    keep: int,
    python: str | None,
    parallel: int,
    watch: bool,
    as_json: bool,
) -> None:
    """Deploy CONFIG (or --bundle) to --host or every host of --inventory."""
    from .deploy.runner import DeployJob, parse_check, run_jobs, watch_loop

    broker = getattr(ctx.find_root().obj, "broker", None)
    if config is None and bundle_dir is None and inventory is None:
        fail("give CONFIG (an agent config) or --bundle DIR")
    signing = key or default_key()
    if bundle_dir is None and not signing.is_file():
        fail(f"{signing}: no signing key; make one with `edgeagent keys generate` (or --key)")
    trusted = list(trust) or [signing.with_name(signing.name.removesuffix(".key") + ".pub")]
    jobs = guard(
        lambda: DeployJob.from_cli(
            hosts,
            inventory,
            config,
            bundle_dir,
            device,
            signing,
            trusted,
            root,
            broker,
            health_timeout,
            parse_check(check),
            keep,
            python,
        )
    )
    if not jobs:
        fail("no host: give --host or --inventory")
    ssh = guard(lambda: ssh_options(identity, known_hosts, accept_new_host_key))

    if watch:
        if len(jobs) != 1 or jobs[0].config is None:
            fail("--watch takes one host and a CONFIG")
        code = arun(watch_loop(jobs[0], ssh, as_json=as_json, echo=click.echo))
        sys.exit(code)
    t0 = SYSTEM_CLOCK.monotonic()
    results = arun(run_jobs(jobs, ssh, parallel=parallel, as_json=as_json, echo=click.echo))
    failed = [r for r in results if not r.get("healthy")]
    if not as_json and len(jobs) > 1:
        click.echo(
            f"{len(jobs) - len(failed)} of {len(jobs)} devices healthy "
            f"in {SYSTEM_CLOCK.monotonic() - t0:.1f} s"
        )
    sys.exit(1 if failed else 0)


for _command in (deploy_status, deploy_history, deploy_rollback, deploy_prune):
    deploy.add_command(_command)
