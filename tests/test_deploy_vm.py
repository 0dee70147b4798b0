"""Deploy end to end into an emulated arm64 device: Debian 12 with systemd and sshd, booted in
qemu-system-aarch64 (-M virt), profile generic-arm64 (it is not a Raspberry Pi, and says so).

The device reaches the host's private mosquitto at 10.0.2.2 (qemu user networking); the health
check reaches it at 127.0.0.1. Skipped, with the reason, where qemu or mmdebstrap is missing;
CI installs them (.ci/run) and runs these tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeagent import Fleet
from edgeagent.deploy import minisign
from edgeagent.deploy.deployer import DeployOptions, DeployResult, deploy, remote_command
from edgeagent.deploy.errors import HealthCheckFailed, HostUnsuitable, ProfileMismatch, RemoteError
from edgeagent.deploy.ssh import SshOptions, SshTarget
from edgeagent.deploy.transfer_mqtt import FileServer
from tests.armvm import Vm, boot, ensure_image, qemu_available
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import (
    BROKEN,
    add_skill,
    announced_release,
    break_module,
    build,
    call,
    make_app,
)

pytestmark = [
    pytest.mark.broker,
    pytest.mark.vm,
    pytest.mark.skipif(qemu_available() is not None, reason=str(qemu_available())),
    pytest.mark.timeout(900),
]

PROFILE = "generic-arm64"


@dataclass
class VmLab:
    vm: Vm
    broker: Mosquitto
    work: Path
    app: Path
    config: Path
    key: Path
    pub: Path
    cache: Path
    device: str
    fleet: str

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.vm.host, self.vm.ssh_port, self.vm.user)

    def ssh(self) -> SshOptions:
        return SshOptions(
            identity_files=[self.vm.key], known_hosts=self.vm.known_hosts, use_agent=False
        )

    def deploy(self, bundle: Path, **kw: Any) -> DeployResult:
        base: dict[str, Any] = {"health_timeout": 150.0, "trust": [self.pub]}
        base.update(kw)
        opts = DeployOptions(device=PROFILE, broker=self.broker.url, **base)
        return asyncio.run(deploy(bundle, self.target, self.ssh(), opts))

    def tool(self, *args: str) -> dict[str, Any]:
        return asyncio.run(remote_command(self.target, self.ssh(), "/opt/edgeagent", *args))


@pytest.fixture(scope="module")
def vmlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmLab]:
    image = ensure_image()
    work = tmp_path_factory.mktemp("vmdeploy")
    key, pub = work / "fleet.key", work / "fleet.pub"
    minisign.generate_keypair(key, pub)
    device = f"lamp-{uuid.uuid4().hex[:6]}"
    fleet = f"t{uuid.uuid4().hex[:8]}"
    with Mosquitto() as broker, boot(image) as vm:
        config = make_app(
            work / "app",
            device=device,
            fleet=fleet,
            broker=f"mqtt://10.0.2.2:{broker.port}",
            profile=PROFILE,
        )
        yield VmLab(vm, broker, work, work / "app", config, key, pub, work / "cache", device, fleet)


def test_vm_deploy_update_rollback_and_refusals(vmlab: VmLab) -> None:
    lab = vmlab
    url = lab.broker.url
    # First contact: bootstrap, systemd unit, environment built offline from the wheelhouse.
    b1 = build(lab.config, PROFILE, lab.work / "b1", lab.key, lab.cache)
    r1 = lab.deploy(b1.folder)
    assert r1.healthy
    assert r1.env_built
    assert r1.profile == PROFILE
    assert call(url, lab.fleet, lab.device, "set_brightness", {"level": 30}, timeout=10) == {
        "on": True,
        "brightness": 30,
    }
    unit = lab.vm.run(f"systemctl is-active edgeagent@{lab.device}.service")
    assert unit.stdout.strip() == "active"
    owner = lab.vm.run(f"ps -o user= -C edgeagent || systemctl show -p User edgeagent@{lab.device}")
    assert "root" not in owner.stdout.split()

    # One skill file changed: only that file is sent.
    add_skill(lab.app)
    b2 = build(lab.config, PROFILE, lab.work / "b2", lab.key, lab.cache)
    r2 = lab.deploy(b2.folder)
    assert r2.healthy
    assert r2.sent_files == 1
    assert not r2.env_built
    assert r2.sent_bytes / r2.bundle_bytes < 0.05
    assert call(url, lab.fleet, lab.device, "version_marker", {"data": "a"}, timeout=10) == "v2:a"

    # A skill module that raises on import: rolled back, the old release answers again.
    break_module(lab.app)
    b3 = build(lab.config, PROFILE, lab.work / "b3", lab.key, lab.cache, check_import=False)
    with pytest.raises(HealthCheckFailed) as info:
        lab.deploy(b3.folder, health_timeout=40.0)
    assert info.value.rolled_back_to == b2.version
    assert "broken on purpose" in info.value.logs
    assert announced_release(url, lab.fleet, lab.device) == b2.version
    assert call(url, lab.fleet, lab.device, "version_marker", {"data": "b"}, timeout=10) == "v2:b"

    # A tampered bundle is refused before anything is installed (the tampered file is one the
    # device has never seen: a file it has is never sent again, tampered or not).
    (lab.app / "smarthome" / "echo.py").write_text(
        (lab.app / "smarthome" / "echo.py").read_text().replace(BROKEN, "")
    )
    lamp_py = lab.app / "smarthome" / "lamp.py"
    lamp_py.write_text(lamp_py.read_text() + f"\n# {uuid.uuid4().hex}\n")
    b4 = build(lab.config, PROFILE, lab.work / "b4", lab.key, lab.cache)
    bad = lab.work / "tampered"
    shutil.copytree(b4.folder, bad)
    manifest = json.loads((bad / "bundle.json").read_text())
    lamp = next(f for f in manifest["files"] if f["path"] == "app/smarthome/lamp.py")
    (bad / "files" / lamp["sha256"]).write_bytes(b"import os\nos.system('evil')\n")
    status_before = lab.tool("status")
    with pytest.raises(RemoteError, match=r"lamp\.py"):
        lab.deploy(bad)
    status_after = lab.tool("status")
    assert status_after["current"] == status_before["current"] == b2.version
    assert status_after["releases"] == status_before["releases"]

    # A Raspberry Pi profile is refused: this board is not one.
    with pytest.raises(ProfileMismatch, match="pi4"):
        asyncio.run(
            deploy(
                b2.folder,
                lab.target,
                lab.ssh(),
                DeployOptions(device="pi4", broker=url, trust=[lab.pub]),
            )
        )
    with pytest.raises(ProfileMismatch, match="no pi profile matches"):
        asyncio.run(
            deploy(
                b2.folder,
                lab.target,
                lab.ssh(),
                DeployOptions(device="pi", broker=url, trust=[lab.pub]),
            )
        )
    # Raspberry Pi OS's way: a user with passwordless sudo, not root, works the same.
    pi = SshTarget(lab.vm.host, lab.vm.ssh_port, "pi")
    seen = asyncio.run(remote_command(pi, lab.ssh(), "/opt/edgeagent", "status"))
    assert seen["current"] == b2.version
    history = [e["event"] for e in lab.tool("history")["history"]]
    assert history.count("healthy") == 2
    assert history[-1] == "rolled_back"


def test_vm_full_disk_is_refused_and_device_untouched(vmlab: VmLab, tmp_path: Path) -> None:
    """A device whose /opt/edgeagent is a 24 MB filesystem: the deploy says so, changes nothing."""
    image = ensure_image()
    with boot(image, extra_disk_mb=24) as small:
        target = SshTarget(small.host, small.ssh_port, small.user)
        ssh = SshOptions(identity_files=[small.key], known_hosts=small.known_hosts, use_agent=False)
        b = build(vmlab.config, PROFILE, tmp_path / "b", vmlab.key, vmlab.cache)
        opts = DeployOptions(device=PROFILE, broker=vmlab.broker.url, trust=[vmlab.pub])
        with pytest.raises(HostUnsuitable, match="disk space"):
            asyncio.run(deploy(b.folder, target, ssh, opts))
        left = small.run("ls /opt/edgeagent/releases 2>/dev/null | wc -l").stdout.strip()
        assert left == "0"


def test_vm_system_update_over_mqtt_under_systemd(vmlab: VmLab) -> None:
    """`system.update` on the systemd-managed, sandboxed agent (issue 12): it fetches the new
    release's files over its own MQTT connection into its StateDirectory, the path unit runs the
    device tool as root to verify, install and switch, and the new agent checks itself and asks
    (through the path unit again) for the commit."""
    lab = vmlab
    url = lab.broker.url
    before = lab.tool("status")["current"]
    lamp_py = lab.app / "smarthome" / "lamp.py"
    lamp_py.write_text(lamp_py.read_text() + f"\n# {uuid.uuid4().hex}\n")
    echo_py = lab.app / "smarthome" / "echo.py"
    echo_py.write_text(echo_py.read_text().replace(BROKEN, ""))
    new = build(lab.config, PROFILE, lab.work / "b-mqtt", lab.key, lab.cache)
    assert new.version != before
    unit = lab.vm.run("systemctl is-enabled edgeagent-apply@" + lab.device + ".path")
    assert unit.stdout.strip() == "enabled", unit.stdout + unit.stderr

    async def update() -> dict[str, Any]:
        async with Fleet(url, fleet=lab.fleet, timeout=30) as fleet:
            server = FileServer(fleet.transport, [new.folder / "files"], fleet=lab.fleet,
                                server="vm-files")  # fmt: skip
            await server.start()
            try:
                accepted = await fleet.call(lab.device, "system.update", {
                    "manifest": (new.folder / "bundle.json").read_text(),
                    "signature": (new.folder / "bundle.json.minisig").read_text(),
                    "server": "vm-files", "confirm_within_s": 120,
                }, timeout=30)  # fmt: skip
                assert accepted["state"] == "downloading", accepted
                # Only what the device lacks travels (lamp.py changed), not the wheels.
                assert accepted["missing_files"] >= 1
                assert accepted["missing_bytes"] < new.total_bytes / 20
                deadline = asyncio.get_running_loop().time() + 240
                while asyncio.get_running_loop().time() < deadline:
                    info = await fleet.device(lab.device)
                    release = info.manifest.release if info and info.manifest else None
                    if release == new.version and info is not None and info.online:
                        got = await fleet.call(lab.device, "system.info", {}, timeout=30)
                        if got["pending"] is None:
                            return dict(got)
                    await asyncio.sleep(1)
                raise AssertionError("the update did not finish in 240 s")
            finally:
                await server.stop()

    try:
        info = asyncio.run(update())
    except AssertionError:
        print(lab.vm.run("sudo journalctl -b --no-pager -u 'edgeagent*' | tail -60").stdout)
        raise
    assert info["release"] == new.version
    assert info["service"] == "systemd"
    assert info["previous"] == before
    status = lab.tool("status")
    assert status["current"] == new.version
    history = [e["event"] for e in lab.tool("history")["history"]]
    assert history[-1] == "applied"
    assert "healthy" in history[-3:]
    # The agent stayed unprivileged: the root work was the path unit's.
    owner = lab.vm.run(f"ps -o user= -C edgeagent || systemctl show -p User edgeagent@{lab.device}")
    assert "root" not in owner.stdout.split()
    assert call(url, lab.fleet, lab.device, "version_marker", {"data": "m"}, timeout=10) == "v2:m"
