"""Content files over HTTP, standard library only: :func:`fetch_files_http` (device side) and
:func:`serve_http` (operator side).

The device asks for ``GET {base_url}/<sha256>``, with ``Range: bytes=OFFSET-`` when a partial file
from an earlier attempt is there, and streams the body into a :class:`~.transfer.FileFetch` one
chunk at a time (memory: one chunk). A broken download is resumed from the last whole chunk; a
server that ignores the range gets the file from byte 0 again. Everything is checked as over MQTT:
sizes and hashes from the signed manifest, nothing written past ``size``, the SHA-256 before the
file enters the store.

The server answers only ``/<64 lowercase hex>`` names found in its store folders (regular files,
no symlinks followed), with single-range support; anything else is 404, there is no listing.
Both are blocking: from async code, use :func:`fetch_files_http_async` (a worker thread) and run
the server in its own thread (:meth:`FileHTTPServer.start`).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from .errors import TransferError
from .transfer import CHUNK, ContentFile, FetchStats, FileFetch, Progress, check_file, is_sha256

log = logging.getLogger(__name__)

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


# Device side --------------------------------------------------------------------------------


class _Broken(Exception):
    """The download stopped early: resume it."""


def fetch_files_http(
    base_url: str,
    files: Iterable[tuple[str, int]],
    store: Path,
    *,
    chunk: int = CHUNK,
    timeout: float = 10.0,
    max_attempts: int = 5,
    partial_dir: Path | None = None,
    progress: Progress | None = None,
) -> FetchStats:
    """Fetch ``files`` (``(sha256, size)`` from the signed manifest) from ``base_url`` into
    ``store``. A download that breaks is resumed; after ``max_attempts`` failures in a row on one
    file, or on a 4xx answer (404: the server lacks the file), raises :class:`TransferError`
    naming the file and offset. Partial files stay to resume from. Blocking."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TransferError(f"file URL {base_url!r}: only http:// and https:// URLs are served")
    base = base_url.rstrip("/")
    wanted: dict[str, ContentFile] = {}
    for sha, size in files:
        cf = check_file(sha, size)
        wanted.setdefault(cf.sha256, cf)
    stats = FetchStats()
    started = time.monotonic()
    total = sum(f.size for f in wanted.values())
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    try:
        for cf in wanted.values():
            dest = store / cf.sha256
            if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == cf.size:
                stats.skipped += 1
                advance(cf.size)
                continue
            with FileFetch(cf.sha256, cf.size, store, chunk=chunk, partial_dir=partial_dir) as f:
                stats.resumed_bytes += f.resumed
                advance(f.resumed)
                _fetch_one(f, f"{base}/{cf.sha256}", timeout, max_attempts, stats, advance)
                stats.paths.append(f.finish())
                stats.files += 1
    finally:
        stats.seconds = time.monotonic() - started
    return stats


async def fetch_files_http_async(
    base_url: str, files: Iterable[tuple[str, int]], store: Path, **kwargs: Any
) -> FetchStats:
    """:func:`fetch_files_http` in a worker thread, off the event loop."""
    return await asyncio.to_thread(fetch_files_http, base_url, list(files), store, **kwargs)


def _fetch_one(
    f: FileFetch,
    url: str,
    timeout: float,
    max_attempts: int,
    stats: FetchStats,
    advance: Callable[[int], None],
) -> None:
    failures = 0
    while not f.complete:
        headers = {"Range": f"bytes={f.offset}-"} if f.offset else {}
        stats.requests += 1
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as resp:
                _check_answer(f, url, resp)
                while not f.complete:
                    (r,) = f.requests(1)
                    data = _read_exact(resp, r.length)
                    if len(data) != r.length:
                        raise _Broken(f"the download stopped at offset {r.offset}")
                    before = f.offset
                    f.on_chunk(r.offset, data)
                    stats.bytes += len(data)
                    failures = 0
                    advance(f.offset - before)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise TransferError(f"{f.sha256}: not on the server ({url}: HTTP 404)") from None
            if exc.code == 416:
                raise TransferError(
                    f"{f.sha256}: the server's copy is shorter than {f.offset} bytes ({url})"
                ) from None
            if exc.code < 500:
                raise TransferError(f"{f.sha256}: {url}: HTTP {exc.code} {exc.reason}") from None
            why = f"HTTP {exc.code} {exc.reason}"
        except (_Broken, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            why = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        else:
            continue
        for r in f.in_flight():
            f.requeue(r.offset)
        failures += 1
        stats.retries += 1
        if failures >= max_attempts:
            raise TransferError(
                f"{f.sha256}: {url}: {why} (at offset {f.offset}, {failures} attempts in a row)"
            )
        time.sleep(min(0.1 * 2**failures, 2.0))


def _check_answer(f: FileFetch, url: str, resp: Any) -> None:
    """A 206 must start at our offset; a 200 is the whole file (start over if we asked for a
    range); either must be of the manifest's size."""
    if resp.status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if m is None or int(m.group(1)) != f.offset:
            raise TransferError(
                f"{f.sha256}: {url} answered range {resp.headers.get('Content-Range')!r} to a "
                f"request from offset {f.offset}"
            )
        if m.group(3) != "*" and int(m.group(3)) != f.size:
            raise TransferError(
                f"{f.sha256}: {url} has {m.group(3)} bytes, the manifest says {f.size}"
            )
    elif resp.status == 200:
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != f.size:
            raise TransferError(f"{f.sha256}: {url} has {length} bytes, the manifest says {f.size}")
        if f.offset:
            f.restart()
    else:
        raise TransferError(f"{f.sha256}: {url}: unexpected HTTP {resp.status}")


def _read_exact(resp: IO[bytes], n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        block = resp.read(n - len(buf))
        if not block:
            break
        buf += block
    return bytes(buf)


# Operator side ------------------------------------------------------------------------------


@dataclass(slots=True)
class HTTPStats:
    requests: int = 0
    bytes_served: int = 0
    not_found: int = 0


class FileHTTPServer(ThreadingHTTPServer):
    """Serves ``/<sha256>`` from ``stores``. Bound and listening once built; :meth:`start` serves
    in a background thread (or call ``serve_forever()``), :meth:`close` stops."""

    daemon_threads = True

    def __init__(self, stores: Sequence[Path], host: str = "127.0.0.1", port: int = 0) -> None:
        if not stores:
            raise TransferError("an HTTP file server needs at least one store folder")
        self.stores = [Path(s) for s in stores]
        self.stats = HTTPStats()
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), FileRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> FileHTTPServer:
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.1,), name="edgeagent-files-http", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> FileHTTPServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_file(self, sha: str) -> int | None:
        """A descriptor for the regular file ``sha`` in the first store that has one."""
        for store in self.stores:
            try:
                fd = os.open(store / sha, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        return None


def serve_http(
    store_dirs: Sequence[Path], host: str = "127.0.0.1", port: int = 0
) -> FileHTTPServer:
    """An HTTP server for the content files in ``store_dirs`` (listening, not yet serving: call
    ``start()`` or ``serve_forever()``). ``port=0`` picks a free port (see ``.url``)."""
    return FileHTTPServer(store_dirs, host, port)


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """A ``Range`` header against a file of ``size`` bytes: ``(first, last)`` inclusive; None
    when it is to be ignored (not one byte range); False when no byte of it exists (416)."""
    m = _RANGE.fullmatch(header.strip())
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n and size else False
    first = int(m.group(1))
    if m.group(2) and int(m.group(2)) < first:
        return None
    if first >= size:
        return False
    return first, min(int(m.group(2)), size - 1) if m.group(2) else size - 1


class FileRequestHandler(BaseHTTPRequestHandler):
    """GET and HEAD of a file by its sha256, with Range; public so a test can subclass it
    (e.g. to break a download half-way)."""

    server: FileHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "edgeagent-files"
    timeout = 30  # an idle keep-alive connection does not hold a thread for ever

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self, *, body: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.stats.requests += 1
        path = urllib.parse.urlsplit(self.path).path
        fd = srv.open_file(path[1:]) if path.startswith("/") and is_sha256(path[1:]) else None
        if fd is None:
            with srv.lock:
                srv.stats.not_found += 1
            self._empty(404)
            return
        try:
            size = os.fstat(fd).st_size
            first, last, status = 0, size - 1, 200
            header = self.headers.get("Range")
            rng = parse_range(header, size) if header else None
            if rng is False:
                self._empty(416, [("Content-Range", f"bytes */{size}")])
                return
            if isinstance(rng, tuple):
                (first, last), status = rng, 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{path[1:]}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            pos = first
            while body and pos <= last:
                block = os.pread(fd, min(CHUNK, last + 1 - pos), pos)
                if not block:
                    break  # the file shrank: the client sees a short body and resumes
                self.wfile.write(block)
                pos += len(block)
                with srv.lock:
                    srv.stats.bytes_served += len(block)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            os.close(fd)

    def _empty(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()
