"""What :class:`~edgeagent.transport.session.ClientSession` tells its adapter: the events
:meth:`~edgeagent.transport.session.ClientSession.receive_data` returns, the session's errors,
and the reason codes by name. Plain frozen dataclasses, no behaviour: the adapter matches on
them. Import them from :mod:`~edgeagent.transport.session`.

Errors::

    TransportError
    └── SessionError              a call or packet the session's state does not allow
        ├── ReceiveMaximumReached a QoS 1/2 publish() while the Receive Maximum is in flight
        └── PublishQueueFull      publish_or_queue() with ``max_queued`` messages waiting
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import TransportError
from .base import Inbound
from .codec import PropMap

REASONS = {
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


def reason_text(code: int) -> str:
    """A reason code as the specification names it."""
    return REASONS.get(code, f"reason code 0x{code:02X}")


class SessionError(TransportError):
    """A call or a packet that the session's state does not allow."""


class ReceiveMaximumReached(SessionError):
    """A QoS 1 or 2 publish while the broker's Receive Maximum is in flight."""


class PublishQueueFull(SessionError):
    """A QoS 1 or 2 message to hold while ``max_queued`` messages already wait for the broker's
    Receive Maximum (:meth:`~edgeagent.transport.session.ClientSession.publish_or_queue`)."""


# Events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool
    receive_maximum: int
    keepalive: int
    properties: PropMap = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    reason_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PublishAcked:
    """The end of an outgoing QoS 1 (PUBACK) or QoS 2 (PUBCOMP) publish."""

    packet_id: int
    reason_code: int = 0


@dataclass(frozen=True, slots=True)
class Subscribed:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class BrokerDisconnected:
    reason_code: int
    reason: str


Event = (
    Connected
    | ConnectionRefused
    | Inbound
    | PublishAcked
    | Subscribed
    | Unsubscribed
    | Pong
    | BrokerDisconnected
)
