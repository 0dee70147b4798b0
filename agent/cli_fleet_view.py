"""``edgeagent fleet ls|show|watch``: the devices of a fleet, from their retained messages.

The ``fleet`` group also carries the identity commands (``fleet init|enroll|revoke|identities``
from ``cli_fleet.py``); ``cli.py`` adds them and registers the group on the main command.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from .cli_common import Ctx, run
from .client import DeviceInfo
from .protocol import Health, Manifest, StateMessage


@click.group()
def fleet() -> None:
    """See the devices of a fleet."""


def _device_row(d: DeviceInfo) -> dict[str, Any]:
    return {
        "device": d.device,
        "status": d.status,
        "since": d.since,
        "profile": d.manifest.profile if d.manifest else None,
        "release": d.manifest.release if d.manifest else None,
        "tags": d.tags,
        "skills": [s.name for s in d.skills],
    }


@fleet.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array) instead of a table.")
@click.option("--online", is_flag=True, help="Only devices that are online.")
@click.pass_obj
def fleet_ls(obj: Ctx, as_json: bool, online: bool) -> None:
    """List devices: online state, profile, tags and skills (from retained messages)."""

    async def go() -> list[DeviceInfo]:
        async with obj.make_fleet() as f:
            return await f.devices(include_offline=not online)

    devices = run(go())
    if as_json:
        click.echo(json.dumps([_device_row(d) for d in devices], indent=2))
        return
    if not devices:
        click.echo(f"no devices in fleet {obj.fleet!r}", err=True)
        return
    rows = [
        (
            d.device,
            d.status,
            (d.manifest.profile or "-") if d.manifest else "-",
            (d.manifest.release or "-") if d.manifest else "-",
            ",".join(f"{k}={v}" for k, v in sorted(d.tags.items())) or "-",
            ", ".join(s.name for s in d.skills) or "-",
        )
        for d in devices
    ]
    header = ("DEVICE", "STATUS", "PROFILE", "RELEASE", "TAGS", "SKILLS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])


@fleet.command("show")
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def fleet_show(obj: Ctx, device: str, as_json: bool) -> None:
    """Show one device's manifest: skills with their input and output schemas."""

    async def go() -> DeviceInfo | None:
        async with obj.make_fleet() as f:
            return await f.device(device)

    info = run(go())
    if info is None or info.manifest is None:
        click.echo(f"error: no device {device!r} in fleet {obj.fleet!r}", err=True)
        sys.exit(1)
    m = info.manifest
    if as_json:
        click.echo(json.dumps({"status": info.status, **m.model_dump(mode="json")}, indent=2))
        return
    click.echo(f"{m.device} ({info.status})  profile={m.profile or '-'}  tags={m.tags}")
    for s in m.skills:
        flags = f"{s.side_effect}{', idempotent' if s.idempotent else ''}"
        click.echo(f"  {s.name} [{flags}]  {s.description}")
        click.echo(f"    input:  {json.dumps(s.input_schema.get('properties', {}))}")
        click.echo(f"    output: {json.dumps(s.output_schema)}")
    for e in m.events:
        click.echo(f"  event {e.name}: {e.description}")


@fleet.command("watch")
@click.option("--json", "as_json", is_flag=True, help="One JSON message per line.")
@click.option("--count", type=int, default=None, help="Stop after this many updates.")
@click.pass_obj
def fleet_watch(obj: Ctx, as_json: bool, count: int | None) -> None:
    """Follow devices' state and health live (Ctrl-C to stop)."""

    async def go() -> None:
        seen = 0
        async with obj.make_fleet() as f:
            async for msg in f.watch():
                if as_json:
                    click.echo(msg.model_dump_json(exclude_none=True))
                else:
                    click.echo(_describe(msg))
                seen += 1
                if count is not None and seen >= count:
                    return

    run(go())


def _describe(msg: Any) -> str:
    stamp = time.strftime("%H:%M:%S")
    if isinstance(msg, StateMessage):
        return f"{stamp} {msg.device:<20} state   {msg.status}" + (
            f" ({msg.reason})" if msg.reason else ""
        )
    if isinstance(msg, Manifest):
        return f"{stamp} {msg.device:<20} skills  {', '.join(s.name for s in msg.skills)}"
    if isinstance(msg, Health):
        lat = ", ".join(
            f"{k} p50={v.p50_ms}ms p95={v.p95_ms}ms" for k, v in msg.skills.items() if v.calls
        )
        mem = f"{msg.memory_rss_bytes / 1e6:.0f}MB" if msg.memory_rss_bytes else "-"
        return (
            f"{stamp} {msg.device:<20} health  up={msg.uptime_s:.0f}s served={msg.calls_served} "
            f"failed={msg.calls_failed} queue={msg.queue_depth} mem={mem} {lat}"
        )
    return f"{stamp} {msg!r}"
