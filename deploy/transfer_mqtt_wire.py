"""The file transfer's MQTT topics and request bound, shared by the server
(:mod:`~edgeagent.deploy.transfer_mqtt`) and the fetcher
(:mod:`~edgeagent.deploy.transfer_mqtt_fetch`); the protocol is described in
:mod:`~edgeagent.deploy.transfer_mqtt`.
"""

from __future__ import annotations

from ..protocol import Topics, check_name

#: Longest request payload a server reads (a valid one is about 120 bytes).
MAX_REQUEST = 1024


def request_topic(root: str, fleet: str, server: str) -> str:
    """Where devices ask file server ``server`` for chunks."""
    return f"{Topics(root, fleet).base}/files/{check_name(server, 'file server name')}/get"


def reply_topic(root: str, fleet: str, device: str) -> str:
    """Where ``device`` receives chunks (the only Response Topic a server answers on)."""
    return f"{Topics(root, fleet).device(check_name(device, 'device name'))}/files/in"
