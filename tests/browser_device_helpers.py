"""Shared by the browser-device tests: bridges/web served locally, and Debian's chromium."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "bridges" / "web"
MODEL = ROOT / "models" / "zoo" / "digits" / "digits.onnx"
CHROMIUM = Path("/usr/bin/chromium")

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)


class _Static(SimpleHTTPRequestHandler):
    """bridges/web at /, the digits model at /models/digits.onnx and, when the server has one,
    /config.json (what the dashboard serves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before the base class handles the request (its __init__ does).
        self.extensions_map = {
            **SimpleHTTPRequestHandler.extensions_map,
            ".wasm": "application/wasm",
            ".mjs": "text/javascript",
            ".js": "text/javascript",
            ".onnx": "application/octet-stream",
        }
        super().__init__(*args, directory=str(WEB), **kwargs)

    def do_GET(self) -> None:
        config: bytes | None = getattr(self.server, "config_json", None)
        if self.path.split("?", 1)[0] != "/config.json" or config is None:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(config)))
        self.end_headers()
        self.wfile.write(config)

    def translate_path(self, path: str) -> str:
        if path.split("?", 1)[0] == "/models/digits.onnx":
            return str(MODEL)
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_site(config: dict[str, str] | None = None) -> Iterator[str]:
    """Serve the page's files on a free port in a thread; yields http://127.0.0.1:PORT.
    ``config``: the dashboard's /config.json ({ws_url, fleet, root}); None: no such file."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Static)
    server.config_json = None if config is None else json.dumps(config).encode()  # type: ignore[attr-defined]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium driven by playwright (no browser download); yields Browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()
