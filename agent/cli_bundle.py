"""``edgeagent keys`` and ``edgeagent bundle``: the fleet signing key and signed release bundles.

Thin click layers over ``edgeagent.deploy.minisign`` and ``edgeagent.deploy.bundle``; registered on
the main command in ``cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cli_deploy_common import default_key, fail, guard

# keys --------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Fleet signing keys (Ed25519, minisign format)."""


@keys.command("generate")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Secret key file to write (default: ~/.config/edgeagent/keys/edgeagent.key, or "
    "EDGEAGENT_KEY). The public key goes next to it as KEY.pub.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing key (old bundles stay valid "
    "only on devices that still trust the old public key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keys_generate(key_path: Path | None, force: bool, as_json: bool) -> None:
    """Make a fleet signing key pair.

    The secret key is written with mode 0600 and never goes into a bundle; devices trust the
    public key (`deploy --trust`). To rotate, generate a new key, deploy with both public keys
    trusted, then drop the old one.
    """
    from .deploy import minisign

    path = key_path or default_key()
    pub = path.with_name(path.name.removesuffix(".key") + ".pub")

    def run() -> Any:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return minisign.generate_keypair(path, pub, force=force)
        except FileExistsError as exc:
            fail(f"{exc.filename or path} exists; pass --force to replace the key pair")

    key = guard(run)
    if as_json:
        click.echo(json.dumps({"secret": str(path), "public": str(pub), "key_id": key.key_id_hex}))
    else:
        click.echo(f"secret key: {path} (mode 0600; keep it off devices)")
        click.echo(f"public key: {pub} (key id {key.key_id_hex})")
        click.echo(f"check a bundle with: minisign -Vm BUNDLE/bundle.json -p {pub}")


# bundle ------------------------------------------------------------------------------------


@click.group()
def bundle() -> None:
    """Build, verify and inspect signed release bundles."""


@bundle.command("build")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", "profile", required=True, help="Device profile, e.g. pi4.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle folder (default: bundle-DEVICE-PROFILE next to the config).",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Signing key (default: ~/.config/edgeagent/keys/edgeagent.key).",
)
@click.option("--unsigned", is_flag=True, help="Do not sign (devices refuse unsigned bundles).")
@click.option("--python", default=None, help="Device Python, e.g. 3.13 (default: the profile's).")
@click.option("--refresh-wheels", is_flag=True, help="Resolve the wheels again (new versions).")
@click.option(
    "--no-import-check",
    is_flag=True,
    help="Do not import the skills here (when they need hardware only the device has).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the bundle summary as JSON.")
def bundle_build(
    config: Path,
    profile: str,
    out: Path | None,
    key: Path | None,
    unsigned: bool,
    python: str | None,
    refresh_wheels: bool,
    no_import_check: bool,
    as_json: bool,
) -> None:
    """Build everything one device needs to run CONFIG with no network: the config, its skill
    modules, the models they load (as chosen for the profile), and a wheelhouse for the
    device's platform and Python. Signed with Ed25519 in minisign's format."""
    from .deploy.bundle import BuildOptions, build_bundle, summarize

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    cfg_name = config.stem
    dest = out or config.resolve().parent / f"bundle-{cfg_name}-{profile}"
    signing = None if unsigned else (key or default_key())
    if signing is not None and not signing.is_file():
        fail(
            f"{signing}: no signing key; make one with `edgeagent keys generate` "
            "(or pass --key, or --unsigned)"
        )
    built = guard(
        lambda: build_bundle(
            config,
            profile,
            dest,
            key=signing,
            options=BuildOptions(
                python=python,
                refresh_wheels=refresh_wheels,
                import_skills=not no_import_check,
                log=log,
            ),
        )
    )
    summary = summarize(built.manifest)
    summary["folder"] = str(built.folder)
    summary["signed_by"] = built.signed_by
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"bundle {built.version} -> {built.folder}")
    click.echo(
        f"  device {summary['device']}, profile {summary['profile']}, "
        f"{summary['platform']['arch']} Python {summary['platform']['python']}"
    )
    for role, r in sorted(summary["roles"].items()):
        click.echo(f"  {role:7} {r['files']:4} files {r['bytes']:>12,} bytes")
    click.echo(f"  signed by {built.signed_by}" if built.signed_by else "  UNSIGNED")


@bundle.command("verify")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--key",
    "pubs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted public key (repeat for several; default: the default key's .pub).",
)
@click.option("--device", "profile", default=None, help="Also check it is for this profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bundle_verify(folder: Path, pubs: tuple[Path, ...], profile: str | None, as_json: bool) -> None:
    """Check a bundle's signature, every file's size and SHA-256 and (optionally) its profile.
    Exit status 1 with the file and the reason when anything is wrong."""
    from .deploy.bundle import verify_bundle
    from .devices import load_profile

    trusted = list(pubs) or [default_key().with_suffix(".pub")]
    prof = guard(lambda: load_profile(profile)) if profile else None
    data, key_id = guard(lambda: verify_bundle(folder, trusted, profile=prof))
    if as_json:
        click.echo(json.dumps({"ok": True, "version": data["version"], "key_id": key_id}))
    else:
        click.echo(f"ok: {data['version']}, {len(data['files'])} files, signed by {key_id}")


@bundle.command("inspect")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--files", "show_files", is_flag=True, help="List every file.")
@click.option("--json", "as_json", is_flag=True, help="Print bundle.json's summary as JSON.")
def bundle_inspect(folder: Path, show_files: bool, as_json: bool) -> None:
    """Show what a bundle holds (without checking the signature: use `bundle verify`)."""
    from .deploy.bundle import read_manifest, summarize

    data, _ = guard(lambda: read_manifest(folder))
    summary = summarize(data)
    if show_files:
        summary["files"] = data["files"]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(
        f"{summary['version']}: device {summary['device']}, profile {summary['profile']}, "
        f"{summary['platform']['arch']} Python {summary['platform']['python']}"
    )
    click.echo(f"  skills: {', '.join(summary['skills'] or []) or '(not inspected)'}")
    for m in summary["models"]:
        click.echo(f"  model {m['name']} v{m['version']} ({m['variant']}): {m['file']}")
    for role, r in sorted(summary["roles"].items()):
        click.echo(f"  {role:7} {r['files']:4} files {r['bytes']:>12,} bytes")
    if show_files:
        for f in data["files"]:
            click.echo(f"  {f['sha256'][:12]} {f['size']:>10,} {f['path']}")
