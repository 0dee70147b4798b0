"""``edgeagent image build --base FILE.img[.xz]``: a thin click layer over
``edgeagent.images.customize`` (the ``image`` group in ``cli.py`` registers :data:`build`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .cli_deploy import default_key
from .errors import EdgeAgentError


def _out_for(base: Path, device: str) -> Path:
    name = base.name.removesuffix(".xz").removesuffix(".img")
    return base.with_name(f"{name}-{device}.img")


@click.command("build")
@click.option(
    "--base",
    "base",
    type=click.Path(path_type=Path),
    required=True,
    help="Raspberry Pi OS image to customise (FILE.img or FILE.img.xz), or `debian`: a "
    "complete image from Debian's arm64 packages (needs root).",
)
@click.option("--device", "profile", required=True, help="Device profile (pi4, pi5, …).")
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
    help="Output image (default: BASE-DEVICE.img beside the base).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
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
    as_json: bool,
) -> None:
    """Customise a Raspberry Pi OS image (first-boot settings, the agent's bundle, enrolment),
    or build a complete one from Debian with the bundle installed (`--base debian`)."""
    from .images.customize import BuildRequest
    from .images.customize import build as run_build

    def log(message: str) -> None:
        if not as_json:
            click.echo(message, err=True)

    try:
        psk = None
        if wifi_psk_env is not None:
            psk = os.environ.get(wifi_psk_env)
            if not psk:
                raise click.UsageError(f"--wifi-psk-env: ${wifi_psk_env} is not set")
        keys = []
        for path in ssh_keys:
            try:
                keys += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            except OSError as exc:
                raise click.UsageError(f"--ssh-key {path}: {exc.strerror or exc}") from exc
        from .config import load_config

        device = load_config(config).device if out is None else ""
        req = BuildRequest(
            base=base,
            out=out or _out_for(base, device),
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
        )
        if str(base) == "debian":
            from .images import debian

            _debian_summary(debian.build(req).summary(), as_json)
            return
        result = run_build(req)
    except ModuleNotFoundError as exc:
        if exc.name == "cryptography":
            click.echo("error: image build needs the `deploy` extra: pip install "
                       "'edgeagent[deploy]'", err=True)  # fmt: skip
            sys.exit(1)
        raise
    except (EdgeAgentError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    boot = summary["boot_partition"]
    click.echo(f"{result.image}: {result.device} ({result.fleet}), release {result.version}")
    click.echo(f"  first boot: {result.format} ({result.format_reason})")
    click.echo(f"  bundle: {result.profile}, Python {result.python} ({result.python_reason}), "
               f"{result.bundle_bytes:,} bytes")  # fmt: skip
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
