"""The system skills of a deployed agent (issue 12), on a real device layout in process mode: a
release installed by the device tool under a folder of the test's, its agent a real process on
the test's mosquitto. ``system.update`` pulls a new release's missing files over MQTT from a
file server, the device tool verifies and switches, the new agent checks itself and commits; a
broken release is rolled back by the tool's timer and the old one reports it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.broker import BrokerConfig
from edgeagent.deploy.transfer_mqtt import FileServer
from edgeagent.protocol import Topics
from edgeagent.transport.mqtt import MqttTransport
from tests.agents import Retained
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import add_skill, announced_release, break_module
from tests.updatelab import (
    SERVER,
    Device,
    call,
    install_first,
    new_device,
    serve_and_update,
    start_agent,
    update_state,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(600)]


@pytest.fixture
def device(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Device]:
    dev = new_device(tmp_path, mosquitto.url)
    try:
        yield dev
    finally:
        dev.stop()


def test_system_update_pulls_switches_and_commits(device: Device) -> None:
    dev = device
    first = dev.bundle("a")
    install_first(dev, first)
    wait_for("release A online", lambda: announced_release(dev.broker, dev.fleet, dev.device)
          == first.version)  # fmt: skip
    info = asyncio.run(call(dev, "system.info", {}))
    assert info["release"] == first.version
    assert info["service"] == "process"
    assert info["pending"] is None
    assert info["free_bytes"] > 0

    add_skill(dev.app)  # a one-file change: a new skill in smarthome/echo.py
    second = dev.bundle("b")

    def healthy() -> Any:
        s = update_state(dev)
        return s if s and s["state"] == "healthy" and s["version"] == second.version else None

    topic = Topics(fleet=dev.fleet).state(dev.device)
    states = Retained(dev.broker, topic)
    try:
        accepted, status, stats = asyncio.run(serve_and_update(dev, second, lambda: wait_for(
            "B healthy", healthy)))  # fmt: skip
        wait_for("B online", lambda: b'"online"' in states.latest.get(topic, b""))
    finally:
        states.close()
    seen = [
        (m["status"], m.get("reason") or "") for m in (json.loads(p) for _, p in states.history)
    ]
    # Out of the coordinators' candidates from the switch until the new release has proven
    # itself: the old agent says 'updating' at the switch, the new one until it has committed.
    switch = seen.index(("updating", f"updating to {second.version}"))
    verifying = seen.index(("updating", f"verifying {second.version}"))
    assert switch < verifying
    assert "online" not in [st for st, _ in seen[switch:verifying]], seen
    assert seen[-1][0] == "online"
    assert accepted["version"] == second.version
    assert accepted["state"] == "downloading"
    # Only what changed travelled: the config and echo.py, not the wheels.
    changed = {f["sha256"] for f in json.loads((second.folder / "bundle.json").read_text())[
        "files"]} - {f["sha256"] for f in json.loads((first.folder / "bundle.json").read_text())[
        "files"]}  # fmt: skip
    assert accepted["missing_files"] == len(changed)
    assert stats.bytes_served == accepted["missing_bytes"]
    assert announced_release(dev.broker, dev.fleet, dev.device) == second.version
    assert asyncio.run(call(dev, "version_marker", {"data": "x"})) == "v2:x"
    assert os.readlink(dev.root / "current") == f"releases/{second.version}"
    assert not (dev.root / "pending.json").exists()  # committed by the new agent itself
    assert status["release"] == second.version

    # Already on it: nothing to do.
    again = asyncio.run(call(dev, "system.update", {
        "manifest": (second.folder / "bundle.json").read_text(),
        "signature": (second.folder / "bundle.json.minisig").read_text(), "server": SERVER,
    }))  # fmt: skip
    assert again["state"] == "current"

    # A release that cannot start (a skill module raises on import): never confirmed, the
    # tool's timer rolls back, and the old release says so.
    break_module(dev.app)
    broken = dev.bundle("c", check_import=False)

    def rolled_back() -> Any:
        s = update_state(dev)
        return s if s and s["state"] == "rolled_back" and s["version"] == broken.version else None

    _, status, _ = asyncio.run(serve_and_update(dev, broken, lambda: wait_for(
        "C rolled back", rolled_back, 120)))  # fmt: skip
    assert status["release"] == second.version
    assert os.readlink(dev.root / "current") == f"releases/{second.version}"
    assert announced_release(dev.broker, dev.fleet, dev.device) == second.version


def test_bad_update_requests_are_refused(device: Device) -> None:
    dev = device
    first = dev.bundle("a")
    install_first(dev, first)
    wait_for("release A online", lambda: announced_release(dev.broker, dev.fleet, dev.device)
          == first.version)  # fmt: skip
    manifest = json.loads((first.folder / "bundle.json").read_text())
    cases = [
        ({"manifest": "not json", "signature": "x", "server": SERVER}, "not JSON"),
        ({"manifest": json.dumps({"version": "v1"}), "signature": "x", "server": SERVER},
         "no files list"),
        ({"manifest": json.dumps({**manifest, "version": "../etc"}), "signature": "x",
          "server": SERVER}, "bad version"),
        ({"manifest": json.dumps({**manifest, "profile": "pi5", "version": "v9"}),
          "signature": "x", "server": SERVER}, "this device is x86-64"),
        ({"manifest": json.dumps({**manifest, "version": "v9"}), "signature": "x"},
         "give `server`"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(Exception, match=message):
            asyncio.run(call(dev, "system.update", data))
    # A forged manifest (not signed by a trusted key) is fetched but never installed.
    forged = {**manifest, "version": "v-forged"}
    body = json.dumps(forged)
    asyncio.run(call(dev, "system.update", {
        "manifest": body, "signature": (first.folder / "bundle.json.minisig").read_text(),
        "url": "http://127.0.0.1:9/",
    }))  # fmt: skip

    def failed() -> Any:
        s = update_state(dev)
        return s if s and s["state"] == "failed" and s["version"] == "v-forged" else None

    status = wait_for("forged update failed", failed, 60)
    assert "signature" in status["error"] or "verif" in status["error"], status
    assert os.readlink(dev.root / "current") == f"releases/{first.version}"
    assert announced_release(dev.broker, dev.fleet, dev.device) == first.version


class _SlowServer(FileServer):
    """One chunk at a time, each after a pause: a transfer that lasts long enough to kill the
    agent in the middle of it."""

    async def _serve(self, msg: Any) -> None:
        await asyncio.sleep(0.05)
        await super()._serve(msg)


def test_agent_killed_mid_transfer_resumes_where_it_stopped(device: Device) -> None:
    """SIGKILL of the agent while it pulls a 4 MB file: restarted and asked again, it fetches only
    what its partial file lacks, and the update completes."""
    dev = device
    first = dev.bundle("a")
    install_first(dev, first)
    wait_for("A online", lambda: announced_release(dev.broker, dev.fleet, dev.device)
             == first.version)  # fmt: skip
    blob = dev.app / "smarthome" / "blob.py"
    blob.write_text(f"BLOB = {os.urandom(2 * 1024 * 1024).hex()!r}\n")  # 4 MB of text
    second = dev.bundle("b")
    size = blob.stat().st_size
    partial = dev.root / "spool" / "partial"

    def had() -> int:
        return sum(p.stat().st_size for p in partial.glob("*") if p.is_file())

    async def start_then_kill() -> int:
        transport = MqttTransport(BrokerConfig.from_url(dev.broker), client_id="slow-server")
        await transport.connect()
        server = _SlowServer(transport, [second.folder / "files"], fleet=dev.fleet,
                             server=SERVER, max_concurrent=1)  # fmt: skip
        await server.start()
        try:
            accepted = await call(dev, "system.update", {
                "manifest": (second.folder / "bundle.json").read_text(),
                "signature": (second.folder / "bundle.json.minisig").read_text(),
                "server": SERVER, "confirm_within_s": 20,
            })  # fmt: skip
            assert accepted["state"] == "downloading"
            # Asked again while it runs (an operator that saw the connection drop): the same
            # answer, not a second update nor an error.
            again = await call(dev, "system.update", {
                "manifest": (second.folder / "bundle.json").read_text(),
                "signature": (second.folder / "bundle.json.minisig").read_text(),
                "server": SERVER, "confirm_within_s": 20,
            })  # fmt: skip
            assert again == accepted
            await asyncio.to_thread(wait_for, "a third of the file", lambda: had() > size // 3, 60)
            dev.stop()  # SIGKILL, mid-transfer
            return had()
        finally:
            await server.stop()
            await transport.close()

    kept = asyncio.run(start_then_kill())
    assert size // 3 < kept < size
    start_agent(dev)
    wait_for("A back", lambda: announced_release(dev.broker, dev.fleet, dev.device)
             == first.version)  # fmt: skip

    def healthy() -> Any:
        s = update_state(dev)
        return s if s and s["state"] == "healthy" and s["version"] == second.version else None

    _, _, stats = asyncio.run(serve_and_update(dev, second, lambda: wait_for("B", healthy)))
    # Everything but what the partial file held (give or take the chunks in flight at the kill;
    # the config changed too: a few KB).
    assert stats.bytes_served <= size - kept + 512 * 1024, (stats.bytes_served, size, kept)
    assert announced_release(dev.broker, dev.fleet, dev.device) == second.version
