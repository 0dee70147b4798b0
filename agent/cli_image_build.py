"""``edgeagent image build --base FILE.img[.xz]``: a thin click layer over
``edgeagent.images.customize`` and, for ``--count``/``--name``, ``edgeagent.images.batch`` (the
``image`` group in ``cli.py`` registers :data:`build`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_deploy import default_key
from .cli_sim import Bar
from .errors import EdgeAgentError

if TYPE_CHECKING:
    from .images.customize import BuildResult


@click.command("build")
@click.option(
    "--base",
    "base",
    type=click.Path(path_type=Path),
    required=True,
    help="Raspberry Pi OS image to customise (FILE.img or FILE.img.xz), or `debian`: a "
    "complete image from Debian's arm64 packages (needs root).",
)
@click.option(
    "--device",
    "profile",
    required=True,
    help="Device profile (pi4, pi5, pi3b-plus, pi-zero-2w, …), or a family: `pi` makes one image "
    "for every 64-bit Pi the base boots (a bundle for each; the board picks at first boot).",
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    required=True,
    help="The agent config (AGENT.yaml) the device runs.",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    default=None,
    help="Signing key (default: $EDGEAGENT_KEY or ~/.config/edgeagent/keys/…).",
)
@click.option("--hostname", default=None, help="Host name (default: from the device id).")
@click.option(
    "--ssh-key",
    "ssh_keys",
    type=click.Path(path_type=Path),
    multiple=True,
    help="OpenSSH public key file for --user (repeatable).",
)
@click.option("--wifi-ssid", default=None, help="Wi-Fi network name.")
@click.option(
    "--wifi-psk-env",
    default=None,
    metavar="VAR",
    help="Environment variable holding the Wi-Fi passphrase (written hashed).",
)
@click.option("--country", default=None, help="Wi-Fi country code (GB, FR, US…).")
@click.option("--timezone", default=None, help="Time zone, e.g. Europe/Paris.")
@click.option("--user", default="pi", show_default=True, help="The login user.")
@click.option(
    "--fleet-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Fleet folder: enrol the device and give it its own certificate.",
)
@click.option(
    "--reenrol",
    is_flag=True,
    help="The device is enrolled already (re-flashed): issue new credentials, the old "
    "certificate goes on the CRL.",
)
@click.option(
    "--python",
    default=None,
    help="The image's Python (default: read from the image, else guessed).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output image (default: BASE-DEVICE.img beside the base). With --count: may hold "
    "{device} or {n}; without them, a folder for DEVICE.img files.",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1000),
    default=None,
    help="Build this many images, each a device of its own (id from --name).",
)
@click.option(
    "--name",
    "name",
    default=None,
    metavar="PATTERN",
    help="Device ids for --count, with {n}: 'lamp-{n}', 'lamp-{n:02d}' (replaces the config's "
    "device:).",
)
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=None,
    help="The first {n} of --name (default 1).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as JSON (a list, one per image, with --count or --name).",
)
def build(
    base: Path,
    profile: str,
    config: Path,
    key: Path | None,
    hostname: str | None,
    ssh_keys: tuple[Path, ...],
    wifi_ssid: str | None,
    wifi_psk_env: str | None,
    country: str | None,
    timezone: str | None,
    user: str,
    fleet_dir: Path | None,
    reenrol: bool,
    python: str | None,
    out: Path | None,
    count: int | None,
    name: str | None,
    start: int | None,
    as_json: bool,
) -> None:
    """Customise a Raspberry Pi OS image (first-boot settings, the agent's bundle, enrolment),
    or build a complete one from Debian with the bundle installed (`--base debian`).

    With --count N --name 'lamp-{n}': N images, each a device of its own (id, credential,
    bundle), built one after the other; everything is checked before the first."""
    from .images import batch
    from .images.customize import BuildRequest
    from .images.customize import build as run_build

    bar = Bar(enabled=sys.stderr.isatty() and not as_json)

    def log(message: str) -> None:
        if not as_json:
            bar.close()
            click.echo(message, err=True)

    def progress(phase: str, done: int, total: int) -> None:
        bar.update(phase, done / total if total else 1.0)

    many = count is not None or name is not None
    try:
        if start is not None and name is None:
            raise click.UsageError("--start numbers the ids of --name: give --name too")
        psk = _wifi_psk(wifi_psk_env)
        keys = _ssh_keys(ssh_keys)
        from .config import load_config

        device = load_config(config).device if out is None or many else ""
        images = batch.plan(
            config_device=device,
            base=base,
            out=out,
            count=count or 1,
            name=name,
            start=1 if start is None else start,
            hostname=hostname,
        ) if many else []  # fmt: skip
        req = BuildRequest(
            base=base,
            out=out or batch.default_output(base, device),
            profile=profile,
            config=config,
            key=key or default_key(),
            hostname=hostname,
            user=user,
            ssh_keys=keys,
            wifi_ssid=wifi_ssid,
            wifi_psk=psk,
            country=country,
            timezone=timezone,
            fleet_dir=fleet_dir,
            reenrol=reenrol,
            python=python,
            log=log,
            progress=progress,
        )
        if many:
            batch.check_not_enrolled(fleet_dir, [p.device for p in images], reenrol)
            build_one: Callable[[BuildRequest], Any] = run_build
            if str(base) == "debian":
                from .images import debian

                build_one = debian.build
            done = batch.build_many(req, images, build_one, config_device=device)
            bar.close()
            _many_summary([r.summary() for r in done], as_json)
            return
        if str(base) == "debian":
            from .images import debian

            _debian_summary(debian.build(req).summary(), as_json)
            return
        result = run_build(req)
    except batch.BatchBuildError as exc:
        bar.close()
        if as_json:
            click.echo(json.dumps([r.summary() for r in exc.built], indent=1))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if exc.name == "cryptography":
            click.echo("error: image build needs the `deploy` extra: pip install "
                       "'edgeagent[deploy]'", err=True)  # fmt: skip
            sys.exit(1)
        raise
    except (EdgeAgentError, OSError) as exc:
        bar.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    bar.close()
    _summary(result, as_json)


def _wifi_psk(wifi_psk_env: str | None) -> str | None:
    """The Wi-Fi passphrase from the environment variable named (never from the command line)."""
    if wifi_psk_env is None:
        return None
    psk = os.environ.get(wifi_psk_env)
    if not psk:
        raise click.UsageError(f"--wifi-psk-env: ${wifi_psk_env} is not set")
    return psk


def _ssh_keys(paths: tuple[Path, ...]) -> list[str]:
    """The public keys in the files, one a non-blank line."""
    keys = []
    for path in paths:
        try:
            keys += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise click.UsageError(f"--ssh-key {path}: {exc.strerror or exc}") from exc
    return keys


def _summary(result: BuildResult, as_json: bool) -> None:
    """What one customised image holds, or its summary as JSON."""
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    boot = summary["boot_partition"]
    click.echo(f"{result.image}: {result.device} ({result.fleet}), release {result.version}")
    click.echo(f"  first boot: {result.format} ({result.format_reason})")
    click.echo(f"  bundle: {result.profile}, Python {result.python} ({result.python_reason}), "
               f"{result.bundle_bytes:,} bytes")  # fmt: skip
    if len(result.releases) > 1:
        click.echo("  a bundle per board, picked at first boot by the board's model: "
                   + ", ".join(f"{p} {v}" for p, v in result.releases.items()))  # fmt: skip
    for note in result.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  credential: {result.auth}, from {result.credential_source}")
    click.echo(f"  boot partition {boot['index']} (offset {boot['offset']}): wrote "
               f"{', '.join(result.written)}; {boot['free_after'] // 1024} KiB left")  # fmt: skip
    click.echo("  the image holds the device's credential until its first boot: keep it private")


def _debian_summary(summary: dict[str, object], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    s = summary
    click.echo(f"{s['image']}: {s['device']} ({s['fleet']}), release {s['release']}, "
               f"installed in /opt/edgeagent")  # fmt: skip
    click.echo(f"  Debian arm64, kernel {s['kernel']}, Python {s['python']}, "
               f"profile {s['profile']}")  # fmt: skip
    if not s["firmware"]:
        click.echo("  no Raspberry Pi firmware in the root filesystem (raspi-firmware): the boot "
                   "partition has the kernel, initrd and device trees only")  # fmt: skip
    click.echo(f"  credential: {s['auth']}, from {s['credential']}")
    click.echo(f"  SSH host key (for known_hosts): {s['host_key']}")
    click.echo("  the image holds the device's credential: keep it private")


def _many_summary(summaries: list[dict[str, Any]], as_json: bool) -> None:
    """One line per image (device, file, release), then what to keep private."""
    if as_json:
        click.echo(json.dumps(summaries, indent=1))
        return
    width = max(len(str(s["device"])) for s in summaries)
    click.echo(f"{len(summaries)} image{'s' if len(summaries) > 1 else ''}:")
    for s in summaries:
        how = f"first boot {s['format']}" if "format" in s else "Debian, installed"
        click.echo(f"  {s['device']:<{width}}  {s['image']}  release {s['release']} ({how}, "
                   f"credential {s['auth']} from {s['credential']})")  # fmt: skip
        if s.get("host_key"):
            click.echo(f"  {'':<{width}}  SSH host key: {s['host_key']}")
    click.echo("  each image holds its device's credential until its first boot: keep them private")
