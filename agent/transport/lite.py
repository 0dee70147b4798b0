"""A minimal MQTT 5 client on asyncio, for ten thousand simulated devices in one process.

The fleet simulator's broker mode connects every simulated device to a real mosquitto, and paho's
``Client`` costs tens of kilobytes per connection. Here a client is two small objects with
``__slots__`` on top of asyncio's socket transport: :class:`LiteTransport` (subscriptions,
publishing; its connection half, :class:`~edgeagent.transport.lite_link.LiteLink`, connects,
awaits acks and reconnects, around its :class:`~edgeagent.transport.session.ClientSession`) and
one :class:`~edgeagent.transport.lite_conn.Connection` per TCP connection (the
``asyncio.Protocol``: bytes in and out). An idle connected client owns no task, no queue, no
future and no buffer. Keepalive is one timer wheel per event loop
(:mod:`~edgeagent.transport.lite_wheel`), so 10,000 idle clients cost one timer, not 10,000; TLS
contexts are shared (:mod:`~edgeagent.transport.tls`). Measured: about 3 KB of Python heap per
idle connected client, asyncio's transport included.

Supported: QoS 0 and 1 both ways, retained messages, a last will, shared subscriptions, the
broker's Receive Maximum (``publish`` waits for a slot; ``publish_nowait`` queues in the session,
bounded, and the message goes out at its QoS as acks free slots), and the five publish
properties of :class:`~edgeagent.transport.base.Props`. Not supported: QoS 2, topic aliases,
enhanced authentication, will properties, and resending unacknowledged QoS 1 messages after a
reconnect (their ``publish()`` fails instead).
:class:`~edgeagent.transport.mqtt.MqttTransport` is this class with QoS 2 allowed and an
agent's defaults. Socket and TLS errors become :class:`~edgeagent.errors.TransportError` in the
link, and nowhere else.

The protocol itself is :class:`~edgeagent.transport.session.ClientSession` (no I/O): these
modules only move its bytes, keep the futures callers await, and arm timers on the injected
:class:`~edgeagent.clock.Clock`. Reconnect jitter comes from an injected ``random.Random`` (one
shared instance by default: a generator per client would cost 2.5 KB each).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import ClassVar

from ..broker import BrokerConfig
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import TransportError
from .backoff import Backoff
from .base import (
    NO_PROPS,
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
from .lite_link import Ack, LiteLink
from .session import (
    PublishAcked,
    Subscribed,
    Unsubscribed,
    reason_text,
)
from .tls import broker_ssl_context, ssl_context

__all__ = [
    "LITE_BACKOFF",
    "MAX_PACKET",
    "Ack",
    "LiteTransport",
    "broker_ssl_context",
    "ssl_context",
]

log = logging.getLogger(__name__)

MAX_PACKET = (1 << 20) + (1 << 16)
"""Largest packet accepted: 1 MiB of payload plus room for topic and properties, bytes."""
LITE_BACKOFF = Backoff(0.1, 5.0)


class LiteTransport(LiteLink):
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

    __slots__ = ("_in", "_out", "_subs")

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
        super().__init__(
            broker,
            client_id=client_id,
            will=will,
            clean_start=clean_start,
            reconnect=reconnect,
            host=host,
            bind=bind,
            clock=clock,
            rng=rng,
            retry_first_connect=retry_first_connect,
            backoff=backoff,
            max_packet_size=max_packet_size,
        )
        self._subs: dict[str, tuple[int, Handler, str]] = {}  # filter -> qos, handler, plain
        self._in = self._out = 0

    # Public API (connect, close, kill, connected, on_connect: see LiteLink) ---------------------

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        """Send now. A QoS 1/2 message beyond the broker's Receive Maximum waits in the
        session's bounded queue (:data:`~edgeagent.transport.session.MAX_QUEUED` messages) and
        goes out at its QoS as acks free slots. Dropped with a log line when not connected,
        when the queue is full, or (still queued) when the connection is lost."""
        try:
            self._send_publish(topic, payload, qos, retain, props, queue=True)
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

    # Over the link ------------------------------------------------------------------------------

    async def _restore_subscriptions(self) -> None:
        """Every subscription in one SUBSCRIBE; those the broker now refuses are dropped."""
        if not self._subs:
            return
        filters = list(self._subs)
        codes = await self._request(filters, subscribe=True)
        for topic_filter, code in zip(filters, codes, strict=False):
            if code >= 0x80:
                log.error("dropping subscription %r: %s", topic_filter, reason_text(code))
                self._subs.pop(topic_filter, None)

    def _send_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, p: Props, *, queue: bool = False
    ) -> int:
        """Send (or, with ``queue``, let the session hold beyond the Receive Maximum); the
        packet id to await, 0 for QoS 0 or a held message."""
        proto = self._proto
        if not self._connected or proto is None:
            raise TransportError(f"not connected to {self.broker.display()}")
        if not valid_publish_topic(topic):
            raise TransportError(f"cannot publish to {topic!r}: empty, wildcard or NUL")
        if not 0 <= qos <= self.MAX_QOS:
            raise ValueError(
                f"{type(self).__name__} publishes at QoS {self._qos_range()}, not {qos}"
            )
        session = self._session
        if queue:
            pid, data = session.publish_or_queue(topic, payload, qos, retain, p)
        else:
            pid, data = session.publish(topic, payload, qos, retain, p)
        if pid:
            if self._acks is None:
                self._acks = {}
            self._acks[pid] = None
        if data:
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

    def _on_message(self, msg: Inbound) -> None:
        self._in += 1
        topic = msg.topic
        for topic_filter, (_, handler, plain) in list(self._subs.items()):
            if topic_matches(plain, topic):
                try:
                    handler(msg)
                except Exception:
                    log.exception("handler for %r failed on %r", topic_filter, topic)
