"""The Debian arm64 root filesystem that ``image build --base debian`` and the test suite's
emulated device (``tests/armvm.py``) are made from: one recipe, one cache.

Debian 12 with systemd, udev, sshd, Python 3.11 and Debian's arm64 kernel, built once with
``mmdebstrap --arch=arm64`` (under qemu-user: needs root and binfmt for aarch64) and cached, keyed
by a hash of the recipe (packages, sources, configuration files, :data:`RECIPE_VERSION`), in
``EDGEAGENT_VM_CACHE`` or ``~/.cache/edgeagent/vm``: a raw ext4 image labelled ``rootfs``, the
kernel, and a small busybox initramfs made on the host (``update-initramfs`` is diverted during
the build: under emulation it takes about 8 minutes). The build takes about 3 minutes; a cached
one is used as is.

The root has a test login (an SSH key of its own for ``root`` and the ``pi`` user, host keys made
at build time, a fixed machine id): the emulated device uses it as is, an image built from it
(``images/debian.py``) removes them.

    EdgeAgentError
    └── ImageBuildError
        └── RootfsError     the root filesystem cannot be built here (tools, root, binfmt)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .bootpart import ImageBuildError
from .initramfs import INIT_SCRIPT, INITRAMFS_MODULES, make_initramfs, module_closure

RECIPE_VERSION = 6
"""Bump when the build steps change in a way the hashed recipe below does not show."""

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "python3", "python3-venv", "openssh-server",
    "openssl", "rsync", "iproute2", "ca-certificates", "procps", "linux-image-arm64",
    "busybox-static", "sudo", "raspi-firmware",
)  # fmt: skip
# Left out of the image (dpkg path-exclude): documentation, translations, and kernel modules a
# virtio machine never loads (sound, graphics, media, wireless, Bluetooth, staging, InfiniBand).
_MOD = "/lib/modules/*/kernel"
PATH_EXCLUDES = (
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
    "/usr/share/lintian/*",
    f"{_MOD}/sound/*", f"{_MOD}/drivers/gpu/*", f"{_MOD}/drivers/media/*",
    f"{_MOD}/drivers/net/wireless/*", f"{_MOD}/drivers/staging/*",
    f"{_MOD}/drivers/infiniband/*", f"{_MOD}/drivers/bluetooth/*", f"{_MOD}/net/bluetooth/*",
    f"{_MOD}/drivers/iio/*",
)  # fmt: skip
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service", "e2scrub_all.timer",
    "getty@tty1.service", "serial-getty@ttyAMA0.service",
)  # fmt: skip
ROOTFS_MB = 2048
HOSTNAME = "edge-arm64"
DEVICE_USER = "pi"
"""A login like Raspberry Pi OS's default user: passwordless sudo, the same SSH key as root."""

FILES: dict[str, str] = {
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n",
    "etc/systemd/network/20-wired.network": (
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n"
    ),
    # No line for the small disk of boot(extra_disk_mb=...): the initramfs mounts it when it is
    # attached. An fstab line, even nofail, makes a mount unit that units with RequiresMountsFor
    # (implied by WorkingDirectory=/opt/edgeagent/...) require, and fail on, when it is absent.
    "etc/fstab": "LABEL=rootfs / ext4 defaults,noatime 0 0\n",
    "etc/ssh/sshd_config.d/edgeagent-test.conf": (
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUseDNS no\n"
    ),
    "etc/systemd/journald.conf.d/edgeagent-test.conf": "[Journal]\nStorage=persistent\n",
    "etc/resolv.conf": "nameserver 10.0.2.3\n",
    "etc/default/locale": "LANG=C.UTF-8\n",
    f"etc/sudoers.d/010_{DEVICE_USER}-nopasswd": f"{DEVICE_USER} ALL=(ALL) NOPASSWD: ALL\n",
}


__all__ = [
    "DEVICE_USER",
    "FILES",
    "HOSTNAME",
    "INITRAMFS_MODULES",
    "MASKED_UNITS",
    "PACKAGES",
    "PATH_EXCLUDES",
    "RECIPE_VERSION",
    "ROOTFS_MB",
    "SUITE",
    "Log",
    "RootImage",
    "RootfsError",
    "apt_sources",
    "build_unavailable",
    "default_cache_dir",
    "enable_binfmt",
    "ensure",
    "is_cached",
    "make_initramfs",
    "module_closure",
    "recipe",
    "recipe_key",
    "run",
    "safe_rmtree",
]

Log = Callable[[str], None]


class RootfsError(ImageBuildError):
    """The root filesystem cannot be built here, or its build failed (the message says why)."""


def _stderr(msg: str) -> None:
    print(f"[rootfs] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Availability


def _binfmt_ready() -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def _qemu_user_static() -> bool:
    return any(
        Path(p).exists()
        for p in ("/usr/bin/qemu-aarch64-static", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
    )


def is_cached(cache_dir: Path | None = None) -> bool:
    """True when the root filesystem of the current recipe is built and cached already."""
    return ((cache_dir or default_cache_dir()) / recipe_key() / "complete").is_file()


def build_unavailable() -> str | None:
    """None when the root filesystem can be built here (mmdebstrap, qemu-user, root), else why
    not (a cached one needs none of that)."""
    for tool in ("mmdebstrap", "mkfs.ext4", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: mmdebstrap e2fsprogs openssh-client)"
    if not _qemu_user_static():
        return "qemu-user-static is not installed (needed to build an arm64 root filesystem)"
    if os.getuid() != 0:
        return "building the arm64 root filesystem needs root (mmdebstrap --mode=root)"
    if not _binfmt_ready() and shutil.which("update-binfmts") is None:
        return "binfmt for aarch64 is not enabled and update-binfmts is missing (binfmt-support)"
    return None


def enable_binfmt(log: Log = _stderr) -> None:
    """Make sure arm64 programs run here through qemu-user (binfmt_misc), as root."""
    if _binfmt_ready():
        return
    log("enabling binfmt_misc for aarch64")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
            check=False,
            capture_output=True,
        )
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    if not _binfmt_ready():
        raise RootfsError(
            "binfmt_misc has no enabled qemu-aarch64 entry: mount binfmt_misc on "
            "/proc/sys/fs/binfmt_misc and run `update-binfmts --enable qemu-aarch64` as root"
        )


# --------------------------------------------------------------------------------------------
# The image


@dataclass(frozen=True, slots=True)
class RootImage:
    """A built root filesystem in the cache, with what booting it in qemu ``-M virt`` needs."""

    kernel: Path
    initrd: Path
    rootfs: Path
    """Raw ext4 image labelled ``rootfs``; never written by boot() (a qcow2 overlay is)."""
    ssh_key: Path
    """Private ed25519 key authorized for root on the device (``ssh_key.pub`` next to it)."""
    host_key: str
    """The device's ed25519 host key, ``ssh-ed25519 AAAA...``: the same on every boot."""
    folder: Path

    def known_hosts_line(self, port: int, host: str = "127.0.0.1") -> str:
        """A known_hosts line for the device's SSH forwarded to ``host:port``."""
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {self.host_key}"


def default_cache_dir() -> Path:
    env = os.environ.get("EDGEAGENT_VM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeagent" / "vm"


def _sources_entries() -> list[tuple[list[str], list[str]]]:
    """(URIs, suites) of each ``deb`` entry configured for apt on this machine."""
    apt = Path("/etc/apt")
    entries: list[tuple[list[str], list[str]]] = []
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for f in one_line:
        with contextlib.suppress(OSError):
            for raw in f.read_text().splitlines():
                line = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    entries.append(([line[1]], [line[2]]))
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for para in re.split(r"\n\s*\n", f.read_text()):
                fields: dict[str, str] = {}
                for raw in para.splitlines():
                    if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                        continue
                    key, _, value = raw.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def apt_sources() -> list[str]:
    """The Debian mirror lines for the image: the mirror apt is configured with on this machine
    (or ``EDGEAGENT_VM_MIRROR``), with the bookworm, -updates and -security suites."""
    env = os.environ.get("EDGEAGENT_VM_MIRROR")
    archive = security = None
    if env:
        archive = env
    else:
        for uris, suites in _sources_entries():
            debian = [u for u in uris if "debian" in u and u.startswith(("http", "file:"))]
            if not debian or not suites or "backports" in suites[0]:
                continue
            if suites[0].endswith("-security"):
                security = security or debian[0]
            elif "/" not in suites[0]:
                archive = archive or debian[0]
    archive = (archive or "http://deb.debian.org/debian").rstrip("/")
    # non-free-firmware: raspi-firmware (the Raspberry Pi's boot firmware) is there.
    parts = "main non-free-firmware"
    lines = [f"deb {archive} {SUITE} {parts}", f"deb {archive} {SUITE}-updates {parts}"]
    if security:
        lines.append(f"deb {security.rstrip('/')} {SUITE}-security {parts}")
    return lines


def recipe() -> dict[str, object]:
    """Everything the build depends on; its hash names the cache folder."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "excludes": list(PATH_EXCLUDES),
        "masked": sorted(MASKED_UNITS),
        "user": DEVICE_USER,
        "sources": apt_sources(),
        "rootfs_mb": ROOTFS_MB,
        "files": FILES,
        "init": INIT_SCRIPT,
        "initramfs_modules": list(INITRAMFS_MODULES),
    }


def recipe_key() -> str:
    blob = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _image(folder: Path) -> RootImage:
    return RootImage(
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.gz",
        rootfs=folder / "rootfs.ext4",
        ssh_key=folder / "id_ed25519",
        host_key=(folder / "ssh_host_ed25519_key.pub").read_text().strip(),
        folder=folder,
    )


def ensure(cache_dir: Path | None = None, log: Log = _stderr) -> RootImage:
    """The cached root filesystem for the current recipe, built first if needed (minutes). A
    lock file keeps concurrent callers (several pytest processes) to one build; the others wait
    for it."""
    cache = cache_dir or default_cache_dir()
    folder = cache / recipe_key()
    if (folder / "complete").is_file():
        return _image(folder)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building the root filesystem in {cache}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "complete").is_file():
            _remove_stale_builds(cache, log)
            _build(folder, log)
    return _image(folder)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def safe_rmtree(path: Path, log: Log = _stderr) -> None:
    """Remove a build folder, never descending into something still mounted in it (an
    interrupted mmdebstrap can leave its chroot's /proc or /sys mounted)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        log(f"leaving {path}: something is still mounted in it")
        return
    shutil.rmtree(path, ignore_errors=True)


def _remove_stale_builds(cache: Path, log: Log) -> None:
    for stale in cache.glob(".build-*"):
        log(f"removing an interrupted build: {stale}")
        safe_rmtree(stale, log)


def run(cmd: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a command; RootfsError with the tail of its output when it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = (proc.stdout or "")[-2000:] + (proc.stderr or "")[-4000:]
        raise RootfsError(f"{what} failed (exit {proc.returncode}):\n{out}")
    return proc


def _mmdebstrap(root: Path, log: Path) -> None:
    q = '"$1"'
    cmd = [
        "mmdebstrap", "--mode=root", "--arch=arm64", "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        '--aptopt=Apt::Install-Recommends "false"',
        '--aptopt=Apt::Install-Suggests "false"',
        *(f"--dpkgopt=path-exclude={p}" for p in PATH_EXCLUDES),
        # Under emulation update-initramfs takes minutes: divert it to a no-op (the host makes a
        # small initramfs). Host keys made natively here: openssh-server keeps existing ones.
        f"--essential-hook=chroot {q} dpkg-divert --quiet --local --rename --add "
        f"/usr/sbin/update-initramfs && ln -sf /bin/true {q}/usr/sbin/update-initramfs",
        f"--essential-hook=mkdir -p {q}/etc/ssh && ssh-keygen -q -A -f {q}",
        f"--customize-hook=chroot {q} systemctl enable --quiet systemd-networkd ssh",
        f"--customize-hook=chroot {q} systemctl mask --quiet {' '.join(MASKED_UNITS)}",
        f"--customize-hook=chroot {q} useradd --create-home --shell /bin/bash --uid 1000 "
        f"--groups sudo {DEVICE_USER} && chroot {q} usermod --password '*' {DEVICE_USER}",
        SUITE, str(root), *apt_sources(),
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RootfsError(f"mmdebstrap failed (exit {proc.returncode}); log {log}:\n{tail}")


def _configure(root: Path, client_pub: str, key: str) -> None:
    for rel, text in FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text)
    (root / "opt/edgeagent").mkdir(parents=True, exist_ok=True)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # A fixed machine id: no first-boot logic, the same DHCP client id, journal folder every boot.
    (root / "etc/machine-id").write_text(hashlib.sha256(key.encode()).hexdigest()[:32] + "\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(client_pub)
    auth.chmod(0o600)
    (root / f"etc/sudoers.d/010_{DEVICE_USER}-nopasswd").chmod(0o440)
    home = root / "home" / DEVICE_USER
    user_ssh = home / ".ssh"
    user_ssh.mkdir(mode=0o700, exist_ok=True)
    (user_ssh / "authorized_keys").write_text(client_pub)
    (user_ssh / "authorized_keys").chmod(0o600)
    uid, gid = home.stat().st_uid, home.stat().st_gid
    for p in (user_ssh, user_ssh / "authorized_keys"):
        os.chown(p, uid, gid)


def _build(folder: Path, log: Log) -> None:
    why = build_unavailable()
    if why is not None:
        raise RootfsError(f"cannot build the Debian arm64 root filesystem: {why}")
    t0 = time.monotonic()
    enable_binfmt(log)
    work = Path(tempfile.mkdtemp(prefix=f".build-{folder.name}-", dir=folder.parent))
    try:
        root, out = work / "root", work / "out"
        out.mkdir()
        log_file = folder.parent / f"{folder.name}.mmdebstrap.log"
        log(f"building a Debian {SUITE} arm64 root filesystem with mmdebstrap (a few minutes; "
            f"log: {log_file})")  # fmt: skip
        _mmdebstrap(root, log_file)
        t1 = time.monotonic()
        log(f"mmdebstrap done in {t1 - t0:.0f} s; configuring")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeagent-armvm",
             "-f", str(out / "id_ed25519")], "ssh-keygen")  # fmt: skip
        client_pub = (out / "id_ed25519.pub").read_text()
        _configure(root, client_pub, folder.name)
        host_pub = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        (out / "ssh_host_ed25519_key.pub").write_text(f"{host_pub[0]} {host_pub[1]}\n")
        versions = sorted(p.name for p in (root / "lib/modules").iterdir())
        if not versions:
            raise RootfsError("the root filesystem has no kernel modules")
        kver = versions[-1]
        shutil.copyfile(root / f"boot/vmlinuz-{kver}", out / "vmlinuz")
        log(f"kernel {kver}; making the initramfs")
        (out / "initrd.gz").write_bytes(make_initramfs(root, kver))
        log(f"making the {ROOTFS_MB} MiB ext4 image")
        run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root),
             str(out / "rootfs.ext4"), f"{ROOTFS_MB}M"], "mkfs.ext4")  # fmt: skip
        meta = {
            "recipe": recipe(),
            "kernel_version": kver,
            "mmdebstrap_s": round(t1 - t0, 1),
            "build_s": round(time.monotonic() - t0, 1),
        }
        (out / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
        safe_rmtree(root, log)
        if folder.exists():
            shutil.rmtree(folder)
        (out / "complete").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
        os.replace(out, folder)
        log(f"root filesystem ready in {time.monotonic() - t0:.0f} s: {folder}")
    finally:
        safe_rmtree(work, log)
