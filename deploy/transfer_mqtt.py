"""Content files over MQTT 5: :class:`FileServer` (operator side) and :func:`fetch_files`
(device side, on the agent's own connection).

Topics, under ``{root}/{fleet}``::

    files/{server}/get        requests: JSON {"sha256": ..., "offset": int, "length": int}, QoS 1,
                              with Response Topic and Correlation Data
    dev/{device}/files/in     replies (QoS 1): the raw bytes; User Properties sha256, offset and
                              size (the whole file's); or an empty payload with User Property
                              ``error`` saying what is wrong

A server replies only to a Response Topic of that ``dev/{device}/files/in`` shape, so a request
cannot make it publish file contents onto any other topic. ``error: busy`` means the server's
queue is full: the device asks again a little later.

The device keeps at most ``window`` chunks outstanding (device memory for file data:
``window * chunk``). A chunk without a reply is asked for again once the server has been silent
for ``timeout`` seconds (so a slow link whose replies keep coming is not mistaken for a lost
request); after ``max_attempts`` sends of one chunk the fetch fails, naming the file and offset.
After a reconnect every chunk in flight is asked for again at once. Until the first reply (for
at most ``timeout`` seconds after connecting or starting), each second of silence sends a one-byte
probe: the server may come back later than the device, and its reply to a probe makes every chunk
in flight be asked for again. A connection down for longer than about ``timeout * max_attempts``
fails the fetch. Whatever the outcome, what was received
stays in the partial files and the next fetch resumes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import stat
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransportError
from ..protocol import DEFAULT_FLEET, DEFAULT_ROOT, Topics, check_name
from ..transport.base import Inbound, Props, Transport
from .errors import TransferError
from .transfer import (
    CHUNK,
    MAX_CHUNK,
    WINDOW,
    ContentFile,
    FetchStats,
    FileFetch,
    Progress,
    check_file,
    is_sha256,
)

log = logging.getLogger(__name__)

#: Longest request payload a server reads (a valid one is about 120 bytes).
MAX_REQUEST = 1024
#: How long a device waits before asking a busy server again.
BUSY_BACKOFF_S = 0.5
#: Right after (re)connecting, how long the device waits for a reply before asking again.
PROBE_S = 1.0
#: How often the device loop looks for a reconnect of its transport.
_POLL_S = 0.25
_CORR = struct.Struct(">8sIQ")  # fetch id, file index, offset
_PROBE = 0xFFFFFFFF  # the file index of a probe


def request_topic(root: str, fleet: str, server: str) -> str:
    return f"{Topics(root, fleet).base}/files/{check_name(server, 'file server name')}/get"


def reply_topic(root: str, fleet: str, device: str) -> str:
    return f"{Topics(root, fleet).device(check_name(device, 'device name'))}/files/in"


# Operator side ------------------------------------------------------------------------------


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    chunks_served: int = 0
    bytes_served: int = 0
    errors: int = 0
    """Requests answered with an ``error`` reply (``busy`` included)."""
    busy: int = 0
    dropped: int = 0
    """Requests without a usable Response Topic (nothing can be answered)."""


class _Refused(Exception):
    pass


class FileServer:
    """Serves content files from ``stores`` (folders of ``<sha256>`` files, such as a bundle's
    ``files/``) to devices. Uses ``transport`` (connected or not) without owning it.

    Bounded: replies carry at most ``max_chunk`` bytes; at most ``max_concurrent`` requests are
    being served (each opens its file, reads the chunk off the event loop and waits for the
    broker's PUBACK), at most ``max_queued`` wait; beyond that a request gets ``error: busy``.
    Nothing is cached.
    """

    def __init__(
        self,
        transport: Transport,
        stores: Sequence[Path],
        *,
        root: str = DEFAULT_ROOT,
        fleet: str = DEFAULT_FLEET,
        server: str = "operator",
        max_chunk: int = MAX_CHUNK,
        max_concurrent: int = 8,
        max_queued: int = 256,
    ) -> None:
        if not stores:
            raise TransferError("a file server needs at least one store folder")
        self.transport = transport
        self.stores = [Path(s) for s in stores]
        self.topic = request_topic(root, fleet, server)
        self.server = server
        self.max_chunk = max_chunk
        self.max_concurrent = max_concurrent
        self.stats = ServerStats()
        base = Topics(root, fleet).base
        self._reply_re = re.compile(re.escape(base) + r"/dev/[^/+#]+/files/in")
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(max_queued)
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self._workers:
            raise RuntimeError("FileServer.start() called twice")
        self._workers = [
            asyncio.create_task(self._work(), name=f"file-server-{self.server}-{i}")
            for i in range(self.max_concurrent)
        ]
        await self.transport.subscribe(self.topic, self._on_request, qos=1)

    async def stop(self) -> None:
        """Stop taking requests; requests being served are abandoned (devices ask again)."""
        with contextlib.suppress(TransportError):
            await self.transport.unsubscribe(self.topic)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        while not self._queue.empty():
            self._queue.get_nowait()

    async def __aenter__(self) -> FileServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_request(self, msg: Inbound) -> None:
        self.stats.requests += 1
        rt = msg.props.response_topic
        if rt is None or not self._reply_re.fullmatch(rt):
            self.stats.dropped += 1
            log.debug("file request on %s without a usable response topic: %r", msg.topic, rt)
            return
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.stats.busy += 1
            self.stats.errors += 1
            self.transport.publish_nowait(
                rt, b"", qos=1, props=self._props(msg, (("error", "busy"),))
            )

    async def _work(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._serve(msg)
            except Exception:  # pragma: no cover - a bug; keep serving
                log.exception("file server %s failed on a request", self.server)

    async def _serve(self, msg: Inbound) -> None:
        rt = msg.props.response_topic
        assert rt is not None
        try:
            sha, offset, length = self._parse(msg.payload)
            data, size = await asyncio.to_thread(self._read, sha, offset, length)
        except _Refused as exc:
            self.stats.errors += 1
            await self._publish(rt, b"", self._props(msg, (("error", str(exc)),)))
            return
        props = (("sha256", sha), ("offset", str(offset)), ("size", str(size)))
        if await self._publish(rt, data, self._props(msg, props)):
            self.stats.chunks_served += 1
            self.stats.bytes_served += len(data)

    def _parse(self, payload: bytes) -> tuple[str, int, int]:
        if len(payload) > MAX_REQUEST:
            raise _Refused(f"request of {len(payload)} bytes, more than {MAX_REQUEST}")
        try:
            req = json.loads(payload)
        except ValueError:
            raise _Refused("request is not JSON") from None
        if not isinstance(req, dict):
            raise _Refused("request is not a JSON object")
        sha, offset, length = req.get("sha256"), req.get("offset"), req.get("length")
        if not is_sha256(sha):
            raise _Refused(f"sha256 {str(sha)[:80]!r} is not 64 lowercase hex digits")
        assert isinstance(sha, str)
        for name, value in (("offset", offset), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _Refused(f"{name} {value!r} is not an integer ≥ 0")
        assert isinstance(offset, int)
        assert isinstance(length, int)
        if not 0 < length <= self.max_chunk:
            raise _Refused(f"length {length}: must be 1 to {self.max_chunk} bytes")
        return sha, offset, length

    def _read(self, sha: str, offset: int, length: int) -> tuple[bytes, int]:
        """Open the file in the first store that has it, read the chunk, close it."""
        for store in self.stores:
            try:
                fd = os.open(store / sha, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if offset > st.st_size:
                    raise _Refused(f"{sha}: offset {offset} is past the end ({st.st_size} bytes)")
                return os.pread(fd, min(length, st.st_size - offset), offset), st.st_size
            finally:
                os.close(fd)
        raise _Refused(f"{sha}: no such file on server {self.server}")

    @staticmethod
    def _props(msg: Inbound, user: tuple[tuple[str, str], ...]) -> Props:
        return Props(correlation_data=msg.props.correlation_data, user_properties=user)

    async def _publish(self, topic: str, payload: bytes, props: Props) -> bool:
        try:
            await self.transport.publish(topic, payload, qos=1, props=props)
        except TransportError as exc:
            log.debug("file server %s: reply to %s lost: %s", self.server, topic, exc)
            return False
        return True


# Device side --------------------------------------------------------------------------------


async def fetch_files(
    transport: Transport,
    *,
    root: str = DEFAULT_ROOT,
    fleet: str = DEFAULT_FLEET,
    device: str,
    server: str,
    files: Iterable[tuple[str, int]],
    store: Path,
    window: int = WINDOW,
    chunk: int = CHUNK,
    timeout: float = 10.0,
    max_attempts: int = 5,
    parallel: int = 4,
    partial_dir: Path | None = None,
    progress: Progress | None = None,
) -> FetchStats:
    """Fetch ``files`` (``(sha256, size)`` from the signed manifest) from file server
    ``server`` into ``store`` over ``transport`` (the agent's own connection; connected or
    reconnecting). Up to ``parallel`` files are open at once, sharing one window of ``window``
    chunks. Raises :class:`TransferError` (server error, no reply after ``max_attempts``
    requests of a chunk, wrong length, hash mismatch); partial files stay to resume from.
    One fetch at a time per device: the reply topic is the device's own.
    """
    if window < 1 or parallel < 1 or max_attempts < 1 or timeout <= 0:
        raise TransferError("fetch_files: window, parallel, max_attempts and timeout must be > 0")
    wanted: dict[str, ContentFile] = {}
    for sha, size in files:
        f = check_file(sha, size)
        wanted.setdefault(f.sha256, f)
    return await _Fetcher(
        transport,
        request_topic(root, fleet, server),
        reply_topic(root, fleet, device),
        server,
        list(wanted.values()),
        store,
        partial_dir,
        window,
        chunk,
        timeout,
        max_attempts,
        parallel,
        progress,
    ).run()


@dataclass(eq=False)
class _Fetcher:
    transport: Transport
    topic: str
    reply: str
    server: str
    files: list[ContentFile]
    store: Path
    partial_dir: Path | None
    window: int
    chunk: int
    timeout: float
    max_attempts: int
    parallel: int
    progress: Progress | None

    def __post_init__(self) -> None:
        self.stats = FetchStats()
        self.fetch_id = os.urandom(8)
        self.inbox: deque[Inbound] = deque()
        self.wake = asyncio.Event()
        self.active: dict[int, FileFetch] = {}
        self.total = sum(f.size for f in self.files)
        self.done = 0
        self.expiry = max(1, math.ceil(self.timeout))
        self.last_reply = self.last_probe = 0.0
        self.probe_until = 0.0
        self.pause_until = 0.0

    def _on_reply(self, msg: Inbound) -> None:
        corr = msg.props.correlation_data
        # Only replies to this fetch, and never more than the window's worth waiting.
        if corr is None or len(corr) != _CORR.size or corr[:8] != self.fetch_id:
            return
        if len(self.inbox) < 4 * self.window * self.parallel:
            self.inbox.append(msg)
            self.wake.set()

    async def run(self) -> FetchStats:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        todo = deque(enumerate(self.files))
        await self.transport.subscribe(self.reply, self._on_reply, qos=1)
        try:
            connects = self.transport.statistics().connects
            self.last_reply = self.last_probe = loop.time()
            self.probe_until = self.last_reply + self.timeout
            self._report()
            while todo or self.active:
                self.wake.clear()
                now = loop.time()
                seen = self.transport.statistics().connects
                if seen != connects and self.transport.connected:
                    connects, self.last_reply = seen, now
                    self.probe_until, self.last_probe = now + self.timeout, now
                    self._resend_all(now)
                while self.inbox:
                    self._handle(self.inbox.popleft(), now)
                for i in [i for i, f in self.active.items() if f.complete]:
                    await self._finish(self.active.pop(i))
                while todo and len(self.active) < self.parallel and self._free() > 0:
                    await self._open(*todo.popleft())
                if any(f.complete for f in self.active.values()):
                    continue  # an empty file, or one found whole in its partial
                if now < self.probe_until:
                    if now - max(self.last_reply, self.last_probe) >= PROBE_S:
                        self._probe(now)
                elif now - self.last_reply >= self.timeout:
                    for i, f in self.active.items():
                        try:
                            again = f.retry(now, self.timeout, self.max_attempts)
                        except TransferError as exc:
                            raise TransferError(f"from file server {self.server}: {exc}") from None
                        for r in again:
                            self._send(i, f, r.offset, r.length, retry=True)
                if now >= self.pause_until:
                    for i, f in self.active.items():
                        for r in f.requests(f.outstanding + self._free(), now):
                            self._send(i, f, r.offset, r.length, retry=False)
                if not self.inbox:
                    await self._wait(now)
        finally:
            for f in self.active.values():
                f.close()
            self.active.clear()
            with contextlib.suppress(TransportError):
                await self.transport.unsubscribe(self.reply)
            self.stats.seconds = time.monotonic() - started
        return self.stats

    async def _wait(self, now: float) -> None:
        """Until a reply comes, the next chunk times out, a busy pause ends or the next look
        for a reconnect."""
        wake = now + _POLL_S
        deadlines = [
            d for f in self.active.values() if (d := f.next_deadline(self.timeout)) is not None
        ]
        if deadlines:
            wake = min(wake, max(min(deadlines), self.last_reply + self.timeout))
        if self.pause_until > now:
            wake = min(wake, self.pause_until)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wake - now)):
                await self.wake.wait()

    def _resend_all(self, now: float) -> None:
        """Ask again for every chunk in flight (not counted as an attempt)."""
        for i, f in self.active.items():
            for r in f.rearm(now):
                self._send(i, f, r.offset, r.length, retry=True)

    def _probe(self, now: float) -> None:
        """Just (re)connected and no reply yet: the server may not have (re)subscribed, so what
        was asked may have gone nowhere. Ask for one byte; its reply (the server is there) makes
        every chunk in flight be asked for again, once. Cheap on a slow link, where a real reply
        may simply take a while."""
        self.last_probe = now
        f = next((f for f in self.active.values() if f.outstanding), None)
        if f is not None:
            self._send(_PROBE, f, 0, 1, retry=False)

    def _free(self) -> int:
        return self.window - sum(f.outstanding for f in self.active.values())

    async def _open(self, i: int, cf: ContentFile) -> None:
        dest = self.store / cf.sha256
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == cf.size:
            self.stats.skipped += 1
            self._advance(cf.size)
            return
        f = await asyncio.to_thread(
            FileFetch,
            cf.sha256,
            cf.size,
            self.store,
            chunk=self.chunk,
            partial_dir=self.partial_dir,
        )
        self.stats.resumed_bytes += f.resumed
        self._advance(f.resumed)
        self.active[i] = f

    async def _finish(self, f: FileFetch) -> None:
        try:
            path = await asyncio.to_thread(f.finish)
        except TransferError as exc:
            raise TransferError(f"from file server {self.server}: {exc}") from None
        self.stats.files += 1
        self.stats.paths.append(path)

    def _send(self, i: int, f: FileFetch, offset: int, length: int, *, retry: bool) -> None:
        self.stats.requests += 1
        if retry:
            self.stats.retries += 1
        if not self.transport.connected:
            return  # stays in flight: sent again after the reconnect (or when it times out)
        payload = json.dumps({"sha256": f.sha256, "offset": offset, "length": length})
        props = Props(
            response_topic=self.reply,
            correlation_data=_CORR.pack(self.fetch_id, i, offset),
            message_expiry=self.expiry,
        )
        self.transport.publish_nowait(self.topic, payload.encode(), qos=1, props=props)

    def _handle(self, msg: Inbound, now: float) -> None:
        """Apply one reply; ``busy`` puts the chunk back to be asked for after a pause."""
        _, i, offset = _CORR.unpack(msg.props.correlation_data or b"")
        probing, self.last_reply, self.probe_until = self.probe_until > 0, now, 0.0
        if i == _PROBE:
            if probing:
                self._resend_all(now)
            return
        f = self.active.get(i)
        if f is None:
            return  # a late reply for a file already done
        error = msg.props.user_property("error")
        if error is not None:
            if error == "busy":
                if f.requeue(offset):
                    self.stats.retries += 1
                    self.pause_until = now + BUSY_BACKOFF_S
                return
            raise TransferError(
                f"file server {self.server} refused {f.sha256} at offset {offset}: {error}"
            )
        if msg.props.user_property("sha256") != f.sha256 or msg.props.user_property(
            "offset"
        ) != str(offset):
            log.debug("reply does not match its correlation data; ignored")
            return
        size = msg.props.user_property("size")
        if size != str(f.size):
            raise TransferError(
                f"file server {self.server} has {f.sha256} with {size} bytes, the manifest says "
                f"{f.size}"
            )
        before = f.offset
        try:
            if f.on_chunk(offset, msg.payload):
                self.stats.bytes += len(msg.payload)
        except TransferError as exc:
            raise TransferError(f"from file server {self.server}: {exc}") from None
        self._advance(f.offset - before)

    def _advance(self, n: int) -> None:
        if n:
            self.done += n
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)
