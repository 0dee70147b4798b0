"""A small asyncio HTTP server for ``/metrics`` (the exposition of one ``CollectorRegistry``).

Why not ``prometheus_client.start_http_server``: it scrapes from its own thread, and the
collectors read the service's live tables (the coordinator's registry, a device's skill slots),
which only the event loop may touch. Here the collectors run on the loop, between two callbacks,
so they always see a consistent state and need no lock on the hot path; the families they
return are plain data, formatted as text in a worker thread (about three quarters of a scrape's
time), so a big scrape holds the loop for the collection only.

Bounded: at most :data:`MAX_CONNECTIONS` connections at once (more are closed unanswered), a
request head of at most :data:`MAX_HEAD_BYTES`, read within :data:`READ_TIMEOUT_S`; only
``GET``/``HEAD`` of ``/metrics`` (and ``/``, a pointer to it) are answered, anything else gets
404/405/400. Every connection is closed after one response. :meth:`MetricsServer.close` stops
listening and closes the connections still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgeagent.clock import SYSTEM_CLOCK, Clock
from edgeagent.errors import ConfigError

__all__ = ["MAX_CONNECTIONS", "MAX_HEAD_BYTES", "READ_TIMEOUT_S", "MetricsServer"]

log = logging.getLogger("edgeagent.metrics")

MAX_CONNECTIONS: Final = 16
MAX_HEAD_BYTES: Final = 8 * 1024
READ_TIMEOUT_S: Final = 5.0

_INDEX = b"edgeagent metrics: GET /metrics (Prometheus text format)\n"


class _Collected(Collector):
    """Families already collected (on the loop), for formatting elsewhere."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _response(status: str, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


class MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` while started (an async context
    manager). ``port=0`` picks a free port (read :attr:`port` once started)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics port must be 0..65535, not {port}")
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.clock = clock
        self.scrapes = 0
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.StreamWriter, None] = {}

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when started with 0)."""
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; a port in use or an address not available is a :class:`ConfigError`."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.requested_port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from exc

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._writers[writer] = None
        try:
            try:
                async with self.clock.timeout(READ_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            writer.write(await self._answer(head))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.pop(writer, None)
            writer.close()

    async def _answer(self, head: bytes) -> bytes:
        """The response to one request head."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n", "text/plain", False)
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n", "text/plain", False)
        head_only = method == b"HEAD"
        if target == b"/metrics":
            self.scrapes += 1
            try:
                families = list(self.registry.collect())  # on the loop: a consistent view
                body = await asyncio.to_thread(generate_latest, _Collected(families))
            except Exception:  # a collector's bug must not stop the service
                log.exception("collecting metrics failed")
                return _response(
                    "500 Internal Server Error", b"collect failed\n", "text/plain", head_only
                )
            return _response("200 OK", body, CONTENT_TYPE_LATEST, head_only)
        if target == b"/":
            return _response("200 OK", _INDEX, "text/plain; charset=utf-8", head_only)
        return _response("404 Not Found", b"not found: try /metrics\n", "text/plain", head_only)
