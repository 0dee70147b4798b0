"""Content-file transfer, the core without any network (issue 12: fleet rollouts).

A device fetches the content files of a signed release (``store/<sha256>``, see
:mod:`edgeagent.deploy.devicetool`) in chunks, over MQTT (:mod:`.transfer_mqtt`) or HTTP
(:mod:`.transfer_http`). Both drive a :class:`FileFetch` per file:

* The file is assembled in ``partial/<sha256>`` beside the store (not inside it: the device
  tool's ``prune`` unlinks every store entry no release uses, and its listings expect only
  hash-named files there). The partial survives a reconnect, a crash or a power cut; the next
  fetch resumes from its size, rounded down to a whole chunk.
* At most ``window`` chunks are outstanding (requested and not yet written), so the device
  holds at most ``window * chunk`` bytes of file data in memory, out-of-order arrivals included.
* Sizes and hashes come from the signed manifest. Only chunks that were asked for are accepted,
  each of exactly the length asked for, and nothing is asked for past ``size``: a sender cannot
  make the device write more than ``size`` bytes. The SHA-256 is computed as contiguous data is
  appended (once over the partial's prefix when resuming), checked before the partial is renamed
  into the store; on a mismatch the partial is deleted.

Why :data:`CHUNK` is 64 KiB: every common broker accepts it with its default limits (AWS IoT
Core's 128 KB message limit is the smallest; Azure IoT Hub's is 256 KB; mosquitto, EMQX,
HiveMQ and VerneMQ allow 1 MB or more by default), with room left for the topic and properties,
and it is large enough that the per-message overhead (a few dozen bytes, one PUBACK) stays
below 0.1 %.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import TransferError

#: The default chunk size (see the module docstring for why).
CHUNK = 64 * 1024
#: The largest chunk a server hands out in one reply.
MAX_CHUNK = 256 * 1024
#: Default chunks outstanding per fetch: device memory for file data is at most WINDOW * CHUNK.
WINDOW = 4
#: ``progress(done_bytes, total_bytes)``: resumed and already present bytes count as done.
Progress = Callable[[int, int], None]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REHASH_BLOCK = 1 << 20


class ContentFile(NamedTuple):
    """One content file as the signed manifest lists it."""

    sha256: str
    size: int


def is_sha256(value: object) -> bool:
    """True for a lowercase 64-hex-digit string (a content file's name)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def check_file(sha256: object, size: object) -> ContentFile:
    """``(sha256, size)`` checked: a 64-hex name and a size that is an int ≥ 0."""
    if not is_sha256(sha256):
        raise TransferError(f"not a SHA-256 content name: {str(sha256)[:80]!r}")
    assert isinstance(sha256, str)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TransferError(f"{sha256}: bad size {size!r}")
    return ContentFile(sha256, size)


def partial_dir_for(store: Path) -> Path:
    """Where partial files of ``store`` live: ``partial/`` beside it (same file system, so the
    final rename is atomic)."""
    return store.parent / "partial"


def missing(manifest_files: Iterable[Mapping[str, Any]], store: Path) -> list[ContentFile]:
    """The manifest's content files ``store`` lacks (absent, or not a file of the right size),
    each once, in manifest order. The manifest's entries are dicts with ``sha256`` and ``size``."""
    seen: set[str] = set()
    out: list[ContentFile] = []
    for entry in manifest_files:
        f = check_file(entry.get("sha256"), entry.get("size"))
        if f.sha256 in seen:
            continue
        seen.add(f.sha256)
        p = store / f.sha256
        if not (p.is_file() and not p.is_symlink() and p.stat().st_size == f.size):
            out.append(f)
    return out


@dataclass(slots=True)
class ChunkRequest:
    """One chunk asked for: ``length`` bytes at ``offset``; ``attempts`` counts timed-out sends."""

    offset: int
    length: int
    sent_at: float
    attempts: int = 1


@dataclass(slots=True)
class FetchStats:
    """What a fetch (over MQTT or HTTP) did."""

    bytes: int = 0
    """Bytes received and accepted (resumed bytes and duplicates not counted)."""
    files: int = 0
    """Files fetched into the store."""
    skipped: int = 0
    """Files the store already had."""
    resumed_bytes: int = 0
    """Bytes found in partial files from an earlier attempt."""
    requests: int = 0
    """Requests made: chunk requests over MQTT, GETs over HTTP."""
    retries: int = 0
    """Requests made again: after a timeout, a reconnect, a busy server or a broken download."""
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)
    """The files fetched, in the store."""


class FileFetch:
    """One content file being assembled from chunks in its partial file.

    Usage: ``requests(window, now)`` gives the chunks to ask for; each arriving chunk goes to
    ``on_chunk``; ``retry(now, timeout, max_attempts)`` gives the chunks to ask for again; once
    ``complete``, ``finish()`` verifies and moves the file into the store. ``close()`` keeps the
    partial (to resume later); ``discard()`` deletes it. Two fetches of one file (in this process
    or another) are refused: the partial is locked while open.
    """

    def __init__(
        self,
        sha256: str,
        size: int,
        store: Path,
        *,
        chunk: int = CHUNK,
        partial_dir: Path | None = None,
    ) -> None:
        self.sha256, self.size = check_file(sha256, size)
        if not 0 < chunk <= MAX_CHUNK:
            raise TransferError(f"chunk size {chunk}: must be 1 to {MAX_CHUNK} bytes")
        self.store = store
        self.chunk = chunk
        self.partial = (partial_dir or partial_dir_for(store)) / sha256
        self._in_flight: dict[int, ChunkRequest] = {}
        self._resend: dict[int, ChunkRequest] = {}
        self._held: dict[int, bytes] = {}
        self.received = 0
        """Bytes accepted from the sender (duplicates and ignored chunks not counted)."""
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise TransferError(f"{sha256}: cannot open {self.partial}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TransferError(
                f"{sha256}: already being fetched ({self.partial} is locked)"
            ) from None
        self._fd: int | None = fd
        try:
            have = os.fstat(fd).st_size
            if have > size:
                have = 0  # not a prefix of this file: start again
            elif have < size:
                have -= have % chunk
            os.ftruncate(fd, have)
            self._hash = hashlib.sha256()
            pos = 0
            while pos < have:
                block = os.pread(fd, min(_REHASH_BLOCK, have - pos), pos)
                if not block:  # pragma: no cover - the file shrank under us
                    raise TransferError(f"{sha256}: {self.partial} shrank while being read")
                self._hash.update(block)
                pos += len(block)
        except OSError as exc:
            self.close()
            raise TransferError(f"{sha256}: cannot read {self.partial}: {exc.strerror}") from exc
        except BaseException:
            self.close()
            raise
        self.offset = have
        """Bytes already in the partial, contiguous from the start."""
        self.resumed = have
        """Bytes found in the partial when it was opened (not fetched again)."""
        self._next = have

    # State ----------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.offset == self.size

    @property
    def outstanding(self) -> int:
        """Chunks in flight or held (arrived out of order): what counts against the window."""
        return len(self._in_flight) + len(self._held)

    @property
    def held_bytes(self) -> int:
        return sum(len(b) for b in self._held.values())

    def in_flight(self) -> list[ChunkRequest]:
        return sorted(self._in_flight.values(), key=lambda r: r.offset)

    def next_deadline(self, timeout: float) -> float | None:
        """When the oldest chunk in flight times out (None if nothing is in flight)."""
        if not self._in_flight:
            return None
        return min(r.sent_at for r in self._in_flight.values()) + timeout

    # Requests -------------------------------------------------------------------------------

    def requests(self, window: int = WINDOW, now: float = 0.0) -> list[ChunkRequest]:
        """The chunks to ask for now (re-queued ones first) so that at most ``window`` are
        outstanding; each is marked in flight, sent at ``now``."""
        budget = window - self.outstanding
        out: list[ChunkRequest] = []
        while budget > 0 and self._resend:
            r = self._resend.pop(min(self._resend))
            r.sent_at = now
            self._in_flight[r.offset] = r
            out.append(r)
            budget -= 1
        while budget > 0 and self._next < self.size:
            r = ChunkRequest(self._next, min(self.chunk, self.size - self._next), now)
            self._in_flight[r.offset] = r
            self._next += r.length
            out.append(r)
            budget -= 1
        return out

    def timed_out(self, now: float, timeout: float) -> list[ChunkRequest]:
        """The chunks in flight sent ``timeout`` seconds or more before ``now``."""
        return [r for r in self.in_flight() if now - r.sent_at >= timeout]

    def retry(self, now: float, timeout: float, max_attempts: int) -> list[ChunkRequest]:
        """The timed-out chunks, re-armed (sent again at ``now``) for the caller to re-send;
        raises :class:`TransferError` naming the file and offset for a chunk already sent
        ``max_attempts`` times."""
        expired = self.timed_out(now, timeout)
        for r in expired:
            if r.attempts >= max_attempts:
                raise TransferError(
                    f"{self.sha256}: no reply for {r.length} bytes at offset {r.offset} after "
                    f"{r.attempts} requests ({timeout:g} s each)"
                )
        for r in expired:
            r.attempts += 1
            r.sent_at = now
        return expired

    def rearm(self, now: float) -> list[ChunkRequest]:
        """Every chunk in flight, marked sent at ``now`` (to send again after a reconnect; not
        counted as an attempt)."""
        out = self.in_flight()
        for r in out:
            r.sent_at = now
        return out

    def requeue(self, offset: int) -> bool:
        """Take the chunk at ``offset`` out of flight to be asked for again by the next
        ``requests()`` (the sender said it is busy). False if it was not in flight."""
        r = self._in_flight.pop(offset, None)
        if r is None:
            return False
        self._resend[offset] = r
        return True

    # Data -----------------------------------------------------------------------------------

    def on_chunk(self, offset: int, data: bytes) -> bool:
        """Accept the chunk asked for at ``offset``: written if contiguous, else held until it
        is. A duplicate or a chunk never asked for is ignored (False); a chunk of another length
        than asked for raises :class:`TransferError`."""
        r = self._in_flight.get(offset) or self._resend.get(offset)
        if r is None:
            return False
        if len(data) != r.length:
            raise TransferError(
                f"{self.sha256}: {len(data)} bytes at offset {offset}, asked for {r.length}"
            )
        self._in_flight.pop(offset, None)
        self._resend.pop(offset, None)
        self.received += len(data)
        if offset != self.offset:
            self._held[offset] = data
            return True
        self._append(data)
        while self.offset in self._held:
            self._append(self._held.pop(self.offset))
        return True

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise TransferError(f"{self.sha256}: fetch already closed")
        view = memoryview(data)
        pos = self.offset
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as exc:
            raise TransferError(
                f"{self.sha256}: cannot write {self.partial} at offset {pos}: {exc.strerror}"
            ) from exc
        self._hash.update(data)
        self.offset += len(data)

    def restart(self) -> None:
        """Drop everything fetched so far and start from byte 0 (a server that ignored a range)."""
        if self._fd is None:
            raise TransferError(f"{self.sha256}: fetch already closed")
        os.ftruncate(self._fd, 0)
        self._hash = hashlib.sha256()
        self._in_flight.clear()
        self._resend.clear()
        self._held.clear()
        self.offset = self._next = self.resumed = 0

    # Completion -----------------------------------------------------------------------------

    def finish(self, dest: Path | None = None) -> Path:
        """Check the SHA-256 and move the partial to ``dest`` (default ``store/<sha256>``)
        atomically. On a mismatch the partial is deleted and :class:`TransferError` raised."""
        if not self.complete:
            raise TransferError(
                f"{self.sha256}: cannot finish at offset {self.offset} of {self.size} bytes"
            )
        fd = self._fd
        if fd is None:
            raise TransferError(f"{self.sha256}: fetch already closed")
        try:
            os.fsync(fd)
        except OSError as exc:
            self.close()
            raise TransferError(f"{self.sha256}: cannot sync {self.partial}: {exc}") from exc
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            self.discard()
            raise TransferError(
                f"{self.sha256}: the {self.size} bytes received have SHA-256 {digest[:16]}…, "
                f"not the manifest's (wrong content from the sender); partial deleted"
            )
        dest = dest or self.store / self.sha256
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.partial, dest)
        except OSError as exc:
            self.close()
            raise TransferError(f"{self.sha256}: cannot move into {dest}: {exc.strerror}") from exc
        self._fd = None
        os.close(fd)
        _fsync_dir(dest.parent)
        return dest

    def close(self) -> None:
        """Release the partial: kept to resume from later, unless it holds nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            if self.offset == 0:
                with contextlib.suppress(OSError):
                    self.partial.unlink()  # still locked: nobody else is using it
            os.close(fd)
        self._held.clear()

    def discard(self) -> None:
        """Close and delete the partial."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def __enter__(self) -> FileFetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
