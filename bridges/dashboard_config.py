"""The dashboard's decisions, pure: which WebSocket URL the page uses, what ``/config.json``
says, and which file (if any) a request path names.

The I/O shell (``dashboard.py``) asks these functions and only reads files and sockets.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from edgeagent.errors import EdgeAgentError

#: Port mosquitto's documentation and most examples use for MQTT over WebSockets.
CONVENTIONAL_WS_PORT = 9001
#: Longest request path accepted, characters (longer: 414).
MAX_PATH = 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

#: Content types by file suffix; anything else is served as application/octet-stream.
MIME_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
}

WS_HELP = """\
The dashboard talks to the broker over MQTT on WebSockets, and no WebSocket URL is known
for {broker}. Either pass --ws-url ws://HOST:PORT, or enable a websockets listener in the
broker's mosquitto.conf:

    listener 9001
    protocol websockets

(restart mosquitto; mosquitto 2.0 binds that listener on every interface, so firewall it or
add TLS and authentication for anything but a trusted machine). `edgeagent demo --keep` starts
its private broker with one and prints the full dashboard command."""


class DashboardError(EdgeAgentError):
    """The dashboard cannot start as asked (no WebSocket URL, bad option)."""


@dataclass(frozen=True, slots=True)
class PageConfig:
    """What the page reads from ``/config.json``: where the broker is and which fleet to show."""

    ws_url: str
    fleet: str
    root: str
    report: bool

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "ws_url": self.ws_url,
                "fleet": self.fleet,
                "root": self.root,
                "report": "/report/" if self.report else None,
            }
        ).encode()


def check_ws_url(url: str) -> str:
    """``url`` if it is a ws:// or wss:// URL with a host, else a :class:`DashboardError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise DashboardError(f"--ws-url {url!r}: expected ws://HOST:PORT or wss://HOST:PORT[/path]")
    return url


def derive_ws_url(broker_url: str, explicit: str | None, probe: Callable[[str, int], bool]) -> str:
    """The page's WebSocket URL: ``explicit`` if given; for a broker on this machine, the
    conventional port 9001 if ``probe(host, port)`` finds MQTT over WebSockets there;
    otherwise a :class:`DashboardError` that explains how to enable a listener."""
    if explicit is not None:
        return check_ws_url(explicit)
    parts = urlsplit(broker_url if "://" in broker_url else f"mqtt://{broker_url}")
    host = parts.hostname or "127.0.0.1"
    local = host in LOOPBACK_HOSTS and parts.scheme in ("mqtt", "tcp", "")
    if local and probe(host, CONVENTIONAL_WS_PORT):
        return f"ws://{host}:{CONVENTIONAL_WS_PORT}"
    raise DashboardError(WS_HELP.format(broker=broker_url))


def remote_note(http_host: str, ws_url: str) -> str | None:
    """A warning when the page is served beyond this machine but tells browsers to dial a
    loopback WebSocket URL (which, on the viewer's machine, is the viewer's own)."""
    ws_host = urlsplit(ws_url).hostname or ""
    if http_host in LOOPBACK_HOSTS or ws_host not in LOOPBACK_HOSTS:
        return None
    return (
        f"note: the page is served on {http_host} but tells browsers to connect to {ws_url}: "
        "from another machine that is the viewer's own computer; pass --ws-url ws://HOST:PORT "
        "with a name they can reach"
    )


RouteKind = Literal["config", "static", "report", "model", "refused", "not_found", "too_long"]
_MODEL_RE = re.compile(r"^/models/([a-z0-9_][a-z0-9_-]{0,63})\.onnx$")


@dataclass(frozen=True, slots=True)
class Route:
    """What a request path names: ``rel`` is a clean relative path (no ``..``, no dot files)
    inside the package's ``web/`` folder (static), the report folder (report) or the model zoo
    (model: ``/models/NAME.onnx`` is ``NAME/NAME.onnx`` there, for the browser-tab device)."""

    kind: RouteKind
    rel: str = ""

    @property
    def status(self) -> int:
        return {"refused": 403, "not_found": 404, "too_long": 414}.get(self.kind, 200)


def _clean(rel: str) -> str | None:
    """``rel`` as segments that stay inside their folder, or None (traversal, dot files,
    backslashes, NUL)."""
    if "\\" in rel or "\x00" in rel:
        return None
    segments = [s for s in rel.split("/") if s]
    if any(s.startswith(".") for s in segments):
        return None
    cleaned = posixpath.normpath("/".join(segments)) if segments else ""
    if cleaned.startswith(("..", "/")):
        return None
    return "" if cleaned == "." else cleaned


def route(raw_path: str) -> Route:
    """Decide what ``raw_path`` (the request target, query included) names."""
    if len(raw_path) > MAX_PATH:
        return Route("too_long")
    path = unquote(urlsplit(raw_path).path)
    if not path.startswith("/"):
        return Route("refused")
    if path == "/config.json":
        return Route("config")
    if (model := _MODEL_RE.fullmatch(path)) is not None:
        return Route("model", f"{model[1]}/{model[1]}.onnx")
    if path == "/report" or path.startswith("/report/"):
        rel = _clean(path.removeprefix("/report"))
        if rel is None:
            return Route("refused")
        return Route("report", rel or "report.html")
    rel = _clean(path)
    if rel is None:
        return Route("refused")
    return Route("static", rel or "index.html")


def content_type(rel: str) -> str:
    return MIME_TYPES.get(posixpath.splitext(rel)[1].lower(), "application/octet-stream")
