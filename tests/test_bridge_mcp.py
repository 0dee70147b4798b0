"""The MCP server through the SDK's own clients: ``edgeagent mcp`` processes (stdio and
streamable HTTP) serving a live fleet (real agents, a real coordinator process, a real
mosquitto), and the shell in process on the memory transport. The pure core's tests are in
test_bridge_mcp_core.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import mcp_types as types
import pytest
from click.testing import CliRunner
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import Subscription
from mcp.shared.subscriptions import ToolsListChanged

from edgeagent import AgentConfig, Coordinator, DeviceAgent, Fleet
from edgeagent.bridges.mcp_server import McpBridge
from edgeagent.transport.memory import MemoryBroker, MemoryTransport
from tests.agents import EXAMPLES, running_agent
from tests.broker.mosquitto import Mosquitto


def test_cli_names_the_extra_when_mcp_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeagent.cli import main

    monkeypatch.setitem(sys.modules, "mcp", None)  # find_spec("mcp") is then None
    result = CliRunner().invoke(main, ["mcp"])
    assert result.exit_code != 0
    assert "pip install 'edgeagent[mcp]'" in result.output


# Against a live fleet --------------------------------------------------------------------------


def env_with_examples() -> dict[str, str]:
    paths = [str(EXAMPLES), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def cli(url: str, fleet: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgeagent.cli", "--broker", url, "--fleet", fleet, *args]


class LiveFleet:
    def __init__(self, url: str, fleet: str, stack: ExitStack) -> None:
        self.url, self.fleet, self.stack = url, fleet, stack


@pytest.fixture(scope="module")
def live(mosquitto: Mosquitto) -> Iterator[LiveFleet]:
    """Two lamps and a coordinator process, shared by the module's tests (one fleet)."""
    url, fleet = mosquitto.url, f"m{uuid.uuid4().hex[:10]}"
    with ExitStack() as stack:
        stack.enter_context(running_agent("lamp-kitchen.yaml", url, fleet, "lamp-kitchen"))
        stack.enter_context(running_agent("lamp-hall.yaml", url, fleet, "lamp-hall"))
        coord = subprocess.Popen(cli(url, fleet, "coordinator", "run"), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env_with_examples())  # fmt: skip
        stack.callback(stop, coord)
        yield LiveFleet(url, fleet, stack)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@asynccontextmanager
async def stdio_session(live: LiveFleet) -> AsyncIterator[ClientSession]:
    args = cli(live.url, live.fleet, "mcp")
    params = StdioServerParameters(command=args[0], args=args[1:], env=env_with_examples())
    with tempfile.TemporaryFile("w+") as errlog:
        try:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session
        except BaseException:
            errlog.seek(0)
            print("edgeagent mcp stderr:\n" + errlog.read(), file=sys.stderr)
            raise


async def call(session: ClientSession, name: str, args: dict[str, Any]) -> types.CallToolResult:
    """A tool call, retried while the coordinator process is still starting."""
    for _ in range(100):
        result = await session.call_tool(name, args)
        text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
        if not (result.is_error and text.startswith("timeout") and "coordinator" in text):
            return result
        await asyncio.sleep(0.1)
    return result


@pytest.mark.broker
def test_stdio_lists_tools_calls_through_the_coordinator_and_returns_typed_errors(
    live: LiveFleet,
) -> None:
    async def main() -> None:
        async with stdio_session(live) as session:
            init = session.initialize_result
            assert init is not None
            assert init.capabilities.tools is not None
            assert init.capabilities.tools.list_changed is True
            listed = {t.name: t for t in (await session.list_tools()).tools}
            assert {"fleet_devices", "ask", "set_brightness", "get_state", "turn_on",
                    "turn_off", "toggle"} <= set(listed)  # fmt: skip
            assert not [n for n in listed if n.startswith("system")]
            sb, gs = listed["set_brightness"], listed["get_state"]
            assert sb.annotations is not None
            assert sb.annotations.destructive_hint is True
            assert sb.annotations.idempotent_hint is True
            assert gs.annotations is not None
            assert gs.annotations.read_only_hint is True
            assert listed["toggle"].annotations.idempotent_hint is False  # type: ignore[union-attr]
            assert set(sb.input_schema["properties"]) == {"level", "where"}

            before = await call(session, "get_state", {"where": {"room": "hall"}})
            level = 17 if before.structured_content != {"on": True, "brightness": 17} else 23
            kitchen = {"room": "kitchen"}
            done = await call(session, "set_brightness", {"level": level, "where": kitchen})
            assert not done.is_error, done.content
            assert done.structured_content == {"on": True, "brightness": level}
            note = done.content[1]
            assert isinstance(note, types.TextContent)
            assert "lamp-kitchen ok" in note.text
            assert done.meta is not None
            assert "edgeagent/route" in done.meta
            state = await call(session, "get_state", {"where": {"room": "kitchen"}})
            assert state.structured_content == {"on": True, "brightness": level}
            hall = await call(session, "get_state", {"where": {"room": "hall"}})
            assert hall.structured_content == before.structured_content  # untouched

            bad = await call(session, "set_brightness", {"level": 900, "where": kitchen})
            assert bad.is_error
            assert isinstance(bad.content[0], types.TextContent)
            assert bad.content[0].text.startswith("bad_request: ")
            assert "level" in bad.content[0].text
            assert bad.structured_content["error"]["code"] == "bad_request"
            loose = await call(session, "set_brightness", {"level": 5, "where": "kitchen"})
            assert loose.is_error
            assert loose.structured_content["error"]["code"] == "bad_request"
            attic = await call(session, "turn_on", {"where": {"room": "attic"}})
            assert attic.is_error
            assert attic.structured_content["error"]["code"] == "not_found"
            nowhere = await session.call_tool("fly", {})
            assert nowhere.is_error
            assert nowhere.structured_content["error"]["code"] == "not_found"

            devices = await session.call_tool("fleet_devices", {"where": {"kind": "lamp"}})
            assert devices.structured_content is not None
            names = [d["device"] for d in devices.structured_content["devices"]]
            assert names == ["lamp-hall", "lamp-kitchen"]
            assert "set_brightness" in devices.structured_content["devices"][0]["skills"]

            asked = await call(session, "ask", {"text": "turn off the kitchen lamp"})
            assert not asked.is_error, asked.content
            assert asked.structured_content is not None
            assert asked.structured_content["done"] is True
            assert asked.structured_content["skill"] == "turn_off"
            state = await call(session, "get_state", {"where": {"room": "kitchen"}})
            assert state.structured_content == {"on": False, "brightness": level}
            vague = await session.call_tool("ask", {"text": "turn on the lamp"})
            assert vague.structured_content is not None
            assert vague.structured_content["done"] is False
            assert vague.structured_content["question"]

    asyncio.run(main())


async def modern_until(client: Client, sub: Subscription, want: Callable[[set[str]], bool]) -> None:
    """Wait for tools list_changed events on a listen stream until the listed tools satisfy
    ``want`` (events are level triggers: several changes may come as one)."""
    for _ in range(5):
        event = await asyncio.wait_for(anext(sub), 20)
        assert isinstance(event, ToolsListChanged)
        if want({t.name for t in (await client.list_tools()).tools}):
            return
    raise AssertionError("the listen stream's events never led to the expected tool list")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.broker
def test_http_tool_list_follows_devices_appearing_and_disappearing(live: LiveFleet) -> None:
    port = free_port()
    server = subprocess.Popen(cli(live.url, live.fleet, "mcp", "--transport", "http",
                                  "--port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env_with_examples())  # fmt: skip
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async def tool_names_now(session: ClientSession) -> set[str]:
        return {t.name for t in (await session.list_tools()).tools}

    async def wait_change(session: ClientSession, what: str) -> set[str]:
        try:
            await asyncio.wait_for(changed.wait(), 20)
        except TimeoutError:
            raise AssertionError(f"no tools/list_changed after {what}") from None
        changed.clear()
        return await tool_names_now(session)

    async def main() -> None:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 20
        while True:  # the server process is starting
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "edgeagent mcp --transport http never listened"
                await asyncio.sleep(0.1)
        async with (
            streamable_http_client(url) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
            Client(url) as modern,  # 2026-07-28: list changes come on subscriptions/listen
            modern.listen(tools_list_changed=True) as sub,
        ):
            await session.initialize()
            assert modern.session.protocol_version == "2026-07-28"
            names = await tool_names_now(session)
            assert "set_brightness" in names
            assert "set_target" not in names
            changed.clear()
            with running_agent("thermostat-living.yaml", live.url, live.fleet,
                               "thermostat-living"):  # fmt: skip
                names = await wait_change(session, "a thermostat came online")
                assert {"set_target", "read_temperature", "set_brightness"} <= names
                await modern_until(modern, sub, lambda names: "set_target" in names)
                result = await call(session, "set_target", {"celsius": 22.5})
                assert not result.is_error, result.content
                assert result.structured_content is not None
                assert result.structured_content["target"] == 22.5
            names = await wait_change(session, "the thermostat went away")
            assert "set_target" not in names
            assert "read_temperature" not in names
            assert "set_brightness" in names  # the lamps still offer it
            await modern_until(modern, sub, lambda names: "set_target" not in names)

    try:
        asyncio.run(main())
    finally:
        stop(server)


def test_the_shell_in_process_on_the_memory_transport() -> None:
    """The bridge's handlers through the SDK's in-process client: no broker, no processes."""

    async def main() -> None:
        broker = MemoryBroker()
        cfg = AgentConfig(device="lamp", fleet="mem", tags={"room": "hall"},
                          skills=[{"module": "smarthome.lamp:Lamp"}])  # fmt: skip
        agent = DeviceAgent(cfg, transport=MemoryTransport(broker, "dev-lamp"))
        coord = Coordinator(MemoryTransport(broker, "coord"), root="edgeagent", fleet="mem")
        await agent.start()
        fleet_transport = MemoryTransport(broker, "mcp")
        try:
            async with (
                coord,
                Fleet(fleet="mem", transport=fleet_transport) as fleet,
                McpBridge(fleet).following() as bridge,
                Client(bridge.server) as client,
            ):
                listed = {t.name for t in (await client.list_tools()).tools}
                assert {"set_brightness", "fleet_devices", "ask"} <= listed
                done = await client.call_tool("set_brightness", {"level": 40})
                assert done.structured_content == {"on": True, "brightness": 40}
                empty = await client.call_tool("ask", {"text": "  "})
                assert empty.is_error
                assert empty.structured_content == {
                    "error": {"code": "bad_request",
                              "message": "ask needs `text`: what to do, in plain language"}
                }  # fmt: skip
                fleet_transport.kill()  # the bridge's broker connection is lost
                lost = await client.call_tool("set_brightness", {"level": 10})
                assert lost.is_error
                assert lost.structured_content["error"]["code"] == "unavailable"
                assert bridge.changes == 1  # the first list; nothing changed since
        finally:
            await agent.stop()

    asyncio.run(main())


def test_the_http_listener_lets_asyncio_turn_nagle_off() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's
    protocol is IPPROTO_TCP; with 0 (socket.create_server) each HTTP tool call waited ~44 ms for
    a delayed ACK. The accepted connection must come out with TCP_NODELAY on."""
    from edgeagent.bridges.mcp_server import listen_tcp

    async def main() -> int:
        sock = listen_tcp("127.0.0.1", 0)
        nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = writer.get_extra_info("socket")
            nodelay.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            value = await asyncio.wait_for(nodelay, 5)
            w.close()
        return value

    assert asyncio.run(main()) != 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen_tcp("127.0.0.1", port)
