"""``edgeagent image flash IMG --to DEVICE``: a thin click layer over ``edgeagent.images``
(``flash_io.plan`` decides, ``flash_io.flash`` writes and reads back). The command object
``flash`` is added to the ``image`` group in ``cli.py``.

Exit status 0 when written (and verified), 1 for anything refused or failed, with one line per
reason on stderr.
"""

from __future__ import annotations

import json
import sys

import click

from .cli_sim import Bar
from .errors import EdgeAgentError
from .images.flash import FlashPlan, FlashRefused, size_text
from .images.flash_io import FlashResult, plan
from .images.flash_io import flash as flash_image


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _rate(n: int, seconds: float | None) -> str:
    return f"{n / 1e6 / seconds:,.0f} MB/s" if seconds else "-"


def _confirm(p: FlashPlan) -> None:
    if not sys.stdin.isatty():
        _fail(
            f"stdin is not a terminal, so no one can confirm overwriting {p.target.path}: "
            "pass --yes"
        )
    if not click.confirm(f"Overwrite {p.target.path}?", default=False, err=True):
        _fail("nothing written")


@click.command("flash")
@click.argument("image", metavar="IMG")
@click.option(
    "--to",
    "target",
    required=True,
    metavar="DEVICE",
    help="The disk to write (/dev/sdX, /dev/mmcblkN, /dev/loopN) or a file.",
)
@click.option("--yes", is_flag=True, help="Do not ask before overwriting.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow a disk that is not removable (never the system's disk, nor a mounted one).",
)
@click.option("--no-verify", is_flag=True, help="Skip reading the target back.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def flash(image: str, target: str, yes: bool, force: bool, no_verify: bool, as_json: bool) -> None:
    """Write IMG (.img, or .img.xz decompressed on the fly) to an SD card, a USB disk or a file,
    then read it back and compare SHA-256.

    Refuses the disk the system runs from, any disk in use (mounted, swap, LVM/RAID), partitions,
    read-only or too small targets, and disks that are not removable unless --force. Shows what
    will be overwritten and asks unless --yes.
    """
    try:
        p = plan(image, target, force=force)
    except EdgeAgentError as exc:
        _fail(str(exc))
        return
    for line in p.describe():
        click.echo(line, err=True)
    if not p.allowed:
        for reason in p.refusals:
            click.echo(f"refused: {reason}", err=True)
        _fail(f"nothing written to {target}")
    if p.overwrites and not yes:
        _confirm(p)
    bar = Bar(enabled=sys.stderr.isatty() and not as_json)
    try:
        result = flash_image(
            p,
            verify_after=not no_verify,
            progress=lambda phase, done, total: bar.update(phase, done / total),
        )
    except FlashRefused as exc:
        bar.close()
        _fail(str(exc))
        return
    except (EdgeAgentError, OSError) as exc:
        bar.close()
        _fail(f"{exc}; {target} holds an incomplete or wrong image")
        return
    bar.close()
    _report(result, as_json)


def _report(r: FlashResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r.to_json()))
        return
    click.echo(
        f"wrote {size_text(r.bytes)} to {r.target} in {r.write_seconds:.1f} s "
        f"({_rate(r.bytes, r.write_seconds)})"
    )
    if r.verify_seconds is not None:
        click.echo(
            f"verified: read back in {r.verify_seconds:.1f} s "
            f"({_rate(r.bytes, r.verify_seconds)}), sha256 {r.sha256}"
        )
    else:
        click.echo(f"not verified (--no-verify); the image's sha256 is {r.sha256}")
