"""``edgeagent data pull``: collect the hard cases devices kept into a dataset (issue 15).

The devices that keep cases are the ones whose manifest has ``data.cases``
(:mod:`edgeagent.data_skills`). Each is paged through in turn (one page in memory at a time),
every new case appended to the dataset (:mod:`edgeagent.dataset`); with ``--clear`` a device is
told to remove what was pulled (``data.clear`` up to the last cursor) only once the file is on
disk. A device that is offline or does not answer is reported and skipped: a pull is never
fatal for one device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_common import Ctx, run
from .errors import CallError, CallTimeout, TransportError, Unavailable
from .models.hardcases import REASONS

if TYPE_CHECKING:
    from .client import Fleet
    from .dataset import DatasetWriter, DeviceResult

PAGE_CASES = 200


@click.group("data")
def data() -> None:
    """The data loop: collect the hard cases devices kept into a dataset (docs/data-loop.md)."""


def _where(pairs: tuple[str, ...]) -> dict[str, str]:
    where: dict[str, str] = {}
    for pair in pairs:
        for item in filter(None, pair.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--where")
            where[key.strip()] = value.strip()
    return where


async def pull_device(
    fleet: Fleet,
    device: str,
    writer: DatasetWriter,
    result: DeviceResult,
    query: dict[str, Any],
    *,
    clear: bool,
    timeout: float,
) -> None:
    """Page through one device's cases into ``writer``; with ``clear``, clear what was pulled."""
    cursor = 0
    while True:
        page = await fleet.call(device, "data.cases", {**query, "after": cursor}, timeout=timeout)
        result.pages += 1
        cases = page.get("cases") or []
        result.received += len(cases)
        result.new += sum(writer.add(c) for c in cases if isinstance(c, dict))
        nxt = int(page.get("cursor", cursor))
        click.echo(f"{device}: page {result.pages}, {result.received} cases "
                   f"({result.new} new)", err=True)  # fmt: skip
        if not page.get("more") or nxt <= cursor:
            cursor = max(cursor, nxt)
            break
        cursor = nxt
    if clear and cursor > 0:
        writer.sync()  # on disk before the device forgets it
        which = {k: v for k, v in query.items() if k in ("skill", "reason")}
        gone = await fleet.call(device, "data.clear", {**which, "upto": cursor}, timeout=timeout)
        result.cleared = int(gone.get("cleared", 0))
        click.echo(f"{device}: cleared {result.cleared} cases", err=True)


@data.command("pull")
@click.option("--where", "where_pairs", multiple=True, metavar="K=V",
              help="Only devices with this tag (repeatable, or K=V,K2=V2).")  # fmt: skip
@click.option("--skill", default=None, help="Only this skill's cases.")
@click.option("--reason", type=click.Choice(REASONS), default=None,
              help="Only cases kept for this reason.")  # fmt: skip
@click.option("--clear", is_flag=True,
              help="Remove the pulled cases from the devices once they are on disk.")  # fmt: skip
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="A folder (cases.jsonl, manifest.json) or FILE.jsonl "
              "(FILE.manifest.json beside it).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["jsonl", "examples"]), default="jsonl",
              show_default=True,
              help="examples: also write labelled cases as training examples (a folder only): "
              "examples.jsonl for `models adapt`, digits.npz for the digits recipe.")  # fmt: skip
@click.option("--page", "page_size", type=click.IntRange(1, 1000), default=PAGE_CASES,
              show_default=True, help="Cases per page asked of a device.")  # fmt: skip
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for each page.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def pull(
    obj: Ctx,
    where_pairs: tuple[str, ...],
    skill: str | None,
    reason: str | None,
    clear: bool,
    output: Path,
    fmt: str,
    page_size: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Collect the hard cases kept by the fleet's devices into a dataset, deduplicated by case id.

    Offline and unreachable devices are reported and skipped. Progress goes to stderr.
    """
    from .dataset import DatasetWriter, DeviceResult, export_examples, pull_targets

    where = _where(where_pairs)
    writer = DatasetWriter(output)
    if fmt == "examples" and writer.folder is None:
        raise click.UsageError("--format examples writes several files: give -o a folder")
    query: dict[str, Any] = {"limit": page_size}
    if skill is not None:
        query["skill"] = skill
    if reason is not None:
        query["reason"] = reason

    async def main() -> dict[str, DeviceResult]:
        results: dict[str, DeviceResult] = {}
        async with obj.make_fleet(timeout) as fleet:
            targets = pull_targets(await fleet.devices(), where)
            for device in targets.offline:
                results[device] = DeviceResult(status="offline")
                click.echo(f"{device}: offline, skipped", err=True)
            if not targets.pull and not targets.offline:
                click.echo("no device keeps hard cases (no data.cases skill"
                           + (f" among devices with {where}" if where else "") + ")",
                           err=True)  # fmt: skip
            for device in targets.pull:
                result = results[device] = DeviceResult()
                try:
                    await pull_device(fleet, device, writer, result, query, clear=clear,
                                      timeout=timeout)  # fmt: skip
                except (CallTimeout, Unavailable, TransportError) as exc:
                    result.status, result.error = "unreachable", str(exc)
                    click.echo(f"{device}: unreachable, skipped ({exc})", err=True)
                except CallError as exc:
                    result.status, result.error = "failed", str(exc)
                    click.echo(f"{device}: failed ({exc})", err=True)
        return results

    try:
        results = run(main())
    finally:
        writer.close()
    shown = {"skill": skill, "reason": reason, "where": where or None, "clear": clear}
    manifest = writer.manifest(results, {k: v for k, v in shown.items() if v})
    if fmt == "examples" and writer.folder is not None:
        counts = export_examples(writer.cases_path, writer.folder)
        manifest["exports"] = {
            "examples.jsonl": counts.examples,
            "digits.npz": counts.digits,
            "labelled_without_example": counts.skipped_labelled,
        }
    writer.write_manifest(manifest)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    new = manifest["last_pull"]["new"]
    click.echo(f"{new} new cases from {sum(r.status == 'pulled' for r in results.values())} "
               f"devices; {manifest['cases']} in {writer.cases_path}")  # fmt: skip
    for device, r in sorted(results.items()):
        if r.status != "pulled":
            click.echo(f"  {device}: {r.status}" + (f" ({r.error})" if r.error else ""))
    if "exports" in manifest:
        e = manifest["exports"]
        click.echo(f"  examples: {e['examples.jsonl']} text, {e['digits.npz']} digits "
                   f"({e['labelled_without_example']} labelled cases made none)")  # fmt: skip
