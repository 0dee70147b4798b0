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

The server is here; the device side is :mod:`~edgeagent.deploy.transfer_mqtt_fetch` (its
:func:`fetch_files` re-exported), the topics :mod:`~edgeagent.deploy.transfer_mqtt_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransportError
from ..protocol import DEFAULT_FLEET, DEFAULT_ROOT, Topics
from ..transport.base import Inbound, Props, Transport
from .errors import TransferError
from .transfer import (
    MAX_CHUNK,
    is_sha256,
)
from .transfer_mqtt_fetch import BUSY_BACKOFF_S, PROBE_S, fetch_files
from .transfer_mqtt_wire import MAX_REQUEST, reply_topic, request_topic

__all__ = [
    "BUSY_BACKOFF_S", "MAX_REQUEST", "PROBE_S", "FileServer", "ServerStats", "fetch_files",
    "reply_topic", "request_topic",
]  # fmt: skip

log = logging.getLogger(__name__)


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
