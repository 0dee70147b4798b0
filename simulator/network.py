"""The embedded network: the in-memory MQTT broker plus simulated links and network faults.

Every client has a :class:`LinkState` (latency, jitter, loss, plus what faults add). A message
from a client reaches the broker after the client's one-way latency and leaves it towards each
subscriber after that subscriber's; per direction a link never reorders (a later message never
overtakes an earlier one, as on TCP). Loss drops a message on one link, like QoS 0 over a bad
network. All randomness comes from one seeded :class:`random.Random`, drawn in event order, so a
run repeats exactly.

Faults the network carries out: :meth:`SimBroker.partition` (clients lose the broker; their wills
fire after the keepalive timeout; they cannot reconnect until :meth:`SimBroker.heal`),
per-link extra loss and delay, broker-wide message loss, and the base class's
``disconnect_all``/``restart`` for a broker restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock
from ..transport.base import NO_PROPS, Props, valid_publish_topic
from ..transport.memory import MemoryBroker, MemoryTransport
from ..transport.memory_broker import BrokerClient, Target
from ..transport.memory_trie import Msg

_ORDER_S = 1e-7
"""Gap between two messages on one link: asyncio's timer heap is not FIFO for equal times."""


@dataclass(slots=True)
class LinkState:
    latency_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    extra_delay_s: float = 0.0
    extra_loss: float = 0.0
    up_free: float = 0.0
    """Earliest time the next message on the uplink may arrive (keeps order)."""
    down_free: float = 0.0

    def delay(self, rng: random.Random) -> float:
        jitter = rng.random() * self.jitter_s if self.jitter_s else 0.0
        return self.latency_s + jitter + self.extra_delay_s

    def lost(self, rng: random.Random) -> bool:
        p = self.loss + self.extra_loss - self.loss * self.extra_loss
        return p > 0 and rng.random() < p


class SimBroker(MemoryBroker):
    """A :class:`MemoryBroker` whose clients sit behind simulated links."""

    def __init__(
        self,
        *,
        clock: Clock | Callable[[], float],
        rng: random.Random,
        reconnect_delay_s: float = 1.0,
        will_delay_s: float = 45.0,
    ) -> None:
        super().__init__(clock=clock, reconnect_delay_s=reconnect_delay_s)
        self.rng = rng
        self.links: dict[str, LinkState] = {}
        self.loss = 0.0
        """Broker-wide probability that a delivery is lost (the message_loss fault)."""
        self.will_delay_s = will_delay_s
        """How long a partitioned client's will takes: the broker's keepalive timeout."""
        self.blocked: set[str] = set()
        self.lost_messages = 0

    def link(self, client_id: str) -> LinkState:
        state = self.links.get(client_id)
        if state is None:
            state = self.links[client_id] = LinkState()
        return state

    # Partitions ---------------------------------------------------------------------------------

    def partition(self, client: MemoryTransport) -> None:
        """Cut ``client`` off: the connection is gone, the will follows after the keepalive."""
        self.blocked.add(client.client_id)
        if not client.connected:
            return
        will, client.will = client.will, None
        self._drop(client, publish_will=False)
        client.will = will
        if will is not None and self._loop is not None:
            self.clock.call_later(self.will_delay_s, self._late_will, client, will.topic)
        if client.wants_connection:
            self._waiting.append(client)

    def _late_will(self, client: MemoryTransport, topic: str) -> None:
        w = client.will
        if w is not None and not client.connected and w.topic == topic:
            self._route(w.topic, w.payload, w.qos, w.retain, NO_PROPS)

    def heal(self, client: MemoryTransport) -> None:
        self.blocked.discard(client.client_id)
        if client in self._waiting and self._up:
            self._waiting.remove(client)
            assert self._loop is not None
            self.reconnect_later([client])

    def _reconnect(self, clients: list[BrokerClient]) -> None:
        blocked = [c for c in clients if c.client_id in self.blocked]
        self._waiting.extend(c for c in blocked if c not in self._waiting)
        super()._reconnect([c for c in clients if c.client_id not in self.blocked])

    # Links --------------------------------------------------------------------------------------

    def _route(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Props,
        sender: BrokerClient | None = None,
    ) -> None:
        if sender is None:
            super()._route(topic, payload, qos, retain, props)
            return
        if not valid_publish_topic(topic):
            raise ValueError(f"invalid publish topic {topic!r}")
        link = self.links.get(sender.client_id)
        if link is None:
            super()._route(topic, payload, qos, retain, props)
            return
        if link.lost(self.rng):
            self.lost_messages += 1
            return
        now = self.clock.monotonic()
        at = max(now + link.delay(self.rng), link.up_free + _ORDER_S)
        link.up_free = at
        assert self._loop is not None
        if at <= now:
            super()._route(topic, payload, qos, retain, props)
        else:
            self.clock.call_later(at - now, self._arrive, topic, payload, qos, retain, props)

    def _arrive(self, topic: str, payload: bytes, qos: int, retain: bool, props: Props) -> None:
        # A retained message keeps its expiry relative to when it reached the broker.
        super()._route(topic, payload, qos, retain, props)

    def _schedule(self, targets: list[Target], msg: Msg) -> None:
        assert self._loop is not None
        now = self.clock.monotonic()
        plain: list[Target] = []
        for target in targets:
            link = self.links.get(target[0].client_id)
            if self.loss and self.rng.random() < self.loss:
                self.lost_messages += 1
                continue
            if link is None:
                plain.append(target)
                continue
            if link.lost(self.rng):
                self.lost_messages += 1
                continue
            at = max(now + link.delay(self.rng), link.down_free + _ORDER_S)
            link.down_free = at
            if at <= now:
                plain.append(target)
            else:
                self.clock.call_later(at - now, self._deliver, [target], msg, False)
        if plain:
            self._loop.call_soon(self._deliver, plain, msg, False)
