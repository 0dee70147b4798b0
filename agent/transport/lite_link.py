"""One MQTT 5 connection to a broker, kept up: the connection half of
:class:`~edgeagent.transport.lite.LiteTransport` (publish and subscribe are the other half).

:class:`LiteLink` connects (TCP, TLS, CONNECT/CONNACK, optionally retrying until the broker
answers), awaits acknowledgements by packet identifier, reconnects with jittered backoff on the
injected :class:`~edgeagent.clock.Clock` when the connection is lost, and closes with a
DISCONNECT (no last will) or is killed without one (the will goes out). One
:class:`~edgeagent.transport.lite_conn.Connection` per TCP connection reports bytes decoded into
session events back here. Socket, TLS and timeout errors become
:class:`~edgeagent.errors.TransportError` in :func:`connect_error`, and nowhere else.

An idle connected client owns no task, no future and no container: acks are awaited through a
dict that exists only while something is in flight, and a reconnect is a task only while it
runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from ..broker import BrokerConfig
from ..clock import Clock
from ..errors import TransportError
from .backoff import Backoff
from .base import ConnectCallback, Inbound, Will
from .lite_conn import Connection
from .lite_wheel import wheel_for
from .session import (
    BrokerDisconnected,
    ClientSession,
    Connected,
    ConnectionRefused,
    PublishAcked,
    Subscribed,
    Unsubscribed,
)
from .tls import broker_ssl_context

log = logging.getLogger("edgeagent.transport.lite")  # the logger users already filter on

SHARED_RNG = random.Random()
"""The jitter of every client not given its own ``rng`` (a generator per client: 2.5 KB each)."""
_CONNACK = 0  # packet identifiers start at 1: key 0 of ``_acks`` waits for the CONNACK

Ack = Connected | ConnectionRefused | PublishAcked | Subscribed | Unsubscribed
"""The events a caller of :meth:`LiteLink.await_ack` can get."""


class LiteLink:
    """The connection of an MQTT 5 client: connect, reconnect, close, acks by packet id.

    Subclasses add what goes over it (:class:`~edgeagent.transport.lite.LiteTransport`:
    publish and subscribe) through two hooks, :meth:`_restore_subscriptions` and
    :meth:`_on_message`.
    """

    __slots__ = (
        "_acks", "_attempts", "_backoff", "_clock", "_connected", "_connecting", "_connects",
        "_disconnects", "_on_connect", "_proto", "_retry", "_rng", "_session", "_waiters",
        "_want", "bind", "broker", "clean_start", "client_id", "host", "reconnect",
        "retry_first_connect", "will",
    )  # fmt: skip

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        will: Will | None,
        clean_start: bool,
        reconnect: bool,
        host: str | None,
        bind: str | None,
        clock: Clock,
        rng: random.Random | None,
        retry_first_connect: bool,
        backoff: Backoff,
        max_packet_size: int,
    ) -> None:
        self.broker = broker
        self.retry_first_connect = retry_first_connect
        self._backoff = backoff
        self.client_id = client_id
        self.will = will
        self.clean_start = clean_start
        self.reconnect = reconnect
        self.host = host
        self.bind = bind
        self._clock = clock
        self._rng = rng or SHARED_RNG
        self._session = ClientSession(
            client_id,
            keepalive=broker.keepalive_s,
            clean_start=clean_start,
            will=will,
            max_packet_size=max_packet_size,
        )
        self._proto: Connection | None = None  # the current connection
        self._on_connect: tuple[ConnectCallback, ...] = ()
        self._acks: dict[int, asyncio.Future[Ack] | None] | None = None  # None: nothing due
        self._waiters: list[asyncio.Future[None]] | None = None  # publish() at receive max
        self._retry: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self._connected = self._connecting = self._want = False
        self._attempts = 0
        self._connects = self._disconnects = 0

    # Connection ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def on_connect(self, callback: ConnectCallback) -> None:
        self._on_connect = (*self._on_connect, callback)

    async def connect(self) -> None:
        if self._want:
            raise RuntimeError(f"{type(self).__name__}.connect() called twice")
        self._want = True
        attempt = 0
        try:
            while True:
                try:
                    await self._attempt()
                    return
                except TransportError as exc:
                    if not (self.retry_first_connect and self._want):
                        raise
                    delay = self._backoff.delay(attempt, self._rng)
                    attempt += 1
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    await self._clock.sleep(delay)
                    if not self._want:
                        raise TransportError("transport closed while connecting") from exc
        except BaseException:
            self._want = False
            raise

    async def close(self) -> None:
        """Send DISCONNECT (so no last will), stop reconnecting, release the socket."""
        self._want = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            if self._connected:
                self._drop_queued("the transport closed")
                proto.write(self._session.disconnect())  # reason 0: the broker drops the will
            proto.owner = None
            proto.gone = proto.loop.create_future()
            proto.transport.close()
            try:
                async with self._clock.timeout(1.0):
                    await proto.gone
            except TimeoutError:
                proto.abort()
        self.connection_closed(proto, "transport closed")

    def kill(self, *, reconnect: bool = False) -> None:
        """Drop the socket without DISCONNECT, as a power cut would: the broker sends the will."""
        self._want = self._want and reconnect
        if self._proto is not None:
            self._proto.abort()

    async def _attempt(self) -> None:
        """One connection: TCP (and TLS), CONNECT/CONNACK, subscriptions, on_connect callbacks."""
        loop, broker, where = asyncio.get_running_loop(), self.broker, self.broker.display()
        proto = self._proto = Connection(self, self._prepare_session(), self._clock, loop)
        self._connecting = True
        try:
            async with self._clock.timeout(broker.connect_timeout_s):
                connack = await self._handshake(loop, proto)
            if isinstance(connack, ConnectionRefused):
                raise TransportError(
                    f"MQTT broker at {where} refused the connection: {connack.reason}"
                )
            self._connected = True
            self._connects += 1
            # the first tick works out when to ping
            wheel_for(loop, self._clock).add(proto, self._clock.monotonic())
            await self._restore_subscriptions()
        except BaseException as exc:
            proto.abort()
            error = connect_error(exc, where)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._connecting = False
        self._attempts = 0
        for callback in self._on_connect:
            try:
                await callback()
            except Exception:
                log.exception("on_connect callback %r failed", callback)

    def _prepare_session(self) -> ClientSession:
        """The session, disconnected, with the settings of this attempt."""
        session, broker = self._session, self.broker
        if session.state != "disconnected":
            session.connection_lost()  # an aborted attempt whose socket never reported back
        session.keepalive = broker.keepalive_s
        session.username, session.password = broker.credentials()
        session.will, session.clean_start = self.will, self.clean_start  # settable until now
        return session

    async def _handshake(self, loop: asyncio.AbstractEventLoop, proto: Connection) -> Ack:
        """Open the socket (TLS if the broker asks), send CONNECT, await the CONNACK."""
        broker = self.broker
        ctx = broker_ssl_context(broker)
        await loop.create_connection(
            lambda: proto,
            self.host or broker.host,
            broker.port,
            ssl=ctx,
            server_hostname=broker.host if ctx else None,
            local_addr=(self.bind, 0) if self.bind else None,
        )
        proto.write(self._session.connect(self._clock.monotonic()))
        return await self._await_ack(_CONNACK)

    def connection_closed(self, conn: Connection | None, why: str) -> None:
        """``conn``'s socket is gone (called by :class:`~.lite_conn.Connection`): fail what
        awaited an answer on it, and reconnect if wanted. Not for users: :meth:`close`."""
        if conn is None or conn is not self._proto:
            return  # an earlier connection, already handled
        self._proto = None
        wheel_for(conn.loop, self._clock).remove(conn)
        self._drop_queued("the connection was lost")
        self._session.connection_lost()
        was, self._connected = self._connected, False
        self._disconnects += was
        acks, self._acks = self._acks or {}, None
        waiters, self._waiters = self._waiters or [], None
        where = self.broker.display()
        if _CONNACK in acks:
            error = TransportError(f"broker at {where} closed the connection before accepting it")
        else:
            error = TransportError(f"connection to {where} lost: {why}")
        for fut in (*acks.values(), *waiters):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        if was and self._want and self.reconnect and not self._connecting:
            log.warning("connection to %s lost (%s); reconnecting", where, why)
            self._schedule_retry()

    def _drop_queued(self, why: str) -> None:
        dropped = self._session.queued_messages
        if dropped:
            log.warning("%s: %s; dropped %d message(s) waiting for the Receive Maximum",
                        self.client_id, why, dropped)  # fmt: skip

    def _schedule_retry(self) -> None:
        delay = self._backoff.delay(self._attempts, self._rng)
        self._attempts += 1
        self._retry = self._clock.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = asyncio.get_running_loop().create_task(
            self._reconnect(), name=f"lite-reconnect-{self.client_id}"
        )

    async def _reconnect(self) -> None:
        task = self._retry
        try:
            await self._attempt()
        except Exception as exc:
            if self._want:
                log.warning("%s: %s; retrying", self.client_id, exc)
                self._schedule_retry()
            return
        if self._retry is task:
            self._retry = None

    async def _await_ack(self, key: int) -> Ack:
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        if self._acks is None:
            self._acks = {}
        self._acks[key] = fut
        try:
            return await fut
        except asyncio.CancelledError:
            if self._acks is not None and self._acks.get(key) is fut:
                self._acks[key] = None  # the identifier stays taken until its ack arrives
            raise

    def connection_events(self, conn: Connection, events: list[Any]) -> None:
        """Events from ``conn``'s bytes (called by :class:`~.lite_conn.Connection`): settle
        what awaits them, deliver messages. Not for users."""
        for event in events:
            if self._proto is not conn or conn.owner is None:
                return  # closed or killed by a handler
            if isinstance(event, Inbound):
                self._on_message(event)
            elif isinstance(event, BrokerDisconnected):
                log.warning("%s: the broker disconnected: %s", self.client_id, event.reason)
            elif isinstance(event, PublishAcked | Subscribed | Unsubscribed | Connected
                            | ConnectionRefused):  # fmt: skip
                self._settle(_CONNACK if isinstance(event, Connected | ConnectionRefused)
                             else event.packet_id, event)  # fmt: skip

    def _settle(self, key: int, event: Ack) -> None:
        acks = self._acks
        if acks is not None and key in acks:
            fut = acks.pop(key)
            if not acks:
                self._acks = None
            if fut is not None and not fut.done():
                fut.set_result(event)
        if isinstance(event, PublishAcked):
            while self._waiters:
                waiter = self._waiters.pop(0)
                if not waiter.done():
                    waiter.set_result(None)
                    break
            self._waiters = self._waiters or None

    # What the transport on top adds -------------------------------------------------------------

    async def _restore_subscriptions(self) -> None:
        """After CONNACK, before ``on_connect`` callbacks: subscribe again (a clean start)."""

    def _on_message(self, msg: Inbound) -> None:
        """A message from the broker."""
        raise NotImplementedError


def connect_error(exc: BaseException, where: str) -> BaseException:
    """What a failed connection attempt raises: socket, TLS and timeout errors as
    :class:`TransportError` (this is the one place they are translated); anything else as is."""
    if isinstance(exc, TimeoutError):
        return TransportError(f"timed out connecting to MQTT broker at {where}")
    if isinstance(exc, OSError | ValueError):
        return TransportError(f"cannot connect to MQTT broker at {where}: {exc}")
    return exc
