"""``edgeagent rollout``: roll a release out to the fleet over MQTT (issue 12; docs/rollouts.md).

Registered on the main command in ``cli.py``; ``status`` and ``ls`` (reading rollouts off the
broker) live in ``cli_rollout_status.py``, the shared helpers in ``cli_rollout_common.py``. The
work is in ``deploy/rollout_run.py`` (the MQTT runtime) around ``deploy/rollout_plan.py`` (the
decisions); this module parses options, prints progress and maps outcomes to exit codes: 0 done
with no failure, 1 halted, aborted, failures or an error, 2 bad input, 130 stopped driving
(Ctrl-C).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from .cli_rollout_common import conn_of, fail, finish, run, with_stop
from .cli_rollout_status import rollout_ls, rollout_status
from .cli_rollout_view import TextReporter
from .clock import SYSTEM_CLOCK
from .errors import EdgeAgentError

if TYPE_CHECKING:
    from .cli_common import Ctx


@click.group()
def rollout() -> None:
    """Roll a release out to the fleet over MQTT: canary first, waves gated on health, automatic
    halt and roll-back on failures; the state is kept on the broker (docs/rollouts.md)."""


@rollout.command("start")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="TAG=VALUE[,…]",
    help="Only devices whose tags match (repeatable), e.g. kind=lamp.",
)
@click.option("--canary", default=1, show_default=True, help="Devices updated first, alone.")
@click.option(
    "--waves",
    default="10%,50%,100%",
    show_default=True,
    help="Cumulative shares of the devices; each wave waits for the one before.",
)
@click.option(
    "--max-failures",
    default="5%",
    show_default=True,
    help="Failures tolerated: a count (3) or a share of the attempted (5%).",
)
@click.option("--parallel", default=10, show_default=True, help="Devices updating at once.")
@click.option(
    "--only-changed",
    is_flag=True,
    help="Recorded in the rollout; devices always fetch only the files they lack.",
)
@click.option(
    "--confirm-within",
    default=120.0,
    show_default=True,
    help="Seconds a device's new release has to pass its own health check (10-3600).",
)
@click.option(
    "--deadline",
    default=600.0,
    show_default=True,
    help="Seconds without a report after which an update counts as failed.",
)
@click.option(
    "--wait-offline",
    default=0.0,
    show_default=True,
    help="Seconds to wait at the end for offline devices to return (then pending).",
)
@click.option("--id", "rollout_id", default=None, help="Rollout id (default r-DATE-TIME-XXXX).")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@click.option(
    "--detach",
    is_flag=True,
    help="Drive it from a background process; follow with `rollout status --watch`.",
)
@click.pass_context
def rollout_start(
    ctx: click.Context,
    bundle: Path,
    where: tuple[str, ...],
    canary: int,
    waves: str,
    max_failures: str,
    parallel: int,
    only_changed: bool,
    confirm_within: float,
    deadline: float,
    wait_offline: float,
    rollout_id: str | None,
    as_json: bool,
    detach: bool,
) -> None:
    """Update the fleet's devices to BUNDLE: a bundle folder, or a folder of bundles, one per
    device (a bundle runs one device's agent config). Devices get it by `system.update`, the
    content files from this process over MQTT; devices already on it are skipped, devices
    claimed by another active rollout are left alone (conflict)."""
    from .deploy.rollout_io import load_release
    from .deploy.rollout_run import start_rollout
    from .deploy.rollout_state import RolloutError, RolloutSpec, parse_max_failures, parse_waves
    from .protocol import check_name
    from .routing import parse_where

    obj: Ctx = ctx.obj
    rid = rollout_id or f"r-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    try:
        check_name(rid, "rollout id")
        if len(rid) > 100:
            raise RolloutError(f"--id: {len(rid)} characters, at most 100")
        selector: dict[str, str] = {}
        for w in where:
            selector.update(parse_where(w))
        if not 10 <= confirm_within <= 3600:
            raise RolloutError(f"--confirm-within: {confirm_within:g} s is not within 10-3600")
        if deadline <= confirm_within:
            raise RolloutError(
                f"--deadline {deadline:g} s must be longer than --confirm-within "
                f"{confirm_within:g} s (a new release may be silent until it is confirmed)"
            )
        wave_shares = parse_waves(waves)
        parse_max_failures(max_failures)
        release = load_release(bundle)  # the options first: they are cheaper to check
        spec = RolloutSpec(
            id=rid, version=release.label, bundle_hash=release.content_hash, where=selector,
            canary=canary, waves=wave_shares, max_failures=max_failures,
            parallel=parallel, only_changed=only_changed, confirm_within=confirm_within,
            deadline=deadline, wait_offline=wait_offline,
        )  # fmt: skip
    except (EdgeAgentError, ValueError) as exc:
        fail(exc, 2)
    conn = conn_of(obj)
    if detach:
        _detach(ctx, rid)
    tty = sys.stdout.isatty() and not as_json
    reporter = TextReporter(tty=tty, err=as_json)
    try:
        outcome = run(with_stop(lambda stop: start_rollout(conn, release, spec, reporter, stop)),
                       bad_input=2)  # fmt: skip
    finally:
        reporter.close()
    finish(outcome, as_json, obj.fleet, bundle)


def _detach(ctx: click.Context, rid: str) -> NoReturn:
    """Start this same command in a background process (without --detach, with --id) and
    return once its rollout is on the broker."""
    from .deploy.rollout_io import read_rollouts
    from .deploy.rollout_run import open_fleet

    root = ctx.find_root()
    argv = [sys.executable, "-m", "edgeagent.cli"]
    for name, flag in (
        ("broker", "--broker"),
        ("broker_file", "--broker-config"),
        ("fleet", "--fleet"),
        ("root", "--root"),
        ("log_level", "--log-level"),
    ):
        value = root.params.get(name)
        if value is not None:
            argv += [flag, str(value)]
    argv += ["rollout", "start", str(Path(ctx.params["bundle"]).resolve())]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if name in ("bundle", "detach", "rollout_id", "as_json") or not isinstance(
            param, click.Option
        ):
            continue
        flag = param.opts[0]
        if param.is_flag:
            argv += [flag] if value else []
        elif param.multiple:
            for v in value or ():
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    argv += ["--id", rid]
    logs = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    log_file = logs / "edgeagent" / "rollouts" / f"{rid}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    obj: Ctx = ctx.obj
    conn = conn_of(obj)

    async def wait_started() -> bool:
        deadline = SYSTEM_CLOCK.monotonic() + 60
        async with open_fleet(conn) as fleet:
            while SYSTEM_CLOCK.monotonic() < deadline and proc.poll() is None:
                if rid in await read_rollouts(fleet.transport, fleet.topics, rid):
                    return True
                await SYSTEM_CLOCK.sleep(0.5)
        return False

    if not run(wait_started()):
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        fail(f"the background rollout did not start (log {log_file}):\n" + "\n".join(tail),
              proc.returncode if proc.returncode in (1, 2) else 1)  # fmt: skip
    click.echo(
        f"rollout {rid} driven in the background (pid {proc.pid}, log {log_file}); follow it "
        f"with `edgeagent --fleet {obj.fleet} rollout status {rid} --watch`"
    )
    sys.exit(0)


def _command(obj: Ctx, rollout_id: str, what: str) -> None:
    from .deploy.rollout_run import command

    click.echo(run(command(conn_of(obj), rollout_id, what)))


@rollout.command("pause")
@click.argument("rollout_id")
@click.pass_obj
def rollout_pause(obj: Ctx, rollout_id: str) -> None:
    """No new device starts; updates under way go on."""
    _command(obj, rollout_id, "pause")


@rollout.command("abort")
@click.argument("rollout_id")
@click.pass_obj
def rollout_abort(obj: Ctx, rollout_id: str) -> None:
    """Stop for good: no new start, no roll-back; the devices it held are free again."""
    _command(obj, rollout_id, "abort")


@rollout.command("resume")
@click.argument("rollout_id")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Drive it from this process (when none does): the rollout's release.",
)
@click.option("--json", "as_json", is_flag=True, help="With --bundle: the final status as JSON.")
@click.pass_obj
def rollout_resume(obj: Ctx, rollout_id: str, bundle: Path | None, as_json: bool) -> None:
    """Resume a paused rollout. With --bundle and no process driving it (stopped, killed, or on
    another machine), drive it from here from its state on the broker, to its end."""
    from .deploy.rollout_io import load_release, read_rollouts
    from .deploy.rollout_run import open_fleet, resume_rollout

    conn = conn_of(obj)

    async def driven() -> bool:
        async with open_fleet(conn) as fleet:
            k = (await read_rollouts(fleet.transport, fleet.topics, rollout_id)).get(rollout_id)
            return k is not None and k.driven

    if bundle is None or run(driven()):
        _command(obj, rollout_id, "resume")
        return
    release = run(asyncio.to_thread(load_release, bundle), bad_input=2)
    reporter = TextReporter(tty=sys.stdout.isatty() and not as_json, err=as_json)
    try:
        outcome = run(
            with_stop(lambda stop: resume_rollout(conn, rollout_id, release, reporter, stop)),
            bad_input=2,
        )
    finally:
        reporter.close()
    finish(outcome, as_json, obj.fleet, bundle)


rollout.add_command(rollout_status)
rollout.add_command(rollout_ls)
