"""``edgeagent dashboard``: serve the web dashboard locally (docs/dashboard.md).

A thin layer over :mod:`edgeagent.bridges.dashboard`: decide the WebSocket URL the page uses,
start the standard-library HTTP server, print where it is, serve until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import webbrowser
from pathlib import Path
from types import FrameType

import click

from .bridges.dashboard import DashboardServer, probe_websockets
from .bridges.dashboard_config import DashboardError, PageConfig, derive_ws_url, remote_note
from .cli_common import Ctx


@click.command("dashboard")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8380,
    show_default=True,
    help="HTTP port of the page (0: a free one).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on (the page has no authentication: keep it local).",
)
@click.option(
    "--ws-url",
    default=None,
    metavar="URL",
    help="MQTT over WebSockets URL the page connects to, ws://HOST:PORT (default: port 9001 of "
    "a broker on this machine, if it listens there).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="A simulator report folder (sim run --report DIR): its report.html is linked at /report/.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.pass_obj
def dashboard(
    obj: Ctx, port: int, host: str, ws_url: str | None, report_dir: Path | None, open_browser: bool
) -> None:
    """Serve the fleet's web dashboard: devices live, health, skills with forms, events.

    The page talks to the broker itself, over MQTT on WebSockets: the broker needs a websockets
    listener (mosquitto: `listener 9001` + `protocol websockets`). Ctrl-C stops the server.
    """
    broker = obj.broker_config()
    try:
        ws = derive_ws_url(broker.url, ws_url, probe_websockets)
    except DashboardError as exc:
        raise click.ClickException(str(exc)) from None
    note = remote_note(host, ws)
    if note is not None:
        click.echo(note, err=True)
    has_report = report_dir is not None and (report_dir / "report.html").is_file()
    if report_dir is not None and not has_report:
        click.echo(f"note: {report_dir} has no report.html yet: /report/ answers 404", err=True)
    page = PageConfig(ws_url=ws, fleet=obj.fleet, root=obj.root, report=has_report)
    try:
        server = DashboardServer(page, host=host, port=port, report_dir=report_dir)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None
    click.echo(f"dashboard at {server.url} (fleet {obj.fleet}, broker {ws}); Ctrl-C stops it")
    if open_browser:
        webbrowser.open(server.url)
    _serve(server)


def _serve(server: DashboardServer) -> None:
    """Serve until SIGTERM or Ctrl-C, then close the server."""
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    old = signal.signal(signal.SIGTERM, stop)
    server.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        server.close()
