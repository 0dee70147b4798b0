"""``edgeagent deploy``: ship a signed bundle to a device over SSH, switch, health-check, and roll
back on failure. The decisions are in ``plan``; this module is the adapter that carries them out
over SSH (``ssh``), on the device (``devicetool``, run there) and over MQTT (the health check).

Order of a deploy (each step can fail; none leaves the device without a working release)::

    tool   upload the device tool if its hash differs      (bin/, written atomically)
    probe  arch, OS, Python, board model, free space, state -> profile check, host problems
    setup  first contact only: layout, service user, systemd unit
    trust  the signer's public key, if the device lacks it
    send   content files the device lacks (store/<sha256>), then bundle.json(+.minisig)
    install  the device verifies signature, platform, profile, every hash; builds the release
    activate current -> new (rename), restart, and a timer that rolls back unless confirmed
    health  online + manifest announces the version + _ping (+ --check) over MQTT
    commit  (healthy) keep it, prune old releases  |  rollback (not healthy), confirm old is back
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..broker import BrokerConfig
from ..client import Fleet
from ..devices import list_profiles
from ..errors import CallError, EdgeAgentError
from . import devicetool
from .bundle import load_trusted, read_manifest
from .errors import BundleInvalid, HealthCheckFailed, HostUnsuitable, RemoteError
from .plan import HealthWatch, choose_profile, env_bytes, host_problems, plan_upload
from .remote_tool import TOOL_NAME, Remote
from .ssh import SshOptions, SshSession, SshTarget, connect

__all__ = [
    "TOOL_NAME",
    "BundleSource",
    "DeployOptions",
    "DeployResult",
    "Progress",
    "Remote",
    "deploy",
    "remote_command",
]

Progress = Callable[[str, str], None]
"""progress(step, message): one line per step, for the terminal."""


@dataclass(slots=True)
class DeployOptions:
    device: str
    """Profile name or family (``pi``)."""
    root: str = devicetool.DEFAULT_ROOT
    broker: str | None = None
    """Broker the health check uses; default: the bundle config's."""
    health_timeout: float = 60.0
    check: tuple[str, dict[str, Any]] | None = None
    trust: list[Path] = field(default_factory=list)
    keep: int = 3
    service: str = "auto"
    service_user: str = "edgeagent"
    confirm_margin: float = 60.0
    """The device rolls back by itself this long after the health deadline if never confirmed."""


@dataclass(slots=True)
class DeployResult:
    target: str
    version: str
    previous: str | None
    profile: str
    profile_reason: str
    sent_files: int
    sent_bytes: int
    bundle_bytes: int
    env_built: bool
    healthy: bool
    rolled_back_to: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    logs: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


async def _health(
    client: Fleet,
    device: str,
    watch: HealthWatch,
    timeout: float,
    check: tuple[str, dict[str, Any]] | None,
) -> HealthWatch:
    """Follow the device over MQTT until ``watch`` is healthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await client.device(device)
        if info is not None:
            watch.saw_device(info.status, info.manifest.release if info.manifest else None)
        if watch.announced_ok and not watch.pinged:
            with contextlib.suppress(CallError, EdgeAgentError):
                out = await client.call(device, "_ping", {}, timeout=3)
                if isinstance(out, dict) and out.get("release") == watch.version:
                    watch.pinged = True
        if watch.pinged and check is not None and not watch.checked:
            try:
                await client.call(device, check[0], check[1], timeout=5)
                watch.checked = True
            except CallError as exc:
                watch.errors.append(f"{check[0]}: {exc}")
        if watch.healthy:
            return watch
        await asyncio.sleep(0.05)
    return watch


def _broker_for(manifest_cfg: dict[str, Any], override: str | None) -> BrokerConfig:
    if override:
        return BrokerConfig.from_url(override)
    broker = manifest_cfg.get("broker")
    if isinstance(broker, str):
        return BrokerConfig.from_url(broker)
    if isinstance(broker, dict):
        return BrokerConfig.model_validate(broker)
    return BrokerConfig()


def _bundle_config(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    import yaml

    entry = next(f for f in manifest["files"] if f["path"] == manifest["config"])
    data = yaml.safe_load((folder / "files" / entry["sha256"]).read_text())
    return data if isinstance(data, dict) else {}


BundleSource = Path | Callable[[str], Awaitable[Path]]
"""A built bundle folder, or a function that builds one for the profile read from the device."""


async def deploy(
    bundle: BundleSource,
    target: SshTarget,
    ssh: SshOptions,
    opts: DeployOptions,
    progress: Progress = lambda step, msg: None,
    *,
    session: SshSession | None = None,
) -> DeployResult:
    """Deploy a signed bundle to one device. Raises a :class:`DeployError` on refusal and
    :class:`HealthCheckFailed` (after rolling back) when the release is not healthy.

    ``session``: an open SSH session to reuse (``deploy --watch`` keeps one)."""
    if session is not None:
        return await _deploy(bundle, target, session, opts, progress)
    progress("connect", f"connecting to {target}")
    async with await connect(target, ssh) as own:
        return await _deploy(bundle, target, own, opts, progress)


async def _deploy(
    source: BundleSource,
    target: SshTarget,
    session: SshSession,
    opts: DeployOptions,
    progress: Progress,
) -> DeployResult:
    timings: dict[str, float] = {}
    remote = Remote(session, opts.root)
    try:
        return await _deploy_with(remote, source, target, session, opts, progress, timings)
    finally:
        await remote.close()


async def _deploy_with(
    remote: Remote,
    source: BundleSource,
    target: SshTarget,
    session: SshSession,
    opts: DeployOptions,
    progress: Progress,
    timings: dict[str, float],
) -> DeployResult:
    t0 = time.monotonic() - max(timings.values(), default=0.0)

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - t0, 3)

    probe = await remote.start()
    mark("probe")
    choice = choose_profile(opts.device, probe, list_profiles())
    progress("profile", choice.reason)
    bundle = source if isinstance(source, Path) else await source(choice.profile.name)
    mark("build")
    manifest, raw = read_manifest(bundle)
    sig_path = bundle / "bundle.json.minisig"
    if not sig_path.is_file():
        raise BundleInvalid(f"{sig_path}: missing: sign the bundle (bundle build --key KEY)")
    version = manifest["version"]
    cfg = _bundle_config(bundle, manifest)
    broker = _broker_for(cfg, opts.broker)
    fleet = str(cfg.get("fleet", "default"))
    if choice.profile.name != manifest["profile"]:
        raise BundleInvalid(
            f"the bundle is for profile {manifest['profile']}, the device is "
            f"{choice.profile.name}: build it with --device {choice.profile.name}"
        )
    hashes = sorted({f["sha256"] for f in manifest["files"]})
    store = probe.get("store")
    if not probe.get("installed"):
        missing = hashes
    elif isinstance(store, list):
        present = set(store)
        missing = [h for h in hashes if h not in present]
    else:  # too many files for the probe to list: ask
        missing = (await remote.call("have", input="\n".join(hashes).encode()))["missing"]
    upload = plan_upload(manifest, missing)
    problems = host_problems(probe, manifest, upload.bytes, env_bytes(manifest, probe))
    if problems:
        raise HostUnsuitable(f"{target} cannot run {version}:\n- " + "\n- ".join(problems))
    dev_info = probe.get("device") or {}
    trusted = set(probe.get("trusted_keys") or [])
    if not probe.get("installed") or dev_info.get("profile") != choice.profile.name:
        progress("setup", f"first contact: setting up {opts.root}")
        await remote.call(
            "setup",
            "--device",
            manifest["device"],
            "--profile",
            choice.profile.name,
            "--service",
            opts.service,
            "--user",
            opts.service_user,
        )
    new_keys = [k for k in load_trusted(opts.trust) if k.key_id_hex not in trusted]
    if new_keys:
        await remote.call("trust", input="%%".join(k.to_text() for k in new_keys).encode())
    mark("setup")
    progress(
        "send",
        f"sending {len(upload.files)} files, {upload.bytes:,} of {upload.bundle_bytes:,} bytes",
    )
    await session.put_files(
        [
            (bundle / "files" / f["sha256"], f"{remote.upload_root}/store/{f['sha256']}")
            for f in upload.files
        ]
    )
    incoming = f"{remote.upload_root}/incoming/{version}"
    await session.put_bytes(raw, f"{incoming}/bundle.json")
    await session.put_bytes(sig_path.read_bytes(), f"{incoming}/bundle.json.minisig")
    await remote.ingest()
    mark("send")
    result = DeployResult(
        target=str(target),
        version=version,
        previous=probe.get("current"),
        profile=choice.profile.name,
        profile_reason=choice.reason,
        sent_files=len(upload.files),
        sent_bytes=upload.bytes,
        bundle_bytes=upload.bundle_bytes,
        env_built=False,
        healthy=False,
        timings=timings,
    )
    # The health check's client connects (and follows the device) before the switch.
    async with Fleet(broker, fleet=fleet, timeout=5) as client:
        await client.device(manifest["device"])
        return await _switch_and_check(remote, client, result, manifest, opts, progress, mark)


async def _switch_and_check(
    remote: Remote,
    client: Fleet,
    result: DeployResult,
    manifest: dict[str, Any],
    opts: DeployOptions,
    progress: Progress,
    mark: Callable[[str], None],
) -> DeployResult:
    version = result.version
    device = manifest["device"]
    confirm = opts.health_timeout + opts.confirm_margin
    watch = HealthWatch(version, opts.check is not None)
    progress("install", "verifying the signature and every file on the device; switching")
    try:
        act = await remote.call(
            "install", version, "--activate", "--confirm-within", f"{confirm:g}"
        )
        result.previous = act.get("previous") or result.previous
        result.env_built = bool(act.get("env_built"))
    except RemoteError as exc:
        # Refused before the switch (the device is unchanged): raise. Switched, but the service
        # did not start: unhealthy, rolled back below.
        status = await remote.call("status")
        if status.get("current") != version or not status.get("pending"):
            raise
        watch.errors.append(str(exc))
    mark("activate")
    progress("health", f"waiting for {device} to run {version} (MQTT)")
    try:
        if not watch.errors:
            watch = await _health(client, device, watch, opts.health_timeout, opts.check)
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Interrupted before the release was confirmed: put the old one back if we still can
        # (if not, the device's own timer does it).
        with contextlib.suppress(Exception):
            await asyncio.shield(remote.call("rollback", "--reason", "deploy interrupted"))
        raise
    mark("health")
    if watch.healthy:
        await remote.call("commit", version, "--prune", str(opts.keep))
        result.healthy = True
        mark("done")
        progress("done", f"{device} runs {version}: healthy")
        return result
    reason = watch.errors[0] if watch.errors and not watch.online else watch.missing()
    logs = ""
    with contextlib.suppress(RemoteError):
        logs = str((await remote.call("logs", "--lines", "30"))["logs"])
    progress("rollback", f"not healthy ({reason}); rolling back")
    if result.previous is None:
        result.error = f"{reason}; no previous release to roll back to"
        result.logs = logs
        raise HealthCheckFailed(result.error, logs=logs)
    back = await remote.call("rollback", "--reason", reason)
    result.rolled_back_to = str(back["current"])
    old = await _health(
        client, device, HealthWatch(result.rolled_back_to), opts.health_timeout, None
    )
    mark("rollback")
    state = "healthy again" if old.healthy else f"NOT healthy either ({old.missing()})"
    result.error = f"{reason}; rolled back to {result.rolled_back_to}, which is {state}"
    result.logs = logs
    raise HealthCheckFailed(result.error, rolled_back_to=result.rolled_back_to, logs=logs)


async def remote_command(
    target: SshTarget, ssh: SshOptions, root: str, *args: str
) -> dict[str, Any]:
    """Run one device-tool command (status, history, rollback, prune) on a device."""
    async with await connect(target, ssh) as session:
        remote = Remote(session, root)
        try:
            await remote.start()
            return await remote.call(*args)
        finally:
            await remote.close()
