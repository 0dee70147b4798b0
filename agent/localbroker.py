"""Start and stop a private mosquitto on a free port, from a config file.

The demo, the tests' fixtures and the benchmarks use it, so none of them depends on (or
disturbs) a broker already running on 1883. The packaged ``mosquitto.conf`` is the default; the
tests pass their own checked-in copy.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from .securebroker import SecureBroker, Wanted

DEFAULT_CONFIG = Path(__file__).with_name("mosquitto.conf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout} s")


class Mosquitto:
    """A private broker process; ``restart()`` keeps the same ports.

    ``websockets=True`` adds a second listener speaking MQTT over WebSockets (``ws_port``,
    ``ws_url``) for browsers: the dashboard and the browser-tab device. mosquitto 2.0 binds a
    websockets listener on every interface whatever address it is given (its libwebsockets
    build), so this one is only for a private broker on a trusted machine.
    """

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        config: Path = DEFAULT_CONFIG,
        *,
        websockets: bool = False,
    ) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError(
                "mosquitto is not installed: apt-get install mosquitto (or pass --broker URL)"
            )
        self.exe = exe
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ea-mosq-")
        self.conf = Path(self._dir.name) / "mosquitto.conf"
        listeners = f"\nlistener {self.port} 127.0.0.1\n"
        self.ws_port: int | None = None
        if websockets:
            self.ws_port = free_port()
            listeners += f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\n"
        self.conf.write_text(config.read_text() + extra_config + listeners)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str | None:
        """``ws://127.0.0.1:PORT`` when started with ``websockets=True``, else None."""
        return f"ws://127.0.0.1:{self.ws_port}" if self.ws_port else None

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait_listening(self.port, self.proc)
        if self.ws_port is not None:
            _wait_listening(self.ws_port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        for _ in range(50):  # the port may linger briefly in TIME_WAIT
            try:
                self.start()
                return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError("mosquitto did not restart")

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_secure(identities: Iterable[Wanted] = (), **kwargs: Any) -> SecureBroker:
    """A private mosquitto with the generated fleet policy (TLS, ACL, per-identity credentials):
    see :func:`edgeagent.securebroker.start_secure`, which this forwards to."""
    from .securebroker import start_secure as _start_secure

    return _start_secure(identities, **kwargs)
