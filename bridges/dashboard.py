"""The dashboard's local HTTP server: the page, its scripts and the vendored libraries from the
package (``importlib.resources``), ``/config.json``, the model zoo's ONNX files under
``/models/`` (the browser-tab device, ``device.html``, loads ``/models/digits.onnx``) and, with a
report folder, the simulator's last report under ``/report/``. Standard library only.

The page itself talks to the broker over MQTT on WebSockets (MQTT.js); this server never touches
MQTT. Decisions (routes, content types, the WebSocket URL) are in ``dashboard_config.py``; what is
left here is reading files and writing responses.
"""

from __future__ import annotations

import base64
import logging
import random
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .dashboard_config import PageConfig, Route, content_type, route

log = logging.getLogger(__name__)

#: Largest file served from a report folder, bytes (a report is a few hundred KB).
MAX_REPORT_FILE = 32 * 1024 * 1024
#: Requests handled at once; more wait in the listen backlog.
MAX_CONNECTIONS = 32
#: Seconds a connection may stay idle before it is closed.
CONNECTION_TIMEOUT_S = 30.0
#: The page's Content Security Policy: its own scripts and styles, MQTT over ws(s) anywhere,
#: MQTT.js's timer worker (a blob: URL).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; worker-src blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def web_root() -> Traversable:
    """The packaged ``web/`` folder (index.html, dashboard.js, vendor/…)."""
    return files("edgeagent.bridges") / "web"


#: Where the page asks for onnxruntime-web; served from the ``edgeagent-web`` distribution.
ORT_WEB = "vendor/onnxruntime-web/"
ORT_WEB_MISSING = (
    "Not Found (onnxruntime-web is not installed here: pip install 'edgeagent[browser]'; "
    "in a checkout: pip install ./packages/edgeagent-web)"
)


def ort_web_root() -> Traversable | None:
    """onnxruntime-web's files (the ``edgeagent-web`` distribution), or None when not installed.

    They are not in edgeagent's own wheel: every device release carries that wheel, and the
    ``.wasm`` alone is 14.8 MB that no device needs."""
    try:
        import edgeagent_web  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return None
    root: Traversable = edgeagent_web.assets()
    return root


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    csp: bool = False
    no_store: bool = False


def _read(node: Traversable) -> bytes | None:
    try:
        return node.read_bytes() if node.is_file() else None
    except OSError:
        return None


def _error(status: int, text: str) -> Response:
    return Response(status, f"{status} {text}\n".encode())


class Site:
    """Answers one request path with a :class:`Response` (reads files, nothing else)."""

    def __init__(self, page: PageConfig, report_dir: Path | None, web: Traversable) -> None:
        self.page = page
        self.report_dir = report_dir
        self.web = web

    def respond(self, raw_path: str) -> Response:
        r = route(raw_path)
        if r.kind == "config":
            return Response(200, self.page.to_json(), "application/json", no_store=True)
        if r.kind == "static":
            return self._static(r)
        if r.kind == "report":
            return self._report(r)
        if r.kind == "model":
            return self._file(files("edgeagent.models") / "zoo", r)  # no numpy import
        return _error(r.status, {403: "Forbidden", 414: "URI Too Long"}.get(r.status, "Not Found"))

    def _static(self, r: Route) -> Response:
        if r.rel.startswith(ORT_WEB):
            ort = ort_web_root()
            if ort is None:
                return _error(404, ORT_WEB_MISSING)
            return self._file(ort, Route("static", r.rel.removeprefix(ORT_WEB)))
        return self._file(self.web, r)

    def _file(self, node: Traversable, r: Route) -> Response:
        for part in r.rel.split("/"):
            node = node / part
        body = _read(node)
        if body is None:
            return _error(404, "Not Found")
        return Response(200, body, content_type(r.rel), csp=r.rel == "index.html")

    def _report(self, r: Route) -> Response:
        if self.report_dir is None:
            return _error(404, "Not Found (start the dashboard with --report DIR)")
        path = self.report_dir / r.rel
        try:
            if not path.resolve().is_relative_to(self.report_dir.resolve()):
                return _error(403, "Forbidden")  # a symbolic link out of the folder
            if not path.is_file():
                return _error(404, f"Not Found ({r.rel} is not in the report folder)")
            if path.stat().st_size > MAX_REPORT_FILE:
                return _error(413, "Content Too Large")
            body = path.read_bytes()
        except OSError:
            return _error(404, "Not Found")
        return Response(200, body, content_type(r.rel), no_store=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edgeagent-dashboard"
    timeout = CONNECTION_TIMEOUT_S

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        try:
            resp = self.server.site.respond(self.path)
        except Exception:  # a bug here must not end the server
            log.exception("dashboard: %s failed", self.path[:200])
            resp = _error(500, "Internal Server Error")
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if resp.csp:
            self.send_header("Content-Security-Policy", PAGE_CSP)
        if resp.no_store:
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(resp.body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: Site
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        self.slots.acquire()  # at most MAX_CONNECTIONS handler threads
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class DashboardServer:
    """The HTTP server in a thread of its own; a context manager (``with … as server``).

    ``port=0`` picks a free port (``server.port`` tells which)."""

    def __init__(
        self,
        page: PageConfig,
        host: str = "127.0.0.1",
        port: int = 8380,
        report_dir: Path | None = None,
        web: Traversable | None = None,
    ) -> None:
        self.site = Site(page, report_dir, web if web is not None else web_root())
        self._httpd = _Server((host, port), _Handler)
        self._httpd.site = self.site
        self._httpd.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}/"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`close` (from another thread) or Ctrl-C."""
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def probe_websockets(
    host: str, port: int, timeout: float = 1.0, rng: random.Random | None = None
) -> bool:
    """True if ``host:port`` answers a WebSocket upgrade for the ``mqtt`` subprotocol (101).
    ``rng`` makes the handshake's nonce (Sec-WebSocket-Key)."""
    key = base64.b64encode((rng or random.Random()).randbytes(16)).decode()
    request = (
        f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as s:
            s.sendall(request)
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.1 101")
