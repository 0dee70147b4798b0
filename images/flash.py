"""The pure decisions of ``edgeagent image flash``: is this target safe to overwrite with this
image, which disks is the running system on, what is mounted. No I/O: ``flash_sys`` reads
``/sys`` and ``/proc`` into a :class:`SystemView` and a :class:`Target`, ``flash_io`` carries out
a plan these functions approved.

The rules (every reason is collected, so one refusal lists every problem):

- never the disk holding ``/``, ``/boot``, ``/boot/firmware``, ``/boot/efi``, ``/usr`` or
  ``/var`` (followed through device-mapper and RAID to the physical disks), not even with
  ``--force``;
- never a disk with a partition mounted, used as swap, or taken by a device-mapper/RAID device;
- never a partition (the image holds its own partition table: name the whole disk), a read-only
  disk, a disk without a medium, or one smaller than the image;
- a disk that is neither removable nor on USB or an SD/MMC slot only with ``--force``; a loop
  device counts as removable (it is a file), which is how the tests flash a "disk";
- a plain file: not the image itself, and only with room for the image on its filesystem.

::

    EdgeAgentError
    └── FlashError               anything ``image flash`` refuses or fails at
        ├── ImageUnreadable      the image is missing, empty or corrupt (names the offset)
        ├── FlashRefused         the target is unsafe or unsuitable (lists every reason)
        ├── FlashIOError         writing or reading the target failed (names the offset, errno)
        └── VerifyMismatch       the read-back differs from the image (names the first offset)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import EdgeAgentError

#: Mount points whose disk is the running system's.
SYSTEM_MOUNT_POINTS = ("/", "/boot", "/boot/firmware", "/boot/efi", "/usr", "/var")
#: Transports of disks a user plugs in and out (besides the kernel's removable flag).
HOTPLUG_TRANSPORTS = frozenset({"usb", "mmc"})


class FlashError(EdgeAgentError):
    """Base of the errors of ``image flash``."""


class ImageUnreadable(FlashError):
    """The image cannot be read: missing, empty, not an image, or corrupt."""


class FlashRefused(FlashError):
    """The target is unsafe or unsuitable; ``reasons`` lists every problem found."""

    def __init__(self, message: str, reasons: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)


class FlashIOError(FlashError):
    """Writing or reading the target failed; ``offset`` is where (bytes), ``errno`` why."""

    def __init__(self, message: str, *, offset: int, errno: int | None) -> None:
        super().__init__(message)
        self.offset = offset
        self.errno = errno


class VerifyMismatch(FlashError):
    """The target read back differs from the image; ``offset`` is the first differing byte
    (``None`` when a second read matched: the medium returned different data twice)."""

    def __init__(self, message: str, *, offset: int | None) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class BlockDev:
    """A whole block device as ``/sys/block/NAME`` describes it."""

    name: str
    size: int
    """Bytes (0: no medium, e.g. a card reader without a card)."""
    removable: bool = False
    """The kernel's removable flag."""
    read_only: bool = False
    model: str = ""
    transport: str = ""
    """usb, mmc, loop, nvme, ata, scsi, virtio, ... ("" when unknown)."""
    partitions: tuple[str, ...] = ()
    slaves: tuple[str, ...] = ()
    """For device-mapper and RAID devices: the disks or partitions they are built on."""
    backing_file: str = ""
    """For loop devices: the file behind it."""

    @property
    def hotplug(self) -> bool:
        """Removable media, a USB disk, an SD card or a loop device (a file)."""
        return self.removable or self.transport in HOTPLUG_TRANSPORTS or self.transport == "loop"


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/self/mountinfo``, with the block device resolved to its name."""

    point: str
    device: str
    """Kernel name of the block device (``sda1``, ``dm-0``); "" when not on a block device."""
    source: str = ""


@dataclass(frozen=True, slots=True)
class SystemView:
    """What the decisions need to know about this machine's disks."""

    disks: Mapping[str, BlockDev]
    mounts: tuple[Mount, ...] = ()
    swaps: tuple[str, ...] = ()
    """Kernel names of the block devices in use as swap."""

    def disk_of(self, name: str) -> str | None:
        """The whole disk ``name`` is (a disk) or is on (a partition); ``None`` if unknown."""
        if name in self.disks:
            return name
        for disk in self.disks.values():
            if name in disk.partitions:
                return disk.name
        return None

    def underlying(self, name: str) -> set[str]:
        """The disks ``name`` lives on, through device-mapper and RAID layers."""
        seen: set[str] = set()
        out: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            disk = self.disk_of(current)
            if disk is None:
                continue
            slaves = self.disks[disk].slaves
            if slaves:
                todo.extend(slaves)
            else:
                out.add(disk)
        return out

    def users(self) -> dict[str, list[str]]:
        """Per disk, what uses it: mounts, swap, and the devices built on it."""
        found: dict[str, list[str]] = {}

        def via(name: str, disk: str) -> str:
            return name if self.disk_of(name) == disk else f"{name} (on {disk})"

        for m in self.mounts:
            if m.device:
                for disk in sorted(self.underlying(m.device)):
                    found.setdefault(disk, []).append(
                        f"{via(m.device, disk)} is mounted on {m.point}"
                    )
        for s in self.swaps:
            for disk in sorted(self.underlying(s)):
                found.setdefault(disk, []).append(f"{via(s, disk)} is in use as swap")
        for upper in self.disks.values():
            for slave in upper.slaves:
                for disk in sorted(self.underlying(slave)):
                    found.setdefault(disk, []).append(f"{slave} is part of {upper.name}")
        return found

    def system_disks(self) -> dict[str, str]:
        """The disks the running system is on, each with why (``/ is on vda``)."""
        found: dict[str, str] = {}
        for m in self.mounts:
            if m.point in SYSTEM_MOUNT_POINTS and m.device:
                for disk in sorted(self.underlying(m.device)):
                    found.setdefault(disk, f"{m.point} is on {m.device}")
        return found


@dataclass(frozen=True, slots=True)
class Image:
    path: str
    size: int
    """Bytes written to the target (decompressed size for ``.xz``)."""
    compressed: bool = False
    identity: tuple[int, int] | None = None
    """(st_dev, st_ino), to refuse flashing an image onto itself."""


TargetKind = Literal["disk", "partition", "file", "new", "other"]


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    kind: TargetKind
    size: int = 0
    """Bytes: the disk's size, or the existing file's."""
    disk: BlockDev | None = None
    """For a disk: what sysfs says about it; for a partition: its disk."""
    partition: str = ""
    """For a partition: its kernel name."""
    free: int = 0
    """For a file: bytes the image may use on its filesystem (free space plus the file's size)."""
    identity: tuple[int, int] | None = None
    detail: str = ""
    """For ``other``: what it is (a directory, a character device, ...)."""


@dataclass(frozen=True, slots=True)
class FlashPlan:
    """A decision: what will be written where, and why not if ``refusals`` is not empty."""

    image: Image
    target: Target
    refusals: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """Things allowed but worth saying (``--force`` used, a loop device's backing file)."""

    @property
    def allowed(self) -> bool:
        return not self.refusals

    @property
    def overwrites(self) -> bool:
        """Whether anything existing is destroyed (then the user is asked first)."""
        return self.target.kind == "disk" or (self.target.kind == "file" and self.target.size > 0)

    def describe(self) -> list[str]:
        """What will happen, for a human: the image, the target, what it holds, the notes."""
        img = self.image
        xz = ", xz-compressed" if img.compressed else ""
        lines = [f"image:  {img.path}{xz}, {size_text(img.size)}"]
        t = self.target
        will = "will" if self.allowed else "would"
        if t.kind == "disk" and t.disk is not None:
            d = t.disk
            facts = [d.model, size_text(d.size), d.transport, "removable" if d.removable else ""]
            lines.append(f"target: {t.path}, {', '.join(f for f in facts if f)}")
            if d.partitions:
                lines.append(
                    f"        its partitions {', '.join(d.partitions)} {will} be destroyed"
                )
            else:
                lines.append(f"        everything on it {will} be destroyed")
        elif t.kind == "file":
            lines.append(f"target: {t.path}, a file of {size_text(t.size)}: it {will} be replaced")
        elif t.kind == "new":
            lines.append(f"target: {t.path}, a new file")
        else:
            lines.append(f"target: {t.path}")
        lines.extend(f"note:   {n}" for n in self.notes)
        return lines


def size_text(n: int) -> str:
    """``29.7 GiB (31,914,983,424 bytes)``."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    value = float(n)
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{n:,} bytes"
    return f"{value:.1f} {units[unit]} ({n:,} bytes)"


def decide(image: Image, target: Target, view: SystemView, *, force: bool = False) -> FlashPlan:
    """Whether ``image`` may be written to ``target`` on this machine, with every reason."""
    refusals: list[str] = []
    notes: list[str] = []
    if image.size <= 0:
        refusals.append(f"the image {image.path} is empty")
    if target.kind == "disk":
        _check_disk(image, target, view, force, refusals, notes)
    elif target.kind == "partition":
        disk = target.disk.name if target.disk else "its disk"
        refusals.append(
            f"{target.path} is a partition ({target.partition} of {disk}); an image holds its "
            f"own partition table: flash the whole disk (/dev/{disk})"
        )
    elif target.kind in ("file", "new"):
        if image.identity is not None and image.identity == target.identity:
            refusals.append(f"{target.path} is the image itself")
        if target.free < image.size:
            refusals.append(
                f"not enough room for the image at {target.path}: {size_text(target.free)} "
                f"available, the image is {size_text(image.size)}"
            )
    else:
        what = target.detail or "neither a block device nor a regular file"
        refusals.append(f"{target.path} is {what}: give a disk (/dev/sdX, /dev/mmcblkN) or a file")
    return FlashPlan(image, target, tuple(refusals), tuple(notes))


def _check_disk(
    image: Image,
    target: Target,
    view: SystemView,
    force: bool,
    refusals: list[str],
    notes: list[str],
) -> None:
    disk = target.disk
    if disk is None:
        refusals.append(f"{target.path}: no information about this disk in /sys/block")
        return
    system = view.system_disks().get(disk.name)
    if system is not None:
        refusals.append(
            f"{target.path} holds the running system ({system}); it is never overwritten"
        )
    else:  # the system's own mounts would only repeat that
        refusals.extend(
            f"{target.path} is in use: {use}; unmount or release it first"
            for use in view.users().get(disk.name, [])
        )
    if disk.read_only:
        refusals.append(f"{target.path} is read-only (an SD card's lock switch?)")
    if disk.size == 0:
        refusals.append(f"{target.path} has no medium (size 0)")
    elif disk.size < image.size:
        refusals.append(
            f"{target.path} is too small: {size_text(disk.size)} for an image of "
            f"{size_text(image.size)}"
        )
    if disk.transport == "loop":
        notes.append(f"{disk.name} is a loop device backed by {disk.backing_file or '(nothing)'}")
    elif not disk.hotplug:
        what = f"a {disk.transport} disk" if disk.transport else "a fixed disk"
        if force:
            notes.append(f"{target.path} is not removable ({what}); allowed by --force")
        else:
            refusals.append(
                f"{target.path} is not removable ({what}, not USB or SD); "
                "pass --force if you are sure"
            )
