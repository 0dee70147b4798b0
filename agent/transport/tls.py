"""The TLS client contexts of the MQTT transports: one per setting, shared by every client.

A context holds the CA store (hundreds of kilobytes with the system's), so ten thousand
simulated devices with the same settings must share one: :func:`ssl_context` is cached.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from ..broker import BrokerConfig


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
