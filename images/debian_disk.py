"""The boot partition and the disk of a ``--base debian`` image (``images/debian.py``): the
boot files (kernel, the small initramfs, Raspberry Pi device trees and firmware, ``config.txt``,
``cmdline.txt``), timestamps clamped to ``SOURCE_DATE_EPOCH``, and an MBR disk image assembled
from a boot folder and a root folder without loop devices or mounts. Apart from the build steps
because it only turns folders into partitions: it knows nothing of bundles or devices.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from . import rootfs
from .bootpart import ImageBuildError

MiB = 1024 * 1024
BOOT_START_MB = 4
BOOT_MB = 256
#: Room left on the root partition beyond what the build fills (releases, models, logs).
ROOT_SPARE_MB = 1024
BOOT_LABEL = "BOOTFS"
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


def run(
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


def boot_files(root: Path, kver: str, boot: Path) -> bool:
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


def clamp_times(top: Path, epoch: int) -> None:
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
    run(["mkfs.vfat", "-C", "-F", "32", "-n", BOOT_LABEL, "-i", vol_id, "--invariant",
          str(fat), str(boot_mb * 1024)], "mkfs.vfat")  # fmt: skip
    entries = [str(p) for p in sorted(boot.iterdir())]
    run(["mcopy", "-i", str(fat), "-s", "-p", "-m", "-Q", *entries, "::/"], "mcopy", env=env)
    run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-U", fs_uuid, "-E", f"hash_seed={hash_seed}",
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
            run(["dd", f"if={part}", f"of={tmp}", "bs=1M", f"seek={start}",
                  "conv=notrunc,sparse", "status=none"], f"dd {part.name}")  # fmt: skip
            part.unlink()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "boot": {"index": 1, "offset": BOOT_START_MB * MiB, "bytes": boot_mb * MiB},
        "root": {"index": 2, "offset": root_start * MiB, "bytes": root_mb * MiB},
    }
