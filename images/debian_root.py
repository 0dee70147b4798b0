"""The root filesystem of a ``--base debian`` image made this device's (``images/debian.py``):
copied out of the cached Debian root (setuid bits put back), its kernel and Python found, the
Raspberry Pi device tree checked, personalised (host name, login, keys, time zone, fstab) and the
bundle installed in it by the first-boot installer under ``chroot``. Apart from the build steps
because every function here edits one folder, the root, in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import boards, installer, rootfs
from .bootpart import ImageBuildError
from .debian_disk import BOOT_LABEL, run
from .firstboot import INSTALLER, Settings

#: The device tree each Raspberry Pi profile boots with (upstream names, as ``upstream_kernel=1``).
#: Debian's kernel names the device trees the upstream way (the last name of each entry).
PI_DTBS = {profile: names[-1] for profile, names in boards.DEVICE_TREES.items()}
STAGE = "tmp/edgeagent-image"
_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}
_PY_LIB = re.compile(r"^python(3\.\d+)$")


def restore_special_modes(image: Path, root: Path, work: Path) -> int:
    """``rdump`` drops setuid, setgid and sticky bits (sudo, /tmp): read every folder's listing
    from the ext4 image in one ``debugfs`` run and put them back. Returns how many."""
    below = (
        "/" + os.path.relpath(os.path.join(d, n), root) for d, ns, _ in os.walk(root) for n in ns
    )
    folders = ["/", *sorted(below)]
    script = work / "debugfs.cmds"
    script.write_text("".join(f'ls -p "{d}"\n' for d in folders))
    listing = run(["debugfs", "-f", str(script), str(image)], "debugfs ls", timeout=300)
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


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    for kver in reversed(versions):
        if (root / f"boot/vmlinuz-{kver}").is_file():
            return kver
    raise ImageBuildError("the root filesystem has no kernel (linux-image-arm64)")


def python_version(root: Path) -> str:
    found = [m.group(1) for p in (root / "usr/lib").iterdir() if (m := _PY_LIB.match(p.name))]
    if not found:
        raise ImageBuildError("the root filesystem has no Python 3")
    return max(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def check_device_tree(root: Path, kver: str, profile: str, family: str | None) -> str | None:
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
    return run(["chroot", str(root), *args], f"in the root filesystem, {args[0]}", env=env)


def personalise(root: Path, s: Settings, log: Callable[[str], None]) -> str:
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
    run(["ssh-keygen", "-q", "-A", "-f", str(root)], "ssh-keygen -A")
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


def install_in_root(root: Path, epoch: int, log: Callable[[str], None]) -> None:
    """Run the first-boot installer in the arm64 root (chroot, qemu-user), as a first boot
    would: the device tool builds the environment with the device's own Python. There is no
    running systemd: ``systemctl`` works offline and the rollback timer is not armed (the
    installer commits the first release at once)."""
    rootfs.enable_binfmt(log)
    stage = root / STAGE
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
        "PATH": f"/{STAGE}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "SYSTEMD_OFFLINE": "1",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PIP_NO_CACHE_DIR": "1",
    }
    cmd = ["chroot", str(root), "/usr/bin/python3", "-S",
           f"/{STAGE}/{installer.FOLDER}/{INSTALLER}",
           "--boot", f"/{STAGE}", "--service", "systemd"]  # fmt: skip
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
