"""Write an image to a disk or a file and read it back: the I/O half of ``image flash``.

The image (``.img``, or ``.img.xz`` decompressed on the fly by ``flash_xz``, whose size comes
from the xz index, so a too-small target is refused before anything is written) is copied in
4 MiB blocks at aligned offsets from page-aligned buffers, hashed (SHA-256, in a thread, while
the next block is written) and flushed every 64 MiB. The target's cached pages are then dropped
(``posix_fadvise(DONTNEED)``) so the read-back comes from the medium, not from memory, and its
SHA-256 over the written range is compared with the image's. On a mismatch the image and the
target are compared block by block to name the first differing offset. A disk is opened with
``O_EXCL``: the kernel itself refuses a disk with a mounted partition, whatever ``/proc`` said a
moment earlier.

Decisions are not made here: :func:`flash` takes a :class:`~.flash.FlashPlan` that
:func:`~.flash.decide` allowed (:func:`plan` probes and decides in one call).
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import hashlib
import lzma
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .flash import (
    FlashIOError,
    FlashPlan,
    FlashRefused,
    Image,
    ImageUnreadable,
    VerifyMismatch,
    decide,
)
from .flash_sys import PROC, SYS, probe_target, read_view
from .flash_xz import XZ_MAGIC, XzReader, xz_uncompressed_size

#: Bytes per write and read (a multiple of every disk's logical and physical block size).
BLOCK = 4 * 1024 * 1024
#: Bytes written between two flushes: bounds the memory held dirty, keeps the progress bar
#: honest (not racing ahead into the page cache) and names where an I/O error happened.
SYNC_EVERY = 64 * 1024 * 1024
#: ioctl asking the kernel to re-read a disk's partition table (linux/fs.h).
BLKRRPART = 0x125F

Progress = Callable[[str, int, int], None]
"""``progress(phase, done_bytes, total_bytes)``; phase is ``write`` or ``verify``."""


# the image -----------------------------------------------------------------------------------


#: Magic numbers of the compressions an image may come in that are not decompressed here.
OTHER_COMPRESSIONS = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"BZh": "bzip2",
}


def _is_xz(path: str) -> bool:
    """Whether the image is xz-compressed (by its magic number, whatever its name)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == XZ_MAGIC:
        return True
    for magic, name in OTHER_COMPRESSIONS.items():
        if head.startswith(magic):
            raise ImageUnreadable(
                f"the image {path} is {name}-compressed; flash takes .img or .img.xz: "
                "decompress it first"
            )
    if path.endswith(".xz"):
        raise ImageUnreadable(f"the image {path} is named .xz but is not xz data")
    return False


def probe_image(path: str) -> Image:
    """The image's size as written (decompressed for ``.xz``, recognised by its magic)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageUnreadable(f"the image {path} is not a regular file")
        compressed = _is_xz(path)
        size = st.st_size
        if compressed:
            with open(path, "rb") as f:
                size = xz_uncompressed_size(f)
    except ValueError as exc:
        raise ImageUnreadable(f"the image {path} is not a valid .xz file: {exc}") from exc
    except OSError as exc:
        raise ImageUnreadable(f"cannot read the image {path}: {exc.strerror or exc}") from exc
    return Image(path, size, compressed, identity=(st.st_dev, st.st_ino))


def plan(
    image: str, target: str, *, force: bool = False, sys_root: Path = SYS, proc_root: Path = PROC
) -> FlashPlan:
    """Probe the image, the target and this machine, and decide (see :func:`.flash.decide`)."""
    img = probe_image(image)
    view = read_view(sys_root, proc_root)
    return decide(img, probe_target(target, view, sys_root), view, force=force)


@contextmanager
def _open_image(image: Image) -> Iterator[Any]:
    with open(image.path, "rb", buffering=0) as raw:
        yield XzReader(raw) if image.compressed else raw


def _fill(reader: Any, buf: memoryview, image: Image, offset: int) -> int:
    """Read into ``buf`` until it is full or the image ends; the bytes read."""
    got = 0
    while got < len(buf):
        try:
            n = reader.readinto(buf[got:])
        except lzma.LZMAError as exc:
            raise ImageUnreadable(
                f"the image {image.path} is corrupt: xz data fails after "
                f"{offset + got:,} decompressed bytes ({exc})"
            ) from exc
        except OSError as exc:
            raise ImageUnreadable(
                f"reading the image {image.path} failed at byte {offset + got:,}: "
                f"{exc.strerror or exc}"
            ) from exc
        if not n:
            break
        got += n
    return got


# the target ----------------------------------------------------------------------------------


def _errname(exc: OSError) -> str:
    code = errno_mod.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{f' ({code})' if code else ''}"


def _open_target(p: FlashPlan) -> int:
    t = p.target
    try:
        if t.kind == "disk":
            fd = os.open(t.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        else:
            fd = os.open(t.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno_mod.EBUSY:
            raise FlashRefused(
                f"{t.path} is busy: the kernel refuses to open it exclusively "
                "(a partition is mounted or in use)"
            ) from exc
        raise FlashIOError(
            f"cannot open {t.path}: {_errname(exc)}", offset=0, errno=exc.errno
        ) from exc
    st = os.fstat(fd)
    expected = stat.S_ISBLK(st.st_mode) if t.kind == "disk" else stat.S_ISREG(st.st_mode)
    if not expected:  # replaced between the decision and now
        os.close(fd)
        raise FlashRefused(f"{t.path} changed since it was checked; run the command again")
    return fd


def _write_all(fd: int, data: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(data):
        try:
            n = os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            raise FlashIOError(
                f"writing {path} failed at byte offset {offset + done:,}: {_errname(exc)}",
                offset=offset + done,
                errno=exc.errno,
            ) from exc
        if n == 0:
            raise FlashIOError(
                f"writing {path} stopped at byte offset {offset + done:,}: the target is full",
                offset=offset + done,
                errno=errno_mod.ENOSPC,
            )
        done += n


def _read_at(fd: int, buf: memoryview, offset: int, path: str) -> int:
    got = 0
    while got < len(buf):
        try:
            n = os.preadv(fd, [buf[got:]], offset + got)
        except OSError as exc:
            raise FlashIOError(
                f"reading {path} back failed at byte offset {offset + got:,}: {_errname(exc)}",
                offset=offset + got,
                errno=exc.errno,
            ) from exc
        if n == 0:
            break
        got += n
    return got


def _drop_cache(fd: int, offset: int, size: int) -> None:
    """Forget the target's cached pages, so reading back reads the medium (and flashing a big
    image does not push everything else out of memory)."""
    os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)


@dataclass(frozen=True, slots=True)
class FlashResult:
    image: str
    target: str
    bytes: int
    sha256: str
    """Of the image as written (decompressed)."""
    write_seconds: float
    """Writing and fsync."""
    verify_seconds: float | None
    """Reading back and hashing; ``None`` with ``verify=False``."""

    @property
    def verified(self) -> bool:
        return self.verify_seconds is not None

    def to_json(self) -> dict[str, Any]:
        """A summary; rates in MB/s (10^6 bytes per second)."""

        def rate(seconds: float | None) -> float | None:
            return round(self.bytes / 1e6 / seconds, 1) if seconds else None

        return {
            "image": self.image,
            "target": self.target,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "write_seconds": round(self.write_seconds, 3),
            "write_mb_s": rate(self.write_seconds),
            "verified": self.verified,
            "verify_seconds": None
            if self.verify_seconds is None
            else round(self.verify_seconds, 3),
            "verify_mb_s": rate(self.verify_seconds),
        }


def _buffer() -> memoryview:
    """A block-sized, page-aligned buffer (freed with its last view, even after an error)."""
    return memoryview(mmap.mmap(-1, BLOCK))


def _flush(fd: int, start: int, end: int, path: str, *, final: bool = False) -> None:
    """fsync what was written since ``start`` and drop it from the page cache; an error names
    the range (buffered writes report errors here, not at the write)."""
    try:
        (os.fsync if final else os.fdatasync)(fd)  # the last one: a file's metadata too
    except OSError as exc:
        raise FlashIOError(
            f"writing {path} failed between byte offsets {start:,} and {end:,} "
            f"(reported when flushing to the medium): {_errname(exc)}",
            offset=start,
            errno=exc.errno,
        ) from exc
    _drop_cache(fd, start, end - start)


def write_image(
    p: FlashPlan, fd: int, progress: Progress | None = None, *, sync_every: int = SYNC_EVERY
) -> tuple[int, str]:
    """Copy the image onto the open target, flushing every ``sync_every`` bytes and at the
    end; (bytes written, SHA-256 of the image)."""
    image = p.image
    path = p.target.path
    digest = hashlib.sha256()
    views = (_buffer(), _buffer())
    offset = synced = turn = 0
    hashed: Future[None] | None = None
    # SHA-256 of block k runs in a thread (hashlib releases the GIL) while block k is written
    # and block k+1 read; the next update waits for it, so the hash stays in order, and a
    # buffer is refilled only after its hash is done.
    with _open_image(image) as reader, ThreadPoolExecutor(1, "flash-sha256") as hasher:
        while offset < image.size:  # never more than was checked against the target's size
            view = views[turn % 2]
            n = _fill(reader, view[: min(BLOCK, image.size - offset)], image, offset)
            if not n:
                break
            chunk = view[:n]
            if hashed is not None:
                hashed.result()
            hashed = hasher.submit(digest.update, chunk)
            turn += 1
            _write_all(fd, chunk, offset, path)
            offset += n
            if offset - synced >= sync_every:
                _flush(fd, synced, offset, path)
                synced = offset
            if progress:
                progress("write", offset, image.size)
        if hashed is not None:
            hashed.result()
        # reading on to the end also has lzma check the last block's integrity
        extra = _fill(reader, views[0][:1], image, offset)
    if offset != image.size or extra:
        size = f"{offset:,} bytes" if offset < image.size else "more bytes"
        raise ImageUnreadable(
            f"the image {image.path} holds {size}, not the {image.size:,} its size "
            "(or xz index) announced; did it change while being written?"
        )
    _flush(fd, synced, offset, path, final=True)
    return offset, digest.hexdigest()


def read_back(fd: int, size: int, path: str, progress: Progress | None = None) -> str:
    """SHA-256 of the first ``size`` bytes of the target, read from the medium (block k+1 is
    read while block k is hashed, as in :func:`write_image`)."""
    _drop_cache(fd, 0, size)
    digest = hashlib.sha256()
    views = (_buffer(), _buffer())
    offset = turn = 0
    hashed: Future[None] | None = None
    with ThreadPoolExecutor(1, "flash-sha256") as hasher:
        while offset < size:
            view = views[turn % 2]
            n = _read_at(fd, view[: min(BLOCK, size - offset)], offset, path)
            if not n:
                raise FlashIOError(
                    f"{path} ends at byte {offset:,} while reading back {size:,} bytes",
                    offset=offset,
                    errno=None,
                )
            if hashed is not None:
                hashed.result()
            hashed = hasher.submit(digest.update, view[:n])
            turn += 1
            offset += n
            if progress:
                progress("verify", offset, size)
        if hashed is not None:
            hashed.result()
    return digest.hexdigest()


def first_difference(image: Image, fd: int, path: str) -> int | None:
    """The first byte offset where the target differs from the image, ``None`` if none."""
    _drop_cache(fd, 0, image.size)
    want = bytearray(BLOCK)
    got = bytearray(BLOCK)
    offset = 0
    with _open_image(image) as reader:
        while offset < image.size:
            n = _fill(reader, memoryview(want), image, offset)
            if not n:
                return None
            m = _read_at(fd, memoryview(got)[:n], offset, path)
            if want[:n] != got[:m] or m != n:
                return offset + next((i for i in range(min(n, m)) if want[i] != got[i]), min(n, m))
            offset += n
    return None


def verify(p: FlashPlan, fd: int, sha256: str, progress: Progress | None = None) -> None:
    """Read the written range back and compare its SHA-256 with the image's."""
    path = p.target.path
    got = read_back(fd, p.image.size, path, progress)
    if got == sha256:
        return
    where = first_difference(p.image, fd, path)
    if where is None:
        raise VerifyMismatch(
            f"read-back of {path} did not match the image (sha256 {got}, expected {sha256}), "
            "but a second read did: the medium returns unstable data (a failing card?)",
            offset=None,
        )
    raise VerifyMismatch(
        f"read-back of {path} differs from the image from byte offset {where:,} "
        f"(sha256 {got}, expected {sha256}); the card or disk may be failing or fake",
        offset=where,
    )


def flash(
    p: FlashPlan,
    *,
    verify_after: bool = True,
    progress: Progress | None = None,
    sync_every: int = SYNC_EVERY,
) -> FlashResult:
    """Carry out an allowed plan: write, fsync, read back and compare."""
    if not p.allowed:
        raise FlashRefused(
            f"refusing to write {p.image.path} to {p.target.path}: " + "; ".join(p.refusals),
            p.refusals,
        )
    fd = _open_target(p)
    try:
        started = time.perf_counter()
        size, sha256 = write_image(p, fd, progress, sync_every=sync_every)
        written = time.perf_counter()
        verify_seconds: float | None = None
        if verify_after:
            verify(p, fd, sha256, progress)
            verify_seconds = time.perf_counter() - written
        if p.target.kind == "disk":
            _reread_partitions(fd)
    finally:
        os.close(fd)
    return FlashResult(p.image.path, p.target.path, size, sha256, written - started, verify_seconds)


def _reread_partitions(fd: int) -> None:
    """Best effort: have the kernel see the new partition table (a loop device without
    partition scanning, or a busy disk, says no; the next plug-in reads it anyway)."""
    with suppress(OSError):
        fcntl.ioctl(fd, BLKRRPART)
