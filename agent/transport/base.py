"""The transport interface: the few MQTT 5 operations agents, clients and the coordinator use.

Two implementations share these semantics: :class:`~edgeagent.transport.mqtt.MqttTransport`
(paho-mqtt driven by the asyncio loop, what users run) and
:class:`~edgeagent.transport.memory.MemoryTransport` (an in-process broker for unit tests of pure
logic and for the simulator). Agent code is identical on both.

Semantics both keep:

* ``subscribe(filter, handler)`` delivers every matching message to ``handler``, called on the
  event loop, never re-entrantly from inside ``publish``. Shared subscriptions
  (``$share/group/filter``) deliver each message to one member of the group.
* Retained messages are replayed on subscribe; an empty retained payload deletes.
* The last will is published when the connection is lost without a clean ``close()``.
* Properties travel: Response Topic, Correlation Data, Message Expiry Interval (seconds left
  when delivered), Content Type and User Properties.
* After a reconnect, subscriptions are restored and ``on_connect`` callbacks run again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Props:
    """MQTT 5 publish properties that edgeagent uses."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()

    def user_property(self, key: str) -> str | None:
        for k, v in self.user_properties:
            if k == key:
                return v
        return None


NO_PROPS = Props()


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as delivered to a subscription handler."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    props: Props = field(default=NO_PROPS)


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: published by the broker if the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


Handler = Callable[[Inbound], None]
ConnectCallback = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    connected: bool
    connects: int
    disconnects: int
    messages_in: int
    messages_out: int


@runtime_checkable
class Transport(Protocol):
    """What agents and clients need from a broker connection."""

    client_id: str
    will: Will | None
    """Set before ``connect()``; the broker publishes it if the connection dies uncleanly."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Connect and return once the broker accepted (CONNACK) and subscriptions are live."""

    async def close(self) -> None:
        """Disconnect cleanly: the last will is *not* published."""

    def on_connect(self, callback: ConnectCallback) -> None:
        """Run ``callback`` after every (re)connect, once subscriptions are restored."""

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        """Queue a message; never blocks. Dropped (and logged) while disconnected."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        props: Props = NO_PROPS,
    ) -> None:
        """Publish; with ``qos >= 1`` wait until the broker acknowledged it."""

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0) -> None:
        """Subscribe and wait for the broker's SUBACK; also restored after reconnects."""

    async def unsubscribe(self, topic_filter: str) -> None: ...

    def statistics(self) -> TransportStatistics: ...


def strip_share(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/group/filter`` into ``(group, filter)``; ``(None, filter)`` otherwise."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2] or set("+#") & set(parts[1]):
            raise ValueError(f"invalid shared subscription {topic_filter!r}")
        return parts[1], parts[2]
    return None, topic_filter


def valid_publish_topic(topic: str) -> bool:
    """True if ``topic`` can be published to: not empty, no wildcards, no NUL."""
    return bool(topic) and not (set("+#\x00") & set(topic))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest); ``$`` topics need a literal."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def validate_filter(topic_filter: str) -> None:
    """Raise ValueError for filters a broker would reject."""
    if "\x00" in topic_filter:
        raise ValueError(f"NUL character in topic filter {topic_filter!r}")
    _, plain = strip_share(topic_filter)
    if not plain:
        raise ValueError("empty topic filter")
    levels = plain.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")
