"""`image build --base FILE.img`: synthetic Raspberry Pi OS images customised and read back.

The images are made here the way the real ones are laid out (MBR, FAT boot partition at 4 MiB,
ext4 root), without root or loop devices: sfdisk + mkfs.vfat -C + mcopy, mkfs.ext4 -d, dd. Each
first-boot format has its image (cloud-init with a user-data file; Bookworm with cmdline.txt
only). Results are read back with mtools; the first-boot installer runs against a fake root.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from edgeagent.cli_image_build import build as build_cmd
from edgeagent.config import load_config
from edgeagent.deploy import minisign
from edgeagent.deploy.bundle import verify_bundle
from edgeagent.fleetdir import FleetDir
from edgeagent.images import batch
from edgeagent.images.bootpart import (
    BootPartitionFull,
    ImageBuildError,
    NoBootPartition,
    NotAnImage,
    copy_base,
)
from edgeagent.images.customize import BuildRequest, build
from edgeagent.images.firstboot import CMDLINE_HOOK
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import announced_release, make_app

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mdir", "mkfs.ext4", "debugfs")
_missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(
        bool(_missing), reason=f"missing {', '.join(_missing)} (mtools, dosfstools, fdisk)"
    ),
    pytest.mark.timeout(600),
]

MiB = 1024 * 1024
BOOT_START = 4 * MiB
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=deadbeef-02 rootfstype=ext4 rootwait\n"
# IEEE 802.11i-2004, annex H.4: passphrase "password", SSID "IEEE".
WIFI_SSID, WIFI_PASS = "IEEE", "password"
WIFI_PSK = "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
PROFILE = "x86-64"  # the installer test installs the bundle on this machine
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2bmVr0fTc5l8nOe3mZ6dTwYt0e6r5P6c2Ko7b2wR1H me@laptop"
)
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def make_image(
    path: Path,
    boot_files: dict[str, str],
    *,
    boot_mib: int = 64,
    fat: bool = True,
    python_dir: str | None = "python3.11",
) -> Path:
    """An MBR image: a FAT boot partition holding ``boot_files`` and an ext4 root."""
    root_mib = 8
    size = BOOT_START + (boot_mib + root_mib) * MiB
    with path.open("wb") as f:
        f.truncate(size)
    boot_sectors = boot_mib * MiB // 512
    table = (
        f"label: dos\nstart={BOOT_START // 512}, size={boot_sectors}, type={'c' if fat else '83'}\n"
        f"start={BOOT_START // 512 + boot_sectors}, type=83\n"
    )
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    work = path.with_suffix(".parts")
    work.mkdir()
    part = work / "boot.part"
    if fat:
        subprocess.run(["mkfs.vfat", "-C", str(part), str(boot_mib * 1024)], check=True,
                       capture_output=True)  # fmt: skip
        for name, text in boot_files.items():
            (work / name).write_text(text)
            subprocess.run(["mcopy", "-i", str(part), str(work / name), f"::/{name}"],
                           check=True, env=MT)  # fmt: skip
    else:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(part), f"{boot_mib}M"], check=True)
    rootdir = work / "root"
    (rootdir / "etc").mkdir(parents=True)
    (rootdir / "etc" / "os-release").write_text("VERSION_CODENAME=bookworm\nID=debian\n")
    if python_dir:
        (rootdir / "usr" / "lib" / python_dir).mkdir(parents=True)
    rootfs = work / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootdir), str(rootfs), f"{root_mib}M"],
                   check=True)  # fmt: skip
    for src, start in ((part, BOOT_START), (rootfs, BOOT_START + boot_mib * MiB)):
        subprocess.run(["dd", f"if={src}", f"of={path}", "bs=1M", f"seek={start // MiB}",
                        "conv=notrunc", "status=none"], check=True)  # fmt: skip
    shutil.rmtree(work)
    return path


def mread(image: Path, name: str) -> str:
    out = subprocess.run(["mtype", "-i", f"{image}@@{BOOT_START}", f"::/{name}"], env=MT,
                         capture_output=True, check=True)  # fmt: skip
    return out.stdout.decode()


def boot_names(image: Path) -> set[str]:
    out = subprocess.run(["mdir", "-b", "-i", f"{image}@@{BOOT_START}", "::/"], env=MT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return {line.rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line}


def extract_boot(image: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["mcopy", "-s", "-n", "-i", f"{image}@@{BOOT_START}", "::/*", str(dest)],
                   env=MT, check=True, capture_output=True)  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("keys")
    key, pub = work / "fleet.key", work / "fleet.pub"
    minisign.generate_keypair(key, pub)
    return key, pub


def request(base: Path, out: Path, config: Path, key: Path, **kw: object) -> BuildRequest:
    return BuildRequest(base=base, out=out, profile=PROFILE, config=config, key=key, **kw)  # type: ignore[arg-type]


def test_cloudinit_image_with_a_fleet_certificate(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    fleet = f"t{uuid.uuid4().hex[:8]}"
    config = make_app(tmp_path / "app", device="lamp-1", fleet=fleet,
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    fleet_dir = tmp_path / "fleet"
    FleetDir.create(fleet_dir, fleet=fleet, hosts=["hub.lan"])
    base = make_image(tmp_path / "trixie.img", {
        "cmdline.txt": CMDLINE, "config.txt": "arm_64bit=1\n",
        "user-data": "#cloud-config\n# the image's default\n",
    })  # fmt: skip
    out = tmp_path / "lamp.img"
    lines: list[str] = []
    result = build(request(
        base, out, config, key, hostname="lamp-kitchen", ssh_keys=[SSH_KEY], wifi_ssid=WIFI_SSID,
        wifi_psk=WIFI_PASS, country="GB", timezone="Europe/London", fleet_dir=fleet_dir,
        log=lines.append,
    ))  # fmt: skip
    assert result.format == "cloudinit"
    assert "user-data" in result.format_reason
    assert result.python == "3.11"
    assert "python3.11" in result.python_reason
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert mread(base, "user-data") == "#cloud-config\n# the image's default\n"

    user_data = mread(out, "user-data")
    assert user_data.startswith("#cloud-config\n")
    ud = yaml.safe_load(user_data)
    assert ud["hostname"] == "lamp-kitchen"
    assert ud["timezone"] == "Europe/London"
    assert ud["users"][0]["name"] == "pi"
    assert ud["users"][0]["ssh_authorized_keys"] == [SSH_KEY]
    assert ud["runcmd"][-1] == ["python3", "-S", "/boot/firmware/edgeagent/edgeagent-firstboot.py",
                                "--boot", "/boot/firmware"]  # fmt: skip
    net = yaml.safe_load(mread(out, "network-config"))["network"]
    assert net["wifis"]["wlan0"]["access-points"] == {WIFI_SSID: {"password": WIFI_PSK}}
    assert net["wifis"]["wlan0"]["regulatory-domain"] == "GB"
    meta = yaml.safe_load(mread(out, "meta-data"))
    assert meta["local-hostname"] == "lamp-kitchen"
    assert meta["instance-id"].startswith("edgeagent-lamp-1-")
    cmdline = mread(out, "cmdline.txt")
    assert cmdline.count("\n") == 1
    assert cmdline.split().count("ds=nocloud") == 1
    assert "systemd.run" not in cmdline
    assert "firstrun.sh" not in boot_names(out)

    boot = extract_boot(out, tmp_path / "boot")
    folder = boot / "edgeagent"
    manifest, signer = verify_bundle(folder / "bundle", [pub])
    assert manifest["device"] == "lamp-1"
    assert manifest["version"] == result.version
    assert signer == minisign.PublicKey.from_file(pub).key_id_hex
    enrol = json.loads((folder / "enrolment.json").read_text())
    assert (enrol["device"], enrol["fleet"], enrol["release"]) == ("lamp-1", fleet, result.version)
    assert enrol["broker"]["url"] == "mqtts://hub.lan:8883"
    assert enrol["trusted_keys"] == [minisign.PublicKey.from_file(pub).to_text()]
    files = enrol["credentials"]["files"]
    cert = x509.load_pem_x509_certificate(files["lamp-1.crt"].encode())
    ca = x509.load_pem_x509_certificate((fleet_dir / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert files["ca.crt"] == (fleet_dir / "ca.crt").read_text()
    identity = FleetDir.open(fleet_dir).registry.get("lamp-1")
    assert identity is not None
    assert int(identity.serial or "0", 16) == cert.serial_number
    # The bundle's config points at the files the first boot writes; no key material in it.
    config_entry = next(f for f in manifest["files"] if f["path"] == "app/agent.yaml")
    agent_yaml = yaml.safe_load((folder / "bundle" / "files" / config_entry["sha256"]).read_text())
    assert agent_yaml["broker"] == {
        "url": "mqtts://hub.lan:8883",
        "tls": {"ca_file": "/etc/edgeagent/lamp-1/ca.crt",
                "cert_file": "/etc/edgeagent/lamp-1/lamp-1.crt",
                "key_file": "/etc/edgeagent/lamp-1/lamp-1.key"},
    }  # fmt: skip
    secret_key = files["lamp-1.key"].strip().splitlines()[1]
    for p in boot.rglob("*"):
        if p.is_file() and p.name != "enrolment.json":
            data = p.read_bytes()
            assert secret_key.encode() not in data, p
    assert WIFI_PASS.encode() + b"\n" not in out.read_bytes()
    assert secret_key not in "\n".join(lines)
    assert not list(config.parent.glob(".*.yaml"))  # the build's config is gone

    # Enrolled already: refused unless --reenrol, which retires the old certificate.
    with pytest.raises(ImageBuildError, match="--reenrol"):
        build(request(base, tmp_path / "again.img", config, key, fleet_dir=fleet_dir))
    build(request(base, tmp_path / "again.img", config, key, fleet_dir=fleet_dir, reenrol=True))
    assert format(cert.serial_number, "x") in FleetDir.open(fleet_dir).registry.retired


def test_bookworm_image_from_xz_through_the_cli(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    config = tmp_path / "app" / "lamp.yaml"
    make_app(tmp_path / "app", device="lamp-2", fleet="home",
             broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    text = config.read_text().replace(
        "broker: mqtt://127.0.0.1:1",
        "broker: {url: 'mqtt://127.0.0.1:1', username: lamp-2, password_env: LAMP_PW}",
    )
    config.write_text(text)
    password = "pw-" + uuid.uuid4().hex
    passphrase = "wifi-" + uuid.uuid4().hex
    psk = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), b"Home Net", 4096, 32).hex()
    img = make_image(tmp_path / "bookworm.img", {"cmdline.txt": CMDLINE, "config.txt": "x=1\n"})
    xz = tmp_path / "bookworm.img.xz"
    xz.write_bytes(lzma.compress(img.read_bytes(), preset=0))
    img.unlink()
    ssh = tmp_path / "id.pub"
    ssh.write_text(SSH_KEY + "\n")
    out = tmp_path / "out.img"
    env = {"LAMP_PW": password, "MY_PSK": passphrase}
    args = ["--base", str(xz), "--device", PROFILE, "--config", str(config), "--key", str(key),
            "--ssh-key", str(ssh), "--wifi-ssid", "Home Net", "--wifi-psk-env", "MY_PSK",
            "--country", "FR", "--timezone", "Europe/Paris", "--user", "maker",
            "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(build_cmd, [*args, "--json"], env=env)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["format"] == "firstrun"
    assert summary["auth"] == "password"
    assert password not in res.output
    assert passphrase not in res.output

    cmdline = mread(out, "cmdline.txt")
    assert cmdline == CMDLINE.strip() + " " + CMDLINE_HOOK + "\n"
    script = mread(out, "firstrun.sh")
    assert script.startswith("#!/bin/bash\n")
    assert "set_hostname lamp-2" in script
    assert "userconf maker" in script
    assert f"set_wlan 'Home Net' {psk} FR" in script
    assert passphrase not in script
    assert '"$BOOT/edgeagent/edgeagent-firstboot.py" --boot "$BOOT"' in script
    # Removing itself is the last line, whole (bash reads a line before running it).
    assert script.endswith(
        '\nshred -u "$BOOT/firstrun.sh" 2>/dev/null || rm -f "$BOOT/firstrun.sh"; exit 0\n'
    )
    assert f"sed -i 's| {CMDLINE_HOOK}||g'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert not {"user-data", "meta-data", "network-config"} & boot_names(out)

    boot = extract_boot(out, tmp_path / "boot")
    enrol = json.loads((boot / "edgeagent" / "enrolment.json").read_text())
    files = enrol["credentials"]["files"]
    assert set(files) == {"broker.env", "broker.yaml"}
    assert files["broker.env"] == f"EDGEAGENT_BROKER_PASSWORD={password}\n"
    # The device's own broker settings (read through EDGEAGENT_BROKER_CONFIG): no secret.
    assert yaml.safe_load(files["broker.yaml"]) == {"broker": {
        "url": "mqtt://127.0.0.1:1", "username": "lamp-2",
        "password_env": "EDGEAGENT_BROKER_PASSWORD",
    }}  # fmt: skip
    assert enrol["broker"] == {
        "url": "mqtt://127.0.0.1:1",
        "auth": "password",
        "username": "lamp-2",
    }
    for p in boot.rglob("*"):
        if p.is_file() and p.name != "enrolment.json":
            assert password.encode() not in p.read_bytes(), p
    assert passphrase.encode() not in out.read_bytes()
    verify_bundle(boot / "edgeagent" / "bundle", [pub])

    # Customising the customised image again: the hook is still there exactly once.
    again = tmp_path / "again.img"
    res = CliRunner().invoke(build_cmd, ["--base", str(out), *args[2:-1], str(again)],
                             env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "first boot: firstrun" in res.output
    assert mread(again, "cmdline.txt").count(CMDLINE_HOOK) == 1
    assert mread(again, "cmdline.txt").count("\n") == 1


def test_refusals_name_what_is_missing(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, _ = keys
    config = make_app(tmp_path / "app", device="lamp-3", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(NotAnImage, match="no MBR partition table"):
        build(request(junk, tmp_path / "o1.img", config, key))
    no_fat = make_image(tmp_path / "nofat.img", {}, fat=False, boot_mib=4)
    with pytest.raises(NoBootPartition, match=r"no FAT boot partition \(partitions 1: type 0x83"):
        build(request(no_fat, tmp_path / "o2.img", config, key))
    no_cmdline = make_image(tmp_path / "empty.img", {"config.txt": "x=1\n"}, boot_mib=8)
    with pytest.raises(NoBootPartition, match=r"no cmdline\.txt"):
        build(request(no_cmdline, tmp_path / "o3.img", config, key))
    small = make_image(tmp_path / "small.img", {"cmdline.txt": CMDLINE}, boot_mib=2)
    fleet_dir = tmp_path / "fleet"
    FleetDir.create(fleet_dir, fleet="home")
    with pytest.raises(BootPartitionFull, match=r"boot partition 1 has \d+ KiB free, .* need"):
        build(request(small, tmp_path / "o4.img", config, key, fleet_dir=fleet_dir))
    assert not (tmp_path / "o4.img").exists()  # no half-customised image
    assert FleetDir.open(fleet_dir).registry.get("lamp-3") is None  # and nobody enrolled
    truncated = tmp_path / "cut.img"
    truncated.write_bytes((tmp_path / "empty.img").read_bytes()[: 6 * MiB])
    with pytest.raises(NotAnImage, match="past the end of the file"):
        build(request(truncated, tmp_path / "o5.img", config, key))
    bad: list[tuple[dict[str, object], str]] = [
        ({"hostname": "Bad_Host"}, "--hostname"),
        ({"wifi_ssid": "x", "wifi_psk": "short", "country": "GB"}, "8 to 63"),
        ({"wifi_ssid": "x", "wifi_psk": WIFI_PASS}, "--country"),
        ({"ssh_keys": ["not a key"]}, "--ssh-key"),
        ({"timezone": "Europe/Paris; rm -rf /"}, "--timezone"),
    ]
    for kw, message in bad:
        with pytest.raises(ImageBuildError, match=message):
            build(request(no_cmdline, tmp_path / "o6.img", config, key, **kw))
    assert not (tmp_path / "o6.img").exists()  # refused before any copy
    res = CliRunner().invoke(build_cmd, ["--base", str(junk), "--device", PROFILE, "--config",
                                         str(config), "--key", str(key), "-o",
                                         str(tmp_path / "o7.img")])  # fmt: skip
    assert res.exit_code == 1
    assert "error:" in res.output
    assert "no MBR partition table" in res.output
    assert "Traceback" not in res.output


def _world_readable_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and p.stat().st_mode & stat.S_IROTH]  # fmt: skip


@pytest.mark.slow
@pytest.mark.broker
def test_first_boot_installer_on_a_fake_root(
    tmp_path: Path, keys: tuple[Path, Path], mosquitto: Mosquitto
) -> None:
    key, _ = keys
    fleet = f"t{uuid.uuid4().hex[:8]}"
    device = f"lamp-{uuid.uuid4().hex[:6]}"
    config = make_app(tmp_path / "app", device=device, fleet=fleet, broker=mosquitto.url,
                      profile=PROFILE)  # fmt: skip
    password = "pw-" + uuid.uuid4().hex
    config.write_text(config.read_text().replace(
        f"broker: {mosquitto.url}",
        f"broker: {{url: '{mosquitto.url}', username: {device}, password: {password}}}",
    ))  # fmt: skip
    base = make_image(tmp_path / "trixie.img", {"cmdline.txt": CMDLINE, "meta-data": "x: 1\n"})
    out = tmp_path / "out.img"
    result = build(request(base, out, config, key, wifi_ssid=WIFI_SSID, wifi_psk=WIFI_PASS,
                           country="GB"))  # fmt: skip
    boot = extract_boot(out, tmp_path / "boot")
    assert (boot / "network-config").is_file()
    fake = tmp_path / "fake-root"
    installer = [sys.executable, "-S", str(boot / "edgeagent" / "edgeagent-firstboot.py"),
                 "--boot", str(boot), "--root", str(fake)]  # fmt: skip
    opt = fake / "opt" / "edgeagent"
    try:
        proc = subprocess.run(installer, capture_output=True, text=True, timeout=500, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert password not in proc.stdout + proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1]) == {
            "installed": True, "device": device, "version": result.version, "profile": PROFILE,
        }  # fmt: skip
        assert os.readlink(opt / "current") == f"releases/{result.version}"
        assert (opt / "releases" / result.version / ".complete").is_file()
        assert not (opt / "pending.json").exists()  # the first release is committed
        systemd = fake / "etc" / "systemd" / "system"
        unit = (systemd / "edgeagent@.service").read_text()
        assert "User=edgeagent" in unit
        assert f"ExecStart={opt}/current/venv/bin/edgeagent agent run agent.yaml" in unit
        wants = systemd / "multi-user.target.wants" / f"edgeagent@{device}.service"
        assert os.readlink(wants) == "../edgeagent@.service"
        drop_in = systemd / f"edgeagent@{device}.service.d" / "edgeagent-credentials.conf"
        assert f"EnvironmentFile=/etc/edgeagent/{device}/broker.env" in drop_in.read_text()
        broker_yaml = f"EDGEAGENT_BROKER_CONFIG=/etc/edgeagent/{device}/broker.yaml"
        assert f"Environment={broker_yaml}" in drop_in.read_text()
        creds = fake / "etc" / "edgeagent" / device
        assert stat.S_IMODE(creds.stat().st_mode) == 0o700
        env_file = creds / "broker.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert env_file.read_text() == f"EDGEAGENT_BROKER_PASSWORD={password}\n"
        # Secrets gone from the boot partition, and from every world-readable file.
        assert not (boot / "edgeagent" / "enrolment.json").exists()
        assert not (boot / "network-config").exists()
        assert not (boot / "edgeagent" / "bundle").exists()
        assert (boot / "user-data").is_file()
        readable = _world_readable_files(fake) + _world_readable_files(boot)
        assert readable
        for p in readable:
            if p.stat().st_size < 4 * MiB:
                assert password.encode() not in p.read_bytes(), p
        # The agent runs the release, with its password from the credential file.
        deadline = time.monotonic() + 60
        while announced_release(mosquitto.url, fleet, device) != result.version:
            assert time.monotonic() < deadline, (opt / "log" / "agent.log").read_text()
            time.sleep(0.5)
        pid = int((opt / "run" / "agent.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"EDGEAGENT_BROKER_PASSWORD={password}".encode() in environ
        broker_file = creds / "broker.yaml"
        assert f"EDGEAGENT_BROKER_CONFIG={broker_file}".encode() in environ
        assert stat.S_IMODE(broker_file.stat().st_mode) == 0o600
        # A second run finds nothing to do.
        again = subprocess.run(installer, capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stdout
        assert "already installed" in again.stdout
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int((opt / "run" / "agent.pid").read_text()), signal.SIGKILL)

    # A tampered bundle: refused by the device tool, nothing switched, the secrets removed all
    # the same, and no "installed" mark.
    boot2 = extract_boot(out, tmp_path / "boot2")
    store = boot2 / "edgeagent" / "bundle" / "files"
    victim = next(p for p in sorted(store.iterdir()) if p.stat().st_size < 100_000)
    victim.write_bytes(victim.read_bytes() + b"\n# changed\n")
    fake2 = tmp_path / "fake-root-2"
    proc = subprocess.run([*installer[:4], str(boot2), "--root", str(fake2)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    assert "failed: device tool `ingest`" in proc.stdout
    assert "does not match its hash" in proc.stdout
    assert not (fake2 / "opt" / "edgeagent" / "current").exists()
    assert not (boot2 / "edgeagent" / "enrolment.json").exists()
    assert not (boot2 / "network-config").exists()
    assert not (boot2 / "edgeagent" / "installed.json").exists()
    assert password not in proc.stdout + proc.stderr


# --- Many devices: --count N --name PATTERN --------------------------------------------------


def test_device_ids_from_a_pattern() -> None:
    assert batch.device_ids("lamp-{n}", 3) == ["lamp-1", "lamp-2", "lamp-3"]
    assert batch.device_ids("lamp-{n:02d}", 3, start=9) == ["lamp-09", "lamp-10", "lamp-11"]
    assert batch.device_ids("{n}.hall", 1, start=0) == ["0.hall"]
    refused = [
        (("lamp", 2), r"has no \{n\}"),
        (("lamp", 1), r"has no \{n\}"),
        (("lamp-{}", 2), r"unknown field \{\}"),
        (("lamp-{device}", 2), r"unknown field \{device\}"),
        (("lamp-{n.real}", 2), r"unknown field \{n\.real\}"),
        (("lamp-{n", 2), "not a format pattern"),
        (("lamp-{n:s}", 2), "Unknown format code 's'"),
        (("lamp {n}", 2), r"invalid device ids: 'lamp 1', 'lamp 2'"),
        (("lamp/{n}", 1), r"invalid device ids: 'lamp/1'"),
        # 9, 10, 11 cut to one character: '9', '1', '1'
        (("lamp-{n!s:.1}", 3, 9), r"the same id to several devices: 'lamp-1'"),
        (("lamp-{n}", 0), "from 1 to 1000"),
        (("lamp-{n}", 1001), "from 1 to 1000"),
    ]
    for args, message in refused:
        with pytest.raises(ImageBuildError, match=message):
            batch.device_ids(*args)  # type: ignore[arg-type]
    many = batch.device_ids("x{n}", 1000)
    assert len(set(many)) == 1000
    assert many[-1] == "x1000"


def test_output_paths_and_host_names(tmp_path: Path) -> None:
    base = tmp_path / "raspios.img.xz"
    two = [(1, "lamp-1"), (2, "lamp-2")]
    assert batch.output_paths(None, base, two) == [
        tmp_path / "raspios-lamp-1.img",
        tmp_path / "raspios-lamp-2.img",
    ]
    out = tmp_path / "images"
    assert batch.output_paths(out, base, two) == [out / "lamp-1.img", out / "lamp-2.img"]
    assert batch.output_paths(out / "one.img", base, two[:1]) == [out / "one.img"]
    assert batch.output_paths(out / "{device}.img", base, two[:1]) == [out / "lamp-1.img"]
    assert batch.output_paths(out / "{n:03d}" / "{device}.img", base, two) == [
        out / "001" / "lamp-1.img",
        out / "002" / "lamp-2.img",
    ]
    with pytest.raises(ImageBuildError, match=r"written to one file: lamp-1 and lamp-2"):
        batch.output_paths(out / "lamp-{n!s:.0}.img", base, two)
    with pytest.raises(ImageBuildError, match=r"unknown field \{name\}"):
        batch.output_paths(out / "{name}.img", base, two)
    plain = tmp_path / "plain.img"
    with pytest.raises(ImageBuildError, match="would be the base image itself"):
        batch.output_paths(tmp_path / "{device}.img", plain, [(1, "plain")])
    # Outputs from --base debian go to the current folder, named after "debian".
    assert batch.output_paths(None, Path("debian"), two[:1]) == [Path("debian-lamp-1.img")]

    assert batch.hostnames(None, two) == [None, None]
    assert batch.hostnames("kitchen-{n}", two) == ["kitchen-1", "kitchen-2"]
    assert batch.hostnames("h-{device}", two) == ["h-lamp-1", "h-lamp-2"]
    assert batch.hostnames("kitchen", two[:1]) == ["kitchen"]
    with pytest.raises(ImageBuildError, match="would name all 2 devices the same"):
        batch.hostnames("kitchen", two)


def test_plan_checks_everything_first(tmp_path: Path) -> None:
    base = tmp_path / "b.img"
    images = batch.plan(config_device="lamp", base=base, out=tmp_path / "o", count=2,
                        name="lamp-{n}", start=5, hostname="{device}-host")  # fmt: skip
    assert images == [
        batch.Planned(5, "lamp-5", tmp_path / "o" / "lamp-5.img", "lamp-5-host"),
        batch.Planned(6, "lamp-6", tmp_path / "o" / "lamp-6.img", "lamp-6-host"),
    ]
    # --count 1 without --name: the config's own device; --name without --count: one image.
    assert batch.plan(config_device="lamp", base=base, out=None) == [
        batch.Planned(1, "lamp", tmp_path / "b-lamp.img", None)
    ]
    assert [p.device for p in batch.plan(config_device="x", base=base, out=None,
                                         name="hall-{n}", start=7)] == ["hall-7"]  # fmt: skip
    with pytest.raises(ImageBuildError, match=r"--count 3 needs --name PATTERN .*'lamp'"):
        batch.plan(config_device="lamp", base=base, out=None, count=3)
    with pytest.raises(ImageBuildError, match="--start -1"):
        batch.plan(config_device="lamp", base=base, out=None, name="l{n}", start=-1)


def test_config_for_a_device_is_beside_and_removed(tmp_path: Path) -> None:
    config = make_app(tmp_path / "app", device="lamp", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    with batch.config_for(config, "lamp-7") as derived:
        assert derived.parent == config.parent.resolve()
        assert derived.name.startswith(".")
        assert stat.S_IMODE(derived.stat().st_mode) == 0o600
        cfg = load_config(derived)
        assert cfg.device == "lamp-7"
        assert [s.module for s in cfg.skills] == [s.module for s in load_config(config).skills]
    assert not derived.exists()
    with pytest.raises(RuntimeError), batch.config_for(config, "lamp-8") as derived:
        raise RuntimeError("build failed")
    assert not derived.exists()
    assert sorted(p.name for p in config.parent.iterdir()) == ["lamp.yaml", "smarthome"]


def test_build_many_keeps_the_images_before_a_failure(tmp_path: Path) -> None:
    config = make_app(tmp_path / "app", device="lamp", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    images = batch.plan(config_device="lamp", base=tmp_path / "b.img", out=tmp_path / "out",
                        count=3, name="lamp-{n}")  # fmt: skip
    seen: list[tuple[str, Path, str | None]] = []
    lines: list[str] = []

    def fake_build(req: BuildRequest) -> str:
        device = load_config(req.config).device
        seen.append((device, req.out, req.hostname))
        if device == "lamp-2":
            raise BootPartitionFull(f"{req.out}: boot partition 1 has 1 KiB free")
        req.out.write_bytes(b"image of " + device.encode())
        return device

    req = request(tmp_path / "b.img", tmp_path / "unused.img", config, tmp_path / "k",
                  log=lines.append)  # fmt: skip
    with pytest.raises(batch.BatchBuildError) as err:
        batch.build_many(req, images, fake_build, config_device="lamp")
    assert [d for d, _, _ in seen] == ["lamp-1", "lamp-2"]  # lamp-3 never started
    assert seen[0][1] == tmp_path / "out" / "lamp-1.img"
    assert (err.value.index, err.value.device) == (2, "lamp-2")
    assert err.value.built == ["lamp-1"]
    assert err.value.not_built == ["lamp-3"]
    message = str(err.value)
    assert message.startswith(f"image 2/3, lamp-2 ({tmp_path / 'out' / 'lamp-2.img'}), failed: ")
    assert "1 KiB free" in message
    assert f"kept): lamp-1 ({tmp_path / 'out' / 'lamp-1.img'})" in message
    assert message.endswith("not built: lamp-3")
    assert (tmp_path / "out" / "lamp-1.img").read_bytes() == b"image of lamp-1"
    assert lines == [f"image 1/3: lamp-1 -> {tmp_path / 'out' / 'lamp-1.img'}",
                     f"image 2/3: lamp-2 -> {tmp_path / 'out' / 'lamp-2.img'}"]  # fmt: skip
    assert sorted(p.name for p in config.parent.iterdir()) == ["lamp.yaml", "smarthome"]

    # The first fails: nothing built, said so.
    def refuse(req: BuildRequest) -> str:
        raise ImageBuildError(f"{req.out}: refused")

    only = [batch.Planned(1, "lamp", tmp_path / "o.img")]
    with pytest.raises(
        batch.BatchBuildError, match=r"image 1/1, lamp .*: refused\. Nothing built$"
    ):
        batch.build_many(req, only, refuse, config_device="lamp")


def test_copy_base_reports_progress(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB) + bytes(MiB) + os.urandom(MiB // 2 + 123)
    plain = tmp_path / "base.img"
    plain.write_bytes(data)
    xz = tmp_path / "base.img.xz"
    xz.write_bytes(lzma.compress(data, preset=0))
    for base, phase in ((plain, "copying"), (xz, "decompressing")):
        calls: list[tuple[str, int, int]] = []
        out = tmp_path / f"out-{phase}.img"
        copy_base(base, out, lambda p, d, t: calls.append((p, d, t)))  # noqa: B023
        assert out.read_bytes() == data
        total = base.stat().st_size
        assert {p for p, _, _ in calls} == {phase}
        assert {t for _, _, t in calls} == {total}
        done = [d for _, d, _ in calls]
        assert len(done) >= 3, calls  # reported as it goes, not only at the end
        assert all(a < b for a, b in itertools.pairwise(done)), done
        assert done[0] > 0
        assert done[-1] == total
    copy_base(plain, tmp_path / "quiet.img")  # no callback: as before
    assert (tmp_path / "quiet.img").read_bytes() == data


def _password_app(folder: Path, device: str) -> Path:
    config = make_app(folder, device=device, fleet="home", broker="mqtt://127.0.0.1:1",
                      profile=PROFILE)  # fmt: skip
    config.write_text(config.read_text().replace(
        "broker: mqtt://127.0.0.1:1",
        "broker: {url: 'mqtt://127.0.0.1:1', username: lamps, password_env: LAMP_PW}",
    ))  # fmt: skip
    return config


def _bundle_config(boot: Path, pub: Path) -> dict[str, object]:
    """The agent.yaml in the image's bundle (the bundle verified first)."""
    folder = boot / "edgeagent" / "bundle"
    manifest, _ = verify_bundle(folder, [pub])
    entry = next(f for f in manifest["files"] if f["path"] == "app/agent.yaml")
    loaded = yaml.safe_load((folder / "files" / entry["sha256"]).read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_count_builds_one_image_per_device(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    config = _password_app(tmp_path / "app", "lamp")
    base = make_image(tmp_path / "bookworm.img", {"cmdline.txt": CMDLINE})
    out = tmp_path / "lamps"
    password = "pw-" + uuid.uuid4().hex
    args = ["--base", str(base), "--device", PROFILE, "--config", str(config), "--key", str(key),
            "--count", "3", "--name", "lamp-{n}", "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(build_cmd, [*args, "--json"], env={"LAMP_PW": password})
    assert res.exit_code == 0, res.output
    summaries = json.loads(res.stdout)
    assert [s["device"] for s in summaries] == ["lamp-1", "lamp-2", "lamp-3"]
    assert [s["image"] for s in summaries] == [str(out / f"lamp-{i}.img") for i in (1, 2, 3)]
    assert len({s["release"] for s in summaries}) == 3  # each its own bundle
    # Named after the user's config, not the derived one (gone by then).
    assert [s["credential"] for s in summaries] == [
        f"the agent config {config} (device lamp-{i})" for i in (1, 2, 3)
    ]
    assert password not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["lamp-1.img", "lamp-2.img", "lamp-3.img"]
    for i in (1, 2, 3):
        device = f"lamp-{i}"
        image = out / f"{device}.img"
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        boot = extract_boot(image, tmp_path / f"boot-{i}")
        enrol = json.loads((boot / "edgeagent" / "enrolment.json").read_text())
        assert (enrol["device"], enrol["release"]) == (device, summaries[i - 1]["release"])
        assert enrol["credentials"]["dir"] == f"/etc/edgeagent/{device}"
        assert enrol["credentials"]["files"]["broker.env"] == (
            f"EDGEAGENT_BROKER_PASSWORD={password}\n"
        )
        manifest, _ = verify_bundle(boot / "edgeagent" / "bundle", [pub])
        assert manifest["device"] == device
        assert _bundle_config(boot, pub)["device"] == device
        assert f"set_hostname {device}\n" in mread(image, "firstrun.sh")  # from the device id
    assert sorted(p.name for p in config.parent.iterdir()) == ["lamp.yaml", "smarthome"]

    # The text summary: one line per image with its file and release.
    again = tmp_path / "again"
    res = CliRunner().invoke(build_cmd, [*args[:-1], str(again / "{device}.img"),
                                         "--start", "7", "--count", "2"],
                             env={"LAMP_PW": password})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 images:" in res.stdout
    for device in ("lamp-7", "lamp-8"):
        line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(device))
        assert str(again / f"{device}.img") in line
        assert "release " in line
    assert "image 1/2: lamp-7 -> " in res.stderr
    assert f"credential from the agent config {config} (device lamp-8)" in res.stderr
    assert ".lamp.lamp-" not in res.output
    assert sorted(p.name for p in again.iterdir()) == ["lamp-7.img", "lamp-8.img"]


def test_count_with_a_fleet_gives_each_its_certificate(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    fleet = f"t{uuid.uuid4().hex[:8]}"
    config = make_app(tmp_path / "app", device="lamp", fleet=fleet,
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    fleet_dir = tmp_path / "fleet"
    FleetDir.create(fleet_dir, fleet=fleet, hosts=["hub.lan"])
    base = make_image(tmp_path / "trixie.img", {"cmdline.txt": CMDLINE, "user-data": "#x\n"})
    out = tmp_path / "out"
    res = CliRunner().invoke(build_cmd, [
        "--base", str(base), "--device", PROFILE, "--config", str(config), "--key", str(key),
        "--fleet-dir", str(fleet_dir), "--count", "3", "--name", "hall-{n:02d}",
        "-o", str(out / "{n}-{device}.img"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [s["device"] for s in json.loads(res.stdout)] == ["hall-01", "hall-02", "hall-03"]
    ca = x509.load_pem_x509_certificate((fleet_dir / "ca.crt").read_bytes())
    registry = FleetDir.open(fleet_dir).registry
    serials = set()
    for i in (1, 2, 3):
        device = f"hall-{i:02d}"
        boot = extract_boot(out / f"{i}-{device}.img", tmp_path / f"boot-{i}")
        enrol = json.loads((boot / "edgeagent" / "enrolment.json").read_text())
        assert enrol["device"] == device
        cert = x509.load_pem_x509_certificate(
            enrol["credentials"]["files"][f"{device}.crt"].encode()
        )
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert [a.value for a in cn] == [device]
        identity = registry.get(device)
        assert identity is not None
        assert int(identity.serial or "0", 16) == cert.serial_number
        serials.add(cert.serial_number)
        assert _bundle_config(boot, pub)["device"] == device
        assert yaml.safe_load(mread(out / f"{i}-{device}.img", "user-data"))["hostname"] == device
    assert len(serials) == 3


def test_count_refusals_build_and_enrol_nothing(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, _ = keys
    config = make_app(tmp_path / "app", device="lamp", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    fleet_dir = tmp_path / "fleet"
    FleetDir.create(fleet_dir, fleet="home")
    FleetDir.open(fleet_dir).enroll("lamp-2", "device")
    FleetDir.open(fleet_dir).enroll("lamp-4", "device")
    base = make_image(tmp_path / "b.img", {"cmdline.txt": CMDLINE})
    out = tmp_path / "out"
    common = ["--base", str(base), "--device", PROFILE, "--config", str(config), "--key",
              str(key), "--fleet-dir", str(fleet_dir), "-o", str(out)]  # fmt: skip
    cases = [
        (["--count", "2", "--name", "lamp"], r"--name 'lamp' has no \{n\}"),
        (["--count", "2", "--name", "lamp {n}"], "invalid device ids: 'lamp 1', 'lamp 2'"),
        (["--count", "3", "--name", "l{n!s:.0}"], "the same id to several devices: 'l'"),
        (["--count", "2"], r"--count 2 needs --name PATTERN"),
        (["--count", "5", "--name", "lamp-{n}"],
         r"already enrolled in .*fleet: lamp-2 \(device\), lamp-4 \(device\): nothing built"),
        (["--count", "2", "--name", "lamp-{n}", "--hostname", "kitchen"], "name all 2 devices"),
        (["--count", "2", "--name", "lamp-{n}", "-o", str(out / "x-{n!s:.0}.img")],
         "several images would be written to one file"),
    ]  # fmt: skip
    for extra, message in cases:
        res = CliRunner().invoke(build_cmd, [*common, *extra])
        assert res.exit_code == 1, (extra, res.output)
        assert re.search(message, res.stderr), (extra, res.stderr)
        assert "Traceback" not in res.output
    res = CliRunner().invoke(build_cmd, [*common, "--start", "3"])
    assert res.exit_code == 2
    assert "--start numbers the ids of --name" in res.output
    res = CliRunner().invoke(build_cmd, [*common, "--count", "0", "--name", "l{n}"])
    assert res.exit_code == 2
    assert not out.exists()  # no image written, no folder made
    registry = FleetDir.open(fleet_dir).registry
    assert sorted(i.name for i in registry.identities) == ["lamp-2", "lamp-4"]  # nobody enrolled
    assert sorted(p.name for p in config.parent.iterdir()) == ["lamp.yaml", "smarthome"]


def test_count_failure_in_the_middle_keeps_the_built_images(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    config = make_app(tmp_path / "app", device="lamp", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile=PROFILE)  # fmt: skip
    base = make_image(tmp_path / "b.img", {"cmdline.txt": CMDLINE})
    out = tmp_path / "out"
    out.mkdir()
    (out / "lamp-2").write_text("a file where lamp-2's folder should be\n")
    res = CliRunner().invoke(build_cmd, [
        "--base", str(base), "--device", PROFILE, "--config", str(config), "--key", str(key),
        "--count", "3", "--name", "lamp-{n}", "-o", str(out / "{device}" / "sd.img"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 1
    assert [s["device"] for s in json.loads(res.stdout)] == ["lamp-1"]  # what was built
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: image 2/3, lamp-2 ({out / 'lamp-2' / 'sd.img'}), failed: ")
    assert f"kept): lamp-1 ({out / 'lamp-1' / 'sd.img'})" in error
    assert error.endswith("not built: lamp-3")
    boot = extract_boot(out / "lamp-1" / "sd.img", tmp_path / "boot")  # complete and valid
    manifest, _ = verify_bundle(boot / "edgeagent" / "bundle", [pub])
    assert manifest["device"] == "lamp-1"
    assert json.loads((boot / "edgeagent" / "enrolment.json").read_text())["device"] == "lamp-1"
    assert not (out / "lamp-3").exists()
    assert sorted(p.name for p in config.parent.iterdir()) == ["lamp.yaml", "smarthome"]
