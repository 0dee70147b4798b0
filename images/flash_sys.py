"""Read what the flash decisions need from this machine: disks from ``/sys/block`` (size, model,
removable and read-only flags, transport, partitions, device-mapper/RAID slaves, a loop device's
backing file), mounts from ``/proc/self/mountinfo``, swap from ``/proc/swaps``, and what a
target path is. ``sys_root``/``proc_root`` point elsewhere in the tests (a fake tree).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .flash import BlockDev, Mount, SystemView, Target

SYS = Path("/sys")
PROC = Path("/proc")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _transport(name: str, real: str) -> str:
    if name.startswith("loop"):
        return "loop"
    if "/usb" in real:
        return "usb"
    if name.startswith("mmcblk") or "/mmc_host/" in real:
        return "mmc"
    for prefix, transport in (("nvme", "nvme"), ("dm-", "dm"), ("md", "md"), ("zram", "zram")):
        if name.startswith(prefix):
            return transport
    for part, transport in (("/virtio", "virtio"), ("/ata", "ata"), ("/host", "scsi")):
        if part in real:
            return transport
    return ""


def _model(dev: Path) -> str:
    device = dev / "device"
    vendor = _read(device / "vendor")
    if re.fullmatch(r"0x[0-9a-fA-F]+", vendor):  # a PCI vendor id (virtio), not a name
        vendor = ""
    model = _read(device / "model") or _read(device / "name")  # mmc cards have `name`
    return " ".join(x for x in (vendor, model) if x)


def read_disk(name: str, sys_root: Path = SYS) -> BlockDev:
    """One whole disk, ``/sys/block/NAME``."""
    dev = sys_root / "block" / name
    real = dev.resolve()
    parts: list[tuple[int, str]] = []
    for child in real.iterdir() if real.is_dir() else ():
        number = _read(child / "partition")
        if number.isdigit():
            parts.append((int(number), child.name))
    slaves = dev / "slaves"
    sectors = _read(dev / "size")
    return BlockDev(
        name=name,
        size=int(sectors) * 512 if sectors.isdigit() else 0,  # sysfs counts 512-byte sectors
        removable=_read(dev / "removable") == "1",
        read_only=_read(dev / "ro") == "1",
        model=_model(dev),
        transport=_transport(name, str(real)),
        partitions=tuple(n for _, n in sorted(parts)),
        slaves=tuple(sorted(p.name for p in slaves.iterdir())) if slaves.is_dir() else (),
        backing_file=_read(dev / "loop" / "backing_file"),
    )


def devnum_name(major: int, minor: int, sys_root: Path = SYS) -> str | None:
    """The kernel name of block device MAJOR:MINOR (``sda1``), ``None`` if there is none."""
    link = sys_root / "dev" / "block" / f"{major}:{minor}"
    return link.resolve().name if link.exists() else None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _name_of(source: str, known: set[str]) -> str:
    for candidate in (os.path.basename(source), os.path.basename(os.path.realpath(source))):
        if candidate in known:
            return candidate
    return ""


def read_view(sys_root: Path = SYS, proc_root: Path = PROC) -> SystemView:
    """Every disk, mount and swap device of this machine."""
    block = sys_root / "block"
    disks = {p.name: read_disk(p.name, sys_root) for p in sorted(block.iterdir())}
    known = set(disks) | {part for d in disks.values() for part in d.partitions}
    mounts: list[Mount] = []
    for line in _read(proc_root / "self" / "mountinfo").splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 7:
            continue
        dash = fields.index("-", 6)
        source = _unescape(fields[dash + 2]) if len(fields) > dash + 2 else ""
        major, _, minor = fields[2].partition(":")
        device = ""
        if major.isdigit() and minor.isdigit() and int(major) != 0:
            device = devnum_name(int(major), int(minor), sys_root) or ""
        if not device and source.startswith("/dev/"):  # btrfs and others report 0:N
            device = _name_of(source, known)
        mounts.append(Mount(point=_unescape(fields[4]), device=device, source=source))
    swaps: list[str] = []
    for line in _read(proc_root / "swaps").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "partition":
            name = _name_of(_unescape(parts[0]), known)
            if name:
                swaps.append(name)
    return SystemView(disks=disks, mounts=tuple(mounts), swaps=tuple(swaps))


def probe_target(path: str, view: SystemView, sys_root: Path = SYS) -> Target:
    """What ``path`` is: a disk, a partition, an existing or new file, or something else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = Path(os.path.abspath(path)).parent
        if not parent.is_dir():
            return Target(path, "other", detail=f"in a folder that does not exist ({parent})")
        vfs = os.statvfs(parent)
        return Target(path, "new", free=vfs.f_bavail * vfs.f_frsize)
    if stat.S_ISBLK(st.st_mode):
        name = devnum_name(os.major(st.st_rdev), os.minor(st.st_rdev), sys_root)
        if name is None:
            return Target(path, "other", detail="a block device that /sys does not know")
        if name in view.disks:
            disk = view.disks[name]
            return Target(path, "disk", size=disk.size, disk=disk)
        parent_disk = view.disk_of(name)
        return Target(
            path,
            "partition",
            disk=view.disks[parent_disk] if parent_disk else None,
            partition=name,
        )
    if stat.S_ISREG(st.st_mode):
        vfs = os.statvfs(path)
        reusable = min(st.st_size, st.st_blocks * 512)  # what truncating it frees
        return Target(
            path,
            "file",
            size=st.st_size,
            free=vfs.f_bavail * vfs.f_frsize + reusable,
            identity=(st.st_dev, st.st_ino),
        )
    if stat.S_ISDIR(st.st_mode):
        return Target(path, "other", detail="a directory")
    if stat.S_ISCHR(st.st_mode):
        return Target(path, "other", detail="a character device")
    return Target(path, "other")
