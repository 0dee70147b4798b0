"""`image build --base debian`: a complete image for the example lamp, read back, then booted in
qemu-system-aarch64 -M virt with the kernel and initramfs from its own boot partition and the
whole image as the disk (the root found by its label, as on a Pi).

The root filesystem is the emulated device's cached one (tests/armvm.py, edgeagent.images.rootfs):
no second mmdebstrap. At boot the agent, installed at build time, comes online on the host's
private mosquitto (10.0.2.2 from the guest: qemu's user networking connects from the host's
loopback), is listed by `fleet ls` with its release, and answers a call. SSH (the user's key
from --ssh-key, the host key printed by the build) only looks at the device from inside.

Then the image is customised again with `--base` and booted through Raspberry Pi Imager's
first-boot hook, and last it is booted as the SD card of an emulated Raspberry Pi 3 (-M raspi3b).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from edgeagent.deploy.bundle import BuildOptions, build_bundle
from edgeagent.deploy.deployer import DeployOptions, deploy
from edgeagent.deploy.ssh import SshOptions, SshTarget
from edgeagent.images import debian
from edgeagent.images.bootpart import ImageBuildError, parse_mbr
from edgeagent.images.customize import BuildRequest
from tests.armvm import Vm, VmImage, boot, qemu_available, run_once
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
#: The emulator is no Pi 4 (its device-tree model is linux,dummy-virt): deploy checks the board,
#: so the later deploy is of a generic-arm64 release (setup switches the device's profile).
DEPLOY_PROFILE = "generic-arm64"
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
    # The Pi's own boot firmware, from Debian's raspi-firmware (non-free-firmware).
    assert s["firmware"] is True
    assert {"bootcode.bin", "start4.elf", "fixup4.dat", "start.elf"} <= set(s["boot_files"])
    assert "start4.elf" in _debugfs(image, s["partitions"]["root"]["offset"],
                                    "ls /usr/lib/raspi-firmware")  # fmt: skip
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
        _deploy_keeps_the_devices_broker(built, mosquitto, vm)


def _deploy_keeps_the_devices_broker(built: Built, mosquitto: Mosquitto, vm: Vm) -> None:
    """A later `edgeagent deploy` of a release built from a config with another broker section
    (here one that reaches nothing) still connects with the image's broker and credential: the
    unit's drop-in points the agent at /etc/edgeagent/DEVICE/broker.yaml."""
    config = built.work / "app" / "lamp-kitchen.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["broker"] = "mqtt://127.0.0.1:9"
    other = config.with_name("lamp-other-broker.yaml")
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    key = built.work / "fleet.key"
    bundle = build_bundle(other, DEPLOY_PROFILE, built.work / "bundle-2", key=key,
                          options=BuildOptions(python="3.11"))  # fmt: skip
    assert bundle.version != built.summary["release"]
    target = SshTarget(vm.host, vm.ssh_port, vm.user)
    ssh = SshOptions(identity_files=[vm.key], known_hosts=vm.known_hosts, use_agent=False)
    opts = DeployOptions(device=DEPLOY_PROFILE, broker=mosquitto.url, health_timeout=150.0)
    result = asyncio.run(deploy(bundle.folder, target, ssh, opts))
    assert result.version == bundle.version
    assert announced_release(mosquitto.url, built.fleet, DEVICE) == bundle.version
    drop_in = vm.run(f"cat /etc/systemd/system/edgeagent@{DEVICE}.service.d/*.conf").stdout
    assert f"EDGEAGENT_BROKER_CONFIG=/etc/edgeagent/{DEVICE}/broker.yaml" in drop_in


def _append_for_virt(cmdline_txt: str) -> str:
    """cmdline.txt as qemu's -append: the Pi's consoles replaced by the virt board's."""
    tokens = [t for t in cmdline_txt.split() if not t.startswith("console=")]
    return " ".join([*tokens, "console=ttyAMA0", "panic=-1"])


def _first_boot_story(image: Path, s: dict[str, Any], console: str) -> str:
    """What the first boot did, for a failing assertion: its console lines about the hook and
    the installer's log, read from the root partition."""
    story = re.compile(r"firstrun|edgeagent|Kernel Command Line|kernel-command")
    lines = [ln for ln in console.splitlines() if story.search(ln)]
    root_at = s["boot_partition"]["offset"] + s["boot_partition"]["bytes"]
    log = _debugfs(image, root_at, "cat /var/log/edgeagent-firstboot.log")
    return "\n".join(lines[-40:]) + "\n--- /var/log/edgeagent-firstboot.log ---\n" + log[-3000:]


def test_customised_image_first_boot_by_firstrun(built: Built, mosquitto: Mosquitto) -> None:
    """`image build --base` on that image (as on a Raspberry Pi OS Bookworm image: firstrun.sh
    and the cmdline.txt hook), booted the same way: the hook's first boot installs the new
    release with the new credential and reboots; the next boot runs it in the new fleet."""
    fleet, password = f"t{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    config = _lamp_config(built.work / "app-2", mosquitto, fleet, password)
    out = built.work / "lamp-custom.img"
    result = CliRunner().invoke(
        build_cmd,
        ["--base", str(built.image), "--device", PROFILE, "--config", str(config),
         "--key", str(built.work / "fleet.key"), "--hostname", "lamp-hall",
         "--ssh-key", f"{built.ssh_key}.pub", "--timezone", "Europe/Berlin",
         "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["format"] == "firstrun"
    assert (s["python"], s["python_reason"]) == ("3.11", "/usr/lib/python3.11 on partition 2")
    boot_at = s["boot_partition"]["offset"]
    cmdline = _mtype(out, boot_at, "cmdline.txt")
    assert "systemd.run=/boot/firstrun.sh" in cmdline
    kernel, initrd = built.work / "vmlinuz-2", built.work / "initrd-2.img"
    for name, dest in (("vmlinuz", kernel), ("initrd.img", initrd)):
        subprocess.run(["mcopy", "-n", "-i", f"{out}@@{boot_at}", f"::/{name}", str(dest)],
                       env=MT, check=True)  # fmt: skip
    device = VmImage(kernel=kernel, initrd=initrd, rootfs=out, ssh_key=built.ssh_key,
                     host_key=built.summary["host_key"], folder=built.work)  # fmt: skip
    try:
        t0 = time.monotonic()
        console = run_once(device, _append_for_virt(cmdline), timeout=600)
        first_s = time.monotonic() - t0
        # The hook ran once, removed itself and the secrets; the installer left its mark.
        after = _mtype(out, boot_at, "cmdline.txt")
        assert "systemd.run" not in after, _first_boot_story(out, s, console)
        assert after.split() == [t for t in cmdline.split() if not t.startswith("systemd.")]
        listing = subprocess.run(["mdir", "-b", "-i", f"{out}@@{boot_at}", "::/edgeagent"],
                                 env=MT, capture_output=True, text=True).stdout  # fmt: skip
        assert "installed.json" in listing, console[-3000:]
        assert "enrolment.json" not in listing
        root_at = s["boot_partition"]["offset"] + s["boot_partition"]["bytes"]
        assert password.encode() not in out.read_bytes()[boot_at:root_at]
        t1 = time.monotonic()
        with boot(device, user="pi") as vm:
            release = None
            while time.monotonic() - t1 < ONLINE_TIMEOUT:
                release = announced_release(mosquitto.url, fleet, DEVICE)
                if release is not None:
                    break
                time.sleep(1)
            online_s = time.monotonic() - t1
            assert release == s["release"], vm.run(
                f"sudo journalctl -b -u edgeagent@{DEVICE} --no-pager | tail -30; "
                "sudo cat /var/log/edgeagent-firstboot.log"
            ).stdout
            took = f"first boot (install, reboot) {first_s:.1f} s, online {online_s:.1f} s"
            print(f"[customised image] {took} after the second boot started", file=sys.stderr)
            assert vm.run("hostname").stdout.strip() == "lamp-hall"
            assert vm.run("readlink -f /etc/localtime").stdout.strip().endswith("Europe/Berlin")
            log = vm.run("sudo stat -c %a /var/log/edgeagent-firstboot.log; "
                         "sudo cat /var/log/edgeagent-firstboot.log").stdout  # fmt: skip
            assert log.startswith("600\n"), log
            assert password not in log
            answer = call(mosquitto.url, fleet, DEVICE, "set_brightness", {"level": 55}, 10)
            assert answer == {"on": True, "brightness": 55}
    finally:
        out.unlink(missing_ok=True)


def raspi3b_missing() -> str | None:
    """None when qemu-system-aarch64 here has the raspi3b machine, else why not."""
    exe = shutil.which("qemu-system-aarch64")
    if exe is None:
        return "qemu-system-aarch64 is not installed (Debian: qemu-system-arm)"
    machines = subprocess.run([exe, "-M", "help"], capture_output=True, text=True).stdout
    if not re.search(r"^raspi3b\s", machines, re.M):
        return f"{exe} has no raspi3b machine"
    return None


DTB = "bcm2837-rpi-3-b.dtb"
#: From qemu's start to the agent online: about 110-150 s on a 2-core x86-64 host.
RASPI_ONLINE_TIMEOUT = 420.0
#: The kernel halting (the initramfs's `poweroff -f` when it finds no root: the emulated Pi 3
#: then just stops) or a panic. The initramfs's own message goes to /dev/console, which is tty1
#: (the last console= of cmdline.txt), not this serial console.
BOOT_FAILED = re.compile(r"reboot: (System halted|Power down).*|Kernel panic.*")
LOGIN_PROMPT = f"{DEVICE} login:"


def _pad_to_power_of_two(image: Path) -> int:
    """qemu's SD card must be a power of two in size: grow the file (sparse) to the next one."""
    size = image.stat().st_size
    padded = 1 << (size - 1).bit_length()
    os.truncate(image, padded)
    return padded


@contextlib.contextmanager
def _raspi3b(
    image: Path, folder: Path, append: str, console: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The image as the SD card of an emulated Pi 3 B, with the kernel, initramfs and device tree
    in ``folder``; the PL011 (Bluetooth's UART on a Pi 3) goes nowhere, the mini UART (ttyS1)
    to ``console``, the USB network adapter to qemu's user network (the host is 10.0.2.2)."""
    cmd = [
        "qemu-system-aarch64", "-M", "raspi3b", "-m", "1G", "-smp", "4",
        "-kernel", str(folder / "vmlinuz"), "-initrd", str(folder / "initrd.img"),
        "-dtb", str(folder / DTB), "-append", append,
        "-drive", f"if=sd,format=raw,file={image}",
        "-display", "none", "-monitor", "none", "-serial", "null", "-serial", f"file:{console}",
        "-no-reboot", "-device", "usb-net,netdev=n0", "-netdev", "user,id=n0",
    ]  # fmt: skip
    with open(folder / "qemu.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").replace("\r", "")
    except OSError:
        return ""


def _kernel_time(console: str, pattern: str) -> float | None:
    found = re.search(r"^\[\s*(\d+\.\d+)\] " + pattern, console, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.skipif(raspi3b_missing() is not None, reason=str(raspi3b_missing()))
def test_raspi3b_boots_the_image_from_its_sd_card(built: Built, mosquitto: Mosquitto) -> None:
    """Last: it boots the built image itself (padded, not an overlay), as an emulated Raspberry
    Pi 3 Model B reads its SD card: the busybox initramfs finds the card (bcm2835 sdhost) and
    mounts the root from mmcblk0p2, systemd runs its first boot on it, and the agent comes online
    over the board's USB (qemu's usb-net on the dwc2 controller) and answers. qemu loads the
    kernel, initramfs and device tree itself (copied from the image, with the image's own
    cmdline.txt plus ``ip=usb0:dhcp``: the emulated adapter is usb0, which the image's network
    file, ``en*``/``eth*`` as a real Pi's Ethernet, does not match): the GPU firmware,
    config.txt and the Pi 4 board are not exercised. The console read is the image's own
    ``console=ttyS1`` (the mini UART: qemu's second serial port)."""
    image, s = built.image, built.summary
    boot_at, root_at = s["partitions"]["boot"]["offset"], s["partitions"]["root"]["offset"]
    assert _debugfs(image, root_at, "cat /etc/machine-id") == ""  # made by the first boot
    folder = built.work / "raspi3b"
    folder.mkdir()
    for name in ("vmlinuz", "initrd.img", DTB, "cmdline.txt"):
        subprocess.run(["mcopy", "-n", "-i", f"{image}@@{boot_at}", f"::/{name}",
                        str(folder / name)], env=MT, check=True)  # fmt: skip
    cmdline = (folder / "cmdline.txt").read_text().strip()
    assert "console=ttyS1" in cmdline  # the console read below is the image's own
    _pad_to_power_of_two(image)
    console_log = folder / "console.log"
    release = None
    t0 = time.monotonic()
    with _raspi3b(image, folder, f"{cmdline} ip=usb0:dhcp", console_log) as qemu:
        while time.monotonic() - t0 < RASPI_ONLINE_TIMEOUT and qemu.poll() is None:
            if BOOT_FAILED.search(_text(console_log)):
                break
            release = announced_release(mosquitto.url, built.fleet, DEVICE)
            if release is not None:
                break
            time.sleep(2)
        online_s = time.monotonic() - t0
        console = _text(console_log)
        assert release == s["release"], (
            f"not online after {online_s:.0f} s (qemu "
            f"{'running' if qemu.poll() is None else f'exited {qemu.returncode}'}): "
            f"{_text(folder / 'qemu.stderr')[-1000:]}\n--- console (ttyS1; the initramfs's and "
            f"systemd's own messages go to tty1) ---\n{console[-4000:]}"
        )
        answer = call(mosquitto.url, built.fleet, DEVICE, "set_brightness", {"level": 30}, 30)
        assert answer == {"on": True, "brightness": 30}
        # A login on the Pi's serial port (serial-getty@ttyS1, from the console= setting).
        deadline = time.monotonic() + 60
        while LOGIN_PROMPT not in console and time.monotonic() < deadline:
            time.sleep(2)
            console = _text(console_log)
        # qemu is stopped, not shut down: what the first boot wrote (/etc/machine-id, checked
        # below) must reach the card first. ext4 allocates a new file's data block only at
        # writeback (delayed allocation), which the kernel starts once dirty data is 30 s old
        # (dirty_expire_centisecs), then commits within 5 s: so 40 s, not two 5-s journal
        # commits (12 s let the id stay in the guest's memory twice in CI, 2026-12-05).
        time.sleep(40)
    # The board, the card found by the initramfs and the root mounted from its second partition.
    assert "Machine model: Raspberry Pi 3 Model B" in console, console[:3000]
    assert re.search(r"mmcblk0: p1 p2", console), console[-4000:]
    mounted = _kernel_time(console, r"EXT4-fs \(mmcblk0p2\): mounted filesystem")
    assert mounted is not None, console[-4000:]
    assert not BOOT_FAILED.search(console)
    assert LOGIN_PROMPT in console, console[-2000:]
    # systemd's first boot ran on the card: it made the machine id the build left empty. qemu was
    # stopped, not shut down: what the guest committed may still sit in the ext4 journal only, so
    # replay it (as the next mount would) before reading the file system from outside.
    subprocess.run(["debugfs", "-w", "-R", "journal_run", f"{image}?offset={root_at}"],
                   capture_output=True, check=True)  # fmt: skip
    machine_id = _debugfs(image, root_at, "cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    print(f"[raspi3b] root mounted from mmcblk0p2 at {mounted:.1f} s (kernel time), agent "
          f"online {online_s:.1f} s after qemu started", file=sys.stderr)  # fmt: skip
