"""One TCP (or TLS) connection of a :class:`~edgeagent.transport.lite.LiteTransport`: the
``asyncio.Protocol`` that moves bytes between the socket and the client's
:class:`~edgeagent.transport.session.ClientSession`, and answers the keepalive wheel.

It decides nothing about MQTT: the session turns bytes into events and says when to ping; the
owner (:class:`ConnectionOwner`, the transport) gets the events and the end of the connection.
A malformed packet or a protocol error ends the connection here, after the events of the
packets before it were handled.

Reads go through one buffer per event loop (:func:`read_buffer`; ``asyncio.BufferedProtocol``):
a plain ``asyncio.Protocol`` gets a fresh 256 KiB ``bytes`` from every ``recv``, which glibc
serves with ``mmap``, then ``mremap`` down to the bytes read, then ``munmap`` (its dynamic mmap
threshold never rises for a chunk freed after shrinking). In the simulator's broker mode that
was three system calls and a page fault per heartbeat received: 8,599 of 9,695 ``recv``
buffers of a 500-device run (issue 13). Receiving into the shared buffer copies only the bytes
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from typing import Any, Protocol

from ..clock import Clock
from .codec import MalformedPacket, PacketTooLarge
from .lite_wheel import TICK_S, wheel_for
from .session import ClientSession, SessionError

log = logging.getLogger("edgeagent.transport.lite")  # the logger users already filter on

READ_BUFFER_SIZE = 1 << 18
"""Bytes one ``recv`` may return into a loop's read buffer (as many as asyncio reads by itself;
a larger burst takes more reads)."""

_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The loop's read buffer, shared by its connections: asyncio fills it and hands it to
    :meth:`Connection.buffer_updated` in one callback, which copies the bytes out before
    returning, so no two connections of one loop ever use it at once."""
    buf = _buffers.get(loop)
    if buf is None:
        buf = _buffers[loop] = memoryview(bytearray(READ_BUFFER_SIZE))
    return buf


class ConnectionOwner(Protocol):
    """What a :class:`Connection` reports to: its transport."""

    client_id: str

    def connection_events(self, conn: Connection, events: list[Any]) -> None:
        """Session events decoded from ``conn``'s bytes (the transport ignores a stale conn)."""

    def connection_closed(self, conn: Connection, why: str) -> None:
        """``conn``'s socket is gone."""


class Connection(asyncio.BufferedProtocol):
    """One TCP connection: bytes to and from the owner's session; events to the owner."""

    __slots__ = ("buffer", "clock", "gone", "loop", "owner", "session", "transport", "wheel_key")

    def __init__(
        self,
        owner: ConnectionOwner,
        session: ClientSession,
        clock: Clock,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.owner: ConnectionOwner | None = owner  # None once the connection is over
        self.session = session
        self.clock = clock
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.gone: asyncio.Future[None] | None = None  # only while close() waits
        self.wheel_key = 0
        self.buffer = read_buffer(loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # asyncio already disables Nagle on TCP; a reply written right after an event must not
        # wait for a delayed ACK (about 40 ms on loopback), so make sure.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if self.owner is not None:
                self.session.sent(self.clock.monotonic())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """``data`` from the socket (through :meth:`buffer_updated`; tests call it directly)."""
        owner = self.owner
        if owner is None:
            return
        session = self.session
        try:
            events = session.receive_data(data, self.clock.monotonic())
        except MalformedPacket as exc:
            owner.connection_events(self, exc.events)  # the packets before the fault
            if isinstance(exc, PacketTooLarge):
                log.error("%s: %s; disconnecting", owner.client_id, exc)
                self.write(b"\xe0\x01\x95")  # DISCONNECT: Packet too large
            else:
                log.error("%s: malformed packet (%s); disconnecting", owner.client_id, exc)
            self.abort()
            return
        except SessionError as exc:
            log.error("%s: protocol error (%s); disconnecting", owner.client_id, exc)
            self.abort()
            return
        owner.connection_events(self, events)
        if self.owner is not None:
            # PUBACKs owed for the messages just handled, and messages the acks let out of the
            # session's Receive Maximum queue
            out = session.data_to_send()
            if out:
                self.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        owner, self.owner = self.owner, None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if owner is not None:
            owner.connection_closed(self, str(exc) if exc else "socket closed")

    def keepalive(self, now: float) -> None:
        """PINGREQ when idle for the keepalive; give up after 1.5 times that in silence."""
        owner = self.owner
        if owner is None:
            return
        session = self.session
        due = session.keepalive_due(now, slack=TICK_S)  # a tick late is still in time
        if due == "overdue":
            log.warning("%s: no answer from the broker for %g s", owner.client_id,
                        1.5 * session.keepalive)  # fmt: skip
            self.abort()
            return
        if due == "ping":
            self.write(session.ping())
        wheel_for(self.loop, self.clock).add(self, session.next_keepalive(TICK_S))
