"""``edgeagent image build --base debian``: a complete Raspberry Pi image from Debian's own arm64
packages, with the device's bundle installed at build time. No loop device, no mount.

The steps, each refusing with a message that names what is wrong:

1. check the settings, the profile (64-bit, and for a Raspberry Pi a device tree the kernel has:
   bookworm's 6.1 has none for the Pi 5) and the tools (``sfdisk``, ``mkfs.vfat``, ``mtools``,
   ``mkfs.ext4``, ``debugfs``, ``chroot``; root, and qemu-user for arm64);
2. take the cached Debian root filesystem (``rootfs.ensure``: minutes the first time) and copy
   its files out of the ext4 image with ``debugfs rdump`` (about 3 s, ownership kept);
3. make it this device's: host name, the login user and its SSH keys, time zone, new SSH host
   keys (printed as a ``known_hosts`` line), an empty machine id (made at first boot), the
   emulated device's test keys removed, the boot partition in ``/etc/fstab``;
4. build the signed bundle and enrol the device (``enrol``), then run the first-boot installer
   (``installer.py``) **in the root**, under ``chroot`` with qemu-user: it installs the bundle
   into ``/opt/edgeagent`` with the device tool exactly as ``deploy`` does, creates the service
   user, writes the credentials (0600, that user) and enables ``edgeagent@DEVICE.service``;
5. assemble the disk: the FAT boot partition made with ``mkfs.vfat -C`` and filled by ``mcopy``
   (kernel, a small busybox initramfs made here, the Raspberry Pi device trees, the firmware
   when the root has ``raspi-firmware``, ``config.txt``, ``cmdline.txt``), the ext4 root made
   with ``mkfs.ext4 -d``, both ``dd``-ed into an image file partitioned with ``sfdisk``.

Timestamps are clamped to ``SOURCE_DATE_EPOCH`` (default: a fixed date), Python bytecode is
hash-checked, the FAT volume and ext4 UUIDs and the MBR id are derived from the device and its
release: the same inputs give the same files, modes and owners. The image is not bit-for-bit
reproducible (ext4 inode order follows the build machine's directory order).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import installer, rootfs
from .bootpart import ImageBuildError, ToolMissing
from .customize import BuildRequest, read_inputs, settings_for
from .debian_disk import (
    BOOT_LABEL,
    BOOT_MB,
    BOOT_START_MB,
    CMDLINE_TXT,
    CONFIG_TXT,
    INITRAMFS_MODULES,
    ROOT_SPARE_MB,
    MiB,
    assemble,
)
from .debian_disk import boot_files as _boot_files
from .debian_disk import clamp_times as _clamp_times
from .debian_disk import run as _run
from .debian_root import PI_DTBS
from .debian_root import STAGE as _STAGE
from .debian_root import check_device_tree as _check_device_tree
from .debian_root import install_in_root as _install_in_root
from .debian_root import kernel_version as _kernel_version
from .debian_root import personalise as _personalise
from .debian_root import python_version as _python_version
from .debian_root import restore_special_modes as _restore_special_modes
from .enrol import Enrolment, bundle_config_path, issue, prepare
from .firstboot import INSTALLER, Settings

__all__ = [
    "BOOT_LABEL",
    "BOOT_MB",
    "BOOT_START_MB",
    "CMDLINE_TXT",
    "CONFIG_TXT",
    "DEFAULT_EPOCH",
    "INITRAMFS_MODULES",
    "PI_DTBS",
    "ROOT_SPARE_MB",
    "DebianResult",
    "MiB",
    "assemble",
    "build",
    "unavailable",
]

#: Default SOURCE_DATE_EPOCH: 2025-01-01T00:00:00Z.
DEFAULT_EPOCH = 1735689600
_TOOLS = {
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "chroot": "coreutils",
    "ssh-keygen": "openssh-client",
}


@dataclass(frozen=True, slots=True)
class DebianResult:
    image: Path
    device: str
    fleet: str
    profile: str
    version: str
    python: str
    kernel: str
    bundle_bytes: int
    auth: str
    credential_source: str
    host_key: str
    """The device's SSH host key, ``ssh-ed25519 AAAA...`` (made at build time, for known_hosts)."""
    boot_files: list[str]
    firmware: bool
    partitions: dict[str, dict[str, int]]
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "base": "debian",
            "device": self.device,
            "fleet": self.fleet,
            "profile": self.profile,
            "release": self.version,
            "python": self.python,
            "kernel": self.kernel,
            "bundle_bytes": self.bundle_bytes,
            "auth": self.auth,
            "credential": self.credential_source,
            "host_key": self.host_key,
            "boot_files": self.boot_files,
            "firmware": self.firmware,
            "partitions": self.partitions,
            "timings_s": self.timings,
        }


def unavailable() -> str | None:
    """None when ``--base debian`` can build here, else why not."""
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if os.getuid() != 0:
        return "it needs root (the bundle is installed in the arm64 root with chroot)"
    if not rootfs.is_cached():
        return rootfs.build_unavailable()
    return None


def build(req: BuildRequest) -> DebianResult:
    """Build a complete image for ``req`` into ``req.out`` (``req.base`` is ignored; see the
    module docstring). The output is created 0600: it holds the device's credential."""
    from ..devices import load_profile
    from ..errors import ConfigError

    log = req.log
    public, device = read_inputs(req.config, req.key)
    from ..devices import list_profiles

    family = sorted(p.name for p in list_profiles() if p.family == req.profile)
    if family:
        raise ImageBuildError(
            f"--device {req.profile}: --base debian installs the bundle at build time, for one "
            f"profile: give one of {', '.join(family)} (an image for the whole family is made "
            "from a Raspberry Pi OS image: --base FILE.img)"
        )
    try:
        profile = load_profile(req.profile)
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc
    if profile.arch != "aarch64":
        raise ImageBuildError(
            f"--device {req.profile}: a {profile.arch} profile; --base debian builds arm64 images"
        )
    if req.wifi_ssid is not None or req.wifi_psk or req.country is not None:
        raise ImageBuildError(
            "--base debian does not set up Wi-Fi (its root filesystem has no wpa_supplicant or "
            "Wi-Fi firmware): use Ethernet, or --base with a Raspberry Pi OS image"
        )
    settings = settings_for(req, device)
    why = unavailable()
    if why is not None:
        missing = ToolMissing if "not installed" in why else ImageBuildError
        raise missing(f"--base debian cannot build here: {why}")
    enrolment = prepare(req.config, [public], fleet_dir=req.fleet_dir, reenrol=req.reenrol)

    t0 = time.monotonic()
    base = rootfs.ensure(log=log)
    req.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{req.out.name}.", dir=req.out.parent))
    try:
        return _build(req, settings, enrolment, profile.family, base, work, t0)
    finally:
        rootfs.safe_rmtree(work, log)


def _build(
    req: BuildRequest,
    settings: Settings,
    enrolment: Enrolment,
    family: str | None,
    base: rootfs.RootImage,
    work: Path,
    t0: float,
) -> DebianResult:
    log = req.log
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    timings: dict[str, float] = {"root_filesystem_s": round(time.monotonic() - t0, 1)}
    root = work / "root"
    root.mkdir()
    t = time.monotonic()
    log(f"copying the root filesystem out of {base.rootfs} (debugfs rdump)")
    _run(["debugfs", "-R", f"rdump / {root}", str(base.rootfs)], "debugfs rdump", timeout=600)
    if not (root / "usr/bin/python3").exists():
        raise ImageBuildError(f"{base.rootfs}: debugfs copied no usable root (no usr/bin/python3)")
    _restore_special_modes(base.rootfs, root, work)
    kver = _kernel_version(root)
    python = req.python or _python_version(root)
    dtb = _check_device_tree(root, kver, req.profile, family)
    timings["copy_root_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    host_key = _personalise(root, settings, log)
    stage = root / _STAGE / installer.FOLDER
    built = _stage_bundle(req, enrolment, python, stage)
    enrol_json = enrolment.to_json(built.version, str(built.manifest["profile"]))
    fd = os.open(stage / installer.ENROLMENT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(enrol_json)
    timings["bundle_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    log("installing the bundle in the root filesystem (the first-boot installer, in chroot)")
    _install_in_root(root, epoch, log)
    timings["install_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    boot = work / "boot"
    firmware = _boot_files(root, kver, boot)
    _clamp_times(root, epoch)
    _clamp_times(boot, epoch)
    seed = f"{enrolment.data['device']}/{built.version}"
    parts = assemble(req.out, boot, root, seed=seed, epoch=epoch, work=work)
    timings["assemble_s"] = round(time.monotonic() - t, 1)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    names = sorted(p.relative_to(boot).as_posix() for p in boot.rglob("*") if p.is_file())
    log(f"{req.out}: {sum(p['bytes'] for p in parts.values()) // MiB} MiB, kernel {kver}"
        f"{', device tree ' + dtb if dtb else ''}, in {timings['total_s']:g} s")  # fmt: skip
    return DebianResult(
        image=req.out,
        device=str(enrolment.data["device"]),
        fleet=str(enrolment.data["fleet"]),
        profile=str(built.manifest["profile"]),
        version=built.version,
        python=python,
        kernel=kver,
        bundle_bytes=built.total_bytes,
        auth=enrolment.auth,
        credential_source=enrolment.source,
        host_key=host_key,
        boot_files=names,
        firmware=firmware,
        partitions=parts,
        timings=timings,
    )


def _stage_bundle(req: BuildRequest, enrolment: Enrolment, python: str, stage: Path) -> Any:
    """The bundle, the device tool and the installer where the installer expects them (as on a
    boot partition); the device is enrolled in the fleet folder last."""
    from ..deploy import bundle as bundles
    from ..deploy import devicetool, remote_verify
    from ..deploy.bundle import BuildOptions
    from ..deploy.errors import DeployError

    stage.mkdir(parents=True)
    derived = bundle_config_path(req.config)
    try:
        derived.write_text(enrolment.config_text)
        req.log(f"building the {req.profile} bundle for Python {python}")
        built = bundles.build_bundle(
            derived,
            req.profile,
            stage / installer.BUNDLE,
            key=req.key,
            options=BuildOptions(python=python, cache=req.cache, log=req.log),
        )
    except DeployError as exc:
        raise ImageBuildError(f"bundle: {exc}") from exc
    finally:
        derived.unlink(missing_ok=True)
    shutil.copyfile(devicetool.__file__, stage / installer.TOOL)
    shutil.copyfile(remote_verify.__file__, stage / installer.VERIFY)
    shutil.copyfile(installer.__file__, stage / INSTALLER)
    if req.fleet_dir is not None:
        issue(enrolment, req.config, req.fleet_dir, req.reenrol)
        req.log(f"enrolled: {enrolment.source}")
    return built
