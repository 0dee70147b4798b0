"""``edgeagent fleet init|enroll|revoke|identities`` and ``edgeagent broker config``.

A thin layer over :mod:`edgeagent.fleetdir` (the fleet folder) and :mod:`edgeagent.brokerconf`
(the generated mosquitto policy). ``cli.py`` adds :data:`fleet_commands` to its ``fleet`` group
and registers :data:`broker`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from .errors import EdgeAgentError
from .fleetdir import (
    FLEET_DIR_ENV,
    ROLES,
    FleetDir,
    Identity,
    Role,
    default_dir,
    skills_from_config,
)
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, SideEffect

_DIR_HELP = f"Fleet folder [env {FLEET_DIR_ENV}; default ./fleet]."


def _fail(exc: EdgeAgentError | ValueError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _open(path: Path | None) -> FleetDir:
    try:
        return FleetDir.open(path)
    except EdgeAgentError as exc:
        _fail(exc)


def _row(i: Identity) -> dict[str, Any]:
    return {
        "name": i.name,
        "role": i.role,
        "auth": i.auth,
        "serial": i.serial,
        "revoked": i.revoked,
        "grants": i.grants,
        "skills": i.skills,
    }


@click.command("init")
@click.option("--dir", "path", type=click.Path(file_okay=False, path_type=Path), help=_DIR_HELP)
@click.option(
    "--broker-host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="Broker host name or IP for its certificate (repeat; first is used in URLs) "
    "[default: localhost and 127.0.0.1].",
)
@click.option(
    "--fleet", "fleet_name", default=None, help="Fleet name [default: the global --fleet]."
)
@click.option("--root", default=None, help="Topic root [default: the global --root].")
@click.option("--port", default=8883, show_default=True, help="Broker TLS port (certificates).")
@click.option(
    "--password-port", default=8884, show_default=True, help="Broker TLS port for passwords."
)
@click.option("--force", is_flag=True, help="Replace an existing fleet (old credentials die).")
@click.pass_obj
def fleet_init(
    obj: Any,
    path: Path | None,
    hosts: tuple[str, ...],
    fleet_name: str | None,
    root: str | None,
    port: int,
    password_port: int,
    force: bool,
) -> None:
    """Create the fleet's certificate authority, broker certificate and registry."""
    path = path or default_dir()
    try:
        fd = FleetDir.create(
            path,
            fleet=fleet_name or str(getattr(obj, "fleet", DEFAULT_FLEET)),
            root=root or str(getattr(obj, "root", DEFAULT_ROOT)),
            hosts=hosts or ("localhost", "127.0.0.1"),
            port=port,
            password_port=password_port,
            force=force,
        )
    except (EdgeAgentError, ValueError) as exc:
        _fail(exc)
    reg = fd.registry
    click.echo(f"fleet {reg.fleet!r} (topics {reg.topics.base}/…) created in {path}")
    click.echo(f"  CA: {fd.ca_cert} (key {fd.ca_key}, keep it offline if you can)")
    click.echo(f"  broker certificate for: {', '.join(reg.broker_hosts)}")
    click.echo("next: edgeagent fleet enroll NAME --role device|coordinator|operator|client")


@click.command("enroll")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the identity is.")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    metavar="SKILL|DEVICE/SKILL",
    help="Actuate skill it may call (repeat): SKILL on any device and via the coordinator, or "
    "DEVICE/SKILL on that device only. Operators and coordinators may call everything.",
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Devices: the agent config; its skills are imported to learn which actuate.",
)
@click.option("--actuate", multiple=True, metavar="SKILL", help="Devices: an actuate skill.")
@click.option("--read", "reads", multiple=True, metavar="SKILL", help="Devices: a read skill.")
@click.option("--password", is_flag=True, help="Username/password instead of a certificate.")
@click.option("--force", is_flag=True, help="Re-issue credentials (the old ones stop working).")
@click.option("--dir", "path", type=click.Path(file_okay=False, path_type=Path), help=_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fleet_enroll(
    name: str,
    role: str,
    grants: tuple[str, ...],
    config: Path | None,
    actuate: tuple[str, ...],
    reads: tuple[str, ...],
    password: bool,
    force: bool,
    path: Path | None,
    as_json: bool,
) -> None:
    """Issue credentials for NAME (a device's id, or a coordinator, operator or client name).

    Writes identities/NAME/ in the fleet folder: NAME.crt and NAME.key (or NAME.password),
    ca.crt and broker.yaml, a `broker:` section for the agent config. A device's skills decide
    which calls are actuations: give --config (its agent YAML) or --read/--actuate; a skill no
    device declares is treated as an actuation.
    """
    fd = _open(path)
    skills: dict[str, SideEffect] = {}
    try:
        if config is not None:
            device, fleet_name, skills = skills_from_config(config)
            if device != name:
                raise click.BadParameter(f"{config} is for device {device!r}, not {name!r}")
            if fleet_name != fd.registry.fleet:
                raise click.BadParameter(
                    f"{config} is for fleet {fleet_name!r}, this fleet is {fd.registry.fleet!r}"
                )
        for s in reads:
            skills[s] = "read"
        for s in actuate:
            skills[s] = "actuate"
        done = fd.enroll(
            name, cast(Role, role), grants=grants, skills=skills, password=password, force=force
        )
        refreshed = fd.refresh_broker_config()
    except (EdgeAgentError, ValueError) as exc:
        _fail(exc)
    if as_json:
        out = _row(done.identity) | {
            "folder": str(done.folder),
            "url": done.url,
            "broker_file": str(done.broker_file),
            "broker_config_rewritten": bool(refreshed),
        }
        click.echo(json.dumps(out, indent=2))
        return
    i = done.identity
    how = "username/password" if i.auth == "password" else f"certificate serial {i.serial}"
    click.echo(f"enrolled {i.name} ({i.role}, {how}) in {done.folder}")
    click.echo(f"  connect: {done.url}; `broker:` section in {done.broker_file}")
    if i.skills:
        act = [s for s, e in i.skills.items() if e == "actuate"]
        click.echo(f"  skills: {len(i.skills)} ({len(act)} actuate: {', '.join(act) or '-'})")
    if i.role == "coordinator":
        click.echo(f"  run it with: coordinator run --group {fd.registry.coordinator_group}")
    if refreshed:
        click.echo(
            f"  broker config rewritten in {fd.registry.broker.config_dir}: reload mosquitto"
        )
    else:
        click.echo("  then: edgeagent broker config (and restart mosquitto)")


@click.command("revoke")
@click.argument("name")
@click.option("--dir", "path", type=click.Path(file_okay=False, path_type=Path), help=_DIR_HELP)
def fleet_revoke(name: str, path: Path | None) -> None:
    """Revoke NAME: its certificate goes on the CRL, its rules and password leave the config.

    The broker refuses it once restarted with the new files (mosquitto reads the CRL at start).
    """
    fd = _open(path)
    try:
        fd.revoke(name)
    except EdgeAgentError as exc:
        _fail(exc)
    click.echo(f"revoked {name}; CRL rewritten: {fd.crl}")
    if fd.registry.broker.config_dir:
        click.echo(f"broker config rewritten in {fd.registry.broker.config_dir}: restart mosquitto")
    else:
        click.echo("now: edgeagent broker config, then restart mosquitto")


@click.command("identities")
@click.option("--dir", "path", type=click.Path(file_okay=False, path_type=Path), help=_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array).")
def fleet_identities(path: Path | None, as_json: bool) -> None:
    """List the enrolled identities (the registry; `fleet ls` lists devices on the broker)."""
    fd = _open(path)
    rows = sorted(fd.registry.identities, key=lambda i: (i.role, i.name))
    if as_json:
        click.echo(json.dumps([_row(i) for i in rows], indent=2))
        return
    if not rows:
        click.echo(f"no identities in {fd.path}: edgeagent fleet enroll NAME --role …", err=True)
        return
    header = ("NAME", "ROLE", "AUTH", "STATUS", "GRANTS", "ACTUATE SKILLS")
    table = [
        (
            i.name,
            i.role,
            i.auth,
            "revoked" if i.revoked else "active",
            ",".join(i.grants) or "-",
            ",".join(s for s, e in i.skills.items() if e == "actuate") or "-",
        )
        for i in rows
    ]
    widths = [max(len(r[c]) for r in [header, *table]) for c in range(5)]
    for r in [header, *table]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r[:5], widths, strict=True)) + "  " + r[5])


#: Added to the ``fleet`` group by cli.py.
fleet_commands = [fleet_init, fleet_enroll, fleet_revoke, fleet_identities]


@click.group()
def broker() -> None:
    """Generate the broker's configuration from the fleet (see docs/security.md)."""


@broker.command("config")
@click.option(
    "--fleet-dir", "path", type=click.Path(file_okay=False, path_type=Path), help=_DIR_HELP
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write [default: FLEET_DIR/broker].",
)
@click.option("--port", type=int, default=None, help="TLS port for certificates [fleet's].")
@click.option("--password-port", type=int, default=None, help="TLS port for passwords [fleet's].")
@click.option("--bind", default=None, help="Address to listen on [every address].")
@click.option(
    "--install-dir",
    default=None,
    help="Where the files will live on the broker host (paths in mosquitto.conf) [--out].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the written files as JSON.")
def broker_config(
    path: Path | None,
    out: Path | None,
    port: int | None,
    password_port: int | None,
    bind: str | None,
    install_dir: str | None,
    as_json: bool,
) -> None:
    """Write mosquitto.conf, acl, passwd and the TLS files for a mosquitto 2 broker.

    TLS listener requiring a certificate from the fleet CA (its CN is the identity), a TLS
    password listener if any identity uses a password, no anonymous access, the CRL, and an ACL
    where devices write only their own topics and actuations need a grant. Revocations and
    enrolments rewrite these files in place. Run: mosquitto -c OUT/mosquitto.conf
    """
    fd = _open(path)
    target = out or fd.path / "broker"
    try:
        files = fd.write_broker_config(
            target, install_dir=install_dir, port=port, password_port=password_port, bind=bind
        )
    except (EdgeAgentError, ValueError, OSError) as exc:
        _fail(exc if not isinstance(exc, OSError) else ValueError(f"{target}: {exc}"))
    if as_json:
        click.echo(json.dumps({"dir": str(target), "files": [str(f) for f in files]}, indent=2))
        return
    s = fd.registry.broker
    click.echo(f"wrote {len(files)} files to {target}")
    click.echo(f"  certificate listener: {s.port}; password listener: {s.password_port} (if used)")
    click.echo(f"  run: mosquitto -c {target / 'mosquitto.conf'}")
