"""A deployed device in process mode for tests of the system skills and rollouts (issue 12): a
release installed by the device tool under a folder of the test's, its agent a real process on
the test's mosquitto; a file server and update calls as an operator makes them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeagent import Fleet
from edgeagent.broker import BrokerConfig
from edgeagent.deploy import devicetool, minisign, remote_verify
from edgeagent.deploy.bundle import BuiltBundle
from edgeagent.deploy.transfer_mqtt import FileServer
from edgeagent.transport.mqtt import MqttTransport
from tests.deployapp import build, make_app

PROFILE = "x86-64"
SERVER = "files-test"


@dataclass
class Device:
    root: Path
    app: Path
    config: Path
    key: Path
    pub: Path
    fleet: str
    device: str
    broker: str
    work: Path

    def tool(self, *args: str, stdin: str = "") -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-S", str(self.root / "bin" / "edgeagent-device.py"),
             "--root", str(self.root), *args],
            input=stdin, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "error" not in out, out
        return out if isinstance(out, dict) else {}

    def bundle(self, name: str, *, check_import: bool = True) -> BuiltBundle:
        return build(self.config, PROFILE, self.work / name, self.key,
                     self.work / "cache", check_import=check_import)  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.killpg(int((self.root / "run" / "agent.pid").read_text()), signal.SIGKILL)


def install_first(dev: Device, bundle: BuiltBundle) -> None:
    """What `edgeagent deploy` (or the first boot) does, in process mode."""
    bin_dir = dev.root / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copyfile(devicetool.__file__, bin_dir / "edgeagent-device.py")
    shutil.copyfile(remote_verify.__file__, bin_dir / "remote_verify.py")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    dev.tool("setup", "--device", dev.device, "--profile", PROFILE, "--service", "process",
             "--user", user.strip())  # fmt: skip
    dev.tool("trust", stdin=dev.pub.read_text())
    stage = dev.work / "stage-first"
    (stage / "store").mkdir(parents=True)
    for f in (bundle.folder / "files").iterdir():
        shutil.copyfile(f, stage / "store" / f.name)
    incoming = stage / "incoming" / bundle.version
    incoming.mkdir(parents=True)
    for name in ("bundle.json", "bundle.json.minisig"):
        shutil.copyfile(bundle.folder / name, incoming / name)
    dev.tool("ingest", "--from", str(stage))
    dev.tool("install", bundle.version, "--activate", "--confirm-within", "600")
    dev.tool("commit", bundle.version)


def new_device(
    work: Path,
    broker: str,
    *,
    fleet: str | None = None,
    name: str | None = None,
    key: tuple[Path, Path] | None = None,
) -> Device:
    """A device of its own under ``work`` (not installed yet: :func:`install_first`)."""
    fleet = fleet or f"t{uuid.uuid4().hex[:8]}"
    name = name or f"lamp-{uuid.uuid4().hex[:6]}"
    app = work / "app"
    config = make_app(app, device=name, fleet=fleet, broker=broker, profile=PROFILE)
    if key is None:
        key = (work / "fleet.key", work / "fleet.pub")
        minisign.generate_keypair(*key)
    return Device(work / "opt", app, config, key[0], key[1], fleet, name, broker, work)


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s")


async def call(dev: Device, skill: str, data: Any, timeout: float = 20) -> Any:
    async with Fleet(dev.broker, fleet=dev.fleet, timeout=timeout) as client:
        return await client.call(dev.device, skill, data, timeout=timeout)


async def update_status(dev: Device) -> dict[str, Any] | None:
    """The retained …/dev/DEVICE/update message, as a new operator tool would see it."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    transport = MqttTransport(BrokerConfig.from_url(dev.broker), client_id=f"t-{uuid.uuid4().hex}")
    topic = f"edgeagent/{dev.fleet}/dev/{dev.device}/update"

    def on_msg(msg: Any) -> None:
        if not got.done():
            got.set_result(bytes(msg.payload))

    await transport.connect()
    try:
        await transport.subscribe(topic, on_msg, qos=1)
        async with asyncio.timeout(2):
            return json.loads(await got)  # type: ignore[no-any-return]
    except TimeoutError:
        return None
    finally:
        await transport.close()


def update_state(dev: Device) -> dict[str, Any] | None:
    return asyncio.run(update_status(dev))


async def serve_and_update(dev: Device, bundle: BuiltBundle, wait: Any) -> Any:
    transport = MqttTransport(
        BrokerConfig.from_url(dev.broker), client_id=f"srv-{uuid.uuid4().hex}"
    )
    await transport.connect()
    server = FileServer(transport, [bundle.folder / "files"], fleet=dev.fleet, server=SERVER)
    await server.start()
    try:
        accepted = await call(dev, "system.update", {
            "manifest": (bundle.folder / "bundle.json").read_text(),
            "signature": (bundle.folder / "bundle.json.minisig").read_text(),
            "server": SERVER, "confirm_within_s": 20,
        })  # fmt: skip
        result = await asyncio.to_thread(wait)
        return accepted, result, server.stats
    finally:
        await server.stop()
        await transport.close()


# Fleets of devices for rollout tests (tests/test_rollout.py) -------------------------------


@contextlib.contextmanager
def pinned_edgeagent_wheel() -> Iterator[None]:
    """Bundles built meanwhile all carry the first edgeagent wheel built: the source tree may
    change under a long test (others edit it), and a new wheel is a new environment for every
    device (a venv built per update)."""
    from edgeagent.deploy import bundle as bundle_mod
    from edgeagent.deploy import wheelhouse

    real = wheelhouse.edgeagent_wheel
    cached: dict[str, Path] = {}

    def pinned(cache: Path, log: Any = lambda _: None) -> Path:
        if "wheel" not in cached:
            cached["wheel"] = real(cache, log)
        return cached["wheel"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_mod, "edgeagent_wheel", pinned)
        yield


def new_fleet(work: Path, broker: str, n: int, fleet: str | None = None) -> list[Device]:
    """``n`` devices of one fleet signed by one key, each with its own app and device root
    (``work/lamp-K``); not installed yet (:func:`install_fleet`)."""
    fleet = fleet or f"t{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    key = (work / "fleet.key", work / "fleet.pub")
    minisign.generate_keypair(*key)
    return [
        new_device(work / f"lamp-{k}", broker, fleet=fleet, name=f"lamp-{k}", key=key)
        for k in range(1, n + 1)
    ]


def set_echo(dev: Device, marker: str | None, *, broken: bool = False) -> None:
    """The device app's smarthome/echo.py: the example's, plus (``marker``) a ``version_marker``
    skill answering ``MARKER:data``, plus (``broken``) a raise on import."""
    from tests.deployapp import BROKEN, EXAMPLES, EXTRA_SKILL

    text = (EXAMPLES / "smarthome" / "echo.py").read_text()
    if marker is not None:
        text += EXTRA_SKILL.replace('"v2:"', f'"{marker}:"')
    if broken:
        text += BROKEN
    (dev.app / "smarthome" / "echo.py").write_text(text)


def build_set(
    devices: list[Device], out: Path, cache: Path, *, check_import: bool = True
) -> dict[str, BuiltBundle]:
    """One bundle per device (a bundle runs one device's config): ``out/DEVICE/``."""
    return {
        d.device: build(d.config, PROFILE, out / d.device, d.key, cache, check_import=check_import)
        for d in devices
    }


def share_env(dev: Device, bundle: BuiltBundle, source: Device) -> None:
    """Before :func:`install_first`: ``dev`` uses ``source``'s Python environment for
    ``bundle`` (a link; a venv cannot be copied), so a fleet on one machine builds one."""
    env = source.root / "envs" / str(bundle.manifest["env"])
    (dev.root / "envs").mkdir(parents=True, exist_ok=True)
    (dev.root / "envs" / env.name).symlink_to(env, target_is_directory=True)


def current_release(dev: Device) -> str:
    return Path(os.readlink(dev.root / "current")).name


def start_agent(dev: Device) -> None:
    """Start a stopped device's agent again, on its current release."""
    dev.tool("activate", current_release(dev), "--confirm-within", "600")
