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

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import boards, installer, rootfs
from .bootpart import ImageBuildError, ToolMissing
from .customize import BuildRequest, read_inputs, settings_for
from .enrol import Enrolment, bundle_config_path, issue, prepare
from .firstboot import INSTALLER, Settings

MiB = 1024 * 1024
BOOT_START_MB = 4
BOOT_MB = 256
#: Room left on the root partition beyond what the build fills (releases, models, logs).
ROOT_SPARE_MB = 1024
#: Default SOURCE_DATE_EPOCH: 2025-01-01T00:00:00Z.
DEFAULT_EPOCH = 1735689600
BOOT_LABEL = "BOOTFS"
#: The device tree each Raspberry Pi profile boots with (upstream names, as ``upstream_kernel=1``).
#: Debian's kernel names the device trees the upstream way (the last name of each entry).
PI_DTBS = {profile: names[-1] for profile, names in boards.DEVICE_TREES.items()}
#: The initramfs mounts the root on virtio (emulator) or the SD card (Pi 3/4: sdhci-iproc and
#: bcm2835; Pi 5: sdhci-brcmstb).
INITRAMFS_MODULES = (
    *rootfs.INITRAMFS_MODULES, "mmc_block", "sdhci_iproc", "bcm2835", "sdhci_brcmstb",
)  # fmt: skip
CONFIG_TXT = """\
# Written by `edgeagent image build --base debian`: Debian's arm64 kernel, upstream device trees.
arm_64bit=1
upstream_kernel=1
enable_uart=1
kernel=vmlinuz
initramfs initrd.img followkernel
"""
CMDLINE_TXT = (
    "console=ttyS1,115200 console=tty1 root=LABEL=rootfs rootfstype=ext4 rootwait "
    "fsck.repair=yes net.ifnames=0\n"
)
_TOOLS = {
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "chroot": "coreutils",
    "ssh-keygen": "openssh-client",
}
_STAGE = "tmp/edgeagent-image"
_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}
_PY_LIB = re.compile(r"^python(3\.\d+)$")


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


def _run(
    cmd: list[str], what: str, *, timeout: float = 300, env: dict[str, str] | None = None
) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{what}: no answer in {timeout:g} s") from exc
    if proc.returncode != 0:
        tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _restore_special_modes(image: Path, root: Path, work: Path) -> int:
    """``rdump`` drops setuid, setgid and sticky bits (sudo, /tmp): read every folder's listing
    from the ext4 image in one ``debugfs`` run and put them back. Returns how many."""
    below = (
        "/" + os.path.relpath(os.path.join(d, n), root) for d, ns, _ in os.walk(root) for n in ns
    )
    folders = ["/", *sorted(below)]
    script = work / "debugfs.cmds"
    script.write_text("".join(f'ls -p "{d}"\n' for d in folders))
    listing = _run(["debugfs", "-f", str(script), str(image)], "debugfs ls", timeout=300)
    fixed = 0
    current = "/"
    for line in listing.splitlines():
        if line.startswith("debugfs: ls -p "):
            current = line[len("debugfs: ls -p ") :].strip('"')
            continue
        fields = line.split("/")
        if len(fields) < 6 or not fields[2].isdigit() or fields[5] in ("", ".", ".."):
            continue
        mode = int(fields[2], 8)
        if mode & 0o7000 and not stat.S_ISLNK(mode):
            os.chmod(root / current.lstrip("/") / fields[5], stat.S_IMODE(mode))
            fixed += 1
    return fixed


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    for kver in reversed(versions):
        if (root / f"boot/vmlinuz-{kver}").is_file():
            return kver
    raise ImageBuildError("the root filesystem has no kernel (linux-image-arm64)")


def _python_version(root: Path) -> str:
    found = [m.group(1) for p in (root / "usr/lib").iterdir() if (m := _PY_LIB.match(p.name))]
    if not found:
        raise ImageBuildError("the root filesystem has no Python 3")
    return max(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _check_device_tree(root: Path, kver: str, profile: str, family: str | None) -> str | None:
    """The device tree a Raspberry Pi profile boots with; refused when the kernel lacks it."""
    if family != "pi":
        return None
    dtb = PI_DTBS.get(profile)
    if dtb is None:
        raise ImageBuildError(
            f"--device {profile}: no known device tree for it (known: {', '.join(PI_DTBS)})"
        )
    if not (root / f"usr/lib/linux-image-{kver}/broadcom" / dtb).is_file():
        raise ImageBuildError(
            f"--device {profile}: kernel {kver} has no {dtb}, so the image cannot boot that "
            "board (the Pi 5 needs Debian 13's kernel, 6.12)"
        )
    return dtb


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def _chroot(root: Path, *args: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "SYSTEMD_OFFLINE": "1"}
    return _run(["chroot", str(root), *args], f"in the root filesystem, {args[0]}", env=env)


def _personalise(root: Path, s: Settings, log: Callable[[str], None]) -> str:
    """The device's own host name, login, keys and time zone; returns its SSH host key."""
    _write(root / "etc/hostname", f"{s.hostname}\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {s.hostname}\n"
                               "::1 localhost ip6-localhost\n")  # fmt: skip
    _write(root / "etc/machine-id", "", 0o444)  # made at first boot
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # The emulated device's test login goes; new host keys, known to the builder.
    (root / "root/.ssh/authorized_keys").unlink(missing_ok=True)
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    _run(["ssh-keygen", "-q", "-A", "-f", str(root)], "ssh-keygen -A")
    pub = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    user = s.user
    if user != rootfs.DEVICE_USER:
        log(f"renaming the login user {rootfs.DEVICE_USER} to {user}")
        _chroot(root, "usermod", "-l", user, "-d", f"/home/{user}", "-m", rootfs.DEVICE_USER)
        _chroot(root, "groupmod", "-n", user, rootfs.DEVICE_USER)
        (root / f"etc/sudoers.d/010_{rootfs.DEVICE_USER}-nopasswd").unlink(missing_ok=True)
    _write(root / f"etc/sudoers.d/010_{user}-nopasswd", f"{user} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    home = root / "home" / user
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.unlink(missing_ok=True)
    if s.ssh_keys:
        _write(keys, "".join(f"{k}\n" for k in s.ssh_keys), 0o600)
    for p in (ssh_dir, keys):
        if p.exists():
            os.chown(p, home.stat().st_uid, home.stat().st_gid)
    if s.timezone:
        zone = root / "usr/share/zoneinfo" / s.timezone
        if not zone.is_file():
            raise ImageBuildError(f"--timezone {s.timezone}: not in the image's tz database")
        (root / "etc/localtime").unlink(missing_ok=True)
        (root / "etc/localtime").symlink_to(f"/usr/share/zoneinfo/{s.timezone}")
        _write(root / "etc/timezone", f"{s.timezone}\n")
    fstab = root / "etc/fstab"
    lines = [ln for ln in fstab.read_text().splitlines() if "/boot/firmware" not in ln]
    # Required (not nofail), so it is mounted before anything runs from it (the first-boot hook).
    lines.append(f"LABEL={BOOT_LABEL} /boot/firmware vfat defaults 0 2")
    _write(fstab, "\n".join(lines) + "\n")
    # The boot partition is mounted there: what raspi-firmware put in the root's copy is hidden
    # (and on the boot partition already, from the same files).
    shutil.rmtree(root / "boot/firmware", ignore_errors=True)
    (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
    # Raspberry Pi Imager's first-boot hook names /boot/firstrun.sh (as on Raspberry Pi OS):
    # this image can be customised with `--base FILE.img` like theirs.
    hook = root / "boot/firstrun.sh"
    hook.unlink(missing_ok=True)
    hook.symlink_to("firmware/firstrun.sh")
    return f"{pub[0]} {pub[1]}"


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


def _install_in_root(root: Path, epoch: int, log: Callable[[str], None]) -> None:
    """Run the first-boot installer in the arm64 root (chroot, qemu-user), as a first boot
    would: the device tool builds the environment with the device's own Python. There is no
    running systemd: ``systemctl`` works offline and the rollback timer is not armed (the
    installer commits the first release at once)."""
    rootfs.enable_binfmt(log)
    stage = root / _STAGE
    shim = stage / "bin"
    shim.mkdir()
    (shim / "systemd-run").write_text("#!/bin/sh\nexit 0\n")
    (shim / "systemd-run").chmod(0o755)
    made = []
    for name, (major, minor) in _DEV_NODES.items():
        node = root / "dev" / name
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            made.append(node)
    env = {
        "PATH": f"/{_STAGE}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "SYSTEMD_OFFLINE": "1",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PIP_NO_CACHE_DIR": "1",
    }
    cmd = ["chroot", str(root), "/usr/bin/python3", "-S",
           f"/{_STAGE}/{installer.FOLDER}/{INSTALLER}",
           "--boot", f"/{_STAGE}", "--service", "systemd"]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=1800, check=False
        )
    finally:
        for node in made:
            node.unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith("edgeagent-firstboot:"):
            log(line)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if proc.returncode != 0 or not result.get("installed"):
        said = [ln for ln in lines if "failed" in ln] or [proc.stderr.strip()[-800:]]
        raise ImageBuildError(f"installing the bundle in the root filesystem failed: {said[-1]}")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(root / "root/.cache", ignore_errors=True)


def _boot_files(root: Path, kver: str, boot: Path) -> bool:
    """The boot partition's files; True when the Raspberry Pi firmware is among them."""
    boot.mkdir()
    shutil.copyfile(root / f"boot/vmlinuz-{kver}", boot / "vmlinuz")
    initrd = rootfs.make_initramfs(root, kver, INITRAMFS_MODULES)
    (boot / "initrd.img").write_bytes(initrd)
    for dtb in sorted((root / f"usr/lib/linux-image-{kver}/broadcom").glob("bcm2*-rpi-*.dtb")):
        shutil.copyfile(dtb, boot / dtb.name)
    firmware = root / "usr/lib/raspi-firmware"
    has_firmware = firmware.is_dir() and any(firmware.glob("start*.elf"))
    if has_firmware:
        for f in sorted(firmware.iterdir()):
            if f.is_file():
                shutil.copyfile(f, boot / f.name)
    (boot / "config.txt").write_text(CONFIG_TXT)
    (boot / "cmdline.txt").write_text(CMDLINE_TXT)
    return has_firmware


def _clamp_times(top: Path, epoch: int) -> None:
    """No timestamp later than ``epoch`` (SOURCE_DATE_EPOCH), symbolic links included."""
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            p = os.path.join(folder, name)
            st = os.lstat(p)
            if st.st_mtime > epoch or st.st_atime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    os.utime(top, (epoch, epoch))


def _du_mb(top: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(top):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            total += st.st_blocks * 512
    return -(-total // MiB)


def assemble(
    out: Path,
    boot: Path,
    root: Path,
    *,
    seed: str,
    epoch: int,
    work: Path,
    boot_mb: int = BOOT_MB,
    root_mb: int | None = None,
) -> dict[str, dict[str, int]]:
    """An MBR disk image from a boot folder (FAT32, label ``bootfs``, partition 1, type 0x0c)
    and a root folder (ext4, label ``rootfs``, partition 2), without loop devices: the
    partitions are made as files (``mkfs.vfat -C`` + ``mcopy``, ``mkfs.ext4 -d``) and copied into
    place with ``dd conv=notrunc,sparse``. Written to ``out`` (0600) only when complete."""
    digest = hashlib.sha256(seed.encode()).digest()
    disk_id, vol_id = digest[:4].hex(), digest[4:8].hex()
    fs_uuid = str(uuid.UUID(bytes=digest[8:24], version=4))
    hash_seed = str(uuid.UUID(bytes=digest[16:32], version=4))
    root_mb = root_mb or max(rootfs.ROOTFS_MB, _du_mb(root) + ROOT_SPARE_MB)
    root_start = BOOT_START_MB + boot_mb
    total_mb = root_start + root_mb
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "E2FSPROGS_FAKE_TIME": str(epoch)}
    fat, ext4 = work / "boot.fat", work / "root.ext4"
    _run(["mkfs.vfat", "-C", "-F", "32", "-n", BOOT_LABEL, "-i", vol_id, "--invariant",
          str(fat), str(boot_mb * 1024)], "mkfs.vfat")  # fmt: skip
    entries = [str(p) for p in sorted(boot.iterdir())]
    _run(["mcopy", "-i", str(fat), "-s", "-p", "-m", "-Q", *entries, "::/"], "mcopy", env=env)
    _run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-U", fs_uuid, "-E", f"hash_seed={hash_seed}",
          "-d", str(root), str(ext4), f"{root_mb}M"], "mkfs.ext4 -d", env=env)  # fmt: skip
    tmp = out.with_name(f".{out.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, total_mb * MiB)
        os.close(fd)
        table = (
            f"label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n"
            f"start={BOOT_START_MB * 2048}, size={boot_mb * 2048}, type=c, bootable\n"
            f"start={root_start * 2048}, size={root_mb * 2048}, type=83\n"
        )
        proc = subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(tmp)],
                              input=table, capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise ImageBuildError(f"sfdisk {tmp}: {proc.stderr.strip()[-500:]}")
        for part, start in ((fat, BOOT_START_MB), (ext4, root_start)):
            _run(["dd", f"if={part}", f"of={tmp}", "bs=1M", f"seek={start}",
                  "conv=notrunc,sparse", "status=none"], f"dd {part.name}")  # fmt: skip
            part.unlink()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "boot": {"index": 1, "offset": BOOT_START_MB * MiB, "bytes": boot_mb * MiB},
        "root": {"index": 2, "offset": root_start * MiB, "bytes": root_mb * MiB},
    }
