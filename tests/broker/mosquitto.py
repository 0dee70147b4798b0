"""The tests' private mosquitto: the package's launcher with the config checked in here."""

from __future__ import annotations

from pathlib import Path

from edgeagent.localbroker import Mosquitto as _Mosquitto
from edgeagent.localbroker import free_port

CONFIG = Path(__file__).with_name("mosquitto.conf")

__all__ = ["CONFIG", "Mosquitto", "free_port"]


class Mosquitto(_Mosquitto):
    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        super().__init__(port, extra_config, config=CONFIG)
