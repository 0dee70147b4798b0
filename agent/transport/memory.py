"""The in-memory transport: an MQTT 5 client of a :class:`MemoryBroker` (tests, the simulator).

:class:`MemoryTransport` is a ``__slots__`` object without tasks, queues or futures, so 100,000 fit
in a process; the broker (:mod:`edgeagent.transport.memory_broker`) calls each subscription's
handler directly. Losses are simulated with :meth:`MemoryTransport.kill` (and the broker's
``disconnect_all``/``restart``); wills are published on every unclean loss. Clients reconnect after
the broker's ``reconnect_delay_s`` (a timer of the broker's clock), restore subscriptions and rerun
``on_connect``. A client whose id was taken over does not reconnect (paho would take it back and
the two would flap).

:class:`MemoryBroker` and :class:`BrokerStatistics` are re-exported here, where they always lived.
"""

from __future__ import annotations

import itertools
import logging

from ..errors import TransportError
from .base import (
    NO_PROPS,
    ConnectCallback,
    Handler,
    Props,
    TransportStatistics,
    Will,
    validate_filter,
)
from .memory_broker import BrokerStatistics, MemoryBroker

__all__ = ["BrokerStatistics", "MemoryBroker", "MemoryTransport"]

log = logging.getLogger(__name__)

_ids = itertools.count(1)


class MemoryTransport:
    """A :class:`~edgeagent.transport.base.Transport` connected to a :class:`MemoryBroker`."""

    __slots__ = (
        "_connected", "_connects", "_disconnects", "_in", "_on_connect", "_out", "_subs", "_want",
        "broker", "client_id", "will",
    )  # fmt: skip

    def __init__(
        self, broker: MemoryBroker, client_id: str | None = None, will: Will | None = None
    ) -> None:
        self.broker = broker
        self.client_id = client_id or f"mem-{next(_ids)}"
        self.will = will
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._on_connect: tuple[ConnectCallback, ...] = ()
        self._connected = False
        self._want = False  # reconnect automatically after a loss
        self._connects = self._disconnects = self._in = self._out = 0

    @property
    def connected(self) -> bool:
        return self._connected

    def on_connect(self, callback: ConnectCallback) -> None:
        self._on_connect = (*self._on_connect, callback)

    async def connect(self) -> None:
        if self._connected:
            raise RuntimeError("MemoryTransport.connect() called twice")
        self.broker.attach(self)
        self._want = True
        await self.run_connect_callbacks(False)

    async def close(self) -> None:
        """Disconnect cleanly: no last will, no reconnect."""
        self._want = False
        self.broker.drop(self, publish_will=False)

    def kill(self, *, reconnect: bool = False) -> None:
        """Lose the connection uncleanly (the will is published); optionally reconnect later."""
        if not self._connected:
            return
        self._want = reconnect
        self.broker.drop(self, publish_will=True)
        if reconnect:
            self.broker.reconnect_later([self])

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        if not self._connected:
            log.warning("%s not connected; dropped message to %s", self.client_id, topic)
            return
        self.broker.route(topic, payload, qos, retain, props, self)
        self._out += 1

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        if not self._connected:
            raise TransportError(f"{self.client_id} is not connected to the in-memory broker")
        self.broker.route(topic, payload, qos, retain, props, self)
        self._out += 1

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> None:
        validate_filter(topic_filter)
        self._subs[topic_filter] = (qos, handler)
        if self._connected:
            self.broker.add_subscription(self, topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.pop(topic_filter, None) is not None and self._connected:
            self.broker.remove_subscription(self, topic_filter)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            self._connected, self._connects, self._disconnects, self._in, self._out
        )

    # The broker's side (memory_broker.BrokerClient) ---------------------------------------------

    @property
    def wants_connection(self) -> bool:
        return self._want

    @property
    def subscriptions(self) -> dict[str, tuple[int, Handler]]:
        return self._subs

    @property
    def has_connect_callbacks(self) -> bool:
        return bool(self._on_connect)

    def give_up(self) -> None:
        self._want = False

    def attached(self) -> None:
        self._connected = True
        self._connects += 1

    def detached(self) -> None:
        self._connected = False
        self._disconnects += 1

    def accept(self, topic_filter: str) -> tuple[int, Handler] | None:
        sub = self._subs.get(topic_filter) if self._connected else None
        if sub is not None:
            self._in += 1
        return sub

    async def run_connect_callbacks(self, background: bool) -> None:
        for callback in self._on_connect:
            try:
                await callback()
            except TransportError as exc:
                log.warning("on_connect callback failed: %s", exc)
            except Exception:
                if not background:
                    raise
                log.exception("on_connect callback of %s failed", self.client_id)
