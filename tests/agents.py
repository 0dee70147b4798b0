"""Helpers for tests that run real agent processes against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "smart-home"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Retained:
    """A paho subscriber that keeps the last payload per topic (retained ones included)."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.latest: dict[str, bytes] = {}
        self.history: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.connect("127.0.0.1", port_of(url))
        self._client.loop_start()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.latest[msg.topic] = bytes(msg.payload)
            self.history.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(
        self, topic: str, key: str, value: object, timeout: float = 15.0
    ) -> dict[str, object]:
        """Wait until the JSON on ``topic`` has ``key == value``; return that JSON."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                raw = self.latest.get(topic)
                if raw:
                    doc = json.loads(raw)
                    if doc.get(key) == value:
                        return doc  # type: ignore[no-any-return]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{topic}: {key} never became {value!r}; last payload: {raw!r}"
                    )
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def agent_cmd(config: str, url: str, fleet: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgeagent.cli",
        "--broker",
        url,
        "--fleet",
        fleet,
        "agent",
        "run",
        str(EXAMPLES / config),
    ]


@contextmanager
def running_agent(
    config: str, url: str, fleet: str, device: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edgeagent agent run`` as a real process until it announced itself online."""
    proc = subprocess.Popen(
        agent_cmd(config, url, fleet),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # Configs written elsewhere (tmp_path) still find the example skill modules.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    watch = Retained(url, f"edgeagent/{fleet}/dev/{device}/state")
    try:
        try:
            watch.wait_for(f"edgeagent/{fleet}/dev/{device}/state", "status", "online")
        except AssertionError:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"agent {device} did not come online:\n{err.decode()}") from None
        yield proc
    finally:
        watch.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
