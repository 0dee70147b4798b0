"""HardCaseStore: a device's hard cases on disk, bounded by count and by bytes.

::

    folder/cases-000000000001.jsonl     one HardCase per line, oldest segment first
    folder/cases-000000000126.jsonl     the current segment: appends go here

Why segments: dropping the oldest cases is deleting the oldest file (no rewrite on the hot
path), and a page read skips whole files below the cursor. A segment holds at most 1/8 of each
bound, so dropping one never loses more than that. Every case has a sequence number (``seq``),
increasing for the store's life, also across clears (the current segment's name carries it when
empty): a puller's cursor is the last ``seq`` it has.

Crash safety: a case is one ``write`` of a whole line to a file opened for appending. A line
torn by a crash or power cut (no newline at the end of a segment) is dropped with a warning when
the store opens, and the file cut back to its last whole line, so the next append starts clean; a
line that does not parse is skipped with a warning, never a crash. Clears rewrite a segment into
a temporary file and ``os.replace`` it.

Thread-safe (skills run in worker threads): one lock around every operation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .hardcases import HardCase, case_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"^cases-(\d{12})\.jsonl$")
SEGMENTS_PER_BOUND = 8

#: Which cases a page or a clear is about (None: all).
Match = Callable[[HardCase], bool] | None


@dataclass(slots=True)
class _Segment:
    first: int
    path: Path
    count: int
    bytes: int
    last: int
    """Last seq in the file (first - 1 while empty)."""


@dataclass(frozen=True, slots=True)
class Page:
    cases: list[HardCase]
    cursor: int
    """The last seq looked at: the next page starts after it."""
    more: bool


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    cases: int
    bytes: int
    segments: int
    appended: int
    dropped: int
    """Cases dropped to stay within the bounds (oldest first) since the store opened."""
    refused: int
    """Cases larger than the byte bound alone, never stored."""
    skipped_lines: int
    """Torn or unreadable lines found on disk."""
    next_seq: int


def _segment_name(first: int) -> str:
    return f"cases-{first:012d}.jsonl"


class HardCaseStore:
    """Append, page, clear; at most ``max_cases`` cases and ``max_bytes`` bytes in ``folder``."""

    def __init__(self, folder: Path, *, max_cases: int, max_bytes: int) -> None:
        if max_cases < 1 or max_bytes < 1024:
            raise ValueError("max_cases >= 1 and max_bytes >= 1024 are required")
        self.folder = folder
        self.max_cases = max_cases
        self.max_bytes = max_bytes
        self._segment_cases = max(1, max_cases // SEGMENTS_PER_BOUND)
        self._segment_bytes = max(512, max_bytes // SEGMENTS_PER_BOUND)
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._appended = self._dropped = self._refused = self._skipped = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._open()

    # opening ----------------------------------------------------------------------------------

    def _open(self) -> None:
        found = sorted(
            (int(m.group(1)), p)
            for p in self.folder.iterdir()
            if (m := _NAME.match(p.name)) is not None and p.is_file()
        )
        for first, path in found:
            self._segments.append(self._scan(first, path))
        if not self._segments:
            self._segments.append(self._new_segment(1))

    def _scan(self, first: int, path: Path) -> _Segment:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: a torn last line (%d bytes, from a crash?) dropped", path, len(data) - end
            )
            self._skipped += 1
            with path.open("r+b") as f:
                f.truncate(end)
            data = data[:end]
        seg = _Segment(first, path, 0, len(data), first - 1)
        for case in self._parse(path, data):
            seg.count += 1
            seg.last = max(seg.last, case.seq)
        return seg

    def _parse(self, path: Path, data: bytes) -> Iterator[HardCase]:
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield HardCase.model_validate_json(line)
            except ValidationError as exc:
                self._skipped += 1
                log.warning("%s:%d: unreadable case skipped: %s", path, n, exc.errors()[0]["msg"])

    def _new_segment(self, first: int) -> _Segment:
        path = self.folder / _segment_name(first)
        path.touch()
        return _Segment(first, path, 0, 0, first - 1)

    # writing ----------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._segments[-1].last + 1

    def append(self, case: HardCase) -> HardCase | None:
        """Store ``case`` with the next seq (its ``seq`` is replaced); drop the oldest cases
        beyond the bounds. None (and nothing stored) when the case alone exceeds the bytes."""
        with self._lock:
            seq = self.next_seq
            stored = case.model_copy(update={"seq": seq})
            line = (stored.model_dump_json() + "\n").encode()
            if len(line) > self._segment_bytes * SEGMENTS_PER_BOUND or len(line) > self.max_bytes:
                self._refused += 1
                log.warning("hard case of %s (%d bytes) exceeds the store", case.skill, len(line))
                return None
            cur = self._segments[-1]
            full = cur.count >= self._segment_cases or cur.bytes + len(line) > self._segment_bytes
            if cur.count and full:
                cur = self._new_segment(seq)
                self._segments.append(cur)
            fd = os.open(cur.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of a whole line: torn only by a crash
            finally:
                os.close(fd)
            cur.count += 1
            cur.bytes += len(line)
            cur.last = seq
            self._appended += 1
            self._evict()
            return stored

    def _evict(self) -> None:
        while len(self._segments) > 1 and (
            self._total_cases() > self.max_cases or self._total_bytes() > self.max_bytes
        ):
            old = self._segments.pop(0)
            self._dropped += old.count
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()

    def _total_cases(self) -> int:
        return sum(s.count for s in self._segments)

    def _total_bytes(self) -> int:
        return sum(s.bytes for s in self._segments)

    # reading ----------------------------------------------------------------------------------

    def _read(self, seg: _Segment) -> Iterator[HardCase]:
        try:
            data = seg.path.read_bytes()
        except FileNotFoundError:
            return iter(())
        return self._parse(seg.path, data[: data.rfind(b"\n") + 1])

    def page(self, after: int, *, limit: int, max_bytes: int, match: Match = None) -> Page:
        """Cases with ``seq > after`` that ``match``, oldest first: at most ``limit`` and
        ``max_bytes`` of JSON (one case at least, when there is one). The cursor passes the
        cases looked at and not matched too, so a filtered pull never reads them again."""
        out: list[HardCase] = []
        size = 0
        cursor = after
        with self._lock:
            last = self._segments[-1].last
            for seg in self._segments:
                if seg.last <= after:
                    continue
                for case in self._read(seg):
                    if case.seq <= cursor:
                        continue
                    if match is not None and not match(case):
                        cursor = case.seq
                        continue
                    n = case_bytes(case)
                    if len(out) >= limit or (out and size + n > max_bytes):
                        return Page(out, cursor, True)
                    out.append(case)
                    size += n
                    cursor = case.seq
            return Page(out, max(cursor, after), cursor < last)

    def find(self, case_id: str) -> HardCase | None:
        """The case with this id (a scan: the store is small), or None."""
        with self._lock:
            for seg in reversed(self._segments):
                for case in self._read(seg):
                    if case.id == case_id:
                        return case
        return None

    def clear(self, upto: int, match: Match = None) -> int:
        """Remove the cases with ``seq <= upto`` that ``match``; return how many went."""
        removed = 0
        with self._lock:
            kept: list[_Segment] = []
            for i, seg in enumerate(self._segments):
                current = i == len(self._segments) - 1
                if seg.first > upto or seg.count == 0:
                    kept.append(seg)
                    continue
                if match is None and seg.last <= upto and not current:
                    removed += seg.count
                    seg.path.unlink(missing_ok=True)
                    continue
                stay = [c for c in self._read(seg) if c.seq > upto or (match and not match(c))]
                removed += seg.count - len(stay)
                if not stay and not current:
                    seg.path.unlink(missing_ok=True)
                    continue
                if not stay:  # the current segment, empty: renamed so the seq carries on
                    nxt = self._new_segment(seg.last + 1)
                    if nxt.path != seg.path:
                        seg.path.unlink(missing_ok=True)
                    kept.append(nxt)
                    continue
                kept.append(self._rewrite(seg, stay))
            self._segments = kept
        return removed

    def _rewrite(self, seg: _Segment, cases: list[HardCase]) -> _Segment:
        lines = b"".join((c.model_dump_json() + "\n").encode() for c in cases)
        tmp = seg.path.with_suffix(".tmp")
        tmp.write_bytes(lines)
        os.replace(tmp, seg.path)
        return _Segment(seg.first, seg.path, len(cases), len(lines), max(seg.last, cases[-1].seq))

    def statistics(self) -> StoreStatistics:
        with self._lock:
            return StoreStatistics(
                cases=self._total_cases(),
                bytes=self._total_bytes(),
                segments=len(self._segments),
                appended=self._appended,
                dropped=self._dropped,
                refused=self._refused,
                skipped_lines=self._skipped,
                next_seq=self.next_seq,
            )


__all__ = ["HardCaseStore", "Match", "Page", "StoreStatistics"]
