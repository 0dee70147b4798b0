"""An in-process MQTT 5 broker and its transport, for unit tests and the fleet simulator.

:class:`MemoryBroker` keeps one topic trie (a node per level) holding subscriptions on the node of
their filter, shared-subscription groups beside them and retained messages on the node of their
topic. Routing walks only the branches that can match (the level itself, ``+``, ``#``) and
retained replay walks the trie the other way, so neither scans every client or topic.
:class:`MemoryTransport` is a ``__slots__`` object without tasks, queues or futures, so 100,000 fit
in a process. One ``loop.call_soon`` per publish calls the handler of each matching subscription
(once per matching filter, like mosquitto's one copy per subscription), in publish order and
never re-entrantly. Message expiry uses the broker's injectable clock, measured at delivery.

Losses are simulated with :meth:`MemoryTransport.kill`, :meth:`MemoryBroker.disconnect_all` and
:meth:`MemoryBroker.restart`; wills are published on every unclean loss. Clients reconnect after
``reconnect_delay_s`` (``loop.call_later``), restore subscriptions and rerun ``on_connect``. A
client whose id was taken over does not reconnect (paho would take it back and the two would flap).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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
    validate_filter,
)

log = logging.getLogger(__name__)

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    clients: int
    subscriptions: int
    retained: int
    messages_routed: int
    deliveries: int
    expired: int


class _Msg(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    props: Props
    expires_at: float | None


class _Group:
    __slots__ = ("members", "next")

    def __init__(self) -> None:
        self.members: list[tuple[MemoryTransport, str]] = []
        self.next = 0


class _Node:
    __slots__ = ("children", "groups", "retained", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subs: dict[MemoryTransport, str] | None = None
        self.groups: dict[str, _Group] | None = None
        self.retained: _Msg | None = None


_Target = tuple["MemoryTransport", str]


class MemoryBroker:
    """Clients, subscriptions and retained messages of one in-process MQTT 5 broker."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, reconnect_delay_s: float = 0.05
    ) -> None:
        self.clock = clock
        self.reconnect_delay_s = reconnect_delay_s
        self._root = _Node()
        self._clients: dict[str, MemoryTransport] = {}
        self._waiting: list[MemoryTransport] = []
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
            if client._want:
                self._waiting.append(client)

    def restart(self) -> None:
        """Go down (if up) and come back; clients reconnect after ``reconnect_delay_s``."""
        if self._up:
            self.disconnect_all()
        self._up = True
        waiting, self._waiting = self._waiting, []
        if waiting and self._loop is not None:
            self._loop.call_later(self.reconnect_delay_s, self._reconnect, waiting)

    # Connections --------------------------------------------------------------------------------

    def _attach(self, client: MemoryTransport) -> None:
        if not self._up:
            raise TransportError("in-memory broker is down")
        self._loop = asyncio.get_running_loop()
        old = self._clients.get(client.client_id)
        if old is not None and old is not client:
            log.info("client id %r taken over; disconnecting the old connection", old.client_id)
            old._want = False
            self._drop(old, publish_will=True)
        self._clients[client.client_id] = client
        client._connected = True
        client._connects += 1
        for topic_filter in client._subs:
            self._add_sub(client, topic_filter)

    def _drop(self, client: MemoryTransport, *, publish_will: bool) -> None:
        if not client._connected:
            return
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        for topic_filter in client._subs:
            self._remove_sub(client, topic_filter)
        client._connected = False
        client._disconnects += 1
        if publish_will and client.will is not None:
            w = client.will
            self._route(w.topic, w.payload, w.qos, w.retain, NO_PROPS)

    def _reconnect(self, clients: list[MemoryTransport]) -> None:
        for client in clients:
            if not client._want or client._connected:
                continue
            if not self._up:
                self._waiting.append(client)
                continue
            holder = self._clients.get(client.client_id)
            if holder is not None and holder is not client:
                client._want = False  # taken over meanwhile
                continue
            self._attach(client)
            if client._on_connect:
                task = asyncio.get_running_loop().create_task(client._run_callbacks(True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # The trie -----------------------------------------------------------------------------------

    def _path(self, levels: list[str], create: bool) -> list[_Node] | None:
        nodes = [self._root]
        for level in levels:
            child = nodes[-1].children.get(level)
            if child is None:
                if not create:
                    return None
                child = nodes[-1].children[sys.intern(level)] = _Node()
            nodes.append(child)
        return nodes

    @staticmethod
    def _prune(nodes: list[_Node], levels: list[str]) -> None:
        for i in range(len(levels), 0, -1):
            n = nodes[i]
            if n.children or n.subs or n.groups or n.retained is not None:
                return
            del nodes[i - 1].children[levels[i - 1]]

    def _add_sub(self, client: MemoryTransport, topic_filter: str) -> None:
        group, plain = strip_share(topic_filter)
        nodes = self._path(plain.split("/"), True)
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
        g = node.groups.setdefault(group, _Group())
        if (client, topic_filter) not in g.members:
            g.members.append((client, topic_filter))
            self._nsubs += 1

    def _remove_sub(self, client: MemoryTransport, topic_filter: str) -> None:
        group, plain = strip_share(topic_filter)
        levels = plain.split("/")
        nodes = self._path(levels, False)
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
        self._prune(nodes, levels)

    def _collect(self, node: _Node, levels: list[str], i: int, out: list[_Target]) -> None:
        wild = i > 0 or not levels[0].startswith("$")
        if wild and (h := node.children.get("#")) is not None:
            self._add_targets(h, out)
        if i == len(levels):
            self._add_targets(node, out)
            return
        if (c := node.children.get(levels[i])) is not None:
            self._collect(c, levels, i + 1, out)
        if wild and (p := node.children.get("+")) is not None:
            self._collect(p, levels, i + 1, out)

    @staticmethod
    def _add_targets(node: _Node, out: list[_Target]) -> None:
        if node.subs:
            out.extend(node.subs.items())
        if node.groups:
            for g in node.groups.values():
                out.append(g.members[g.next % len(g.members)])
                g.next += 1

    def _retained(self, node: _Node, levels: list[str], i: int, out: list[_Msg]) -> None:
        if i == len(levels):
            if node.retained is not None:
                out.append(node.retained)
            return
        level = levels[i]
        if level == "#":
            stack = [(node, i)]
            while stack:
                n, depth = stack.pop()
                if n.retained is not None:  # "a/#" matches "a" too
                    out.append(n.retained)
                for key, child in n.children.items():
                    if key not in ("+", "#") and not (depth == 0 and key.startswith("$")):
                        stack.append((child, depth + 1))
        elif level == "+":
            for key, child in node.children.items():
                if key not in ("+", "#") and not (i == 0 and key.startswith("$")):
                    self._retained(child, levels, i + 1, out)
        elif (c := node.children.get(level)) is not None:
            self._retained(c, levels, i + 1, out)

    def _replay(self, client: MemoryTransport, topic_filter: str, plain: str) -> None:
        found: list[_Msg] = []
        self._retained(self._root, plain.split("/"), 0, found)
        now = self.clock()
        assert self._loop is not None
        for msg in found:
            if msg.expires_at is not None and msg.expires_at <= now:
                self._set_retained(msg.topic, None)
                self._expired += 1
                continue
            self._deliveries += 1
            self._loop.call_soon(self._deliver, [(client, topic_filter)], msg, True)

    def _set_retained(self, topic: str, msg: _Msg | None) -> None:
        levels = topic.split("/")
        nodes = self._path(levels, msg is not None)
        if nodes is None:
            return
        self._nretained += (msg is not None) - (nodes[-1].retained is not None)
        nodes[-1].retained = msg
        if msg is None:
            self._prune(nodes, levels)

    # Routing ------------------------------------------------------------------------------------

    def _route(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Props,
        sender: MemoryTransport | None = None,
    ) -> None:
        """A message reaches the broker (``sender`` None: a will or the broker itself)."""
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid publish topic {topic!r}")
        self._routed += 1
        expiry = props.message_expiry
        msg = _Msg(topic, payload, qos, props, self.clock() + expiry if expiry else None)
        if retain:
            self._set_retained(topic, msg if payload else None)
        targets: list[_Target] = []
        self._collect(self._root, topic.split("/"), 0, targets)
        if targets:
            self._deliveries += len(targets)
            self._schedule(targets, msg)

    def _schedule(self, targets: list[_Target], msg: _Msg) -> None:
        """Hand ``msg`` to ``targets``: on the next loop turn here; later over simulated links."""
        assert self._loop is not None
        self._loop.call_soon(self._deliver, targets, msg, False)

    def _deliver(self, targets: list[_Target], msg: _Msg, retain: bool) -> None:
        props = msg.props
        if msg.expires_at is not None:
            left = msg.expires_at - self.clock()
            if left <= 0:
                self._expired += 1
                return
            props = dataclasses.replace(props, message_expiry=math.ceil(left))
        by_qos = {msg.qos: Inbound(msg.topic, msg.payload, msg.qos, retain, props)}
        for client, topic_filter in targets:
            sub = client._subs.get(topic_filter) if client._connected else None
            if sub is None:
                continue
            client._in += 1
            qos, handler = min(sub[0], msg.qos), sub[1]
            inbound = by_qos.get(qos)
            if inbound is None:
                inbound = by_qos[qos] = dataclasses.replace(by_qos[msg.qos], qos=qos)
            try:
                handler(inbound)
            except Exception:
                log.exception("handler for %r failed on %r", topic_filter, msg.topic)


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
        self.broker._attach(self)
        self._want = True
        await self._run_callbacks(False)

    async def close(self) -> None:
        """Disconnect cleanly: no last will, no reconnect."""
        self._want = False
        self.broker._drop(self, publish_will=False)

    def kill(self, *, reconnect: bool = False) -> None:
        """Lose the connection uncleanly (the will is published); optionally reconnect later."""
        if not self._connected:
            return
        self._want = reconnect
        self.broker._drop(self, publish_will=True)
        if reconnect and (loop := self.broker._loop) is not None:
            loop.call_later(self.broker.reconnect_delay_s, self.broker._reconnect, [self])

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
        self.broker._route(topic, payload, qos, retain, props, self)
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
        self.broker._route(topic, payload, qos, retain, props, self)
        self._out += 1

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> None:
        validate_filter(topic_filter)
        self._subs[topic_filter] = (qos, handler)
        if self._connected:
            self.broker._add_sub(self, topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.pop(topic_filter, None) is not None and self._connected:
            self.broker._remove_sub(self, topic_filter)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            self._connected, self._connects, self._disconnects, self._in, self._out
        )

    async def _run_callbacks(self, background: bool) -> None:
        for callback in self._on_connect:
            try:
                await callback()
            except TransportError as exc:
                log.warning("on_connect callback failed: %s", exc)
            except Exception:
                if not background:
                    raise
                log.exception("on_connect callback of %s failed", self.client_id)
