"""The device side of content files over MQTT: :func:`fetch_files` on the agent's own connection.

The protocol, the window, probes and retries are described in
:mod:`~edgeagent.deploy.transfer_mqtt`; the per-file state (offsets, resume, verify) is the
sans-IO :class:`~edgeagent.deploy.transfer.FileFetch`. Every read of time and every wait goes
through the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TransportError
from ..protocol import DEFAULT_FLEET, DEFAULT_ROOT
from ..transport.base import Inbound, Props, Transport
from .errors import TransferError
from .transfer import (
    CHUNK,
    WINDOW,
    ContentFile,
    FetchStats,
    FileFetch,
    Progress,
    check_file,
)
from .transfer_mqtt_wire import reply_topic, request_topic

log = logging.getLogger("edgeagent.deploy.transfer_mqtt")
"""The transfer's one logger, server and fetcher alike."""

#: How long a device waits before asking a busy server again.
BUSY_BACKOFF_S = 0.5
#: Right after (re)connecting, how long the device waits for a reply before asking again.
PROBE_S = 1.0
#: How often the device loop looks for a reconnect of its transport.
_POLL_S = 0.25
_CORR = struct.Struct(">8sIQ")  # fetch id, file index, offset
_PROBE = 0xFFFFFFFF  # the file index of a probe


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
    clock: Clock = SYSTEM_CLOCK,
) -> FetchStats:
    """Fetch ``files`` (``(sha256, size)`` from the signed manifest) from file server
    ``server`` into ``store`` over ``transport`` (the agent's own connection; connected or
    reconnecting). Up to ``parallel`` files are open at once, sharing one window of ``window``
    chunks. Raises :class:`TransferError` (server error, no reply after ``max_attempts``
    requests of a chunk, wrong length, hash mismatch); partial files stay to resume from.
    One fetch at a time per device: the reply topic is the device's own. ``clock``: time for
    the timeouts, probes and pauses (and the stats' seconds).
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
        clock,
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
    clock: Clock

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
        started = self.clock.monotonic()
        todo = deque(enumerate(self.files))
        await self.transport.subscribe(self.reply, self._on_reply, qos=1)
        try:
            connects = self.transport.statistics().connects
            self.last_reply = self.last_probe = self.clock.monotonic()
            self.probe_until = self.last_reply + self.timeout
            self._report()
            while todo or self.active:
                self.wake.clear()
                now = self.clock.monotonic()
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
                self._probe_or_retry(now)
                if now >= self.pause_until:
                    self._request_more(now)
                if not self.inbox:
                    await self._wait(now)
        finally:
            for f in self.active.values():
                f.close()
            self.active.clear()
            with contextlib.suppress(TransportError):
                await self.transport.unsubscribe(self.reply)
            self.stats.seconds = self.clock.monotonic() - started
        return self.stats

    def _probe_or_retry(self, now: float) -> None:
        """Just after (re)connecting, probe while no reply came; later, after ``timeout``
        without a reply, ask again for the chunks overdue (a TransferError past
        ``max_attempts``)."""
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

    def _request_more(self, now: float) -> None:
        """Fill the window: new chunk requests for the open files, as many as are free."""
        for i, f in self.active.items():
            for r in f.requests(f.outstanding + self._free(), now):
                self._send(i, f, r.offset, r.length, retry=False)

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
            async with self.clock.timeout(max(0.0, wake - now)):
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
