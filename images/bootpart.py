"""An image file's partition table and its FAT boot partition, read and written with ``mtools``.

No root, no loop device, no mounting: the MBR is parsed here with :mod:`struct`, and the files
of the FAT partition are read and written with ``mdir``/``mtype``/``mcopy``/``mdel``/``mmd`` at
``IMG@@OFFSET``. Nothing outside the boot partition is ever written.

::

    EdgeAgentError
    └── ImageBuildError          anything ``image build --base FILE.img`` refuses or fails at
        ├── NotAnImage           no MBR partition table (or unreadable, or truncated)
        ├── NoBootPartition      no FAT partition in the table, or it does not hold FAT
        ├── BootPartitionFull    the boot partition lacks room for what must be written
        └── ToolMissing          mtools (or xz) is not installed
"""

from __future__ import annotations

import itertools
import lzma
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import EdgeAgentError

SECTOR = 512
#: MBR partition types of FAT filesystems (FAT12, FAT16 <32M, FAT16, FAT32 CHS/LBA, FAT16 LBA).
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
_EXTENDED = frozenset({0x05, 0x0F, 0x85})
#: How long one mtools command may take, seconds (a bundle of ~60 MB copies in about a second).
MTOOLS_TIMEOUT = 300
#: Kept free on the boot partition after writing (FAT allocation slack, the installer's log).
SPARE_BYTES = 256 * 1024


class ImageBuildError(EdgeAgentError):
    """Base of what ``image build --base`` refuses or fails at; the message names the file."""


class NotAnImage(ImageBuildError):
    """The file has no MBR partition table (or is truncated)."""


class NoBootPartition(ImageBuildError):
    """No FAT boot partition in the table."""


class BootPartitionFull(ImageBuildError):
    """The boot partition has too little room for what must be written."""


class ToolMissing(ImageBuildError):
    """A command-line tool the build needs is not installed."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One primary MBR partition entry."""

    index: int  # 1-based, as in /dev/mmcblk0p1
    type: int
    start: int  # bytes from the start of the image
    size: int  # bytes
    bootable: bool

    @property
    def is_fat(self) -> bool:
        return self.type in FAT_TYPES


def parse_mbr(sector0: bytes, image_size: int, name: str = "image") -> list[Partition]:
    """The primary partitions of an MBR (pure). Refuses a GPT-only disk, no signature, entries
    past the end of the image, and overlapping partitions, naming the entry."""
    if len(sector0) < SECTOR:
        raise NotAnImage(f"{name}: {len(sector0)} bytes, shorter than one sector (not an image)")
    if sector0[510:512] != b"\x55\xaa":
        raise NotAnImage(f"{name}: no MBR partition table (no 0x55AA signature at byte 510)")
    parts: list[Partition] = []
    for i in range(4):
        entry = sector0[446 + 16 * i : 446 + 16 * (i + 1)]
        status, ptype = entry[0], entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0 or count == 0:
            continue
        if status not in (0x00, 0x80):
            raise NotAnImage(f"{name}: partition {i + 1}: bad status byte 0x{status:02x}")
        if ptype == 0xEE:
            raise NotAnImage(f"{name}: a GPT disk (protective MBR): use an MBR image")
        if ptype in _EXTENDED:
            continue  # logical partitions are never the Pi's boot partition
        start, size = lba * SECTOR, count * SECTOR
        if start + size > image_size:
            raise NotAnImage(
                f"{name}: partition {i + 1} ends at byte {start + size}, past the end of the "
                f"file ({image_size} bytes): truncated image?"
            )
        parts.append(Partition(i + 1, ptype, start, size, status == 0x80))
    if not parts:
        raise NotAnImage(f"{name}: the MBR lists no partition")
    ordered = sorted(parts, key=lambda p: p.start)
    for a, b in itertools.pairwise(ordered):
        if a.start + a.size > b.start:
            raise NotAnImage(f"{name}: partitions {a.index} and {b.index} overlap")
    return parts


def is_fat_boot_sector(sector: bytes) -> bool:
    """A FAT12/16/32 boot sector: jump, 0x55AA, a sane BPB, and the FAT name where it lives."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa" or sector[0] not in (0xEB, 0xE9):
        return False
    bytes_per_sector, per_cluster = struct.unpack_from("<HB", sector, 11)
    if bytes_per_sector not in (512, 1024, 2048, 4096) or per_cluster == 0:
        return False
    return sector[54:58] == b"FAT1" or sector[82:87] == b"FAT32"


def find_boot_partition(path: Path) -> Partition:
    """The image's FAT boot partition: the first FAT-typed partition whose first sector is a FAT
    boot sector (Raspberry Pi OS: partition 1, type 0x0c)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            sector0 = f.read(SECTOR)
            parts = parse_mbr(sector0, size, str(path))
            seen = []
            for p in sorted(parts, key=lambda p: p.index):
                f.seek(p.start)
                fat = is_fat_boot_sector(f.read(SECTOR))
                seen.append(f"{p.index}: type 0x{p.type:02x}{' (FAT)' if fat else ''}")
                if p.is_fat and fat:
                    return p
    except OSError as exc:
        raise NotAnImage(f"{path}: cannot read: {exc.strerror or exc}") from exc
    raise NoBootPartition(
        f"{path}: no FAT boot partition (partitions {', '.join(seen)}); a Raspberry Pi OS image "
        "has its boot files on a FAT partition (type 0x0c)"
    )


#: ``progress(phase, done, total)``: bytes of the base read so far (``copying``: of the image;
#: ``decompressing``: of the ``.xz`` file), increasing, ending at ``total``.
Progress = Callable[[str, int, int], None]
_CHUNK = 1 << 20


def copy_base(base: Path, out: Path, progress: Progress | None = None) -> None:
    """``base`` (``.img`` or ``.img.xz``) to ``out``, created 0600 (it will hold a credential).
    ``progress`` is called as the base is read, last with ``done == total`` (:data:`Progress`)."""
    if base.resolve() == out.resolve():
        raise ImageBuildError(f"{out}: the output must not be the base image itself")
    tmp = out.with_name(f".{out.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst, base.open("rb") as raw:
            total = os.fstat(raw.fileno()).st_size
            if base.suffix == ".xz":
                try:
                    with lzma.LZMAFile(raw, "rb") as src:
                        _copy(src, dst, raw, total, "decompressing", progress)
                except lzma.LZMAError as exc:
                    raise NotAnImage(f"{base}: not a valid .xz file: {exc}") from exc
            else:
                _copy(raw, dst, raw, total, "copying", progress)
        os.replace(tmp, out)
    except FileNotFoundError as exc:
        raise NotAnImage(f"{base}: no such file") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _copy(
    src: BinaryIO | lzma.LZMAFile,
    dst: BinaryIO,
    raw: BinaryIO,
    total: int,
    phase: str,
    progress: Progress | None,
) -> None:
    """Copy ``src`` to ``dst``, reporting how far ``raw`` (the base file ``src`` reads) is read."""
    done = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        now = min(raw.tell(), total)
        if progress is not None and now > done:
            done = now
            progress(phase, done, total)
    if progress is not None and done < total:
        progress(phase, total, total)


_FREE = re.compile(r"([\d\s.,']+)\s+bytes free")


class BootPartition:
    """The FAT partition of an image file, through mtools (``-i IMG@@OFFSET``)."""

    def __init__(self, image: Path, partition: Partition) -> None:
        self.image = image
        self.partition = partition
        self._env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
        for tool in ("mdir", "mcopy", "mdel", "mmd", "mtype", "mdeltree"):
            if shutil.which(tool) is None:
                raise ToolMissing(f"{tool} not found: install mtools (apt-get install mtools)")

    @classmethod
    def open(cls, image: Path) -> BootPartition:
        return cls(image, find_boot_partition(image))

    @property
    def _target(self) -> str:
        return f"{self.image}@@{self.partition.start}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [args[0], "-i", self._target, *args[1:]]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, env=self._env, timeout=MTOOLS_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ImageBuildError(
                f"{args[0]} on {self.image}: no answer in {exc.timeout} s"
            ) from exc
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise ImageBuildError(
                f"{args[0]} on {self.image} (boot partition {self.partition.index}) failed: "
                f"{err[-1] if err else f'exit {proc.returncode}'}"
            )
        return proc

    def exists(self, name: str) -> bool:
        return self._run("mdir", "-b", f"::/{name}", check=False).returncode == 0

    def listing(self) -> list[str]:
        """Names at the root of the partition (lower case, as FAT compares them)."""
        out = self._run("mdir", "-b", "::/").stdout.decode(errors="replace")
        return sorted(line.rsplit("/", 1)[-1].lower() for line in out.splitlines() if line)

    def read_file(self, name: str) -> bytes | None:
        """The bytes of ``name`` (a path under the root), or None if absent."""
        if not self.exists(name):
            return None
        return self._run("mtype", f"::/{name}").stdout

    def cluster_bytes(self) -> int:
        """The allocation unit: FAT stores every file in whole clusters."""
        with self.image.open("rb") as f:
            f.seek(self.partition.start)
            sector = f.read(SECTOR)
        bytes_per_sector, per_cluster = struct.unpack_from("<HB", sector, 11)
        return int(bytes_per_sector * per_cluster)

    def free_bytes(self) -> int:
        out = self._run("mdir", "::/").stdout.decode(errors="replace")
        m = _FREE.search(out)
        if m is None:
            raise ImageBuildError(f"{self.image}: mdir printed no free space")
        return int(re.sub(r"\D", "", m.group(1)))

    def write_file(self, name: str, data: bytes, staging: Path) -> None:
        """Write (or replace) the file ``name`` at the root from ``data``."""
        src = staging / name.replace("/", "_")
        src.write_bytes(data)
        try:
            self._run("mcopy", "-o", "-n", str(src), f"::/{name}")
        finally:
            src.unlink(missing_ok=True)

    def put_tree(self, folder: Path, name: str) -> None:
        """Copy the local ``folder`` to ``::/name`` (replacing one already there)."""
        if self.exists(name):
            self._run("mdeltree", f"::/{name}")
        self._run("mmd", f"::/{name}")
        entries = sorted(folder.iterdir())
        if entries:
            self._run("mcopy", "-s", "-o", "-n", *[str(p) for p in entries], f"::/{name}/")

    def delete(self, name: str) -> None:
        if self.exists(name):
            self._run("mdel", f"::/{name}")
