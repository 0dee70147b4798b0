"""A minimal MQTT 5 client on asyncio, for ten thousand simulated devices in one process.

The fleet simulator's broker mode connects every simulated device to a real mosquitto, and paho's
``Client`` costs tens of kilobytes per connection. Here a client is two small objects with
``__slots__`` on top of asyncio's socket transport: :class:`LiteTransport` (subscriptions,
acks, reconnects) and one ``_Proto`` per TCP connection (the ``asyncio.Protocol``: framing,
decoding, keepalive timestamps). An idle connected client owns no task, no queue, no future and
no buffer: a partial packet is buffered only until it completes, acks are awaited through a dict
that exists only while something is in flight, and a reconnect is a task only while it runs.
Keepalive is one timer wheel per event loop: a single 1 s callback visits only the connections
due for a PINGREQ (or overdue for an answer), so 10,000 idle clients cost one timer, not 10,000.
Measured: about 3 KB of Python heap per idle connected client, asyncio's transport included.

Supported: QoS 0 and 1 both ways, retained messages, a last will, shared subscriptions, the
broker's Receive Maximum, and the five publish properties of
:class:`~edgeagent.transport.base.Props`. Not supported: QoS 2, topic aliases, enhanced
authentication, will properties, and resending unacknowledged QoS 1 messages after a reconnect
(their ``publish()`` fails instead). Socket and TLS errors become
:class:`~edgeagent.errors.TransportError` here, as :mod:`edgeagent.transport.mqtt` does for paho.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import weakref
from pathlib import Path
from typing import Any

from ..broker import BrokerConfig
from ..errors import TransportError
from .base import (
    NO_PROPS,
    ConnectCallback,
    Handler,
    Inbound,
    Props,
    TransportStatistics,
    Will,
    strip_share,
    topic_matches,
    valid_publish_topic,
    validate_filter,
)
from .packing import UnusualPacket, _blob, _varint, pack_properties, unpack_publish

log = logging.getLogger(__name__)

MAX_PACKET = (1 << 20) + (1 << 16)
"""Largest packet accepted: 1 MiB of payload plus room for topic and properties, bytes."""
_TICK_S = 1.0
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.1, 5.0
_CONNACK = 0  # packet identifiers start at 1: key 0 of ``_acks`` waits for the CONNACK

# Property identifiers by how their values are encoded (MQTT 5.0 §2.2.2.2).
_KIND: dict[int, int | str] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    **dict.fromkeys((0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F), "str"),
    0x0B: "varint", 0x09: "bin", 0x16: "bin", 0x26: "pair",
}  # fmt: skip
_REASONS = {
    0x80: "Unspecified error", 0x81: "Malformed Packet", 0x82: "Protocol Error",
    0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad User Name or Password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8B: "Server shutting down", 0x8D: "Keep Alive timeout", 0x8E: "Session taken over",
    0x8F: "Topic Filter invalid", 0x90: "Topic Name invalid", 0x93: "Receive Maximum exceeded",
    0x95: "Packet too large", 0x97: "Quota exceeded", 0x99: "Payload format invalid",
    0x9A: "Retain not supported", 0x9B: "QoS not supported", 0x9C: "Use another server",
    0x9D: "Server moved", 0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded", 0xA2: "Wildcard Subscriptions not supported",
}  # fmt: skip


def _reason(code: int) -> str:
    return _REASONS.get(code, f"reason code 0x{code:02X}")


def _str(s: str) -> bytes:
    return _blob(s.encode())


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """``(value, next position)``; IndexError if ``data`` ends inside it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed variable byte integer")


def _read_props(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """A properties section as ``{identifier: value}`` (User Properties: a list of pairs)."""
    size, pos = _read_varint(data, pos)
    end = pos + size
    out: dict[int, Any] = {}
    while pos < end:
        pid = data[pos]
        kind = _KIND.get(pid)
        if kind is None:
            raise ValueError(f"unknown property 0x{pid:02X}")
        if isinstance(kind, int):
            out[pid] = int.from_bytes(data[pos + 1 : pos + 1 + kind], "big")
            pos += 1 + kind
            continue
        if kind == "varint":
            out[pid], pos = _read_varint(data, pos + 1)
            continue
        n = int.from_bytes(data[pos + 1 : pos + 3], "big")
        value, pos = data[pos + 3 : pos + 3 + n], pos + 3 + n
        if kind == "pair":
            m = int.from_bytes(data[pos : pos + 2], "big")
            out.setdefault(pid, []).append((value.decode(), data[pos + 2 : pos + 2 + m].decode()))
            pos += 2 + m
        else:
            out[pid] = value if kind == "bin" else value.decode()
    if pos != end:
        raise ValueError("properties overrun their length")
    return out, end


@functools.lru_cache(maxsize=16)
def _ssl_context(
    ca: Path | None, cert: Path | None, key: Path | None, insecure: bool
) -> ssl.SSLContext:
    """One context per TLS setting, shared by every client (a context holds the CA store)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.load_default_certs()
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    if insecure:
        ctx.check_hostname = False  # the chain is still verified
    return ctx


class _Wheel:
    """Keepalive for every client of one loop: a 1 s tick visiting only the connections due."""

    __slots__ = ("buckets", "cursor", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # the wheels registry must not keep a loop alive
        self.buckets: dict[int, set[_Proto]] = {}  # tick number -> connections due then
        self.cursor = 0  # the next tick to visit; 0 while the wheel is stopped

    def add(self, proto: _Proto, when: float) -> None:
        loop = proto.loop
        if not self.cursor:
            self.cursor = int(loop.time() / _TICK_S) + 1
            loop.call_at(self.cursor * _TICK_S, self._tick)
        proto.wheel_key = max(-int(-when // _TICK_S), self.cursor)
        self.buckets.setdefault(proto.wheel_key, set()).add(proto)

    def remove(self, proto: _Proto) -> None:
        bucket = self.buckets.get(proto.wheel_key)
        if bucket is not None:
            bucket.discard(proto)
            if not bucket:
                del self.buckets[proto.wheel_key]

    def _tick(self) -> None:
        loop = self.loop()
        if loop is None:
            return
        now = loop.time()
        upto = int(now / _TICK_S)
        due = [self.buckets.pop(k) for k in range(self.cursor, upto + 1) if k in self.buckets]
        self.cursor = upto + 1
        for bucket in due:
            for proto in bucket:
                proto.keepalive(now)
        if self.buckets:
            loop.call_at(self.cursor * _TICK_S, self._tick)
        else:
            self.cursor = 0


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()


def _wheel(loop: asyncio.AbstractEventLoop) -> _Wheel:
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = _Wheel(loop)
    return wheel


class _Proto(asyncio.Protocol):
    """One TCP connection: framing, keepalive timestamps; packets go to the owner."""

    __slots__ = (
        "buf", "gone", "last_in", "last_out", "loop", "owner", "pinging", "transport", "wheel_key",
    )  # fmt: skip

    def __init__(self, owner: LiteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.owner: LiteTransport | None = owner  # None once the connection is over
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf: bytearray | None = None  # only while a packet is incomplete
        self.gone: asyncio.Future[None] | None = None  # only while close() waits
        self.last_in = self.last_out = loop.time()
        self.pinging = False
        self.wheel_key = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = self.loop.time()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            return
        self.last_in = self.loop.time()
        self.pinging = False
        buf: bytes | bytearray = data
        if self.buf is not None:
            self.buf += data
            buf = self.buf
        pos, n = 0, len(buf)
        try:
            while n - pos >= 2:
                try:
                    size, start = _read_varint(buf, pos + 1)
                except IndexError:
                    break  # even the remaining length is cut short: wait for more bytes
                if start - pos + size > MAX_PACKET:
                    log.error("%s: %d-byte packet refused; disconnecting", owner.client_id, size)
                    self.write(b"\xe0\x01\x95")  # DISCONNECT: Packet too large
                    self.abort()
                    return
                if start + size > n:
                    break
                owner._handle(self, buf[pos], bytes(buf[start : start + size]))
                pos = start + size
                if self.owner is None:
                    return
        except (IndexError, ValueError, UnusualPacket) as exc:  # UnicodeDecodeError: a ValueError
            log.error("%s: malformed packet (%s); disconnecting", owner.client_id, exc)
            self.abort()
            return
        self.buf = bytearray(buf[pos:]) if pos < n else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.buf = None
        owner, self.owner = self.owner, None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if owner is not None:
            owner._lost(self, str(exc) if exc else "socket closed")

    def keepalive(self, now: float) -> None:
        """PINGREQ after ``keepalive`` idle seconds; give up after 1.5 times that in silence."""
        if self.owner is None:
            return
        ka = self.owner._keepalive
        if self.pinging and now - self.last_in >= 1.5 * ka:
            log.warning("%s: no answer from the broker for %g s", self.owner.client_id, 1.5 * ka)
            self.abort()
            return
        # A tick late is still in time: ping after ``keepalive - tick`` idle seconds.
        due = min(self.last_in, self.last_out) + max(ka - _TICK_S, 0)
        if not self.pinging and now >= due:
            self.write(b"\xc0\x00")  # PINGREQ
            self.pinging = True
        _wheel(self.loop).add(self, self.last_in + 1.5 * ka if self.pinging else due)


class LiteTransport:
    """An MQTT 5 connection costing a few kilobytes, for simulators running thousands of them.

    :meth:`connect` raises :class:`TransportError` at once if the broker cannot be reached or
    refuses; once connected, a lost connection is re-established with jittered exponential
    backoff (0.1 s doubling to 5 s) unless ``reconnect=False``. ``host`` overrides the broker
    URL's host (TLS still verifies the URL's) and ``bind`` sets the local address (more source
    addresses, more ephemeral ports).
    """

    __slots__ = (
        "_acks", "_attempts", "_connected", "_connecting", "_connects", "_disconnects", "_in",
        "_inflight", "_keepalive", "_next_pid", "_on_connect", "_out", "_proto", "_recv_max",
        "_retry", "_subs", "_waiters", "_want", "bind", "broker", "clean_start", "client_id",
        "host", "reconnect", "will",
    )  # fmt: skip

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        will: Will | None = None,
        clean_start: bool = True,
        reconnect: bool = True,
        host: str | None = None,
        bind: str | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.will = will
        self.clean_start = clean_start
        self.reconnect = reconnect
        self.host = host
        self.bind = bind
        self._proto: _Proto | None = None
        self._subs: dict[str, tuple[int, Handler, str]] = {}  # filter -> qos, handler, plain
        self._on_connect: tuple[ConnectCallback, ...] = ()
        self._acks: dict[int, asyncio.Future[bytes] | None] | None = None  # None: nothing due
        self._waiters: list[asyncio.Future[None]] | None = None  # publish() at receive max
        self._retry: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self._connected = self._connecting = self._want = False
        self._keepalive = broker.keepalive_s
        self._recv_max = 65535
        self._next_pid = self._inflight = self._attempts = 0
        self._connects = self._disconnects = self._in = self._out = 0

    # Public API ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def on_connect(self, callback: ConnectCallback) -> None:
        self._on_connect = (*self._on_connect, callback)

    async def connect(self) -> None:
        if self._want:
            raise RuntimeError("LiteTransport.connect() called twice")
        self._want = True
        try:
            await self._attempt()
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
                proto.write(b"\xe0\x00")  # DISCONNECT, reason 0: the broker drops the will
            proto.owner = None
            proto.gone = proto.loop.create_future()
            proto.transport.close()
            try:
                async with asyncio.timeout(1.0):
                    await proto.gone
            except TimeoutError:
                proto.abort()
        self._lost(proto, "transport closed")

    def kill(self, *, reconnect: bool = False) -> None:
        """Drop the socket without DISCONNECT, as a power cut would: the broker sends the will."""
        self._want = self._want and reconnect
        if self._proto is not None:
            self._proto.abort()

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        """Send now; at the broker's Receive Maximum a QoS 1 message goes out as QoS 0."""
        if qos and self._inflight >= self._recv_max:
            qos = 0
        try:
            self._send_publish(topic, payload, qos, retain, props)
        except TransportError as exc:
            log.warning("%s; dropped message to %s", exc, topic)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        while qos and self._connected and self._inflight >= self._recv_max:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        pid = self._send_publish(topic, payload, qos, retain, props)
        if pid:
            ack = await self._await_ack(pid)
            if len(ack) > 2 and ack[2] >= 0x80:
                raise TransportError(f"broker refused the message to {topic}: {_reason(ack[2])}")

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> None:
        validate_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"LiteTransport subscribes at QoS 0 or 1, not {qos}")
        # Registered first, so retained messages arriving right after the SUBACK find it.
        self._subs[topic_filter] = (qos, handler, strip_share(topic_filter)[1])
        if self._connected:
            try:
                (code,) = await self._request(0x82, [topic_filter])
                if code >= 0x80:
                    raise TransportError(
                        f"broker refused subscription {topic_filter!r}: {_reason(code)}"
                    )
            except TransportError:
                self._subs.pop(topic_filter, None)
                raise

    async def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.pop(topic_filter, None) is not None and self._connected:
            await self._request(0xA2, [topic_filter])

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            connected=self._connected,
            connects=self._connects,
            disconnects=self._disconnects,
            messages_in=self._in,
            messages_out=self._out,
        )

    # Connection management ----------------------------------------------------------------------

    def _connect_packet(self) -> bytes:
        user, password = self.broker.credentials()
        will = self.will
        flags = (0x02 if self.clean_start else 0) | (0x80 if user is not None else 0)
        flags |= 0x40 if password is not None else 0
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        body = b"\x00\x04MQTT\x05" + bytes((flags,)) + self._keepalive.to_bytes(2, "big")
        body += b"\x05\x27" + MAX_PACKET.to_bytes(4, "big") + _str(self.client_id)
        if will is not None:
            body += b"\x00" + _str(will.topic) + _blob(will.payload)  # no will properties
        if user is not None:
            body += _str(user)
        if password is not None:
            body += _str(password)
        return _packet(0x10, body)

    async def _attempt(self) -> None:
        """One connection: TCP (and TLS), CONNECT/CONNACK, subscriptions, on_connect callbacks."""
        loop, broker, where = asyncio.get_running_loop(), self.broker, self.broker.display()
        tls, ctx = broker.tls, None
        if tls is not None:
            ctx = _ssl_context(tls.ca_file, tls.cert_file, tls.key_file, tls.insecure)
        elif broker.use_tls():
            ctx = _ssl_context(None, None, None, False)
        self._keepalive = broker.keepalive_s
        proto = self._proto = _Proto(self, loop)
        self._connecting = True
        try:
            async with asyncio.timeout(broker.connect_timeout_s):
                await loop.create_connection(
                    lambda: proto,
                    self.host or broker.host,
                    broker.port,
                    ssl=ctx,
                    server_hostname=broker.host if ctx else None,
                    local_addr=(self.bind, 0) if self.bind else None,
                )
                proto.write(self._connect_packet())
                connack = await self._await_ack(_CONNACK)
            props = _read_props(connack, 2)[0]
            if connack[1] >= 0x80:
                text = props.get(0x1F) or _reason(connack[1])
                raise TransportError(f"MQTT broker at {where} refused the connection: {text}")
            self._recv_max = props.get(0x21, 65535)
            self._keepalive = props.get(0x13, self._keepalive)
            self._connected = True
            self._connects += 1
            _wheel(loop).add(proto, loop.time())  # the first tick works out when to ping
            if self._subs:  # restore them all in one SUBSCRIBE
                filters = list(self._subs)
                for topic_filter, code in zip(
                    filters, await self._request(0x82, filters), strict=False
                ):
                    if code >= 0x80:
                        log.error("dropping subscription %r: %s", topic_filter, _reason(code))
                        self._subs.pop(topic_filter, None)
        except BaseException as exc:
            proto.abort()
            if isinstance(exc, TimeoutError):
                raise TransportError(f"timed out connecting to MQTT broker at {where}") from exc
            if isinstance(exc, OSError | ValueError | IndexError):
                raise TransportError(f"cannot connect to MQTT broker at {where}: {exc}") from exc
            raise
        finally:
            self._connecting = False
        self._attempts = 0
        for callback in self._on_connect:
            try:
                await callback()
            except Exception:
                log.exception("on_connect callback %r failed", callback)

    def _lost(self, proto: _Proto | None, why: str) -> None:
        if proto is None or proto is not self._proto:
            return  # an earlier connection, already handled
        self._proto = None
        _wheel(proto.loop).remove(proto)
        was, self._connected = self._connected, False
        self._disconnects += was
        acks, self._acks = self._acks or {}, None
        waiters, self._waiters = self._waiters or [], None
        self._inflight = 0
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

    def _schedule_retry(self) -> None:
        ceiling = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2**self._attempts)
        self._attempts += 1
        delay = random.uniform(ceiling / 2, ceiling)  # "equal jitter"
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = asyncio.get_running_loop().create_task(self._reconnect())

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

    # Packets ------------------------------------------------------------------------------------

    def _track(self, key: int, fut: asyncio.Future[bytes] | None) -> None:
        if self._acks is None:
            self._acks = {}
        self._acks[key] = fut

    def _next_id(self) -> int:
        pid, acks = self._next_pid, self._acks or {}
        while True:
            pid = pid % 65535 + 1
            if pid not in acks:
                self._next_pid = pid
                return pid

    async def _await_ack(self, key: int) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._track(key, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._acks is not None and self._acks.get(key) is fut:
                self._acks[key] = None  # the identifier stays taken until its ack arrives
            raise

    def _send_publish(self, topic: str, payload: bytes, qos: int, retain: bool, p: Props) -> int:
        proto = self._proto
        if not self._connected or proto is None:
            raise TransportError(f"not connected to {self.broker.display()}")
        if not valid_publish_topic(topic):
            raise TransportError(f"cannot publish to {topic!r}: empty, wildcard or NUL")
        if qos not in (0, 1):
            raise ValueError(f"LiteTransport publishes at QoS 0 or 1, not {qos}")
        head, pid = _str(topic), 0
        if qos:
            pid = self._next_id()
            self._track(pid, None)
            self._inflight += 1
            head += pid.to_bytes(2, "big")
        packed = b"\x00" if p is NO_PROPS else pack_properties(p)
        proto.write(_packet(0x30 | qos << 1 | retain, head + packed + payload))
        self._out += 1
        return pid

    async def _request(self, kind: int, filters: list[str]) -> bytes:
        """SUBSCRIBE (0x82, QoS from ``_subs``) or UNSUBSCRIBE (0xA2); the ack's reason codes."""
        proto = self._proto
        if proto is None:
            raise TransportError(f"not connected to {self.broker.display()}")
        pid = self._next_id()
        sub = kind == 0x82
        body = b"".join(_str(f) + (bytes((self._subs[f][0],)) if sub else b"") for f in filters)
        proto.write(_packet(kind, pid.to_bytes(2, "big") + b"\x00" + body))
        ack = await self._await_ack(pid)
        return ack[_read_props(ack, 2)[1] :]

    def _handle(self, proto: _Proto, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 3:
            self._on_publish(proto, first, body)
        elif kind == 14:
            reason = _reason(body[0]) if body else "Normal disconnection"
            log.warning("%s: the broker disconnected: %s", self.client_id, reason)
        elif kind in (2, 4, 9, 11) and self._acks:  # CONNACK, PUBACK, SUBACK, UNSUBACK
            key = _CONNACK if kind == 2 else int.from_bytes(body[:2], "big")
            if key not in self._acks:
                return
            fut = self._acks.pop(key)
            if not self._acks:
                self._acks = None
            if fut is not None and not fut.done():
                fut.set_result(body)
            if kind == 4:
                self._inflight -= 1
                while self._waiters:
                    waiter = self._waiters.pop(0)
                    if not waiter.done():
                        waiter.set_result(None)
                        break
                self._waiters = self._waiters or None

    def _on_publish(self, proto: _Proto, first: int, body: bytes) -> None:
        qos = (first >> 1) & 3
        topic, mid, props, payload = unpack_publish(first, body)  # the paho transport's decoder
        msg = Inbound(topic, payload, qos, bool(first & 1), props)
        self._in += 1
        for topic_filter, (_, handler, plain) in list(self._subs.items()):
            if topic_matches(plain, topic):
                try:
                    handler(msg)
                except Exception:
                    log.exception("handler for %r failed on %r", topic_filter, topic)
        if qos:
            proto.write(b"\x40\x02" + mid.to_bytes(2, "big"))  # PUBACK (QoS 2 is never subscribed)
