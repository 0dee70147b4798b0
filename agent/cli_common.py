"""What every ``edgeagent`` command shares: the context object, broker settings, running a
coroutine with our errors as one line and an exit code, and the stop signals of a service.

Split from ``cli.py`` so the command-group modules (``cli_*.py``) import these without importing
the main group (which imports them)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from .broker import BrokerConfig
from .client import Fleet
from .errors import CallError, EdgeAgentError

T = TypeVar("T")


class Ctx:
    def __init__(
        self,
        broker: str | None,
        fleet: str,
        root: str,
        broker_file: BrokerConfig | None = None,
    ) -> None:
        self.broker = broker
        self.fleet = fleet
        self.root = root
        self.broker_file = broker_file

    def broker_config(self) -> BrokerConfig:
        """--broker-config's settings (TLS files, credentials), with --broker's URL over them."""
        if self.broker_file is None:
            return BrokerConfig.from_url(self.broker)
        if self.broker:
            return self.broker_file.model_copy(update={"url": self.broker})
        return self.broker_file

    def make_fleet(self, timeout: float = 10.0) -> Fleet:
        return Fleet(self.broker_config(), fleet=self.fleet, root=self.root, timeout=timeout)


def load_broker_file(path: Path) -> BrokerConfig:
    """A YAML file with a ``broker:`` section (as ``fleet enroll`` writes) or the bare settings."""
    import yaml
    from pydantic import BaseModel, ConfigDict

    from .errors import ConfigError
    from .yamlconf import parse_yaml_model

    class BrokerFile(BaseModel):
        model_config = ConfigDict(extra="ignore")
        broker: BrokerConfig

    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read broker settings: {exc}") from exc
    if isinstance(data, dict) and "broker" in data:
        return parse_yaml_model(text, BrokerFile, source=str(path)).broker
    return parse_yaml_model(text, BrokerConfig, source=str(path))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn our errors into a one-line message and a non-zero exit."""
    try:
        return asyncio.run(coro)
    except CallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except EdgeAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


class StopSignals:
    """SIGTERM and SIGINT for a service command (``agent run``, ``coordinator run``).

    Until :meth:`serving` (connecting, or retrying a broker that is not there), a signal cancels
    the task that made this object: the start is abandoned at once and :meth:`abandoned` says
    so. Once serving, a signal sets :attr:`stop`, and the service drains and leaves cleanly.
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.signal: signal.Signals | None = None
        self._serving = False
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        first = self.signal is None
        self.signal = sig
        if self._serving:
            self.stop.set()
        elif first and self._task is not None:
            self._task.cancel()

    def serving(self) -> None:
        self._serving = True

    def abandoned(self) -> bool:
        """In ``except CancelledError`` around the start: True (and the cancellation taken
        back) when a signal cancelled it, False when the cancellation came from elsewhere."""
        if self.signal is None or self._serving or self._task is None:
            return False
        self._task.uncancel()
        return True
