"""`image build --base FILE.img`: synthetic Raspberry Pi OS images customised and read back.

The images are made here the way the real ones are laid out (MBR, FAT boot partition at 4 MiB,
ext4 root), without root or loop devices: sfdisk + mkfs.vfat -C + mcopy, mkfs.ext4 -d, dd. Each
first-boot format has its image (cloud-init with a user-data file; Bookworm with cmdline.txt
only). Results are read back with mtools; the first-boot installer runs against a fake root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
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
from edgeagent.deploy import minisign
from edgeagent.deploy.bundle import verify_bundle
from edgeagent.fleetdir import FleetDir
from edgeagent.images.bootpart import (
    BootPartitionFull,
    ImageBuildError,
    NoBootPartition,
    NotAnImage,
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
    assert 'rm -f "$BOOT/firstrun.sh"' in script
    assert f"sed -i 's| {CMDLINE_HOOK}||g'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert not {"user-data", "meta-data", "network-config"} & boot_names(out)

    boot = extract_boot(out, tmp_path / "boot")
    enrol = json.loads((boot / "edgeagent" / "enrolment.json").read_text())
    assert enrol["credentials"]["files"] == {
        "broker.env": f"EDGEAGENT_BROKER_PASSWORD={password}\n"
    }
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
    bad = [
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
            "installed": True, "device": device, "version": result.version,
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
