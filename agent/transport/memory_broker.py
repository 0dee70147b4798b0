"""The in-process MQTT 5 broker behind :class:`~edgeagent.transport.memory.MemoryTransport`.

:class:`MemoryBroker` keeps one topic trie (:mod:`~edgeagent.transport.memory_trie`) holding
subscriptions, shared-subscription groups and retained messages, so neither routing nor retained
replay scans every client or topic. The broker adds connections, counters and delivery: one
``loop.call_soon`` per publish hands the message to each matching subscription (once per matching
filter, like mosquitto's one copy per subscription), in publish order and never re-entrantly.

Time comes from one injected :class:`~edgeagent.clock.Clock`: message expiry is measured with
``clock.monotonic()`` at delivery, and reconnects are ``clock.call_later`` timers, so under the
simulator's virtual clock both move together. Losses are simulated with
:meth:`MemoryBroker.disconnect_all` and :meth:`MemoryBroker.restart` (and the transport's
``kill``); wills are published on every unclean loss.

The broker and its transport are two halves of one connection. The transport calls the public
methods in the "for transports" section (:meth:`~MemoryBroker.attach`, :meth:`~MemoryBroker.drop`,
:meth:`~MemoryBroker.route`, ...); the broker drives the transport through its
:class:`BrokerClient` side. The underscored hooks (``_route``, ``_schedule``, ``_deliver``,
``_reconnect``) are what :class:`~edgeagent.simulator.network.SimBroker` overrides to put
simulated links between the two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from ..clock import SYSTEM_CLOCK, Clock, LoopClock
from ..errors import TransportError
from .base import NO_PROPS, Handler, Inbound, Props, Will, strip_share
from .memory_trie import Group, Msg, Node, collect, collect_retained, path, prune

log = logging.getLogger("edgeagent.transport.memory")
"""The transport's logger: broker and transport log as one component, as before the split."""


class BrokerClient(Protocol):
    """What the broker needs of a connected client (:class:`MemoryTransport` implements it)."""

    @property
    def client_id(self) -> str: ...

    @property
    def will(self) -> Will | None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def wants_connection(self) -> bool:
        """Reconnect automatically after a loss."""

    @property
    def subscriptions(self) -> dict[str, tuple[int, Handler]]:
        """Topic filter -> (maximum QoS, handler): what the client asked for, connected or not."""

    @property
    def has_connect_callbacks(self) -> bool: ...

    def give_up(self) -> None:
        """Stop reconnecting (its client id was taken over)."""

    def attached(self) -> None:
        """The broker accepted the connection."""

    def detached(self) -> None:
        """The broker dropped the connection."""

    def accept(self, topic_filter: str) -> tuple[int, Handler] | None:
        """A message matched ``topic_filter``: its (QoS, handler) if the client is connected and
        still subscribed (the delivery is then counted), else None. One call per delivery: this
        is the broker's hot path."""

    async def run_connect_callbacks(self, background: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    clients: int
    subscriptions: int
    retained: int
    messages_routed: int
    deliveries: int
    expired: int


Target = tuple[BrokerClient, str]
"""A client and the filter (of that client) a message matched."""


class _FunctionClock(LoopClock):
    """A bare ``() -> seconds`` function as a clock: reads from it, timers on the running loop.

    The older form of ``MemoryBroker(clock=...)``; pass a :class:`~edgeagent.clock.Clock` so
    reads and timers share one base."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read

    def monotonic(self) -> float:
        return self._read()


class MemoryBroker:
    """Clients, subscriptions and retained messages of one in-process MQTT 5 broker.

    ``clock``: reads for message expiry and timers for reconnects (a bare function of monotonic
    seconds is accepted too: reads from it, timers on the running loop)."""

    def __init__(
        self,
        *,
        clock: Clock | Callable[[], float] = SYSTEM_CLOCK,
        reconnect_delay_s: float = 0.05,
    ) -> None:
        self.clock = _as_clock(clock)
        self.reconnect_delay_s = reconnect_delay_s
        self._root: Node[BrokerClient] = Node()
        self._clients: dict[str, BrokerClient] = {}
        self._waiting: list[BrokerClient] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = True
        self._nsubs = self._nretained = self._routed = self._deliveries = self._expired = 0

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            len(self._clients), self._nsubs, self._nretained, self._routed, self._deliveries,
            self._expired,
        )  # fmt: skip

    def disconnect_all(self) -> None:
        """The broker goes down: every client loses its connection until :meth:`restart`."""
        self._up = False
        lost = list(self._clients.values())
        for client in lost:
            self._drop(client, publish_will=False)
        for client in lost:  # nobody is connected to hear them, but retained wills stay
            if client.will is not None:
                w = client.will
                self._route(w.topic, w.payload, w.qos, w.retain, NO_PROPS)
            if client.wants_connection:
                self._waiting.append(client)

    def restart(self) -> None:
        """Go down (if up) and come back; clients reconnect after ``reconnect_delay_s``."""
        if self._up:
            self.disconnect_all()
        self._up = True
        waiting, self._waiting = self._waiting, []
        if waiting:
            self.reconnect_later(waiting)

    # For transports -----------------------------------------------------------------------------

    def attach(self, client: BrokerClient) -> None:
        """Connect ``client`` (taking its id over from an older connection) and its filters."""
        if not self._up:
            raise TransportError("in-memory broker is down")
        self._loop = asyncio.get_running_loop()
        old = self._clients.get(client.client_id)
        if old is not None and old is not client:
            log.info("client id %r taken over; disconnecting the old connection", old.client_id)
            old.give_up()
            self._drop(old, publish_will=True)
        self._clients[client.client_id] = client
        client.attached()
        for topic_filter in client.subscriptions:
            self.add_subscription(client, topic_filter)

    def drop(self, client: BrokerClient, *, publish_will: bool) -> None:
        """Disconnect ``client`` (its will published when the loss is unclean)."""
        self._drop(client, publish_will=publish_will)

    def route(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Props,
        sender: BrokerClient,
    ) -> None:  # fmt: skip
        """``sender`` publishes a message."""
        self._route(topic, payload, qos, retain, props, sender)

    def reconnect_later(self, clients: list[BrokerClient]) -> None:
        """Reconnect ``clients`` after ``reconnect_delay_s`` (if anyone ever connected)."""
        if self._loop is not None:
            self.clock.call_later(self.reconnect_delay_s, self._reconnect, clients)

    def add_subscription(self, client: BrokerClient, topic_filter: str) -> None:
        group, plain = strip_share(topic_filter)
        nodes = path(self._root, plain.split("/"), True)
        assert nodes is not None
        node = nodes[-1]
        if group is None:
            if node.subs is None:
                node.subs = {}
            if client not in node.subs:
                self._nsubs += 1
            node.subs[client] = topic_filter
            self._replay(client, topic_filter, plain)
            return
        if node.groups is None:
            node.groups = {}
        g = node.groups.setdefault(group, Group())
        if (client, topic_filter) not in g.members:
            g.members.append((client, topic_filter))
            self._nsubs += 1

    def remove_subscription(self, client: BrokerClient, topic_filter: str) -> None:
        group, plain = strip_share(topic_filter)
        levels = plain.split("/")
        nodes = path(self._root, levels, False)
        if nodes is None:
            return
        node = nodes[-1]
        if group is None:
            if node.subs is not None and node.subs.pop(client, None) is not None:
                self._nsubs -= 1
                if not node.subs:
                    node.subs = None
        elif node.groups is not None and (g := node.groups.get(group)) is not None:
            if (client, topic_filter) in g.members:
                g.members.remove((client, topic_filter))
                self._nsubs -= 1
            if not g.members:
                del node.groups[group]
                if not node.groups:
                    node.groups = None
        prune(nodes, levels)

    # Connections --------------------------------------------------------------------------------

    def _drop(self, client: BrokerClient, *, publish_will: bool) -> None:
        if not client.connected:
            return
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        for topic_filter in client.subscriptions:
            self.remove_subscription(client, topic_filter)
        client.detached()
        if publish_will and client.will is not None:
            w = client.will
            self._route(w.topic, w.payload, w.qos, w.retain, NO_PROPS)

    def _reconnect(self, clients: list[BrokerClient]) -> None:
        for client in clients:
            if not client.wants_connection or client.connected:
                continue
            if not self._up:
                self._waiting.append(client)
                continue
            holder = self._clients.get(client.client_id)
            if holder is not None and holder is not client:
                client.give_up()  # taken over meanwhile
                continue
            self.attach(client)
            if not client.has_connect_callbacks:
                continue
            task = asyncio.get_running_loop().create_task(client.run_connect_callbacks(True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # Retained messages ------------------------------------------------------------------------

    def _replay(self, client: BrokerClient, topic_filter: str, plain: str) -> None:
        found: list[Msg] = []
        collect_retained(self._root, plain.split("/"), 0, found)
        now = self.clock.monotonic()
        assert self._loop is not None
        for msg in found:
            if msg.expires_at is not None and msg.expires_at <= now:
                self._set_retained(msg.topic, None)
                self._expired += 1
                continue
            self._deliveries += 1
            self._loop.call_soon(self._deliver, [(client, topic_filter)], msg, True)

    def _set_retained(self, topic: str, msg: Msg | None) -> None:
        levels = topic.split("/")
        nodes = path(self._root, levels, msg is not None)
        if nodes is None:
            return
        self._nretained += (msg is not None) - (nodes[-1].retained is not None)
        nodes[-1].retained = msg
        if msg is None:
            prune(nodes, levels)

    # Routing ------------------------------------------------------------------------------------

    def _route(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Props,
        sender: BrokerClient | None = None,
    ) -> None:
        """A message reaches the broker (``sender`` None: a will or the broker itself)."""
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid publish topic {topic!r}")
        self._routed += 1
        expiry = props.message_expiry
        expires_at = self.clock.monotonic() + expiry if expiry else None
        msg = Msg(topic, payload, qos, props, expires_at)
        if retain:
            self._set_retained(topic, msg if payload else None)
        targets: list[Target] = []
        collect(self._root, topic.split("/"), 0, targets)
        if targets:
            self._deliveries += len(targets)
            self._schedule(targets, msg)

    def _schedule(self, targets: list[Target], msg: Msg) -> None:
        """Hand ``msg`` to ``targets``: on the next loop turn here; later over simulated links."""
        assert self._loop is not None
        self._loop.call_soon(self._deliver, targets, msg, False)

    def _deliver(self, targets: Iterable[Target], msg: Msg, retain: bool) -> None:
        props = msg.props
        if msg.expires_at is not None:
            left = msg.expires_at - self.clock.monotonic()
            if left <= 0:
                self._expired += 1
                return
            props = dataclasses.replace(props, message_expiry=math.ceil(left))
        by_qos = {msg.qos: Inbound(msg.topic, msg.payload, msg.qos, retain, props)}
        for client, topic_filter in targets:
            sub = client.accept(topic_filter)
            if sub is None:
                continue
            qos, handler = min(sub[0], msg.qos), sub[1]
            inbound = by_qos.get(qos)
            if inbound is None:
                inbound = by_qos[qos] = dataclasses.replace(by_qos[msg.qos], qos=qos)
            try:
                handler(inbound)
            except Exception:
                log.exception("handler for %r failed on %r", topic_filter, msg.topic)


def _as_clock(clock: Clock | Callable[[], float]) -> Clock:
    if hasattr(clock, "monotonic"):
        return cast(Clock, clock)
    return _FunctionClock(clock)
