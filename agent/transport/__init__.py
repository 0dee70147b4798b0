"""Transports: one small interface, an MQTT 5 implementation and an in-memory one."""

from .base import Handler, Inbound, Props, Transport, TransportStatistics, Will, topic_matches

__all__ = [
    "Handler",
    "Inbound",
    "Props",
    "Transport",
    "TransportStatistics",
    "Will",
    "topic_matches",
]
