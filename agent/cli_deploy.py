"""``edgeagent keys``, ``edgeagent bundle`` and ``edgeagent deploy``: thin click layers over
``edgeagent.deploy`` (registered on the main command in ``cli.py``).

The deploy tooling's third-party parts (``cryptography`` for signatures, ``asyncssh`` for SSH)
are imported when a command needs them, with an error naming the extra to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import EdgeAgentError

T = TypeVar("T")

_EXTRA_HINT = "the deploy tools need the `deploy` extra: pip install 'edgeagent[deploy]'"


def default_key() -> Path:
    env = os.environ.get("EDGEAGENT_KEY")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeagent" / "keys" / "edgeagent.key"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; our errors become one clear line and exit status 1."""
    try:
        return fn()
    except ModuleNotFoundError as exc:
        if exc.name in ("cryptography", "asyncssh"):
            _fail(f"{exc.name} is not installed: {_EXTRA_HINT}")
        raise
    except (EdgeAgentError, OSError, ValueError) as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable


def _ssh_error_types() -> tuple[type[BaseException], ...]:
    from .deploy import minisign, ssh  # type: ignore[attr-defined,unused-ignore]

    return (ssh.SshError, minisign.SignatureError)


def _arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        _fail("interrupted", 130)
        raise AssertionError from None


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
            _fail(f"{exc.filename or path} exists; pass --force to replace the key pair")

    key = _guard(run)
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
        _fail(
            f"{signing}: no signing key; make one with `edgeagent keys generate` "
            "(or pass --key, or --unsigned)"
        )
    built = _guard(
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
    prof = _guard(lambda: load_profile(profile)) if profile else None
    data, key_id = _guard(lambda: verify_bundle(folder, trusted, profile=prof))
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

    data, _ = _guard(lambda: read_manifest(folder))
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


# deploy ------------------------------------------------------------------------------------


class _DefaultGroup(click.Group):
    """``edgeagent deploy …`` runs ``deploy run …`` unless a subcommand is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _ssh_options(identity: tuple[Path, ...], known_hosts: Path | None, accept_new: bool) -> Any:
    from .deploy.ssh import SshOptions

    return SshOptions(
        identity_files=list(identity),
        known_hosts=known_hosts,
        accept_new_host_key=accept_new,
    )


def _ssh_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--root", default="/opt/edgeagent", show_default=True, help="Install root on the device."
    )(f)
    f = click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Trust and remember a host key seen for the first time.",
    )(f)
    f = click.option(
        "--known-hosts",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="known_hosts file (default ~/.ssh/known_hosts).",
    )(f)
    f = click.option(
        "-i",
        "--identity",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="SSH private key (repeatable); the ssh-agent is used too.",
    )(f)
    return f


@click.group(cls=_DefaultGroup)
def deploy() -> None:
    """Ship signed releases to devices over SSH, with health checks and automatic rollback.

    `edgeagent deploy --device pi --host pi@lamp.local lamp.yaml` builds the bundle for the
    device's exact profile (read from its hardware), sends only the files the device lacks,
    switches atomically, restarts the agent's systemd unit and checks over MQTT that the new
    release is online and answers; if not, the previous release is put back.
    """


@deploy.command("run")
@click.argument(
    "config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--device",
    "device",
    required=True,
    help="Device profile (pi4, generic-arm64…) or family (pi): checked against the "
    "device's hardware.",
)
@click.option("--host", "hosts", multiple=True, help="[USER@]HOST[:PORT] (repeatable).")
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML list of hosts: [{host, config?, device?}] for many devices at once.",
)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Deploy this built bundle instead of building one from CONFIG.",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Signing key (default ~/.config/edgeagent/keys/edgeagent.key).",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public keys the device should trust (default: the signing key's .pub).",
)
@_ssh_flags
@click.option(
    "--health-timeout",
    default=60.0,
    show_default=True,
    help="Seconds the new release has to become healthy.",
)
@click.option(
    "--check",
    "check",
    default=None,
    help='Smoke-test call after the restart: \'SKILL {"json": "input"}\'.',
)
@click.option("--keep", default=3, show_default=True, help="Releases kept on the device.")
@click.option("--python", default=None, help="Device Python (default: the profile's).")
@click.option("--parallel", default=4, show_default=True, help="Devices deployed at once.")
@click.option(
    "--watch",
    is_flag=True,
    help="Stay running: redeploy on every saved change to CONFIG or its skill modules.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines.")
@click.pass_context
def deploy_run(
    ctx: click.Context,
    config: Path | None,
    device: str,
    hosts: tuple[str, ...],
    inventory: Path | None,
    bundle_dir: Path | None,
    key: Path | None,
    trust: tuple[Path, ...],
    identity: tuple[Path, ...],
    known_hosts: Path | None,
    accept_new_host_key: bool,
    root: str,
    health_timeout: float,
    check: str | None,
    keep: int,
    python: str | None,
    parallel: int,
    watch: bool,
    as_json: bool,
) -> None:
    """Deploy CONFIG (or --bundle) to --host or every host of --inventory."""
    from .deploy.runner import DeployJob, parse_check, run_jobs, watch_loop

    broker = getattr(ctx.find_root().obj, "broker", None)
    if config is None and bundle_dir is None and inventory is None:
        _fail("give CONFIG (an agent config) or --bundle DIR")
    signing = key or default_key()
    if bundle_dir is None and not signing.is_file():
        _fail(f"{signing}: no signing key; make one with `edgeagent keys generate` (or --key)")
    trusted = list(trust) or [signing.with_name(signing.name.removesuffix(".key") + ".pub")]
    jobs = _guard(
        lambda: DeployJob.from_cli(
            hosts,
            inventory,
            config,
            bundle_dir,
            device,
            signing,
            trusted,
            root,
            broker,
            health_timeout,
            parse_check(check),
            keep,
            python,
        )
    )
    if not jobs:
        _fail("no host: give --host or --inventory")
    ssh = _guard(lambda: _ssh_options(identity, known_hosts, accept_new_host_key))

    if watch:
        if len(jobs) != 1 or jobs[0].config is None:
            _fail("--watch takes one host and a CONFIG")
        code = _arun(watch_loop(jobs[0], ssh, as_json=as_json, echo=click.echo))
        sys.exit(code)
    t0 = time.monotonic()
    results = _arun(run_jobs(jobs, ssh, parallel=parallel, as_json=as_json, echo=click.echo))
    failed = [r for r in results if not r.get("healthy")]
    if not as_json and len(jobs) > 1:
        click.echo(
            f"{len(jobs) - len(failed)} of {len(jobs)} devices healthy "
            f"in {time.monotonic() - t0:.1f} s"
        )
    sys.exit(1 if failed else 0)


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

    target = _guard(lambda: SshTarget.parse(host))
    ssh = _ssh_options(identity, known_hosts, accept_new)
    errors = _ssh_error_types()

    async def go() -> dict[str, Any]:
        return await remote_command(target, ssh, root, *args)

    try:
        return _arun(go())
    except errors as exc:
        _fail(str(exc))
    except EdgeAgentError as exc:
        _fail(str(exc))
    raise AssertionError


@deploy.command("status")
@click.argument("host")
@_ssh_flags
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


@deploy.command("history")
@click.argument("host")
@_ssh_flags
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


@deploy.command("rollback")
@click.argument("host")
@_ssh_flags
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


@deploy.command("prune")
@click.argument("host")
@_ssh_flags
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
