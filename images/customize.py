"""``edgeagent image build --base FILE.img[.xz]``: customise a Raspberry Pi OS image.

The steps, in order, each refusing with a message that names what is wrong:

1. check every setting (hostname, user, SSH keys, Wi-Fi, timezone) before any work;
2. copy (or decompress) the base to the output file, created 0600: it will hold a credential;
3. find the FAT boot partition in the MBR (``bootpart``) and the first-boot format it uses
   (``firstboot.detect_format``); read the root partition's ``/etc/os-release`` and Python with
   ``debugfs`` when it can, to build the bundle for the Python the image has;
4. enrol the device (``enrol.prepare``) and build its signed bundle from the secret-free config;
5. check the boot partition has room, then write ``edgeagent/`` (bundle, device tool, installer,
   enrolment) and the first-boot files, and the ``cmdline.txt`` change.

Only the boot partition is written. The summary says what was written where; it holds no secret.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import boards, bundles, firstboot, installer
from .bootpart import (
    SPARE_BYTES,
    BootPartition,
    BootPartitionFull,
    ImageBuildError,
    Partition,
    Progress,
    copy_base,
    parse_mbr,
)
from .enrol import Enrolment, bundle_config_path, issue, prepare
from .firstboot import Settings, Wifi, check_settings, wpa_psk

#: Python of each Raspberry Pi OS release (the bundle's wheels must match the device's).
PYTHON_BY_CODENAME = {"bookworm": "3.11", "trixie": "3.13"}
_LINUX_TYPES = frozenset({0x83})
#: Room kept for the enrolment file (written after the space check: CA, certificate, key).
ENROLMENT_BYTES = 64 * 1024
_PY_DIR = re.compile(r"/python(3\.\d+)/")


@dataclass(slots=True)
class BuildRequest:
    base: Path
    out: Path
    profile: str
    config: Path
    key: Path
    hostname: str | None = None
    user: str = "pi"
    ssh_keys: list[str] = field(default_factory=list)
    wifi_ssid: str | None = None
    wifi_psk: str | None = field(default=None, repr=False)
    country: str | None = None
    timezone: str | None = None
    fleet_dir: Path | None = None
    reenrol: bool = False
    python: str | None = None
    cache: Path | None = None
    log: Callable[[str], None] = lambda _: None
    #: Told how far the long steps are (copying or decompressing the base): see ``Progress``.
    progress: Progress | None = None


@dataclass(frozen=True, slots=True)
class BuildResult:
    image: Path
    format: str
    format_reason: str
    boot: Partition
    python: str
    python_reason: str
    device: str
    fleet: str
    profile: str
    version: str
    releases: dict[str, str]
    """Per profile, its release (one entry unless --device named a family)."""
    notes: list[str]
    bundle_bytes: int
    auth: str
    credential_source: str
    written: list[str]
    free_after: int

    def summary(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "format": self.format,
            "format_reason": self.format_reason,
            "boot_partition": {
                "index": self.boot.index,
                "offset": self.boot.start,
                "bytes": self.boot.size,
                "free_after": self.free_after,
            },
            "python": self.python,
            "python_reason": self.python_reason,
            "device": self.device,
            "fleet": self.fleet,
            "profile": self.profile,
            "release": self.version,
            "releases": self.releases,
            "notes": self.notes,
            "bundle_bytes": self.bundle_bytes,
            "auth": self.auth,
            "credential": self.credential_source,
            "written": self.written,
        }


def settings_for(req: BuildRequest, device: str) -> Settings:
    wifi = None
    if req.wifi_ssid is not None:
        if not req.wifi_psk:
            raise ImageBuildError("--wifi-ssid needs the passphrase in --wifi-psk-env's variable")
        if req.country is None:
            raise ImageBuildError("--wifi-ssid needs --country (the Wi-Fi regulatory domain)")
        wifi = Wifi(req.wifi_ssid, wpa_psk(req.wifi_psk, req.wifi_ssid), req.country)
    elif req.wifi_psk:
        raise ImageBuildError("a Wi-Fi passphrase without --wifi-ssid")
    hostname = req.hostname or re.sub(r"[^a-z0-9-]+", "-", device.lower()).strip("-")[:63]
    return check_settings(
        Settings(
            hostname=hostname,
            user=req.user,
            ssh_keys=tuple(req.ssh_keys),
            timezone=req.timezone,
            wifi=wifi,
            country=req.country,
        )
    )


def root_python(image: Path, fmt: str) -> tuple[str | None, str]:
    """The Python of the image's root filesystem (read with debugfs), else a guess from the
    first-boot format; None when nothing tells (the profile's Python is used)."""
    guess = "3.13" if fmt == "cloudinit" else "3.11"
    why = f"guessed from the {fmt} format"
    if shutil.which("debugfs") is None:
        return guess, why + " (debugfs not installed)"
    with image.open("rb") as f:
        parts = parse_mbr(f.read(512), image.stat().st_size, str(image))
    for p in parts:
        if p.type not in _LINUX_TYPES:
            continue
        target = f"{image}?offset={p.start}"

        def debugfs(request: str, target: str = target) -> str:
            proc = subprocess.run(["debugfs", "-R", request, target], capture_output=True,
                                  text=True, timeout=60, check=False)  # fmt: skip
            return proc.stdout if proc.returncode == 0 else ""

        listing = debugfs("ls -p /usr/lib")
        versions = sorted(
            (m.group(1) for m in _PY_DIR.finditer(listing)),
            key=lambda v: tuple(int(x) for x in v.split(".")),
        )
        if versions:
            return versions[-1], f"/usr/lib/python{versions[-1]} on partition {p.index}"
        release = debugfs("cat /etc/os-release")
        m = re.search(r"^VERSION_CODENAME=\"?(\w+)", release, re.M)
        if m and m.group(1) in PYTHON_BY_CODENAME:
            return PYTHON_BY_CODENAME[m.group(1)], f"{m.group(1)} (os-release, partition {p.index})"
    return guess, why + " (no readable root filesystem)"


def read_inputs(config: Path, key: Path) -> tuple[str, str]:
    """The signing key's public key (text) and the config's device id; ImageBuildError naming
    the option that is wrong."""
    from ..config import load_config
    from ..deploy import minisign
    from ..errors import ConfigError

    if not config.is_file():
        raise ImageBuildError(f"--config {config}: no such file")
    try:
        public = minisign.SecretKey.from_file(key).public_key().to_text()
    except FileNotFoundError as exc:
        raise ImageBuildError(
            f"--key {key}: no such signing key (make one with `edgeagent keys generate`)"
        ) from exc
    except minisign.SignatureError as exc:
        raise ImageBuildError(f"--key {key}: {exc}") from exc
    try:
        return public, load_config(config).device
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc


def build(req: BuildRequest) -> BuildResult:
    """Customise ``req.base`` into ``req.out`` (see the module docstring)."""

    log = req.log
    public, device = read_inputs(req.config, req.key)
    settings = settings_for(req, device)
    enrolment = prepare(req.config, [public], fleet_dir=req.fleet_dir, reenrol=req.reenrol)

    log(f"copying {req.base} to {req.out}")
    copy_base(req.base, req.out, req.progress)
    try:
        return _customize(req, settings, enrolment)
    except BaseException:
        req.out.unlink(missing_ok=True)  # no half-customised image left behind
        raise


def _customize(req: BuildRequest, settings: Settings, enrolment: Enrolment) -> BuildResult:
    from ..deploy import devicetool, remote_verify
    from ..devices import list_profiles

    log = req.log
    device = str(enrolment.data["device"])
    boot = BootPartition.open(req.out)
    names = boot.listing()
    raw_cmdline = boot.read_file("cmdline.txt")
    cmdline = raw_cmdline.decode(errors="replace") if raw_cmdline is not None else None
    fmt, reason = firstboot.detect_format(names, cmdline)
    log(f"boot partition {boot.partition.index}: first boot by {fmt}: {reason}")
    python, py_reason = (req.python, "--python") if req.python else root_python(req.out, fmt)
    target = boards.targets(req.profile, list_profiles(include_user=True), names)
    for note in target.notes:
        log(f"--device {req.profile}: {note}")

    log(f"credential from {enrolment.source} ({enrolment.auth}); Python {python} ({py_reason})")
    derived = bundle_config_path(req.config)
    with tempfile.TemporaryDirectory(prefix="edgeagent-image-") as tmp:
        work = Path(tmp)
        stage = work / firstboot.FOLDER
        try:
            derived.write_text(enrolment.config_text)
            staged = bundles.stage(
                derived, target.profiles, target.family, stage / installer.BUNDLE, work,
                key=req.key, python=python, cache=req.cache, log=log,
            )  # fmt: skip
        finally:
            derived.unlink(missing_ok=True)
        manifest = staged.manifests[staged.first]
        shutil.copyfile(devicetool.__file__, stage / installer.TOOL)
        shutil.copyfile(remote_verify.__file__, stage / installer.VERIFY)
        shutil.copyfile(installer.__file__, stage / firstboot.INSTALLER)

        files: dict[str, bytes] = {}
        assert cmdline is not None or fmt == "cloudinit"
        if fmt == "cloudinit":
            files["user-data"] = firstboot.user_data(settings).encode()
            files["network-config"] = firstboot.network_config(settings).encode()
            instance = f"edgeagent-{device}-{manifest['content_sha256'][:12]}"
            files["meta-data"] = firstboot.meta_data(settings, instance).encode()
            if cmdline is not None:
                files["cmdline.txt"] = firstboot.with_nocloud(cmdline).encode()
        else:
            assert cmdline is not None
            files["firstrun.sh"] = firstboot.firstrun_sh(settings).encode()
            files["cmdline.txt"] = firstboot.with_hook(cmdline).encode()

        cluster = boot.cluster_bytes()
        needed = (
            _tree_bytes(stage, cluster)
            + sum(len(d) for d in files.values())
            + ENROLMENT_BYTES
            + SPARE_BYTES
        )
        free = boot.free_bytes() + _replaced_bytes(boot, names, files)
        if needed > free:
            raise BootPartitionFull(
                f"{req.out}: boot partition {boot.partition.index} has {free // 1024} KiB free, "
                f"the bundle and first-boot files need {needed // 1024} KiB (bundle "
                f"{staged.store_bytes // 1024} KiB): use a smaller bundle or a larger boot "
                "partition"
            )
        if req.fleet_dir is not None:
            issue(enrolment, req.config, req.fleet_dir, req.reenrol)
            log(f"enrolled: {enrolment.source}")
        profile = target.family or str(manifest["profile"])
        choices = staged.enrolment_profiles(target.profiles)
        enrol_json = enrolment.to_json(staged.releases[staged.first], profile, choices)
        _write_private(stage / installer.ENROLMENT, enrol_json)
        log(f"writing {firstboot.FOLDER}/ and {', '.join(sorted(files))} to the boot partition")
        boot.put_tree(stage, firstboot.FOLDER)
        for name, data in sorted(files.items()):
            boot.write_file(name, data, work)
        written = [f"{firstboot.FOLDER}/{p}" for p in _listing(stage)] + sorted(files)
    return BuildResult(
        image=req.out,
        format=fmt,
        format_reason=reason,
        boot=boot.partition,
        python=python or "",
        python_reason=py_reason,
        device=device,
        fleet=str(enrolment.data["fleet"]),
        profile=profile,
        version=staged.releases[staged.first],
        releases=staged.releases,
        notes=list(target.notes),
        bundle_bytes=staged.store_bytes,
        auth=enrolment.auth,
        credential_source=enrolment.source,
        written=written,
        free_after=boot.free_bytes(),
    )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(data)


def _tree_bytes(folder: Path, cluster: int) -> int:
    """What a folder takes on FAT: each file and folder in whole clusters."""
    total = 0
    for p in folder.rglob("*"):
        total += cluster if p.is_dir() else -(-p.stat().st_size // cluster) * cluster
    return total


def _replaced_bytes(boot: BootPartition, names: list[str], files: dict[str, bytes]) -> int:
    """Room freed by files the build replaces (first-boot files already on the partition)."""
    total = 0
    for name in files:
        if name.lower() in names:
            data = boot.read_file(name)
            total += len(data) if data is not None else 0
    return total


def _listing(folder: Path) -> list[str]:
    top = sorted(p.relative_to(folder).as_posix() for p in folder.iterdir())
    return [f"{t}/" if (folder / t).is_dir() else t for t in top]
