"""Shared by the browser-device tests: bridges/web served by the dashboard's own server (what
`edgeagent dashboard` runs: the page, /config.json, the zoo's model under /models/), and
Debian's chromium (tests/web_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeagent.bridges.dashboard import DashboardServer
from edgeagent.bridges.dashboard_config import PageConfig
from tests.web_helpers import chromium, chromium_missing

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "zoo" / "digits" / "digits.onnx"

__all__ = ["MODEL", "ROOT", "chromium", "needs_chromium", "static_site"]

needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


@contextmanager
def static_site(config: dict[str, str] | None = None) -> Iterator[str]:
    """The dashboard's server on a free port in a thread; yields http://127.0.0.1:PORT.
    ``config``: what its /config.json says ({ws_url, fleet, root}); None: no broker."""
    c = config or {}
    page = PageConfig(
        ws_url=c.get("ws_url", ""),
        fleet=c.get("fleet", "default"),
        root=c.get("root", "edgeagent"),
        report=False,
    )
    with DashboardServer(page, host="127.0.0.1", port=0) as server:
        yield server.url.rstrip("/")
