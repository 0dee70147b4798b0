"""``edgeagent rollout status|ls``: rollouts as kept (retained) on the broker, from any machine.

Added to the ``rollout`` group in ``cli_rollout.py``; the text comes from ``cli_rollout_view.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from .cli_rollout_common import conn_of, fail, run
from .cli_rollout_view import counts_text, format_status, when_text
from .clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from .cli_common import Ctx
    from .deploy.rollout_io import Known


def _pick(known: Mapping[str, Known], rollout_id: str | None) -> list[str]:
    """The rollouts ``status`` shows: the one named, else the active ones, else the latest."""
    if rollout_id is not None:
        if rollout_id not in known:
            fail(f"no rollout {rollout_id} in this fleet")
        return [rollout_id]
    active = sorted((rid for rid, k in known.items() if not k.finished),
                    key=lambda rid: known[rid].started_at)  # fmt: skip
    return active or ([max(known, key=lambda rid: known[rid].started_at)] if known else [])


def _record(k: Known, devices: bool = True) -> dict[str, Any]:
    if k.rollout is None:
        return {"error": k.error, "driver": k.driver}
    return {**k.rollout.status(devices=devices), "driver": k.driver}


@click.command("status")
@click.argument("rollout_id", required=False)
@click.option(
    "--watch", is_flag=True, help="Keep printing as it changes (waiting for it), until it ends."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one line per change with --watch)."
)
@click.pass_obj
def rollout_status(obj: Ctx, rollout_id: str | None, watch: bool, as_json: bool) -> None:
    """Phase, wave, counts per state, failures against the threshold and the devices per state
    of rollout ROLLOUT_ID (default: the active ones, else the latest), from the broker."""
    from .deploy.rollout_io import describe_driver, read_rollouts
    from .deploy.rollout_run import open_fleet

    conn = conn_of(obj)

    async def once(fleet: Any) -> tuple[list[dict[str, Any]], bool] | None:
        known = await read_rollouts(fleet.transport, fleet.topics, rollout_id)
        if watch and rollout_id is not None and rollout_id not in known:
            return None  # not started yet: wait for it
        picked = _pick(known, rollout_id)
        records = [{"id": rid, **_record(known[rid])} for rid in picked]
        over = all(known[rid].finished for rid in picked)
        return records, over

    def show(records: list[dict[str, Any]], single: bool) -> None:
        if as_json:
            body: Any = records[0] if single and records else records
            click.echo(json.dumps(body, indent=None if watch else 1))
            return
        if not records:
            click.echo("no rollout in this fleet")
        for rec in records:
            if "error" in rec:
                click.echo(f"rollout {rec['id']}: unreadable state: {rec['error']}")
            else:
                driver = describe_driver(rec.get("driver"))
                click.echo(format_status(rec, None if driver == "none" else driver))

    async def main() -> None:
        async with open_fleet(conn) as fleet:
            last = None
            while True:
                got = await once(fleet)
                if got is None:
                    await SYSTEM_CLOCK.sleep(1.0)
                    continue
                records, over = got
                key = json.dumps(records, sort_keys=True, default=str)
                if key != last:
                    if watch and not as_json and sys.stdout.isatty():
                        click.clear()
                    show(records, rollout_id is not None)
                    last = key
                if not watch or over:
                    return
                await SYSTEM_CLOCK.sleep(1.0)

    run(main())


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def rollout_ls(obj: Ctx, as_json: bool) -> None:
    """Every rollout kept on the broker, oldest first: phase, wave, counts, driver."""
    from .deploy.rollout_io import describe_driver, read_rollouts
    from .deploy.rollout_run import open_fleet

    async def main() -> dict[str, Known]:
        async with open_fleet(conn_of(obj)) as fleet:
            return await read_rollouts(fleet.transport, fleet.topics)

    known = run(main())
    order = sorted(known, key=lambda rid: (known[rid].started_at, rid))
    records = [{"id": rid, **_record(known[rid], devices=False)} for rid in order]
    if as_json:
        click.echo(json.dumps(records, indent=1))
        return
    if not records:
        click.echo("no rollout in this fleet")
    for rec in records:
        if "error" in rec:
            click.echo(f"{rec['id']:<28} unreadable: {rec['error']}")
            continue
        click.echo(
            f"{rec['id']:<28} {rec['phase']:<8} wave {rec['wave']}/{rec['waves']}  "
            f"{rec['version']:<20} {counts_text(rec)}  started {when_text(rec['started_at'])}  "
            f"driver {describe_driver(rec.get('driver'))}"
        )
