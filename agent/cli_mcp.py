"""``edgeagent mcp``: the fleet's skills as tools for LLM agents (the Model Context Protocol).

A thin layer over :mod:`edgeagent.bridges.mcp_server` (docs/mcp.md). The ``mcp`` SDK is the
``mcp`` extra, imported only when the command runs.
"""

from __future__ import annotations

import asyncio
import importlib.util

import click

from .cli_common import Ctx, StopSignals, run

INSTALL_HINT = "the MCP server needs the mcp extra: pip install 'edgeagent[mcp]'"


@click.command("mcp")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio",
              show_default=True,
              help="stdio: one client that started this process (Claude Desktop, an IDE); "
              "http: streamable HTTP at http://HOST:PORT/mcp for many clients.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP: port (0 picks a free one).")  # fmt: skip
@click.option("--call-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds a tool call may take (through the coordinator).")  # fmt: skip
@click.pass_obj
def mcp(obj: Ctx, transport: str, host: str, port: int, call_timeout: float) -> None:
    """Serve the fleet over MCP: every routed skill is a tool (the coordinator picks the
    device; `where` chooses by tag), plus `fleet_devices` and `ask`. The tool list follows the
    fleet live. Needs a coordinator running (`edgeagent coordinator run`)."""
    if importlib.util.find_spec("mcp") is None:
        raise click.ClickException(INSTALL_HINT)
    from edgeagent.bridges.mcp_server import run as serve_mcp

    async def serve() -> None:
        signals = StopSignals()
        async with obj.make_fleet(timeout=call_timeout) as fleet:
            signals.serving()

            def ready(bound: int) -> None:
                click.echo(f"mcp: serving fleet {obj.fleet} at http://{host}:{bound}/mcp", err=True)

            server = asyncio.create_task(
                serve_mcp(fleet, transport="stdio" if transport == "stdio" else "http",
                          host=host, port=port, call_timeout=call_timeout, ready=ready)
            )  # fmt: skip
            stop = asyncio.create_task(signals.stop.wait())
            done, _ = await asyncio.wait({server, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in (server, stop):
                task.cancel()
            await asyncio.gather(server, stop, return_exceptions=True)
            if server in done:
                server.result()  # stdio: the client left; errors surface here

    run(serve())
