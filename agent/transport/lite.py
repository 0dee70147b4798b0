"""A minimal MQTT 5 client on asyncio, for ten thousand simulated devices in one process.

The fleet simulator's broker mode connects every simulated device to a real mosquitto, and paho's
``Client`` costs tens of kilobytes per connection. Here a client is two small objects with
``__slots__`` on top of asyncio's socket transport: :class:`LiteTransport` (subscriptions,
acks, reconnects, and its :class:`~edgeagent.transport.session.ClientSession`) and one
``_Proto`` per TCP connection (the ``asyncio.Protocol``: bytes in and out). An idle
connected client owns no task, no queue, no future and no buffer: a partial packet is buffered
only until it completes, acks are awaited through a dict that exists only while something is in
flight, and a reconnect is a task only while it runs.
Keepalive is one timer wheel per event loop: a single 1 s callback visits only the connections
due for a PINGREQ (or overdue for an answer), so 10,000 idle clients cost one timer, not 10,000.
Measured: about 3 KB of Python heap per idle connected client, asyncio's transport included.

Supported: QoS 0 and 1 both ways, retained messages, a last will, shared subscriptions, the
broker's Receive Maximum, and the five publish properties of
:class:`~edgeagent.transport.base.Props`. Not supported: QoS 2, topic aliases, enhanced
authentication, will properties, and resending unacknowledged QoS 1 messages after a reconnect
(their ``publish()`` fails instead). :class:`~edgeagent.transport.mqtt.MqttTransport` is this
class with QoS 2 allowed and an agent's defaults. Socket and TLS errors become
:class:`~edgeagent.errors.TransportError` here, and nowhere else.

The protocol itself is :class:`~edgeagent.transport.session.ClientSession` (no I/O): this module
only moves its bytes, keeps the futures callers await, and arms timers on the injected
:class:`~edgeagent.clock.Clock`. Reconnect jitter comes from an injected ``random.Random`` (one
shared instance by default: a generator per client would cost 2.5 KB each).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import ssl
import weakref
from pathlib import Path
from typing import Any, ClassVar

from ..broker import BrokerConfig
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TransportError
from .backoff import Backoff
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
from .codec import MalformedPacket, PacketTooLarge
from .session import (
    BrokerDisconnected,
    ClientSession,
    Connected,
    ConnectionRefused,
    PublishAcked,
    SessionError,
    Subscribed,
    Unsubscribed,
    reason_text,
)

log = logging.getLogger(__name__)

MAX_PACKET = (1 << 20) + (1 << 16)
"""Largest packet accepted: 1 MiB of payload plus room for topic and properties, bytes."""
_TICK_S = 1.0
LITE_BACKOFF = Backoff(0.1, 5.0)
_CONNACK = 0  # packet identifiers start at 1: key 0 of ``_acks`` waits for the CONNACK
_SHARED_RNG = random.Random()

Ack = Connected | ConnectionRefused | PublishAcked | Subscribed | Unsubscribed


@functools.lru_cache(maxsize=16)
def ssl_context(
    ca: Path | None, cert: Path | None, key: Path | None, insecure: bool
) -> ssl.SSLContext:
    """One client context per TLS setting, shared by every client (a context holds the CA
    store): the CA file (else the system's), an optional client certificate, and ``insecure``
    (the hostname is not checked; the chain still is)."""
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


def broker_ssl_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context a broker's settings ask for, or None for plain TCP."""
    tls = broker.tls
    if tls is not None:
        return ssl_context(tls.ca_file, tls.cert_file, tls.key_file, tls.insecure)
    return ssl_context(None, None, None, False) if broker.use_tls() else None


class _Wheel:
    """Keepalive for every client of one loop: a 1 s tick visiting only the connections due."""

    __slots__ = ("buckets", "clock", "cursor", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = weakref.ref(loop)  # the wheels registry must not keep a loop alive
        self.clock = clock  # the first client's: every clock of one loop reads that loop's time
        self.buckets: dict[int, set[_Proto]] = {}  # tick number -> connections due then
        self.cursor = 0  # the next tick to visit; 0 while the wheel is stopped

    def add(self, proto: _Proto, when: float) -> None:
        if when == float("inf"):
            return  # keepalive off
        if not self.cursor:
            now = self.clock.monotonic()
            self.cursor = int(now / _TICK_S) + 1
            self.clock.call_later(self.cursor * _TICK_S - now, self._tick)
        proto.wheel_key = max(-int(-when // _TICK_S), self.cursor)
        self.buckets.setdefault(proto.wheel_key, set()).add(proto)

    def remove(self, proto: _Proto) -> None:
        bucket = self.buckets.get(proto.wheel_key)
        if bucket is not None:
            bucket.discard(proto)
            if not bucket:
                del self.buckets[proto.wheel_key]

    def _tick(self) -> None:
        if self.loop() is None:
            return
        now = self.clock.monotonic()
        upto = int(now / _TICK_S)
        due = [self.buckets.pop(k) for k in range(self.cursor, upto + 1) if k in self.buckets]
        self.cursor = upto + 1
        for bucket in due:
            for proto in bucket:
                proto.keepalive(now)
        if self.buckets:
            self.clock.call_later(self.cursor * _TICK_S - now, self._tick)
        else:
            self.cursor = 0


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()


def _wheel(loop: asyncio.AbstractEventLoop, clock: Clock) -> _Wheel:
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = _Wheel(loop, clock)
    return wheel


class _Proto(asyncio.Protocol):
    """One TCP connection: bytes to and from the owner's session; events to the owner."""

    __slots__ = ("gone", "loop", "owner", "transport", "wheel_key")

    def __init__(self, owner: LiteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.owner: LiteTransport | None = owner  # None once the connection is over
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.gone: asyncio.Future[None] | None = None  # only while close() waits
        self.wheel_key = 0

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
            owner = self.owner
            if owner is not None:
                owner._session.sent(owner._clock.monotonic())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            return
        session = owner._session
        try:
            events = session.receive_data(data, owner._clock.monotonic())
        except MalformedPacket as exc:
            owner._handle(self, exc.events)  # the packets before the fault
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
        owner._handle(self, events)
        if self.owner is not None:
            acks = session.data_to_send()  # PUBACKs owed for the messages just handled
            if acks:
                self.write(acks)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        owner, self.owner = self.owner, None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if owner is not None:
            owner._lost(self, str(exc) if exc else "socket closed")

    def keepalive(self, now: float) -> None:
        """PINGREQ when idle for the keepalive; give up after 1.5 times that in silence."""
        owner = self.owner
        if owner is None:
            return
        session = owner._session
        due = session.keepalive_due(now, slack=_TICK_S)  # a tick late is still in time
        if due == "overdue":
            log.warning("%s: no answer from the broker for %g s", owner.client_id,
                        1.5 * session.keepalive)  # fmt: skip
            self.abort()
            return
        if due == "ping":
            self.write(session.ping())
        _wheel(self.loop, owner._clock).add(self, session.next_keepalive(_TICK_S))


class LiteTransport:
    """An MQTT 5 connection costing a few kilobytes, for simulators running thousands of them.

    :meth:`connect` raises :class:`TransportError` at once if the broker cannot be reached or
    refuses; once connected, a lost connection is re-established with jittered exponential
    backoff (0.1 s doubling to 5 s) unless ``reconnect=False``. ``host`` overrides the broker
    URL's host (TLS still verifies the URL's) and ``bind`` sets the local address (more source
    addresses, more ephemeral ports). ``clock`` arms every timer; ``rng`` draws the jitter.
    ``retry_first_connect=True`` makes :meth:`connect` keep trying (with ``backoff``) until
    the broker answers, instead of raising at once. ``max_packet_size`` (bytes) is announced
    to the broker, which then drops larger messages for this client instead of sending them;
    above :data:`~edgeagent.transport.codec.MAX_VARINT` nothing is announced (no limit).

    :class:`~edgeagent.transport.mqtt.MqttTransport` is this class with QoS 2 and the defaults
    of a long-running agent or client.
    """

    MAX_QOS: ClassVar[int] = 1

    __slots__ = (
        "_acks", "_attempts", "_backoff", "_clock", "_connected", "_connecting", "_connects",
        "_disconnects", "_in", "_on_connect", "_out", "_proto", "_retry", "_rng", "_session",
        "_subs", "_waiters", "_want", "bind", "broker", "clean_start", "client_id", "host",
        "reconnect", "retry_first_connect", "will",
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
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        retry_first_connect: bool = False,
        backoff: Backoff = LITE_BACKOFF,
        max_packet_size: int = MAX_PACKET,
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
        self._rng = rng or _SHARED_RNG
        self._session = ClientSession(
            client_id,
            keepalive=broker.keepalive_s,
            clean_start=clean_start,
            will=will,
            max_packet_size=max_packet_size,
        )
        self._proto: _Proto | None = None
        self._subs: dict[str, tuple[int, Handler, str]] = {}  # filter -> qos, handler, plain
        self._on_connect: tuple[ConnectCallback, ...] = ()
        self._acks: dict[int, asyncio.Future[Ack] | None] | None = None  # None: nothing due
        self._waiters: list[asyncio.Future[None]] | None = None  # publish() at receive max
        self._retry: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self._connected = self._connecting = self._want = False
        self._attempts = 0
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
                proto.write(self._session.disconnect())  # reason 0: the broker drops the will
            proto.owner = None
            proto.gone = proto.loop.create_future()
            proto.transport.close()
            try:
                async with self._clock.timeout(1.0):
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
        if qos and self._session.send_quota <= 0:
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
        while qos and self._connected and self._session.send_quota <= 0:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        pid = self._send_publish(topic, payload, qos, retain, props)
        if pid:
            ack = await self._await_ack(pid)
            assert isinstance(ack, PublishAcked)
            if ack.reason_code >= 0x80:
                reason = reason_text(ack.reason_code)
                raise TransportError(f"broker refused the message to {topic}: {reason}")

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> None:
        validate_filter(topic_filter)
        if not 0 <= qos <= self.MAX_QOS:
            raise ValueError(
                f"{type(self).__name__} subscribes at QoS {self._qos_range()}, not {qos}"
            )
        # Registered first, so retained messages arriving right after the SUBACK find it.
        self._subs[topic_filter] = (qos, handler, strip_share(topic_filter)[1])
        if self._connected:
            try:
                (code,) = await self._request([topic_filter], subscribe=True)
                if code >= 0x80:
                    raise TransportError(
                        f"broker refused subscription {topic_filter!r}: {reason_text(code)}"
                    )
            except TransportError:
                self._subs.pop(topic_filter, None)
                raise

    async def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.pop(topic_filter, None) is not None and self._connected:
            await self._request([topic_filter], subscribe=False)

    @classmethod
    def _qos_range(cls) -> str:
        return "0 or 1" if cls.MAX_QOS == 1 else "0, 1 or 2"

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            connected=self._connected,
            connects=self._connects,
            disconnects=self._disconnects,
            messages_in=self._in,
            messages_out=self._out,
        )

    # Connection management ----------------------------------------------------------------------

    async def _attempt(self) -> None:
        """One connection: TCP (and TLS), CONNECT/CONNACK, subscriptions, on_connect callbacks."""
        loop, broker, where = asyncio.get_running_loop(), self.broker, self.broker.display()
        ctx = broker_ssl_context(broker)
        session = self._session
        if session.state != "disconnected":
            session.connection_lost()  # an aborted attempt whose socket never reported back
        session.keepalive = broker.keepalive_s
        session.username, session.password = broker.credentials()
        session.will, session.clean_start = self.will, self.clean_start  # settable until now
        proto = self._proto = _Proto(self, loop)
        self._connecting = True
        try:
            async with self._clock.timeout(broker.connect_timeout_s):
                await loop.create_connection(
                    lambda: proto,
                    self.host or broker.host,
                    broker.port,
                    ssl=ctx,
                    server_hostname=broker.host if ctx else None,
                    local_addr=(self.bind, 0) if self.bind else None,
                )
                proto.write(session.connect(self._clock.monotonic()))
                connack = await self._await_ack(_CONNACK)
            if isinstance(connack, ConnectionRefused):
                raise TransportError(
                    f"MQTT broker at {where} refused the connection: {connack.reason}"
                )
            self._connected = True
            self._connects += 1
            # the first tick works out when to ping
            _wheel(loop, self._clock).add(proto, self._clock.monotonic())
            if self._subs:  # restore them all in one SUBSCRIBE
                filters = list(self._subs)
                codes = await self._request(filters, subscribe=True)
                for topic_filter, code in zip(filters, codes, strict=False):
                    if code >= 0x80:
                        log.error("dropping subscription %r: %s", topic_filter, reason_text(code))
                        self._subs.pop(topic_filter, None)
        except BaseException as exc:
            proto.abort()
            if isinstance(exc, TimeoutError):
                raise TransportError(f"timed out connecting to MQTT broker at {where}") from exc
            if isinstance(exc, OSError | ValueError):
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
        _wheel(proto.loop, self._clock).remove(proto)
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

    # Packets ------------------------------------------------------------------------------------

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

    def _send_publish(self, topic: str, payload: bytes, qos: int, retain: bool, p: Props) -> int:
        proto = self._proto
        if not self._connected or proto is None:
            raise TransportError(f"not connected to {self.broker.display()}")
        if not valid_publish_topic(topic):
            raise TransportError(f"cannot publish to {topic!r}: empty, wildcard or NUL")
        if not 0 <= qos <= self.MAX_QOS:
            raise ValueError(
                f"{type(self).__name__} publishes at QoS {self._qos_range()}, not {qos}"
            )
        pid, data = self._session.publish(topic, payload, qos, retain, p)
        if pid:
            if self._acks is None:
                self._acks = {}
            self._acks[pid] = None
        proto.write(data)
        self._out += 1
        return pid

    async def _request(self, filters: list[str], *, subscribe: bool) -> tuple[int, ...]:
        """SUBSCRIBE (QoS from ``_subs``) or UNSUBSCRIBE; the ack's reason codes."""
        proto = self._proto
        if proto is None:
            raise TransportError(f"not connected to {self.broker.display()}")
        if subscribe:
            pid, data = self._session.subscribe((f, self._subs[f][0]) for f in filters)
        else:
            pid, data = self._session.unsubscribe(filters)
        proto.write(data)
        ack = await self._await_ack(pid)
        assert isinstance(ack, Subscribed | Unsubscribed)
        return ack.reason_codes

    def _handle(self, proto: _Proto, events: list[Any]) -> None:
        for event in events:
            if self._proto is not proto or proto.owner is None:
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

    def _on_message(self, msg: Inbound) -> None:
        self._in += 1
        topic = msg.topic
        for topic_filter, (_, handler, plain) in list(self._subs.items()):
            if topic_matches(plain, topic):
                try:
                    handler(msg)
                except Exception:
                    log.exception("handler for %r failed on %r", topic_filter, topic)
