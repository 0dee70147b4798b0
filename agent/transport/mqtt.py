"""MQTT 5 transport: our sans-IO session (:mod:`~edgeagent.transport.session`) on asyncio.

What users run. It is the same asyncio adapter as
:class:`~edgeagent.transport.lite.LiteTransport` (sockets, TLS with client certificates,
TCP_NODELAY, keepalive, reconnects with jittered backoff on the injected clock), configured for
a long-running agent or client: QoS 2, a generated client id, a backoff of 0.5 s doubling to
30 s, ``retry_first_connect``, and no Maximum Packet Size (the coordinator must see an oversized
manifest to refuse it; LiteTransport's simulated devices cap theirs at 1 MiB + 64 KiB).

Why not paho-mqtt any more: paho decodes every received PUBLISH's properties with its
``Properties`` class (35-70 µs per message) and matches per-topic callbacks under two locks; the
only way round that was overriding paho's private ``Client._handle_publish``, which a paho
release could silently break. Measured with ``benchmarks/bench_rr.py`` (request/response
through a real broker) and ``benchmarks/bench_codec.py`` (the decoder alone): see
``docs/ARCHITECTURE.md``. Why not aiomqtt: its request/response p50 was about 1.65 times bare
paho's on loopback (extra queues and futures per message). paho stays as the baseline of the
benchmarks.

Differences from the paho-based transport it replaced, none visible to the agent, client or
coordinator: ``publish_nowait`` at QoS 1 or 2 beyond the broker's Receive Maximum waits, as
with paho, but in a bounded queue (:data:`~edgeagent.transport.session.MAX_QUEUED` messages,
a logged drop past it; dropped too if the connection is lost before it goes out), and
``publish`` raises :class:`~edgeagent.errors.TransportError` when the broker's PUBACK refuses
the message (paho ignored the reason code).

Socket and TLS errors are translated into :class:`~edgeagent.errors.TransportError` in the
adapter, and nowhere else.
"""

from __future__ import annotations

import random
import uuid

from ..broker import BrokerConfig
from ..clock import SYSTEM_CLOCK, Clock
from .backoff import Backoff
from .base import Will
from .codec import MAX_VARINT
from .lite import LiteTransport

NO_LIMIT = MAX_VARINT + 5
"""The largest packet MQTT can frame: no Maximum Packet Size is announced."""


class MqttTransport(LiteTransport):
    """An MQTT 5 connection that reconnects with jittered exponential backoff.

    ``retry_first_connect=True`` (agents) keeps trying until the broker answers;
    ``False`` (clients, the CLI) makes :meth:`connect` raise :class:`TransportError` at once.
    """

    MAX_QOS = 2
    __slots__ = ("backoff_initial_s", "backoff_max_s")

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        retry_first_connect: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            broker,
            client_id=client_id or f"ea-{uuid.uuid4().hex[:12]}",
            will=will,
            clock=clock,
            rng=rng or random.Random(),
            retry_first_connect=retry_first_connect,
            backoff=Backoff(backoff_initial_s, backoff_max_s),
            max_packet_size=NO_LIMIT,  # as paho: a manifest of any size reaches the coordinator
        )
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
