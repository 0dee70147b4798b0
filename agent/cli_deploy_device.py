"""``edgeagent deploy status|history|rollback|prune``: one device tool command on one host.

Each runs ``edgeagent-device.py COMMAND`` over SSH (``deploy.deployer.remote_command``) and prints
its JSON answer, as a table or as JSON. Added to the ``deploy`` group in ``cli_deploy.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .cli_deploy_common import arun, fail, guard, ssh_error_types, ssh_flags, ssh_options
from .errors import EdgeAgentError


def _remote(
    host: str,
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new: bool,
    root: str,
    *args: str,
) -> dict[str, Any]:
    from .deploy.deployer import remote_command
    from .deploy.ssh import SshTarget

    target = guard(lambda: SshTarget.parse(host))
    ssh = ssh_options(identity, known_hosts, accept_new)
    errors = ssh_error_types()

    async def go() -> dict[str, Any]:
        return await remote_command(target, ssh, root, *args)

    try:
        return arun(go())
    except errors as exc:
        fail(str(exc))
    except EdgeAgentError as exc:
        fail(str(exc))
    raise AssertionError


@click.command("status")
@click.argument("host")
@ssh_flags
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def deploy_status(
    host: str,
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    as_json: bool,
) -> None:
    """What HOST runs: current and previous release, pending switch, service state."""
    data = _remote(host, identity, known_hosts, accept_new_host_key, root, "status")
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    dev = data.get("device") or {}
    click.echo(
        f"{host}: agent {dev.get('device', '?')} (profile {dev.get('profile', '?')}, "
        f"service {dev.get('service', '?')}: {data.get('service') or 'n/a'})"
    )
    click.echo(f"  current  {data.get('current')}")
    click.echo(f"  previous {data.get('previous')}")
    if data.get("pending"):
        click.echo(f"  pending  {data['pending'].get('version')} (not yet confirmed healthy)")
    click.echo(f"  releases {', '.join(data.get('releases') or []) or 'none'}")
    click.echo(f"  trusted keys {', '.join(data.get('trusted_keys') or []) or 'none'}")


@click.command("history")
@click.argument("host")
@ssh_flags
@click.option("--limit", default=20, show_default=True, help="Newest entries shown.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def deploy_history(
    host: str,
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    limit: int,
    as_json: bool,
) -> None:
    """What happened on HOST: installs, switches, health confirmations, rollbacks."""
    data = _remote(
        host, identity, known_hosts, accept_new_host_key, root, "history", "--limit", str(limit)
    )
    if as_json:
        click.echo(json.dumps(data["history"], indent=1))
        return
    for e in data["history"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("ts", 0)))
        extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "event", "version"))
        click.echo(f"{when}  {e.get('event', '?'):12} {e.get('version', '')}  {extra}")


@click.command("rollback")
@click.argument("host")
@ssh_flags
@click.option("--to", "to", default=None, help="Release to go back to (default: previous).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def deploy_rollback(
    host: str,
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    to: str | None,
    as_json: bool,
) -> None:
    """Switch HOST back to its previous release (or --to VERSION) and restart the agent."""
    args = ["rollback", "--reason", "asked for by the operator"]
    if to:
        args += ["--to", to]
    data = _remote(host, identity, known_hosts, accept_new_host_key, root, *args)
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"{host}: now on {data['current']} (was {data.get('rolled_back_from')})")


@click.command("prune")
@click.argument("host")
@ssh_flags
@click.option(
    "--keep",
    default=3,
    show_default=True,
    help="Releases kept (besides current, previous and pending).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def deploy_prune(
    host: str,
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    keep: int,
    as_json: bool,
) -> None:
    """Remove old releases, unused environments and content files from HOST."""
    data = _remote(
        host, identity, known_hosts, accept_new_host_key, root, "prune", "--keep", str(keep)
    )
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(
            f"{host}: removed {len(data['removed'])} releases, "
            f"{len(data['envs_removed'])} environments, {data['files_removed']} files"
        )
