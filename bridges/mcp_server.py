"""The MCP server: the fleet's skills as tools for LLM agents (the I/O shell).

:class:`McpBridge` follows the fleet through a :class:`~edgeagent.Fleet` (retained states and
manifests), keeps the current :class:`~edgeagent.bridges.mcp_tools.ToolSet`, serves it with the
official SDK's low-level server, and tells every connected client when it changes
(``notifications/tools/list_changed``: on the session for clients of the handshake protocol
versions, on ``subscriptions/listen`` streams for 2026-07-28 clients). Calls go through the
coordinator (``call_skill(..., via="coordinator", explain=True)``). The decisions are in the pure
modules :mod:`~edgeagent.bridges.mcp_tools` and :mod:`~edgeagent.bridges.mcp_replies`.

Run it with :func:`run` (stdio or streamable HTTP, until cancelled) or ``edgeagent mcp``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any, Literal

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from edgeagent.client import Fleet
from edgeagent.clock import SYSTEM_CLOCK, Clock
from edgeagent.errors import (
    BadRequest,
    CallError,
    InternalError,
    NotFound,
    TransportError,
    Unavailable,
)
from edgeagent.protocol import Health

from .mcp_replies import (
    ToolReply,
    ask_reply,
    devices_reply,
    error_reply,
    output_reply,
    parse_where,
    split_arguments,
)
from .mcp_tools import McpLimits, ToolDef, ToolSet, build_tools

__all__ = ["McpBridge", "Transport", "run"]

log = logging.getLogger(__name__)
Transport = Literal["stdio", "http"]
#: Seconds a burst of fleet changes is gathered before the tool list is rebuilt (one
#: list_changed for a whole fleet starting, not one per device).
DEBOUNCE_S = 0.2
#: Fewest seconds between two announcements (a flapping fleet cannot flood the clients).
MIN_ANNOUNCE_S = 1.0
#: Seconds between rebuilds when nothing was heard (catches a device removed by clearing its
#: retained messages, which the fleet view does not pass on to watchers).
PERIODIC_S = 5.0
#: Seconds one session may take to accept a list_changed before it is forgotten.
NOTIFY_TIMEOUT_S = 2.0
#: Most connected sessions remembered for list_changed (the oldest is forgotten first).
MAX_SESSIONS = 256


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its own signal handling: the caller decides when to stop."""

    def capture_signals(self) -> Any:
        return nullcontext()


class _FleetServer(Server[Any]):
    """The low-level server, declaring ``tools.listChanged`` on every transport (the HTTP
    session manager asks for the initialization options without notification options)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


def _result(reply: ToolReply) -> types.CallToolResult:
    content = [types.TextContent(type="text", text=reply.text)]
    if reply.note:
        content.append(types.TextContent(type="text", text=reply.note))
    return types.CallToolResult(
        content=list(content),
        structured_content=reply.structured,
        is_error=reply.is_error,
        _meta=reply.meta,
    )


def _tool(tool: ToolDef) -> types.Tool:
    return types.Tool(
        name=tool.name,
        title=tool.skill,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        annotations=types.ToolAnnotations(
            title=tool.skill,
            read_only_hint=tool.read_only,
            destructive_hint=tool.destructive,
            idempotent_hint=tool.idempotent,
            open_world_hint=False,
        ),
    )


def _builtin_tools(limits: McpLimits) -> list[types.Tool]:
    where = {
        "type": "object",
        "description": 'Only devices whose tags have these values, e.g. {"room": "kitchen"}.',
        "additionalProperties": {"type": "string"},
    }
    return [
        types.Tool(
            name="fleet_devices",
            description="List the fleet's devices: status (online, offline...), tags (room, "
            "kind...), release and skills. Optionally only those matching `where`.",
            input_schema={
                "type": "object",
                "properties": {
                    "where": where,
                    "online_only": {"type": "boolean", "default": False},
                },
            },
            annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
        ),
        types.Tool(
            name="ask",
            description="Ask the fleet in plain language (e.g. 'dim the kitchen lamp to 30'). "
            "It acts only when it understood with certainty; otherwise nothing is done and "
            "the question to ask back is returned.",
            input_schema={
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": limits.max_text_chars}},
                "required": ["text"],
            },
            annotations=types.ToolAnnotations(
                read_only_hint=False,
                destructive_hint=True,
                idempotent_hint=False,
                open_world_hint=False,
            ),
        ),
    ]


class McpBridge:
    """The fleet as an MCP server: tools, calls, live list changes (module docstring).

    ``fleet`` must be open (``async with Fleet(...)``). Use :meth:`following` around serving,
    then :meth:`serve_stdio` or :meth:`serve_http`.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        limits: McpLimits | None = None,
        clock: Clock = SYSTEM_CLOCK,
        call_timeout: float = 10.0,
        name: str = "edgeagent",
    ) -> None:
        self.fleet = fleet
        self.limits = limits or McpLimits()
        self.clock = clock
        self.call_timeout = call_timeout
        self.tools = ToolSet()
        self.changes = 0
        """How many times the tool list changed (and was announced) since start."""
        self._sessions: OrderedDict[int, ServerSession] = OrderedDict()
        self._bus = InMemorySubscriptionBus()
        self._dirty = asyncio.Event()
        self.server = _FleetServer(
            name,
            version="1",
            instructions="The devices of an edgeagent fleet. Each skill is a tool; the "
            "coordinator picks the device (use `where` to choose by tag). `fleet_devices` "
            "lists the devices, `ask` takes plain language.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._bus, max_subscriptions=MAX_SESSIONS),
        )
        self.server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self._initialized
        )

    # Following the fleet -------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Rebuild the tool list from the fleet view; announce it if it changed."""
        new = build_tools(await self.fleet.devices(), self.limits)
        if new == self.tools:
            return False
        if new.left_out:
            log.warning(
                "%d skills over the %d-tool bound are not listed: %s",
                len(new.left_out), self.limits.max_tools, ", ".join(new.left_out[:10]),
            )  # fmt: skip
        self.tools = new
        self.changes += 1
        await self._announce()
        return True

    async def _announce(self) -> None:
        await self._bus.publish(ToolsListChanged())
        for key, session in list(self._sessions.items()):
            try:
                async with self.clock.timeout(NOTIFY_TIMEOUT_S):
                    await session.send_tool_list_changed()
            except Exception as exc:  # a closed or stuck connection: forget it
                log.debug("session gone (%r); forgetting it", exc)
                self._sessions.pop(key, None)

    async def _watch(self) -> None:
        async for message in self.fleet.watch():
            if not isinstance(message, Health):  # health changes no tool
                self._dirty.set()

    async def _rebuild(self) -> None:
        while True:
            try:
                async with self.clock.timeout(PERIODIC_S):
                    await self._dirty.wait()
                await self.clock.sleep(DEBOUNCE_S)
            except TimeoutError:
                pass
            self._dirty.clear()
            try:
                changed = await self.refresh()
            except Exception:  # keep serving on the last good list
                log.exception("could not rebuild the tool list")
                changed = False
            if changed:
                await self.clock.sleep(MIN_ANNOUNCE_S - DEBOUNCE_S)

    @asynccontextmanager
    async def following(self) -> AsyncIterator[McpBridge]:
        """Follow the fleet (the tool list is current on entry) until the block ends."""
        await self.refresh()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._watch(), name="mcp-watch"),
                tg.create_task(self._rebuild(), name="mcp-rebuild"),
            ]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()

    # MCP handlers --------------------------------------------------------------------------

    async def _initialized(
        self, ctx: ServerRequestContext[Any], _params: types.NotificationParams
    ) -> None:
        self._sessions[id(ctx.session)] = ctx.session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    async def _list_tools(
        self, _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = _builtin_tools(self.limits) + [_tool(t) for t in self.tools.tools]
        return types.ListToolsResult(tools=tools)

    async def _call_tool(
        self, _ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            reply = await self.call(params.name, params.arguments)
        except CallError as exc:
            reply = error_reply(exc)
        except TransportError as exc:  # the broker is away: the fleet cannot be reached now
            reply = error_reply(Unavailable(f"the fleet's broker cannot be reached: {exc}"))
        except Exception as exc:  # the boundary: the client gets a tool error, we keep serving
            log.exception("tool %s failed", params.name[:100])
            reply = error_reply(InternalError(f"{type(exc).__name__}: {str(exc)[:500]}"))
        return _result(reply)

    async def call(self, name: str, arguments: dict[str, Any] | None) -> ToolReply:
        """Run one tool call (raises the typed :class:`CallError`; the handler renders it)."""
        if name == "fleet_devices":
            args = arguments or {}
            where = parse_where(args.get("where"), self.limits)
            online_only = bool(args.get("online_only", False))
            return devices_reply(await self.fleet.devices(), where, online_only, self.limits)
        if name == "ask":
            return await self._ask(arguments or {})
        tool = self.tools.get(name)
        if tool is None:
            raise NotFound(
                f"no tool {name!r}: no online device offers it now (list the tools again)"
            )
        value, where = split_arguments(tool, arguments, self.limits)
        result = await self.fleet.call_skill(
            tool.skill, value, where=where or None, timeout=self.call_timeout,
            explain=True, via="coordinator",
        )  # fmt: skip
        return output_reply(tool, result.output, result.route, self.limits)

    async def _ask(self, arguments: dict[str, Any]) -> ToolReply:
        text = arguments.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("ask needs `text`: what to do, in plain language")
        if len(text) > self.limits.max_text_chars:
            raise BadRequest(
                f"text is {len(text)} characters; at most {self.limits.max_text_chars}"
            )
        return ask_reply(await self.fleet.ask(text, timeout=self.call_timeout))

    # Transports ----------------------------------------------------------------------------

    async def serve_stdio(self) -> None:
        """Serve one client on stdin/stdout until it closes them."""
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    async def serve_http(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        ready: Callable[[int], None] | None = None,
    ) -> None:
        """Serve streamable HTTP on ``http://host:port/mcp`` until cancelled; ``ready`` gets the
        port once listening (``port=0`` picks a free one)."""
        app = self.server.streamable_http_app(host=host)
        sock = listen_tcp(host, port)
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        server = _Uvicorn(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="mcp-http")
        if ready is not None:  # listening already: connections wait in the backlog
            ready(sock.getsockname()[1])
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise
        finally:
            sock.close()


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose protocol field says TCP.

    asyncio turns Nagle's algorithm off (TCP_NODELAY) on an accepted connection only when the
    socket's protocol is IPPROTO_TCP, and ``socket.create_server`` leaves it 0: uvicorn writes a
    response's head and body apart, so every body then waited ~44 ms for the client's delayed
    ACK (found by benchmarks/bench_bridges.py: 48 ms per tool call over HTTP, 1.8 ms after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


async def run(
    fleet: Fleet,
    *,
    transport: Transport = "http",
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: McpLimits | None = None,
    call_timeout: float = 10.0,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the open ``fleet`` over MCP until cancelled (stdio: until the client leaves).

    For ``edgeagent bridge run --mcp``: ``await run(fleet, transport="http", port=...)`` in a
    task of the bridge's TaskGroup.
    """
    bridge = McpBridge(fleet, limits=limits, call_timeout=call_timeout)
    async with bridge.following():
        if transport == "stdio":
            await bridge.serve_stdio()
        else:
            await bridge.serve_http(host, port, ready=ready)
