"""`image build --base debian`: a complete image for the example lamp, read back, then booted in
qemu-system-aarch64 -M virt with the kernel and initramfs from its own boot partition and the
whole image as the disk (the root found by its label, as on a Pi).

The root filesystem is the emulated device's cached one (tests/armvm.py, edgeagent.images.rootfs):
no second mmdebstrap. At boot the agent, installed at build time, comes online on the host's
private mosquitto (10.0.2.2 from the guest: qemu's user networking connects from the host's
loopback), is listed by `fleet ls` with its release, and answers a call. SSH (the user's key
from --ssh-key, the host key printed by the build) only looks at the device from inside.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from edgeagent import Fleet
from edgeagent.cli import main as cli_main
from edgeagent.cli_image_build import build as build_cmd
from edgeagent.deploy import minisign
from edgeagent.images import debian
from edgeagent.images.bootpart import ImageBuildError, parse_mbr
from edgeagent.images.customize import BuildRequest
from tests.armvm import VmImage, boot, qemu_available
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import EXAMPLES, announced_release, call

pytestmark = [
    pytest.mark.broker,
    pytest.mark.vm,
    pytest.mark.skipif(qemu_available() is not None, reason=str(qemu_available())),
    pytest.mark.skipif(debian.unavailable() is not None, reason=str(debian.unavailable())),
    pytest.mark.timeout(900),
]

PROFILE = "pi4"
DEVICE = "lamp-kitchen"
ONLINE_TIMEOUT = 150.0
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass
class Built:
    image: Path
    summary: dict[str, Any]
    work: Path
    fleet: str
    password: str
    ssh_key: Path
    build_s: float


def _lamp_config(folder: Path, broker: Mosquitto, fleet: str, password: str) -> Path:
    """The example lamp, its broker as the guest sees the host's test mosquitto."""
    shutil.copytree(EXAMPLES / "smarthome", folder / "smarthome",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    raw = yaml.safe_load((EXAMPLES / "lamp-kitchen.yaml").read_text())
    raw["fleet"] = fleet
    raw["broker"] = f"mqtt://lamp:{password}@10.0.2.2:{broker.port}"
    config = folder / "lamp-kitchen.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("debian-image")
    key, pub = work / "fleet.key", work / "fleet.pub"
    minisign.generate_keypair(key, pub)
    ssh_key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f",
                    str(ssh_key)], check=True)  # fmt: skip
    fleet, password = f"t{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    config = _lamp_config(work / "app", mosquitto, fleet, password)
    out = work / "lamp.img"
    t0 = time.monotonic()
    result = CliRunner().invoke(
        build_cmd,
        ["--base", "debian", "--device", PROFILE, "--config", str(config), "--key", str(key),
         "--ssh-key", f"{ssh_key}.pub", "--timezone", "Europe/Paris", "-o", str(out), "--json"],
    )  # fmt: skip
    build_s = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    print(f"[debian image] built in {build_s:.1f} s: {summary['timings_s']}", file=sys.stderr)
    yield Built(out, summary, work, fleet, password, ssh_key, build_s)
    out.unlink(missing_ok=True)  # 2.3 GB (sparse): not kept among pytest's last runs


def _debugfs(image: Path, offset: int, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, f"{image}?offset={offset}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return proc.stdout


def _exists(image: Path, offset: int, path: str) -> bool:
    proc = subprocess.run(["debugfs", "-R", f"stat {path}", f"{image}?offset={offset}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return "not found" not in proc.stderr


def _mtype(image: Path, offset: int, name: str) -> str:
    proc = subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::/{name}"], env=MT,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return proc.stdout


def test_image_layout_and_what_it_holds(built: Built) -> None:
    image, s = built.image, built.summary
    assert s["device"] == DEVICE
    assert s["profile"] == PROFILE
    assert s["fleet"] == built.fleet
    assert s["auth"] == "password"
    assert image.stat().st_mode & 0o777 == 0o600  # it holds the credential
    parts = parse_mbr(image.read_bytes()[:512], image.stat().st_size, str(image))
    boot_p, root_p = sorted(parts, key=lambda p: p.index)
    assert (boot_p.type, boot_p.bootable, root_p.type) == (0x0C, True, 0x83)
    assert boot_p.start == s["partitions"]["boot"]["offset"]
    # The boot partition, the way a Raspberry Pi's firmware reads it.
    config_txt = _mtype(image, boot_p.start, "config.txt")
    assert "arm_64bit=1" in config_txt
    assert "kernel=vmlinuz" in config_txt
    assert "root=LABEL=rootfs" in _mtype(image, boot_p.start, "cmdline.txt")
    assert {"vmlinuz", "initrd.img", "bcm2711-rpi-4-b.dtb"} <= set(s["boot_files"])
    listing = subprocess.run(["mdir", "-b", "-i", f"{image}@@{boot_p.start}", "::/"], env=MT,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "enrolment" not in listing
    assert "edgeagent" not in listing.lower()
    # The root: the release installed as deploy installs it, the unit enabled, the credential
    # 0600 for the service user, the test VM's keys gone, this device's name.
    root = root_p.start
    current = _debugfs(image, root, "stat /opt/edgeagent/current")
    assert f"releases/{s['release']}" in current
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert f"edgeagent@{DEVICE}.service" in _debugfs(image, root, f"ls {wants}")
    creds = _debugfs(image, root, f"stat /etc/edgeagent/{DEVICE}/broker.env")
    mode = re.search(r"Mode:\s+(\d+)", creds)
    uid = re.search(r"User:\s+(\d+)", creds)
    assert mode is not None, creds
    assert uid is not None, creds
    assert (mode.group(1), uid.group(1) != "0") == ("0600", True), creds
    passwd = _debugfs(image, root, "cat /etc/passwd")
    assert re.search(rf"^edgeagent:x:{uid.group(1)}:", passwd, re.M), passwd
    assert _debugfs(image, root, "cat /etc/hostname").strip() == DEVICE
    assert not _exists(image, root, "/root/.ssh/authorized_keys")
    assert _exists(image, root, "/home/pi/.ssh/authorized_keys")
    assert "Mode:  04755" in _debugfs(image, root, "stat /usr/bin/sudo")  # setuid kept
    pi_keys = _debugfs(image, root, "cat /home/pi/.ssh/authorized_keys")
    assert pi_keys.strip() == Path(f"{built.ssh_key}.pub").read_text().strip()
    host_pub = _debugfs(image, root, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    assert f"{host_pub[0]} {host_pub[1]}" == s["host_key"]
    # The password is on the root partition only, in that 0600 file.
    assert built.password.encode() not in image.read_bytes()[boot_p.start : root_p.start]


def test_refusals_name_what_is_wrong(built: Built, tmp_path: Path) -> None:
    config = built.work / "app" / "lamp-kitchen.yaml"
    key = built.work / "fleet.key"

    def req(**kw: Any) -> BuildRequest:
        base: dict[str, Any] = {"base": Path("debian"), "out": tmp_path / "x.img",
                                "profile": PROFILE, "config": config, "key": key}  # fmt: skip
        base.update(kw)
        return BuildRequest(**base)

    with pytest.raises(ImageBuildError, match=r"pi5: kernel .* has no bcm2712-rpi-5-b\.dtb"):
        debian.build(req(profile="pi5"))
    with pytest.raises(ImageBuildError, match="x86_64 profile"):
        debian.build(req(profile="x86-64"))
    with pytest.raises(ImageBuildError, match="does not set up Wi-Fi"):
        debian.build(req(wifi_ssid="Home", wifi_psk="secret-pass", country="GB"))
    with pytest.raises(ImageBuildError, match="--timezone Mars/Olympus: not in the image"):
        debian.build(req(timezone="Mars/Olympus"))
    assert not (tmp_path / "x.img").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no work folder left behind


def test_booted_image_comes_online_and_answers(built: Built, mosquitto: Mosquitto) -> None:
    image, s = built.image, built.summary
    boot_at = s["partitions"]["boot"]["offset"]
    kernel, initrd = built.work / "vmlinuz", built.work / "initrd.img"
    for name, dest in (("vmlinuz", kernel), ("initrd.img", initrd)):
        subprocess.run(["mcopy", "-n", "-i", f"{image}@@{boot_at}", f"::/{name}", str(dest)],
                       env=MT, check=True)  # fmt: skip
    device = VmImage(kernel=kernel, initrd=initrd, rootfs=image, ssh_key=built.ssh_key,
                     host_key=s["host_key"], folder=built.work)  # fmt: skip
    t0 = time.monotonic()
    with boot(device, user="pi") as vm:
        ssh_s = time.monotonic() - t0
        release = None
        while time.monotonic() - t0 < ONLINE_TIMEOUT:
            release = announced_release(mosquitto.url, built.fleet, DEVICE)
            if release is not None:
                break
            time.sleep(1)
        online_s = time.monotonic() - t0
        unit = vm.run(f"systemctl is-active edgeagent@{DEVICE}.service").stdout.strip()
        assert release == s["release"], (
            f"not online in {ONLINE_TIMEOUT:g} s (unit {unit}):\n"
            + vm.run(f"sudo journalctl -b -u edgeagent@{DEVICE} --no-pager | tail -30").stdout
        )
        print(f"[debian image] SSH after {ssh_s:.1f} s, agent online after {online_s:.1f} s "
              "(from qemu start)", file=sys.stderr)  # fmt: skip
        assert unit == "active"
        assert vm.run("hostname").stdout.strip() == DEVICE
        assert vm.run("readlink /etc/localtime").stdout.strip().endswith("Europe/Paris")
        owner = vm.run(f"ps -o user= -C edgeagent || systemctl show -p User edgeagent@{DEVICE}")
        assert "edgeagent" in owner.stdout
        assert "root" not in owner.stdout.split()

        async def listed() -> list[Any]:
            async with Fleet(mosquitto.url, fleet=built.fleet, timeout=5) as f:
                return await f.devices()

        devices = {d.device: d for d in asyncio.run(listed())}
        lamp = devices[DEVICE]
        assert lamp.online
        assert lamp.manifest is not None
        assert (lamp.manifest.release, lamp.manifest.profile) == (s["release"], PROFILE)
        ls = CliRunner().invoke(cli_main, ["--broker", mosquitto.url, "--fleet", built.fleet,
                                           "fleet", "ls", "--json"])  # fmt: skip
        assert ls.exit_code == 0, ls.output
        rows = {r["device"]: r for r in json.loads(ls.stdout)}
        assert rows[DEVICE]["release"] == s["release"]
        assert rows[DEVICE]["status"] == "online"
        answer = call(mosquitto.url, built.fleet, DEVICE, "set_brightness", {"level": 30}, 10)
        assert answer == {"on": True, "brightness": 30}
